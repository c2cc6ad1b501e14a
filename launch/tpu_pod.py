#!/usr/bin/env python3
"""Train on a Cloud TPU VM slice (a pod slice or a single host) with gcloud.

Launch (creates the TPU VM, or reuses it with --reuse):

  python3 launch/tpu_pod.py --name=my-tpu --zone=us-central2-b \
      --accelerator-type=v4-32 --version=tpu-ubuntu2204-base \
      --config=configs/pmc_oa_shared_feature.py:small \
      --workdir=gs://my-bucket/runs/shared_feature [--config.FIELD=VALUE ...]

A launch copies the package source to every worker, installs it into a
virtual environment there with `pip install -c constraints.txt -e '.[tpu]'`,
and runs the same shared-encoder-train command on all workers. The output of
all workers streams to this terminal and is appended to
~/shared_encoder_logs/train.log on each worker. With --detach the command
runs in the background and --logs streams the log later.

Other actions: --logs, --stop (SIGTERM to the training processes) and
--delete (deletes the TPU VM). --dry-run prints the gcloud and tar commands
and runs nothing. Uses only the standard library.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import config_overrides  # launch/config_overrides.py, beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files and folders that the workers need to install and run the package,
# relative to REPO.
PACKAGE_PATHS = ("README.md", "constraints.txt", "pyproject.toml", "setup.cfg",
                 "configs", "shared_encoder_jax")
# Paths on each worker, relative to the home directory of the ssh user.
REMOTE_ARCHIVE = "shared_encoder_jax.tar.gz"
REMOTE_CODE = "shared_encoder_jax"
REMOTE_VENV = "shared_encoder_venv"
REMOTE_LOG_DIR = "shared_encoder_logs"
REMOTE_LOG = f"{REMOTE_LOG_DIR}/train.log"
# Matches the command line of a running trainer (the venv's python followed
# by the console script) but not the shell that runs the pgrep or pkill,
# whose command line starts with the shell.
TRAINER_PATTERN = (f"^[^ ]*python[^ ]* [^ ]*/{REMOTE_VENV}/bin/"
                   "shared-encoder-train( |$)")

_ACTIONS = ("logs", "stop", "delete")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Create or reuse a Cloud TPU VM slice, install the package "
      "on every worker and run shared-encoder-train on all of them. "
      "Arguments of the form --config.FIELD=VALUE are passed to "
      "shared-encoder-train.",
      allow_abbrev=False)
  parser.add_argument("--name", required=True, help="TPU VM name.")
  parser.add_argument("--zone", required=True,
                      help="Compute Engine zone, e.g. us-central2-b.")
  parser.add_argument("--project", default=None,
                      help="Google Cloud project (default: gcloud's "
                      "configured project).")

  action = parser.add_mutually_exclusive_group()
  action.add_argument("--logs", action="store_true",
                      help="Stream the training log of --worker until "
                      "Ctrl-C, which stops only the streaming.")
  action.add_argument("--stop", action="store_true",
                      help="Send SIGTERM to the training processes on all "
                      "workers.")
  action.add_argument("--delete", action="store_true",
                      help="Delete the TPU VM. The bucket workdir is kept.")

  launch = parser.add_argument_group("launch (the default action)")
  launch.add_argument("--config",
                      help="Config file inside this repository, optionally "
                      "with an argument, e.g. "
                      "configs/pmc_oa_shared_feature.py:small.")
  launch.add_argument("--workdir",
                      help="Cloud Storage workdir, gs://BUCKET/PATH, shared "
                      "by all workers; an existing one is resumed.")
  launch.add_argument("--accelerator-type",
                      help="TPU type and size, e.g. v4-32.")
  launch.add_argument("--version",
                      help="TPU VM software version (runtime image), e.g. "
                      "tpu-ubuntu2204-base for TPU v4. Other TPU "
                      "generations need their own image; see the Cloud TPU "
                      "documentation.")
  launch.add_argument("--reuse", action="store_true",
                      help="Use the TPU VM if it exists, is READY and has "
                      "the requested accelerator type. Create it if it does "
                      "not exist, and delete and create it again if it was "
                      "PREEMPTED.")
  launch.add_argument("--spot", action="store_true",
                      help="Create a Spot TPU VM, which can be preempted.")
  launch.add_argument("--detach", action="store_true",
                      help="Start training in the background on the workers "
                      "and return; stream the log with --logs.")

  parser.add_argument("--worker", default="0",
                      help="Worker whose log --logs streams: an index or "
                      "'all' (default: 0).")
  parser.add_argument("--yes", action="store_true",
                      help="With --delete: do not ask for confirmation.")
  parser.add_argument("--dry-run", action="store_true",
                      help="Print the commands and run nothing.")
  return parser


class Gcloud:
  """Builds the `gcloud compute tpus tpu-vm` commands for one TPU VM."""

  def __init__(self, name: str, zone: str, project: str | None):
    self.name = name
    self.location = [f"--zone={zone}"]
    if project:
      self.location.append(f"--project={project}")

  def _command(self, verb: str, *arguments: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, *arguments,
            *self.location]

  def create(self, accelerator_type: str, version: str, spot: bool
             ) -> list[str]:
    command = self._command("create", self.name,
                            f"--accelerator-type={accelerator_type}",
                            f"--version={version}")
    if spot:
      command.append("--spot")
    return command

  def describe_state(self) -> list[str]:
    """Return the command that prints the state and the accelerator type."""
    return self._command("describe", self.name,
                         "--format=value(state,acceleratorType)")

  def delete(self, quiet: bool) -> list[str]:
    command = self._command("delete", self.name)
    if quiet:
      command.append("--quiet")
    return command

  def scp(self, source: str, destination: str) -> list[str]:
    return self._command("scp", source, f"{self.name}:{destination}",
                         "--worker=all")

  def ssh(self, worker: str, remote_command: str) -> list[str]:
    return self._command("ssh", self.name, f"--worker={worker}",
                         f"--command={remote_command}")


def repo_relative_config(parser: argparse.ArgumentParser, config: str) -> str:
  """Return the config argument with its file path relative to REPO.

  The workers run from their copy of the repository, so the file must be
  inside it.
  """
  path, separator, config_argument = config.partition(":")
  if not os.path.isfile(path):
    parser.error(f"--config file {path!r} not found.")
  relative = os.path.relpath(os.path.abspath(path), REPO)
  if relative.startswith(os.pardir + os.sep):
    parser.error(f"--config file {path!r} is outside the repository {REPO}; "
                 "only files inside it are copied to the workers.")
  return relative + separator + config_argument


def archive_command(archive: str, config_path: str) -> list[str]:
  """Return the tar command that packs the source the workers need."""
  paths = [path for path in PACKAGE_PATHS
           if os.path.exists(os.path.join(REPO, path))]
  if not any(config_path == path or config_path.startswith(path + os.sep)
             for path in paths):
    paths.append(config_path)
  return ["tar", "-czf", archive, "--exclude=__pycache__", "--exclude=*.pyc",
          "-C", REPO, *paths]


def install_script() -> str:
  """Return the shell script that unpacks and installs on a worker."""
  # Only the packaged paths are replaced, so that data/ and runs/ in the
  # worker's copy survive a new launch.
  replaced = " ".join(shlex.quote(path) for path in PACKAGE_PATHS)
  steps = [
      "set -eu",
      'cd "$HOME"',
      f"mkdir -p {REMOTE_CODE}",
      f"(cd {REMOTE_CODE} && rm -rf {replaced})",
      f"tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_CODE}",
      # Some images lack the python3-venv package that `python3 -m venv`
      # needs, so it is installed when creating the environment fails.
      f"if [ ! -x {REMOTE_VENV}/bin/pip ]; then python3 -m venv {REMOTE_VENV} "
      "|| { sudo apt-get update -q && sudo apt-get install -y -q python3-venv "
      f"&& python3 -m venv --clear {REMOTE_VENV}; }}; fi",
      f"cd {REMOTE_CODE}",
      f"../{REMOTE_VENV}/bin/python -m pip install --quiet --upgrade pip",
      f"../{REMOTE_VENV}/bin/python -m pip install --quiet -c constraints.txt "
      "-e '.[tpu]'",
  ]
  return "; ".join(steps)


def train_script(config: str, workdir: str, overrides: list[str],
                 detach: bool) -> str:
  """Return the shell script that starts training on a worker."""
  train = shlex.join([f"--config={config}", f"--workdir={workdir}",
                      *overrides])
  train = f'"$HOME/{REMOTE_VENV}/bin/shared-encoder-train" {train}'
  log = f'"$HOME/{REMOTE_LOG}"'
  steps = [
      "set -eu",
      f"if pgrep -f {shlex.quote(TRAINER_PATTERN)} > /dev/null; then "
      'echo "error: training is already running on $(hostname). Stop it '
      'with --stop first." >&2; exit 1; fi',
      f'mkdir -p "$HOME/{REMOTE_LOG_DIR}"',
      f'cd "$HOME/{REMOTE_CODE}"',
  ]
  if detach:
    steps.append(f"nohup {train} >> {log} 2>&1 < /dev/null &")
    steps.append(f'echo "Training started on $(hostname). Log: {log}"')
  else:
    steps.append("set -o pipefail")
    steps.append(f"{train} 2>&1 | tee -a {log}")
  return "; ".join(steps)


def stop_script() -> str:
  return (f"if pkill -TERM -f {shlex.quote(TRAINER_PATTERN)}; then "
          'echo "Sent SIGTERM to training on $(hostname)."; '
          'else echo "No training process on $(hostname)."; fi')


def logs_script() -> str:
  return f'tail -n 100 -F "$HOME/{REMOTE_LOG}"'


def run(command: list[str]) -> None:
  """Run a command with its output on this terminal and exit if it fails."""
  print("+ " + shlex.join(command), file=sys.stderr, flush=True)
  try:
    status = subprocess.call(command)
  except FileNotFoundError:
    sys.exit(f"error: {command[0]} not found. Install the Google Cloud CLI "
             "and run 'gcloud auth login'.")
  except KeyboardInterrupt:
    sys.exit(130)
  if status != 0:
    sys.exit(f"error: command failed with status {status}: "
             f"{shlex.join(command)}")


def ensure_tpu_vm(gcloud: Gcloud, args) -> None:
  """Create the TPU VM, or with --reuse check its state first."""
  create = gcloud.create(args.accelerator_type, args.version, args.spot)
  if not args.reuse:
    run(create)
    return

  describe = gcloud.describe_state()
  print("+ " + shlex.join(describe), file=sys.stderr, flush=True)
  try:
    result = subprocess.run(describe, capture_output=True, text=True)
  except FileNotFoundError:
    sys.exit("error: gcloud not found. Install the Google Cloud CLI and run "
             "'gcloud auth login'.")
  fields = result.stdout.split()
  state = fields[0] if fields else ""
  accelerator_type = fields[1] if len(fields) > 1 else ""
  if result.returncode != 0:
    if "NOT_FOUND" not in result.stderr and "not found" not in result.stderr:
      sys.exit(f"error: describing TPU VM {args.name} failed:\n"
               f"{result.stderr.strip()}")
    print(f"TPU VM {args.name} does not exist; creating it.",
          file=sys.stderr)
    run(create)
  elif state == "READY":
    if accelerator_type and accelerator_type != args.accelerator_type:
      sys.exit(f"error: TPU VM {args.name} is a {accelerator_type}, not the "
               f"requested {args.accelerator_type}. Pass "
               f"--accelerator-type={accelerator_type}, or delete it with "
               "--delete.")
    print(f"Reusing TPU VM {args.name}.", file=sys.stderr)
  elif state == "PREEMPTED":
    print(f"TPU VM {args.name} was preempted; deleting and creating it "
          "again.", file=sys.stderr)
    run(gcloud.delete(quiet=True))
    run(create)
  else:
    sys.exit(f"error: TPU VM {args.name} is in state {state or 'unknown'}, "
             "not READY. Wait and rerun, or delete it with --delete.")


def launch_commands(gcloud: Gcloud, args, config: str, overrides: list[str],
                    archive: str) -> list[list[str]]:
  """Return the commands that follow the creation of the TPU VM."""
  config_path = config.partition(":")[0]
  return [
      archive_command(archive, config_path),
      gcloud.scp(archive, REMOTE_ARCHIVE),
      gcloud.ssh("all", install_script()),
      gcloud.ssh("all", train_script(config, args.workdir, overrides,
                                     args.detach)),
  ]


def print_dry_run(gcloud: Gcloud, args, commands: list[list[str]]) -> None:
  if args.reuse:
    print(shlex.join(gcloud.describe_state()))
    print("# Stops here if the state is neither READY nor PREEMPTED, or if "
          "the accelerator type differs.")
    print("# Only if the state printed above is PREEMPTED:")
    print(shlex.join(gcloud.delete(quiet=True)))
    print("# Only if the TPU VM does not exist or was deleted above:")
  print(shlex.join(gcloud.create(args.accelerator_type, args.version,
                                 args.spot)))
  for command in commands:
    print(shlex.join(command))


def validate_launch(parser: argparse.ArgumentParser, args) -> None:
  missing = [flag for flag, value in (
      ("--config", args.config), ("--workdir", args.workdir),
      ("--accelerator-type", args.accelerator_type),
      ("--version", args.version)) if not value]
  if missing:
    parser.error(f"a launch needs {', '.join(missing)} (or pass --logs, "
                 "--stop or --delete).")
  if not args.workdir.startswith("gs://") or len(args.workdir) <= 5:
    parser.error(f"--workdir {args.workdir!r} must be a Cloud Storage path "
                 "gs://BUCKET/PATH, because every worker reads and writes "
                 "it.")


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides = config_overrides.split_config_overrides(parser, extra)
  action = next((name for name in _ACTIONS if getattr(args, name)), None)
  if action and (overrides or args.config or args.workdir):
    parser.error(f"--{action} takes no --config, --workdir or config "
                 "overrides.")
  if args.worker != "all" and not args.worker.isdigit():
    parser.error(f"--worker must be a worker index or 'all', got "
                 f"{args.worker!r}.")
  gcloud = Gcloud(args.name, args.zone, args.project)

  if action:
    if action == "logs":
      command = gcloud.ssh(args.worker, logs_script())
    elif action == "stop":
      command = gcloud.ssh("all", stop_script())
    else:
      command = gcloud.delete(quiet=args.yes)
    if args.dry_run:
      print(shlex.join(command))
    else:
      run(command)
    return 0

  validate_launch(parser, args)
  config = repo_relative_config(parser, args.config)
  archive = os.path.join(tempfile.gettempdir(),
                         f"shared_encoder_jax-{args.name}.tar.gz")
  commands = launch_commands(gcloud, args, config, overrides, archive)
  if args.dry_run:
    print_dry_run(gcloud, args, commands)
    return 0

  ensure_tpu_vm(gcloud, args)
  archive_step, *remote_steps = commands
  run(archive_step)
  try:
    run(remote_steps[0])
  finally:
    os.remove(archive)
  for command in remote_steps[1:]:
    run(command)
  if args.detach:
    print("Stream the log with: " + shlex.join(
        [sys.executable, os.path.abspath(__file__), f"--name={args.name}",
         *gcloud.location, "--logs"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())

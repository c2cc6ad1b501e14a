#!/usr/bin/env python3
"""Run a sweep of training runs, list their status and report the results.

  python launch/sweep.py run configs/sweeps/example.py [--root=runs/sweeps] \
      [--parallel=N] [--dry-run]
  python launch/sweep.py run SWEEP_FILE --emit=slurm [--dry-run] \
      -- --nodes=1 --gpus-per-node=8 --time=4:00:00
  python launch/sweep.py status SWEEP_FILE [--root=runs/sweeps]
  python launch/sweep.py report SWEEP_FILE [--root=runs/sweeps] \
      [--metric=mean_recall@10] [--output=DIR]

`run` trains every run of the grid (see shared_encoder_jax/sweep.py for the
sweep file) in ROOT/SWEEP_NAME/RUN_NAME, one after another or --parallel at
a time, as `shared-encoder-train` processes whose output goes to the run's
train.log. A run with a test result is skipped. A run with checkpoints but
no test result is started with the same command again, so the trainer
resumes it. A failed run is reported and the others go on; the exit status
is 1 if any run failed. Ctrl-C or SIGTERM sends SIGTERM to the running
trainers, which save a checkpoint and stop, and the runner then exits.

With --emit, `run` starts nothing. It writes a shell script with one
launch/local.py, launch/slurm.py or launch/tpu_pod.py command per unfinished
run. The launcher's own options follow `--`.

Needs the package's virtual environment; when started with another Python,
the script starts itself again with .venv/bin/python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_DIR = os.path.join(REPO, "launch")
_REEXEC_ENV = "SHARED_ENCODER_SWEEP_REEXEC"

try:
  from shared_encoder_jax import sweep as sweep_lib
except ImportError as import_error:
  _venv_python = os.path.join(REPO, ".venv", "bin", "python")
  if os.path.exists(_venv_python) and not os.environ.get(_REEXEC_ENV):
    print(f"Restarting with {_venv_python}, which has the package.",
          file=sys.stderr)
    os.environ[_REEXEC_ENV] = "1"
    os.execv(_venv_python, [_venv_python, *sys.argv])
  sys.exit(f"error: {import_error}. Run this script with the Python of the "
           "environment that has shared_encoder_jax installed (make install "
           "creates .venv).")

EMIT_KINDS = ("local", "slurm", "tpu_pod")
# Polling interval of the run loop, in seconds.
_POLL_SECONDS = 0.05
_LOG_TAIL_LINES = 5


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Run, list or report a sweep of training runs defined by "
      "a sweep file (see configs/sweeps/example.py).", allow_abbrev=False)
  commands = parser.add_subparsers(dest="command", required=True)

  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument("sweep", metavar="SWEEP_FILE[:ARG]",
                      help="Sweep file, optionally with an argument for its "
                      "get_sweep(arg).")
  common.add_argument("--root", default="runs/sweeps",
                      help="Parent folder of the sweeps: each run trains in "
                      "ROOT/SWEEP_NAME/RUN_NAME (default: %(default)s).")

  run = commands.add_parser(
      "run", parents=[common], allow_abbrev=False,
      help="train the unfinished runs, or emit launcher commands for them",
      description="Train the unfinished runs of the sweep on this machine, "
      "or with --emit write launcher commands for them. Options after "
      "`--` go to the launcher.")
  run.add_argument("--parallel", type=int, default=1,
                   help="Number of runs to train at once (default: 1). Each "
                   "run sees every device of this machine, so on one GPU "
                   "set XLA_PYTHON_CLIENT_MEM_FRACTION so they fit.")
  run.add_argument("--dry-run", action="store_true",
                   help="Print the runs, their status and their commands; "
                   "start and write nothing.")
  run.add_argument("--emit", choices=EMIT_KINDS, default=None,
                   help="Write a script with one launch/EMIT.py command per "
                   "unfinished run instead of training here.")
  run.add_argument("--script-file", default=None,
                   help="With --emit: where to write the script (default: "
                   "ROOT/SWEEP_NAME/EMIT_jobs.sh, or SWEEP_NAME_EMIT_jobs.sh "
                   "in the current folder for a bucket root).")
  run.add_argument("--venv", default=os.path.join(REPO, ".venv"),
                   help="Virtual environment whose shared-encoder-train "
                   "trains the runs (default: %(default)s).")
  run.add_argument("--train-command", default=None,
                   help="Program that trains one run, as a shell-quoted "
                   "line; it gets --config, --workdir and --config.FIELD "
                   "arguments (default: VENV/bin/shared-encoder-train).")
  run.add_argument("--stop-timeout", type=float, default=120.0,
                   help="Seconds the runs get to save a checkpoint and exit "
                   "after SIGTERM before they are killed (default: "
                   "%(default)s).")

  status = commands.add_parser(
      "status", parents=[common], allow_abbrev=False,
      help="list the runs with their status")
  status.add_argument("--metric", default=sweep_lib.DEFAULT_METRIC,
                      help="Test metric shown for finished runs (default: "
                      "%(default)s).")

  report = commands.add_parser(
      "report", parents=[common], allow_abbrev=False,
      help="write tables and plots of the finished runs",
      description="Write report.md, results.csv, parameters.csv and PNG "
      "plots of the finished runs' test metric.")
  report.add_argument("--metric", default=sweep_lib.DEFAULT_METRIC,
                      help="'mean_KEY' (average of both directions), "
                      "'image_to_text/KEY', 'text_to_image/KEY' or 'loss', "
                      "with KEY such as recall@10 or median_rank (default: "
                      "%(default)s).")
  report.add_argument("--output", default=None,
                      help="Folder for the report (default: "
                      "ROOT/SWEEP_NAME/report).")
  return parser


def split_launcher_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """Split argv at the first `--` into (own arguments, launcher options)."""
  if "--" in argv:
    index = argv.index("--")
    return argv[:index], argv[index + 1:]
  return argv, []


def load_sweep(spec: str) -> sweep_lib.Sweep:
  """Load the sweep; find its base config here or in the repository."""
  sweep = sweep_lib.load_sweep(spec)
  path, separator, arg = sweep.base_config.partition(":")
  if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO, path)):
    sweep.base_config = os.path.join(REPO, path) + separator + arg
  return sweep


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


def say(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def describe_status(status: sweep_lib.RunStatus) -> str:
  if status.state == sweep_lib.STATE_DONE:
    return f"done (test at step {status.test_step})"
  if status.state == sweep_lib.STATE_PARTIAL:
    return f"partial (checkpoint at step {status.checkpoint_step})"
  if status.last_exit not in (None, 0):
    return f"new (last attempt exited with status {status.last_exit})"
  return "new"


@dataclasses.dataclass
class Job:
  """A run of the grid with its workdir, status and trainer command."""
  index: int
  run: sweep_lib.Run
  workdir: str
  status: sweep_lib.RunStatus
  command: list[str]
  config: object  # the resolved ml_collections.ConfigDict


def prepare_jobs(sweep: sweep_lib.Sweep, root: str,
                 program: list[str]) -> list[Job]:
  """Expand the grid and check every run's config and existing workdir."""
  jobs = []
  for index, run in enumerate(sweep.runs(), 1):
    workdir = sweep_lib.run_workdir(root, sweep, run)
    config = sweep_lib.resolve_config(sweep.base_config, run.overrides,
                                      run.name)
    sweep_lib.check_run_record(workdir, sweep, run)
    jobs.append(Job(
        index=index, run=run, workdir=workdir,
        status=sweep_lib.run_status(workdir),
        command=sweep_lib.train_command(program, sweep.base_config, workdir,
                                        run.overrides),
        config=config))
  return jobs


def print_plan(sweep: sweep_lib.Sweep, root: str, jobs: list[Job],
               show_commands: bool = True) -> None:
  states = [job.status.state for job in jobs]
  counts = ", ".join(f"{states.count(state)} {state}" for state in
                     (sweep_lib.STATE_DONE, sweep_lib.STATE_PARTIAL,
                      sweep_lib.STATE_NEW))
  print(f"Sweep {sweep.name}: {len(jobs)} runs in {root}/{sweep.name} "
        f"({counts}); base config {sweep.base_config}.")
  for job in jobs:
    action = ("skipped" if job.status.state == sweep_lib.STATE_DONE else
              "resumes" if job.status.state == sweep_lib.STATE_PARTIAL else
              "starts")
    print(f"[{job.index}/{len(jobs)}] {job.run.name}: "
          f"{describe_status(job.status)}, {action}")
    if show_commands and job.status.state != sweep_lib.STATE_DONE:
      print("  " + shlex.join(job.command))


def log_tail(path: str, count: int = _LOG_TAIL_LINES) -> list[str]:
  try:
    with open(path, errors="replace") as f:
      lines = [line.rstrip() for line in f if line.strip()]
  except OSError:
    return []
  return lines[-count:]


class SweepRunner:
  """Trains jobs as subprocesses, `parallel` at a time."""

  def __init__(self, sweep: sweep_lib.Sweep, jobs: list[Job], parallel: int,
               stop_timeout: float):
    self.sweep = sweep
    self.jobs = jobs
    self.parallel = parallel
    self.stop_timeout = stop_timeout
    self.stop_signal = None
    self.kill_now = False
    self.finished, self.failed, self.incomplete = [], [], []
    self.running = {}  # Job -> (Popen, start time, log file)

  def _handle_signal(self, signum, frame):
    del frame
    if self.stop_signal is None:
      self.stop_signal = signum
    else:
      self.kill_now = True

  def run(self) -> int:
    """Train the unfinished jobs; return the runner's exit status."""
    total = len(self.jobs)
    pending = []
    for job in self.jobs:
      if job.status.state == sweep_lib.STATE_DONE:
        say(f"skip   [{job.index}/{total}] {job.run.name}: "
            f"{describe_status(job.status)}")
      else:
        pending.append(job)
    skipped = total - len(pending)

    previous = {signum: signal.signal(signum, self._handle_signal)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    start = time.monotonic()
    try:
      while (pending or self.running) and self.stop_signal is None:
        while pending and len(self.running) < self.parallel:
          self._start(pending.pop(0))
        if not self._reap():
          time.sleep(_POLL_SECONDS)
      if self.stop_signal is not None:
        self._stop_running()
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)

    return self._summarize(skipped, pending, time.monotonic() - start)

  def _start(self, job: Job) -> None:
    total = len(self.jobs)
    os.makedirs(job.workdir, exist_ok=True)
    sweep_lib.write_run_record(
        job.workdir, self.sweep, job.run, job.command, job.config,
        attempt={"start": sweep_lib.now_iso(),
                 "state_before": job.status.state})
    log_path = os.path.join(job.workdir, sweep_lib.LOG_FILE)
    log = open(log_path, "a")
    log.write(f"\n==== {sweep_lib.now_iso()} launch/sweep.py starts: "
              f"{shlex.join(job.command)}\n")
    log.flush()
    say(f"start  [{job.index}/{total}] {job.run.name}: "
        f"{describe_status(job.status)}; log {log_path}")
    try:
      # A session of its own keeps Ctrl-C in the terminal from reaching the
      # trainer, which gets SIGTERM from the runner instead and then saves a
      # checkpoint.
      process = subprocess.Popen(
          job.command, stdin=subprocess.DEVNULL, stdout=log,
          stderr=subprocess.STDOUT, start_new_session=True,
          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as e:
      log.write(f"error: could not start the command: {e}\n")
      log.close()
      sweep_lib.update_last_attempt(job.workdir, end=sweep_lib.now_iso(),
                                    exit_status=127)
      say(f"FAILED [{job.index}/{total}] {job.run.name}: could not start "
          f"{job.command[0]}: {e}")
      self.failed.append(job)
      return
    self.running[job.index] = (job, process, time.monotonic(), log)

  def _reap(self) -> bool:
    """Record the runs that have exited; return whether there were any."""
    exited = False
    for index, (job, process, started, log) in list(self.running.items()):
      if process.poll() is not None:
        del self.running[index]
        log.close()
        self._finish(job, process.returncode, time.monotonic() - started)
        exited = True
    return exited

  def _finish(self, job: Job, returncode: int, elapsed: float) -> None:
    total = len(self.jobs)
    status = sweep_lib.run_status(job.workdir)
    sweep_lib.update_last_attempt(job.workdir, end=sweep_lib.now_iso(),
                                  exit_status=returncode,
                                  elapsed_seconds=round(elapsed, 1))
    prefix = f"[{job.index}/{total}] {job.run.name}"
    took = format_duration(elapsed)
    if returncode == 0 and status.state == sweep_lib.STATE_DONE:
      say(f"done   {prefix} in {took}{self._metric_text(job.workdir)}")
      self.finished.append(job)
      return
    if returncode == 0 or self.stop_signal is not None:
      # Stopped by SIGTERM (from this runner or from elsewhere).
      where = (f"checkpoint at step {status.checkpoint_step}"
               if status.checkpoint_step is not None else "no checkpoint")
      say(f"stop   {prefix} after {took} without a test result ({where}, "
          f"exit status {returncode}); rerun the sweep to resume it")
      self.incomplete.append(job)
      return
    reason = (f"killed by {signal.Signals(-returncode).name}"
              if returncode < 0 else f"exit status {returncode}")
    say(f"FAILED {prefix} after {took} ({reason}); last lines of "
        f"{os.path.join(job.workdir, sweep_lib.LOG_FILE)}:")
    for line in log_tail(os.path.join(job.workdir, sweep_lib.LOG_FILE)):
      print(f"    {line}", flush=True)
    self.failed.append(job)

  def _metric_text(self, workdir: str) -> str:
    status = sweep_lib.run_status(workdir)
    try:
      path = sweep_lib.find_test_results(workdir)[status.test_step]
      metrics = json.loads(path.read_text())
      value = sweep_lib.metric_value(metrics, sweep_lib.DEFAULT_METRIC)
    except (KeyError, ValueError, OSError):
      return ""
    return f", test {sweep_lib.DEFAULT_METRIC} {value:.4f}"

  def _stop_running(self) -> None:
    name = signal.Signals(self.stop_signal).name
    alive = [(job, process) for job, process, _, _ in self.running.values()
             if process.poll() is None]
    for _, process in alive:
      process.send_signal(signal.SIGTERM)
    if alive:
      say(f"Received {name}: sent SIGTERM to {len(alive)} run(s); waiting "
          f"up to {self.stop_timeout:g} s for them to save a checkpoint "
          "(send it again to kill them at once).")
    deadline = time.monotonic() + self.stop_timeout
    while any(process.poll() is None for _, process in alive):
      if self.kill_now or time.monotonic() > deadline:
        for job, process in alive:
          if process.poll() is None:
            say(f"Killing {job.run.name} (process group {process.pid}).")
            try:
              os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
              pass
            process.wait()
        break
      time.sleep(_POLL_SECONDS)
    self._reap()

  def _summarize(self, skipped: int, not_started: list[Job],
                 elapsed: float) -> int:
    parts = [f"{len(self.jobs)} runs", f"{skipped} already done",
             f"{len(self.finished)} finished now"]
    for label, jobs in (("failed", self.failed),
                        ("stopped without a test result", self.incomplete),
                        ("not started", not_started)):
      if jobs:
        names = ", ".join(job.run.name for job in jobs)
        parts.append(f"{len(jobs)} {label} ({names})")
    say(f"Sweep {self.sweep.name}: {'; '.join(parts)}. Elapsed "
        f"{format_duration(elapsed)}.")
    if self.stop_signal is not None:
      return 128 + self.stop_signal
    return 1 if self.failed or self.incomplete else 0


# --emit: launcher commands.


def launcher_command(kind: str, launcher_args: list[str],
                     sweep: sweep_lib.Sweep, job: Job,
                     python: str = "python3") -> list[str]:
  """Return the launch/KIND.py command line that trains one run."""
  command = [python, os.path.join(LAUNCH_DIR, f"{kind}.py"), *launcher_args]
  if kind == "slurm":
    if not any(arg.startswith("--job-name") for arg in launcher_args):
      command.append(f"--job-name={sweep.name}-{job.run.name}")
    if not any(arg.startswith("--output") for arg in launcher_args):
      command.append("--output=" + os.path.join(job.workdir,
                                                "slurm-%j.out"))
    command.append("--script-file=" + os.path.join(job.workdir,
                                                   "slurm.sbatch"))
  command += [f"--config={sweep.base_config}", f"--workdir={job.workdir}",
              *sweep_lib.override_flags(job.run.overrides)]
  return command


def check_launcher_args(kind: str, launcher_args: list[str]) -> str | None:
  """Return an error message for launcher options that cannot work."""
  if kind == "slurm" and any(arg.startswith("--script-file")
                             for arg in launcher_args):
    return ("--script-file is set per run (WORKDIR/slurm.sbatch); leave it "
            "out of the launcher options.")
  if kind == "tpu_pod" and "--detach" in launcher_args:
    return ("--detach would start every run on the TPU VM at once; the "
            "script runs them one after another instead.")
  if kind == "tpu_pod" and any(arg in ("--logs", "--stop", "--delete")
                               for arg in launcher_args):
    return "the launcher options must describe a launch, not an action."
  return None


def emit_script(sweep: sweep_lib.Sweep, kind: str,
                entries: list[tuple[Job, list[str]]], skipped: list[Job]
                ) -> str:
  lines = ["#!/bin/bash",
           f"# Written by launch/sweep.py for sweep {sweep.name} "
           f"({sweep.spec}): one launch/{kind}.py command per unfinished "
           "run.",
           f"cd {shlex.quote(os.getcwd())}", "status=0"]
  for job in skipped:
    lines.append(f"# [{job.index}] {job.run.name}: done, left out")
  for job, command in entries:
    lines.append(f"# [{job.index}] {job.run.name}: "
                 f"{describe_status(job.status)}")
    lines.append(f"{shlex.join(command)} || status=1")
  lines.append("exit $status")
  return "\n".join(lines) + "\n"


def emit_jobs(args, sweep: sweep_lib.Sweep, jobs: list[Job],
              launcher_args: list[str]) -> int:
  """Write (or with --dry-run print) the launcher commands of the runs."""
  error = check_launcher_args(args.emit, launcher_args)
  if error:
    print(f"error: launcher options {shlex.join(launcher_args)}: {error}",
          file=sys.stderr)
    return 2
  skipped = [job for job in jobs if job.status.state == sweep_lib.STATE_DONE]
  pending = [job for job in jobs if job.status.state != sweep_lib.STATE_DONE]
  entries = [(job, launcher_command(args.emit, launcher_args, sweep, job))
             for job in pending]
  if not entries:
    print(f"Sweep {sweep.name}: all {len(jobs)} runs are done.")
    return 0

  if args.dry_run:
    print_plan(sweep, args.root, jobs, show_commands=False)
    status = 0
    for job, command in entries:
      print(f"\n# [{job.index}/{len(jobs)}] {job.run.name}: "
            f"{shlex.join(command)}")
      result = run_launcher_dry_run(command)
      print(result.stdout, end="")
      if result.returncode != 0:
        print(result.stderr, end="", file=sys.stderr)
        status = 2
    return status

  # The launcher checks its options; one dry run catches mistakes before
  # anything is written.
  result = run_launcher_dry_run(entries[0][1])
  if result.returncode != 0:
    print(f"error: launch/{args.emit}.py rejected the options:\n"
          f"{result.stderr.strip()}", file=sys.stderr)
    return 2
  remote_root = "://" in args.root
  for job, command in entries:
    if not remote_root:
      os.makedirs(job.workdir, exist_ok=True)
      sweep_lib.write_run_record(job.workdir, sweep, job.run, job.command,
                                 job.config)
  script_file = args.script_file or (
      f"{sweep.name}_{args.emit}_jobs.sh" if remote_root else
      os.path.join(args.root, sweep.name, f"{args.emit}_jobs.sh"))
  os.makedirs(os.path.dirname(os.path.abspath(script_file)), exist_ok=True)
  with open(script_file, "w") as f:
    f.write(emit_script(sweep, args.emit, entries, skipped))
  os.chmod(script_file, 0o755)
  print(f"Wrote {script_file}: {len(entries)} launch/{args.emit}.py "
        f"command(s), {len(skipped)} finished run(s) left out. Run it with: "
        f"bash {shlex.quote(script_file)}")
  return 0


def run_launcher_dry_run(command: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *command[1:], "--dry-run"],
                        capture_output=True, text=True, timeout=120)


# Subcommands.


def command_run(args, launcher_args: list[str]) -> int:
  if launcher_args and not args.emit:
    print("error: options after `--` go to a launcher and need --emit.",
          file=sys.stderr)
    return 2
  if args.parallel < 1:
    print(f"error: --parallel must be 1 or more, got {args.parallel}.",
          file=sys.stderr)
    return 2
  if args.train_command:
    program = shlex.split(args.train_command)
  else:
    program = [os.path.join(os.path.abspath(args.venv), "bin",
                            "shared-encoder-train")]
  sweep = load_sweep(args.sweep)
  jobs = prepare_jobs(sweep, args.root, program)
  if args.emit:
    return emit_jobs(args, sweep, jobs, launcher_args)
  if args.dry_run:
    print_plan(sweep, args.root, jobs)
    return 0
  if "://" in args.root:
    print(f"error: --root {args.root} is a bucket; runs on this machine need "
          "a local root. For a TPU pod use --emit=tpu_pod.", file=sys.stderr)
    return 2
  if not args.train_command and not os.access(program[0], os.X_OK):
    print(f"error: {program[0]} not found; run 'make install' first or pass "
          "--venv.", file=sys.stderr)
    return 1
  return SweepRunner(sweep, jobs, args.parallel, args.stop_timeout).run()


def command_status(args) -> int:
  sweep = load_sweep(args.sweep)
  results = sweep_lib.collect_results(sweep, args.root, args.metric)
  rows = [("run", "status", "step", args.metric, "last exit")]
  for result in results:
    status = result.status
    step = (status.test_step if status.state == sweep_lib.STATE_DONE
            else status.checkpoint_step)
    rows.append((result.run.name, status.state,
                 "-" if step is None else str(step),
                 "-" if result.value is None else f"{result.value:.4f}",
                 "-" if status.last_exit is None else str(status.last_exit)))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  for row in rows:
    print("  ".join(cell.ljust(width)
                    for cell, width in zip(row, widths)).rstrip())
  states = [result.status.state for result in results]
  print(f"\nSweep {sweep.name} in {args.root}/{sweep.name}: "
        + ", ".join(f"{states.count(state)} {state}" for state in
                    (sweep_lib.STATE_DONE, sweep_lib.STATE_PARTIAL,
                     sweep_lib.STATE_NEW)) + ".")
  return 0


def command_report(args) -> int:
  sweep = load_sweep(args.sweep)
  output = args.output or os.path.join(args.root, sweep.name, "report")
  report = sweep_lib.write_report(sweep, args.root, output, args.metric)
  print(report.markdown)
  for path in report.files.values():
    print(f"Wrote {path}")
  if not any(group.values for group in report.groups):
    print(f"error: no run of sweep {sweep.name} under {args.root} has a "
          "test result yet; train with `launch/sweep.py run` first.",
          file=sys.stderr)
    return 1
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  own_args, launcher_args = split_launcher_args(argv)
  args = build_parser().parse_args(own_args)
  try:
    if args.command == "run":
      return command_run(args, launcher_args)
    if launcher_args:
      print("error: options after `--` are only for `run --emit`.",
            file=sys.stderr)
      return 2
    if args.command == "status":
      return command_status(args)
    return command_report(args)
  except sweep_lib.SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())

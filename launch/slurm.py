#!/usr/bin/env python3
"""Submit a multi-node GPU training job to SLURM.

  python3 launch/slurm.py --nodes=2 --gpus-per-node=8 --time=24:00:00 \
      --partition=gpu --config=configs/pmc_oa_shared_feature.py \
      --workdir=/shared/runs/shared_feature [--config.FIELD=VALUE ...]

Writes an sbatch script (default: JOB_NAME.sbatch in the current directory)
and submits it with `sbatch`. The job starts shared-encoder-train with `srun`
on every node: one process per GPU (the default) or one per node. Then a
single task exports the bundle to WORKDIR/export. Resubmitting the same
script resumes the run from WORKDIR.

The processes find each other through JAX's SLURM detection, which reads
the variables that srun sets. That detection gives each process the GPU
whose index is SLURM_LOCALID, so with one process per GPU every task must
see all GPUs of its node: the script requests --gpus-per-node, not
--gpus-per-task. With one process per node it sets JAX_LOCAL_DEVICE_IDS to
all GPUs of the node.

Relative paths (config, workdir) are resolved in the directory the job is
submitted from, which must be on a file system that all nodes share.
--dry-run prints the script and the sbatch command and runs nothing. Uses
only the standard library.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import config_overrides  # launch/config_overrides.py, beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Write and submit an sbatch script that trains on several "
      "GPU nodes. Arguments of the form --config.FIELD=VALUE are passed to "
      "shared-encoder-train.",
      allow_abbrev=False)
  parser.add_argument("--config", required=True,
                      help="Config file, optionally with an argument, e.g. "
                      "configs/pmc_oa_shared_feature.py:small.")
  parser.add_argument("--workdir", required=True,
                      help="Training workdir on a shared file system. An "
                      "existing one is resumed.")

  job = parser.add_argument_group("job resources")
  job.add_argument("--nodes", type=int, required=True,
                   help="Number of nodes.")
  job.add_argument("--gpus-per-node", type=int, required=True,
                   help="Number of GPUs to use on each node.")
  job.add_argument("--time", required=True,
                   help="Time limit in a format sbatch accepts, e.g. "
                   "24:00:00 or 2-00:00:00.")
  job.add_argument("--partition", default=None,
                   help="Partition (default: the cluster's default).")
  job.add_argument("--account", default=None,
                   help="Account to charge (default: your default account).")
  job.add_argument("--one-process-per", choices=("gpu", "node"),
                   default="gpu",
                   help="Start one training process per GPU or per node "
                   "(default: gpu).")
  job.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPU cores per process (default: the cluster's "
                   "default).")
  job.add_argument("--job-name", default="shared-encoder",
                   help="Job name (default: %(default)s).")
  job.add_argument("--output", default=None,
                   help="sbatch --output file pattern (default: "
                   "JOB_NAME-%%j.out in the submission directory).")
  job.add_argument("--sbatch-option", action="append", default=[],
                   metavar="OPTION",
                   help="Extra sbatch option for the script header, e.g. "
                   "--sbatch-option=--qos=high. Repeatable.")

  parser.add_argument("--venv", default=os.path.join(REPO, ".venv"),
                      help="Virtual environment with the package and its "
                      "CUDA extra installed, on a shared file system "
                      "(default: %(default)s).")
  parser.add_argument("--script-file", default=None,
                      help="Where to write the sbatch script (default: "
                      "JOB_NAME.sbatch in the current directory).")
  parser.add_argument("--skip-export", action="store_true",
                      help="Do not export the bundle to WORKDIR/export after "
                      "training.")
  parser.add_argument("--dry-run", action="store_true",
                      help="Print the script and the sbatch command and run "
                      "nothing.")
  return parser


def validate(parser: argparse.ArgumentParser, args) -> None:
  for flag, value in (("--nodes", args.nodes),
                      ("--gpus-per-node", args.gpus_per_node),
                      ("--cpus-per-task", args.cpus_per_task)):
    if value is not None and value < 1:
      parser.error(f"{flag} must be 1 or more, got {value}.")
  if not args.time.strip():
    parser.error("--time must not be empty.")
  config_file = args.config.partition(":")[0]
  if not os.path.isfile(config_file):
    parser.error(f"--config file {config_file!r} not found.")
  for option in args.sbatch_option:
    if not option.startswith("-") or "\n" in option:
      parser.error(f"--sbatch-option {option!r} must be a single sbatch "
                   "option such as --qos=high.")


def sbatch_header(args) -> list[str]:
  """Return the #SBATCH lines."""
  if args.one_process_per == "gpu":
    tasks_per_node = args.gpus_per_node
  else:
    tasks_per_node = 1
  options = [
      f"--job-name={args.job_name}",
      f"--nodes={args.nodes}",
      f"--ntasks-per-node={tasks_per_node}",
      f"--gpus-per-node={args.gpus_per_node}",
      f"--time={args.time}",
  ]
  if args.partition:
    options.append(f"--partition={args.partition}")
  if args.account:
    options.append(f"--account={args.account}")
  if args.cpus_per_task:
    options.append(f"--cpus-per-task={args.cpus_per_task}")
  options.append(f"--output={args.output or args.job_name + '-%j.out'}")
  options.extend(args.sbatch_option)
  return [f"#SBATCH {option}" for option in options]


def sbatch_script(args, overrides: list[str]) -> str:
  bin_dir = os.path.join(os.path.abspath(args.venv), "bin")
  train = shlex.join([os.path.join(bin_dir, "shared-encoder-train"),
                      f"--config={args.config}", f"--workdir={args.workdir}",
                      *overrides])
  srun = "srun --kill-on-bad-exit=1"
  if args.cpus_per_task:
    # Some Slurm versions do not pass sbatch's --cpus-per-task on to srun.
    srun += f" --cpus-per-task={args.cpus_per_task}"
  lines = ["#!/bin/bash", *sbatch_header(args), "",
           "# Written by launch/slurm.py.", "set -euo pipefail", ""]
  if args.one_process_per == "gpu":
    lines.append("# One process per GPU: JAX gives process SLURM_LOCALID the "
                 "GPU with that index.")
    lines.append(f"{srun} {train}")
  else:
    device_ids = ",".join(str(i) for i in range(args.gpus_per_node))
    lines.append("# One process per node, driving all GPUs of the node.")
    lines.append(f"JAX_LOCAL_DEVICE_IDS={device_ids} {srun} {train}")
  if not args.skip_export:
    export = shlex.join([
        os.path.join(bin_dir, "shared-encoder-export"),
        f"--workdir={args.workdir}",
        f"--output={os.path.join(args.workdir, 'export')}", "--overwrite"])
    lines.append("")
    lines.append("# A single task exports the bundle.")
    lines.append("srun --nodes=1 --ntasks=1 --ntasks-per-node=1 "
                 f"{export}")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides = config_overrides.split_config_overrides(parser, extra)
  validate(parser, args)
  script = sbatch_script(args, overrides)
  script_file = args.script_file or f"{args.job_name}.sbatch"
  submit = ["sbatch", script_file]

  if args.dry_run:
    print(f"cat > {shlex.quote(script_file)} <<'EOF'")
    print(script, end="")
    print("EOF")
    print(shlex.join(submit))
    return 0

  train_bin = os.path.join(os.path.abspath(args.venv), "bin",
                           "shared-encoder-train")
  if not os.access(train_bin, os.X_OK):
    print(f"error: {train_bin} not found; install the package with its cuda "
          "extra into --venv first.", file=sys.stderr)
    return 1
  with open(script_file, "w") as f:
    f.write(script)
  print(f"Wrote {script_file}.", file=sys.stderr)
  print("+ " + shlex.join(submit), file=sys.stderr)
  try:
    return subprocess.call(submit)
  except FileNotFoundError:
    print("error: sbatch not found; run this on a SLURM login node.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())

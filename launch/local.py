#!/usr/bin/env python3
"""Train, then export, on this machine with one or several processes.

  python3 launch/local.py --config=configs/pmc_oa_separate.py:small \
      --workdir=runs/separate [--num-processes=2 --devices-per-process=4] \
      [--config.FIELD=VALUE ...] [--dry-run]

With --num-processes=N above 1, it starts N training processes that find each
other through a coordinator on 127.0.0.1 (the environment variables read by
`shared_encoder_jax.distributed.initialize`). Each output line is prefixed
with its process id. When one process fails, the others are stopped and the
launcher exits with the failed process's status. After training, one process
exports the bundle to WORKDIR/export. Rerunning resumes the training run.

Uses only the standard library. --dry-run prints the commands and runs
nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import config_overrides  # launch/config_overrides.py, beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The variables that shared_encoder_jax.distributed reads.
COORDINATOR_ENV = "SHARED_ENCODER_COORDINATOR"
NUM_PROCESSES_ENV = "SHARED_ENCODER_NUM_PROCESSES"
PROCESS_ID_ENV = "SHARED_ENCODER_PROCESS_ID"
# Read by jax.distributed.initialize in process 0. Binding to the loopback
# interface keeps the coordinator off the network.
JAX_BIND_ENV = "JAX_COORDINATOR_BIND_ADDRESS"

# Seconds that processes get to exit after SIGTERM before SIGKILL. The trainer
# saves a checkpoint when it receives SIGTERM and needs time to finish it.
_TERMINATE_GRACE_SECONDS = 30


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description="Train (in one or several processes) and export on this "
      "machine. Arguments of the form --config.FIELD=VALUE are passed to "
      "shared-encoder-train.",
      allow_abbrev=False)
  parser.add_argument(
      "--config", required=True,
      help="Config file, optionally with an argument, e.g. "
      "configs/pmc_oa_shared_feature.py:small.")
  parser.add_argument(
      "--workdir", required=True,
      help="Training workdir. An existing one is resumed.")
  parser.add_argument(
      "--num-processes", type=int, default=1,
      help="Number of training processes to start (default: 1).")
  parser.add_argument(
      "--devices-per-process", type=int, default=None,
      help="Number of CPU devices each process simulates, set through "
      "XLA_FLAGS=--xla_force_host_platform_device_count. Only the CPU "
      "backend reads it. Default: XLA_FLAGS is left as it is.")
  parser.add_argument(
      "--port", type=int, default=0,
      help="Coordinator port on 127.0.0.1 when --num-processes is above 1 "
      "(default: a free port).")
  parser.add_argument(
      "--venv", default=os.path.join(REPO, ".venv"),
      help="Virtual environment that has the package installed (default: "
      "%(default)s).")
  parser.add_argument(
      "--skip-export", action="store_true",
      help="Do not export the bundle to WORKDIR/export after training.")
  parser.add_argument(
      "--dry-run", action="store_true",
      help="Print the commands and run nothing.")
  return parser


def find_free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def format_command(command: list[str], env: dict[str, str]) -> str:
  """Return a shell line that runs `command` with `env` added."""
  if not env:
    return shlex.join(command)
  assignments = [f"{name}={value}" for name, value in env.items()]
  return shlex.join(["env", *assignments, *command])


def process_environments(num_processes: int, devices_per_process: int | None,
                         port: int) -> list[dict[str, str]]:
  """Return the variables to add for each process, in process order."""
  environments = []
  for process_id in range(num_processes):
    env = {}
    if num_processes > 1:
      env[COORDINATOR_ENV] = f"127.0.0.1:{port}"
      env[NUM_PROCESSES_ENV] = str(num_processes)
      env[PROCESS_ID_ENV] = str(process_id)
      if process_id == 0:
        env[JAX_BIND_ENV] = f"127.0.0.1:{port}"
    if devices_per_process is not None:
      flag = f"--xla_force_host_platform_device_count={devices_per_process}"
      existing = os.environ.get("XLA_FLAGS", "").strip()
      env["XLA_FLAGS"] = f"{existing} {flag}" if existing else flag
    environments.append(env)
  return environments


def _forward_output(process_id: int, stream, lock: threading.Lock) -> None:
  prefix = f"[process {process_id}] "
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(prefix + line)
      sys.stdout.flush()
  stream.close()


def _stop(processes: list[subprocess.Popen]) -> None:
  """Send SIGTERM to the running processes, then SIGKILL to survivors."""
  for process in processes:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
  for process in processes:
    try:
      process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def run_processes(command: list[str], environments: list[dict[str, str]]
                  ) -> int:
  """Run one copy of `command` per environment and return the exit status.

  The status is 0 when every process succeeds, else the status of the first
  process seen failing, after the others were stopped.
  """
  lock = threading.Lock()
  processes = []
  threads = []
  try:
    for process_id, env in enumerate(environments):
      process = subprocess.Popen(
          command, env={**os.environ, **env}, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True, bufsize=1)
      processes.append(process)
      thread = threading.Thread(
          target=_forward_output, args=(process_id, process.stdout, lock),
          daemon=True)
      thread.start()
      threads.append(thread)

    while True:
      statuses = [process.poll() for process in processes]
      failed = [(process_id, status) for process_id, status
                in enumerate(statuses) if status not in (None, 0)]
      if failed:
        process_id, status = failed[0]
        print(f"error: process {process_id} exited with status {status}. "
              "Stopping the other processes.", file=sys.stderr)
        _stop(processes)
        return status
      if all(status == 0 for status in statuses):
        return 0
      time.sleep(0.2)
  except KeyboardInterrupt:
    print("Interrupted. Stopping the processes.", file=sys.stderr)
    _stop(processes)
    return 130
  finally:
    for thread in threads:
      thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides = config_overrides.split_config_overrides(parser, extra)
  if args.num_processes < 1:
    parser.error(f"--num-processes must be 1 or more, got "
                 f"{args.num_processes}.")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error(f"--devices-per-process must be 1 or more, got "
                 f"{args.devices_per_process}.")
  if not 0 <= args.port < 65536:
    parser.error(f"--port must be between 0 and 65535, got {args.port}.")

  bin_dir = os.path.join(os.path.abspath(args.venv), "bin")
  train = [os.path.join(bin_dir, "shared-encoder-train"),
           f"--config={args.config}", f"--workdir={args.workdir}", *overrides]
  export = [os.path.join(bin_dir, "shared-encoder-export"),
            f"--workdir={args.workdir}",
            f"--output={os.path.join(args.workdir, 'export')}", "--overwrite"]
  port = args.port
  if args.num_processes > 1 and port == 0:
    port = find_free_port()
  environments = process_environments(args.num_processes,
                                      args.devices_per_process, port)

  if args.dry_run:
    for env in environments:
      print(format_command(train, env))
    if not args.skip_export:
      print(shlex.join(export))
    return 0

  if not os.access(train[0], os.X_OK):
    print(f"error: {train[0]} not found; run 'make install' first or pass "
          "--venv.", file=sys.stderr)
    return 1
  for env in environments:
    print("+ " + format_command(train, env), file=sys.stderr)
  if args.num_processes == 1:
    try:
      status = subprocess.call(train, env={**os.environ, **environments[0]})
    except KeyboardInterrupt:
      return 130
  else:
    status = run_processes(train, environments)
  if status < 0:
    # Killed by a signal: exit the way a shell reports it.
    return 128 - status
  if status != 0:
    return status
  if args.skip_export:
    return 0
  print("+ " + shlex.join(export), file=sys.stderr)
  return subprocess.call(export)


if __name__ == "__main__":
  sys.exit(main())

"""Launchers in launch/ (through --dry-run) and multi-process settings.

The launchers run as subprocesses, the way users run them. No test calls
gcloud or sbatch or starts a JAX process group.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap

import jax
import pytest

from shared_encoder_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/pmc_oa_shared_feature.py:small"
BUCKET_WORKDIR = "gs://my-bucket/runs/shared feature"
TPU_ARGS = ("--name=my-tpu", "--zone=us-central2-b", "--project=my-project")
TPU_LAUNCH_ARGS = TPU_ARGS + (
    "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
    f"--config={CONFIG}", f"--workdir={BUCKET_WORKDIR}")
OVERRIDES = ("--config.batch_size=256", "--config.model.shared_layers=0-5",
             "--config.data.name=my data's name")
SLURM_ARGS = ("--nodes=2", "--gpus-per-node=4", "--time=24:00:00",
              "--partition=gpu", f"--config={CONFIG}",
              "--workdir=/shared/runs/a")
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def run_launcher(script, *args, env=None):
  """Run launch/SCRIPT with ARGS from the repository root."""
  if env is None:
    env = {name: value for name, value in os.environ.items()
           if name != "XLA_FLAGS"}
  return subprocess.run([sys.executable, os.path.join("launch", script),
                         *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)


def dry_run_commands(script, *args):
  """Return the --dry-run output as argument lists, comments dropped."""
  result = run_launcher(script, *args, "--dry-run")
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()
          if line and not line.startswith("#")]


def flag_value(command, flag):
  values = [argument.split("=", 1)[1] for argument in command
            if argument.startswith(flag + "=")]
  assert len(values) == 1, (flag, command)
  return values[0]


def gcloud_commands(commands, verb):
  return [command for command in commands
          if command[:5] == GCLOUD_TPU + [verb]]


def remote_train_arguments(remote_script):
  """Return the arguments of shared-encoder-train in a worker script."""
  match = re.search(r'shared-encoder-train" (.*?) (?:2>&1 \||>>)',
                    remote_script)
  assert match, remote_script
  return shlex.split(match.group(1))


# TPU pod launcher.


def test_tpu_pod_launch_command_order():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS)
  programs = [command[:5] for command in commands]
  assert programs == [
      GCLOUD_TPU + ["create"],
      ["tar", "-czf", commands[1][2], "--exclude=__pycache__",
       "--exclude=*.pyc"],
      GCLOUD_TPU + ["scp"],
      GCLOUD_TPU + ["ssh"],
      GCLOUD_TPU + ["ssh"],
  ]


def test_tpu_pod_create_flags():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS, "--spot")
  [create] = gcloud_commands(commands, "create")
  assert create[5] == "my-tpu"
  assert flag_value(create, "--zone") == "us-central2-b"
  assert flag_value(create, "--project") == "my-project"
  assert flag_value(create, "--accelerator-type") == "v4-32"
  assert flag_value(create, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" in create


def test_tpu_pod_copies_package_to_all_workers():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS)
  [tar] = [command for command in commands if command[0] == "tar"]
  archive = tar[2]
  assert tar[tar.index("-C") + 1] == REPO
  for path in ("setup.cfg", "pyproject.toml", "constraints.txt", "README.md",
               "configs", "shared_encoder_jax"):
    assert path in tar
  [scp] = gcloud_commands(commands, "scp")
  assert scp[5:7] == [archive, "my-tpu:shared_encoder_jax.tar.gz"]
  assert "--worker=all" in scp
  assert flag_value(scp, "--zone") == "us-central2-b"


def test_tpu_pod_installs_on_all_workers():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS)
  install = gcloud_commands(commands, "ssh")[0]
  assert install[5] == "my-tpu"
  assert flag_value(install, "--worker") == "all"
  script = flag_value(install, "--command")
  assert "tar -xzf shared_encoder_jax.tar.gz -C shared_encoder_jax" in script
  assert "python3 -m venv shared_encoder_venv" in script
  assert "pip install --quiet -c constraints.txt -e '.[tpu]'" in script


def test_tpu_pod_trains_on_all_workers_with_overrides():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS, *OVERRIDES)
  train = gcloud_commands(commands, "ssh")[1]
  assert flag_value(train, "--worker") == "all"
  assert flag_value(train, "--project") == "my-project"
  script = flag_value(train, "--command")
  assert remote_train_arguments(script) == [
      f"--config={CONFIG}", f"--workdir={BUCKET_WORKDIR}", *OVERRIDES]
  assert '| tee -a "$HOME/shared_encoder_logs/train.log"' in script
  assert "set -o pipefail" in script


def test_tpu_pod_detach_runs_in_background():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS, "--detach")
  script = flag_value(gcloud_commands(commands, "ssh")[1], "--command")
  assert "nohup " in script
  assert '>> "$HOME/shared_encoder_logs/train.log" 2>&1 < /dev/null &' in script
  assert "tee" not in script
  assert remote_train_arguments(script) == [
      f"--config={CONFIG}", f"--workdir={BUCKET_WORKDIR}"]


def test_tpu_pod_remote_scripts_are_valid_bash(tmp_path):
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS, *OVERRIDES)
  for ssh in gcloud_commands(commands, "ssh"):
    script = tmp_path / "remote.sh"
    script.write_text(flag_value(ssh, "--command"))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_tpu_pod_reuse_describes_first():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS, "--reuse")
  assert commands[0][:6] == GCLOUD_TPU + ["describe", "my-tpu"]
  assert (flag_value(commands[0], "--format")
          == "value(state,acceleratorType)")
  assert commands[1][:6] == GCLOUD_TPU + ["delete", "my-tpu"]
  assert "--quiet" in commands[1]
  assert commands[2][:6] == GCLOUD_TPU + ["create", "my-tpu"]


def test_tpu_pod_without_reuse_does_not_describe():
  commands = dry_run_commands("tpu_pod.py", *TPU_LAUNCH_ARGS)
  assert not gcloud_commands(commands, "describe")
  assert not gcloud_commands(commands, "delete")


def test_tpu_pod_delete():
  [delete] = dry_run_commands("tpu_pod.py", *TPU_ARGS, "--delete")
  assert delete == GCLOUD_TPU + ["delete", "my-tpu", "--zone=us-central2-b",
                                 "--project=my-project"]
  [delete] = dry_run_commands("tpu_pod.py", *TPU_ARGS, "--delete", "--yes")
  assert delete[-1] == "--quiet"


def test_tpu_pod_logs_and_stop():
  [logs] = dry_run_commands("tpu_pod.py", *TPU_ARGS, "--logs")
  assert logs[4:6] == ["ssh", "my-tpu"]
  assert flag_value(logs, "--worker") == "0"
  assert flag_value(logs, "--command") == (
      'tail -n 100 -F "$HOME/shared_encoder_logs/train.log"')
  [stop] = dry_run_commands("tpu_pod.py", *TPU_ARGS, "--stop")
  assert flag_value(stop, "--worker") == "all"
  assert "pkill -TERM -f" in flag_value(stop, "--command")


def test_tpu_pod_stop_pattern_skips_remote_shell():
  [stop] = dry_run_commands("tpu_pod.py", *TPU_ARGS, "--stop")
  pattern = re.search(r"pkill -TERM -f '([^']*)'",
                      flag_value(stop, "--command")).group(1)
  trainer = ("/home/user/shared_encoder_venv/bin/python "
             "/home/user/shared_encoder_venv/bin/shared-encoder-train "
             "--config=x")
  shell = 'bash -c "$HOME/shared_encoder_venv/bin/shared-encoder-train" --x'
  assert re.search(pattern, trainer)
  assert not re.search(pattern, shell)


@pytest.mark.parametrize("args, message", [
    (TPU_ARGS, "a launch needs --config, --workdir, --accelerator-type, "
     "--version"),
    (TPU_ARGS + ("--accelerator-type=v4-32", "--version=v",
                 f"--config={CONFIG}", "--workdir=runs/local"),
     "must be a Cloud Storage path"),
    (TPU_LAUNCH_ARGS + ("--batch_size=3",), "unrecognized argument"),
    (TPU_ARGS + ("--delete", f"--config={CONFIG}"), "--delete takes no"),
    (("--zone=z", "--delete"), "the following arguments are required: --name"),
    (TPU_ARGS + ("--logs", "--worker=first"), "--worker must be"),
])
def test_tpu_pod_rejects_invalid_arguments(args, message):
  result = run_launcher("tpu_pod.py", *args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr
  assert not result.stdout


def test_tpu_pod_rejects_config_outside_repository(tmp_path):
  config = tmp_path / "config.py"
  config.write_text("")
  result = run_launcher("tpu_pod.py", *TPU_ARGS, "--accelerator-type=v4-8",
                        "--version=v", f"--config={config}",
                        "--workdir=gs://b/w", "--dry-run")
  assert result.returncode == 2
  assert "outside the repository" in result.stderr


# SLURM launcher.


def slurm_dry_run(*args):
  """Return the sbatch script and the submit command of a dry run."""
  result = run_launcher("slurm.py", *args, "--dry-run")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("cat > ")
  assert lines[0].endswith("<<'EOF'")
  end = lines.index("EOF")
  return lines[1:end], shlex.split(lines[end + 1])


def test_slurm_script_one_process_per_gpu():
  script, submit = slurm_dry_run(*SLURM_ARGS, "--account=lab", *OVERRIDES)
  assert script[0] == "#!/bin/bash"
  for option in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                 "--time=24:00:00", "--partition=gpu", "--account=lab",
                 "--job-name=shared-encoder",
                 "--output=shared-encoder-%j.out"):
    assert f"#SBATCH {option}" in script
  assert not any("--gpus-per-task" in line for line in script)
  assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in script)
  [train] = [shlex.split(line) for line in script
             if "shared-encoder-train" in line]
  venv_bin = os.path.join(REPO, ".venv", "bin")
  assert train == ["srun", "--kill-on-bad-exit=1",
                   os.path.join(venv_bin, "shared-encoder-train"),
                   f"--config={CONFIG}", "--workdir=/shared/runs/a",
                   *OVERRIDES]
  [export] = [shlex.split(line) for line in script
              if "shared-encoder-export" in line]
  assert export[:4] == ["srun", "--nodes=1", "--ntasks=1",
                        "--ntasks-per-node=1"]
  assert "--output=/shared/runs/a/export" in export
  assert submit == ["sbatch", "shared-encoder.sbatch"]


def test_slurm_script_one_process_per_node():
  script, _ = slurm_dry_run(*SLURM_ARGS, "--one-process-per=node",
                            "--cpus-per-task=16", "--skip-export",
                            "--sbatch-option=--qos=high")
  assert "#SBATCH --ntasks-per-node=1" in script
  assert "#SBATCH --gpus-per-node=4" in script
  assert "#SBATCH --cpus-per-task=16" in script
  assert "#SBATCH --qos=high" in script
  [train] = [shlex.split(line) for line in script
             if "shared-encoder-train" in line]
  assert train[:4] == ["JAX_LOCAL_DEVICE_IDS=0,1,2,3", "srun",
                       "--kill-on-bad-exit=1", "--cpus-per-task=16"]
  assert not any("shared-encoder-export" in line for line in script)


def test_slurm_script_is_valid_bash(tmp_path):
  script, _ = slurm_dry_run(*SLURM_ARGS, *OVERRIDES)
  path = tmp_path / "job.sbatch"
  path.write_text("\n".join(script) + "\n")
  result = subprocess.run(["bash", "-n", str(path)], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr


def test_slurm_script_file_and_job_name():
  _, submit = slurm_dry_run(*SLURM_ARGS, "--job-name=clip",
                            "--script-file=jobs/clip.sbatch")
  assert submit == ["sbatch", "jobs/clip.sbatch"]


def test_slurm_dry_run_writes_nothing(tmp_path):
  script_file = tmp_path / "job.sbatch"
  slurm_dry_run(*SLURM_ARGS, f"--script-file={script_file}")
  assert not script_file.exists()


@pytest.mark.parametrize("args, message", [
    (("--nodes=2", f"--config={CONFIG}", "--workdir=w"),
     "the following arguments are required: --gpus-per-node, --time"),
    (SLURM_ARGS + ("--nodes=0",), "--nodes must be 1 or more"),
    (SLURM_ARGS + ("--one-process-per=socket",), "invalid choice"),
    (SLURM_ARGS + ("--config=configs/missing.py",), "not found"),
    (SLURM_ARGS + ("--sbatch-option=qos",), "must be a single sbatch option"),
    (SLURM_ARGS + ("extra",), "unrecognized argument 'extra'"),
])
def test_slurm_rejects_invalid_arguments(args, message):
  result = run_launcher("slurm.py", *args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr


# Local launcher.


def parse_env_command(command):
  """Split ["env", "A=1", ..., program, ...] into variables and the rest."""
  assert command[0] == "env"
  variables = {}
  for index, argument in enumerate(command[1:], start=1):
    if "=" not in argument or argument.startswith("/"):
      return variables, command[index:]
    name, value = argument.split("=", 1)
    variables[name] = value
  raise AssertionError(f"no program in {command}")


def test_local_several_processes():
  commands = dry_run_commands(
      "local.py", f"--config={CONFIG}", "--workdir=runs/a",
      "--num-processes=3", "--devices-per-process=4", *OVERRIDES)
  assert len(commands) == 4
  train_bin = os.path.join(REPO, ".venv", "bin", "shared-encoder-train")
  coordinators = set()
  for process_id, command in enumerate(commands[:3]):
    variables, train = parse_env_command(command)
    assert train == [train_bin, f"--config={CONFIG}", "--workdir=runs/a",
                     *OVERRIDES]
    assert variables["SHARED_ENCODER_PROCESS_ID"] == str(process_id)
    assert variables["SHARED_ENCODER_NUM_PROCESSES"] == "3"
    assert variables["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4")
    coordinators.add(variables["SHARED_ENCODER_COORDINATOR"])
    if process_id == 0:
      assert (variables["JAX_COORDINATOR_BIND_ADDRESS"]
              == variables["SHARED_ENCODER_COORDINATOR"])
    else:
      assert "JAX_COORDINATOR_BIND_ADDRESS" not in variables
  [coordinator] = coordinators
  host, port = coordinator.rsplit(":", 1)
  assert host == "127.0.0.1"
  assert 0 < int(port) < 65536
  assert commands[3] == [
      os.path.join(REPO, ".venv", "bin", "shared-encoder-export"),
      "--workdir=runs/a", "--output=runs/a/export", "--overwrite"]


def test_local_single_process_like_make_demo():
  commands = dry_run_commands("local.py", f"--config={CONFIG}",
                              "--workdir=runs/a")
  venv_bin = os.path.join(REPO, ".venv", "bin")
  assert commands == [
      [os.path.join(venv_bin, "shared-encoder-train"), f"--config={CONFIG}",
       "--workdir=runs/a"],
      [os.path.join(venv_bin, "shared-encoder-export"), "--workdir=runs/a",
       "--output=runs/a/export", "--overwrite"],
  ]


def test_local_port_and_existing_xla_flags():
  env = {**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
  result = run_launcher("local.py", f"--config={CONFIG}", "--workdir=w",
                        "--num-processes=2", "--devices-per-process=2",
                        "--port=23456", "--skip-export", "--dry-run", env=env)
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  assert len(commands) == 2
  for command in commands:
    variables, _ = parse_env_command(command)
    assert variables["SHARED_ENCODER_COORDINATOR"] == "127.0.0.1:23456"
    assert variables["XLA_FLAGS"] == (
        "--xla_dump_to=/tmp/dump --xla_force_host_platform_device_count=2")


@pytest.mark.parametrize("args, message", [
    (("--workdir=w",), "the following arguments are required: --config"),
    (("--config=c", "--workdir=w", "--num-processes=0"),
     "--num-processes must be 1 or more"),
    (("--config=c", "--workdir=w", "--devices-per-process=0"),
     "--devices-per-process must be 1 or more"),
    (("--config=c", "--workdir=w", "--port=70000"), "--port must be"),
    (("--config=c", "--workdir=w", "--config.batch_size", "64"),
     "unrecognized argument '64'"),
])
def test_local_rejects_invalid_arguments(args, message):
  result = run_launcher("local.py", *args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr


def write_fake_venv(root, train_body):
  """Create ROOT/bin with stand-in train and export commands."""
  bin_dir = root / "bin"
  bin_dir.mkdir()
  for name, body in (("shared-encoder-train", train_body),
                     ("shared-encoder-export",
                      "print('export', sys.argv[1:])")):
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                    + textwrap.dedent(body) + "\n")
    path.chmod(0o755)


def test_local_prefixes_process_output(tmp_path):
  write_fake_venv(tmp_path, """
      print("hello from", os.environ["SHARED_ENCODER_PROCESS_ID"],
            os.environ["SHARED_ENCODER_NUM_PROCESSES"])
  """)
  result = run_launcher("local.py", f"--config={CONFIG}", "--workdir=w",
                        "--num-processes=2", f"--venv={tmp_path}")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert "[process 0] hello from 0 2" in lines
  assert "[process 1] hello from 1 2" in lines
  assert lines[-1] == ("export ['--workdir=w', '--output=w/export', "
                       "'--overwrite']")


def test_local_failure_stops_other_processes(tmp_path):
  write_fake_venv(tmp_path, """
      if os.environ["SHARED_ENCODER_PROCESS_ID"] == "1":
        sys.exit(3)
      time.sleep(60)
  """)
  result = run_launcher("local.py", f"--config={CONFIG}", "--workdir=w",
                        "--num-processes=3", f"--venv={tmp_path}")
  assert result.returncode == 3
  assert "process 1 exited with status 3" in result.stderr
  assert "export" not in result.stdout


# Multi-process settings of shared_encoder_jax.distributed.

_CLUSTER_VARIABLES = (
    distributed.COORDINATOR_ENV, distributed.NUM_PROCESSES_ENV,
    distributed.PROCESS_ID_ENV, "SLURM_JOB_ID", "SLURM_NTASKS",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JAX_COORDINATOR_ADDRESS")


@pytest.fixture
def clean_env(monkeypatch):
  for name in _CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.fixture
def initialize_calls(monkeypatch):
  """Record calls of jax.distributed.initialize instead of making them."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return calls


def set_explicit(env, coordinator=None, num_processes=None, process_id=None):
  for name, value in ((distributed.COORDINATOR_ENV, coordinator),
                      (distributed.NUM_PROCESSES_ENV, num_processes),
                      (distributed.PROCESS_ID_ENV, process_id)):
    if value is not None:
      env.setenv(name, value)


def set_slurm(env, num_tasks, process_id=0, srun=True):
  env.setenv("SLURM_JOB_ID", "4242")
  env.setenv("SLURM_NTASKS", str(num_tasks))
  if srun:
    env.setenv("SLURM_PROCID", str(process_id))
    env.setenv("SLURM_LOCALID", str(process_id % 4))
    env.setenv("SLURM_STEP_NODELIST", "gpu[001-002]")


def test_distributed_single_process_without_settings(clean_env,
                                                     initialize_calls):
  assert distributed.detect_process_group() is None
  assert distributed.initialize() is None
  assert not initialize_calls


def test_distributed_explicit_from_env(clean_env, initialize_calls):
  set_explicit(clean_env, "127.0.0.1:1234", "4", "2")
  group = distributed.initialize()
  assert group == distributed.ProcessGroup(
      distributed.EXPLICIT, "127.0.0.1:1234", 4, 2)
  assert initialize_calls == [(("127.0.0.1:1234", 4, 2), {})]


def test_distributed_arguments_override_env(clean_env):
  set_explicit(clean_env, "10.0.0.1:1", "8", "7")
  group = distributed.detect_process_group("10.0.0.2:2", 2, 1)
  assert group == distributed.ProcessGroup(
      distributed.EXPLICIT, "10.0.0.2:2", 2, 1)


def test_distributed_coordinator_without_process_id(clean_env):
  set_explicit(clean_env, "127.0.0.1:1234", "2")
  with pytest.raises(distributed.DistributedSettingsError) as error:
    distributed.detect_process_group()
  message = str(error.value)
  assert "process_id (SHARED_ENCODER_PROCESS_ID) is missing" in message
  assert ("coordinator_address (SHARED_ENCODER_COORDINATOR) and "
          "num_processes (SHARED_ENCODER_NUM_PROCESSES) are set") in message
  assert "Set all three variables" in message


def test_distributed_coordinator_alone_names_both_missing(clean_env):
  with pytest.raises(ValueError) as error:
    distributed.detect_process_group(coordinator_address="127.0.0.1:1234")
  assert str(error.value).startswith(
      "Incomplete multi-process settings: num_processes "
      "(SHARED_ENCODER_NUM_PROCESSES) and process_id "
      "(SHARED_ENCODER_PROCESS_ID) are missing")


@pytest.mark.parametrize("coordinator, num_processes, process_id, message", [
    ("127.0.0.1:1234", "two", "0", "Invalid num_processes "
     "(SHARED_ENCODER_NUM_PROCESSES) 'two': expected an integer"),
    ("127.0.0.1:1234", "2", "x", "Invalid process_id "
     "(SHARED_ENCODER_PROCESS_ID) 'x'"),
    ("127.0.0.1:1234", "2", "2", "Invalid process_id 2: expected 0 to 1"),
    ("127.0.0.1:1234", "0", "0", "Invalid num_processes 0"),
    ("127.0.0.1", "2", "0", "Invalid coordinator address '127.0.0.1'"),
    ("127.0.0.1:99999", "2", "0", "expected host:port"),
])
def test_distributed_invalid_explicit_settings(clean_env, coordinator,
                                               num_processes, process_id,
                                               message):
  set_explicit(clean_env, coordinator, num_processes, process_id)
  with pytest.raises(distributed.DistributedSettingsError,
                     match=re.escape(message)):
    distributed.detect_process_group()


def test_distributed_one_process_needs_no_coordinator(clean_env,
                                                      initialize_calls):
  set_explicit(clean_env, num_processes="1")
  set_slurm(clean_env, num_tasks=4, srun=False)
  assert distributed.initialize() is None
  assert not initialize_calls


def test_distributed_slurm_with_several_tasks(clean_env, initialize_calls):
  set_slurm(clean_env, num_tasks=8, process_id=5)
  group = distributed.initialize()
  assert group == distributed.ProcessGroup(distributed.SLURM, None, 8, 5)
  assert initialize_calls == [((), {})]


def test_distributed_slurm_with_one_task(clean_env, initialize_calls):
  set_slurm(clean_env, num_tasks=1)
  assert distributed.initialize() is None
  assert not initialize_calls


def test_distributed_slurm_without_srun(clean_env):
  set_slurm(clean_env, num_tasks=8, srun=False)
  with pytest.raises(distributed.DistributedSettingsError,
                     match="not started by srun"):
    distributed.detect_process_group()


def test_distributed_explicit_settings_take_precedence(clean_env,
                                                       initialize_calls):
  set_slurm(clean_env, num_tasks=8, process_id=5)
  set_explicit(clean_env, "127.0.0.1:1234", "2", "1")
  group = distributed.initialize()
  assert group.source == distributed.EXPLICIT
  assert initialize_calls == [(("127.0.0.1:1234", 2, 1), {})]


def test_distributed_already_initialized(clean_env, initialize_calls,
                                         monkeypatch):
  set_explicit(clean_env, "127.0.0.1:1234", "2", "0")
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert distributed.initialize().process_id == 0
  assert not initialize_calls


def write_fake_gcloud(directory, describe_output, describe_status):
  """Put a stand-in gcloud on PATH that records its arguments."""
  log = directory / "gcloud.log"
  script = directory / "gcloud"
  script.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import json, shutil, sys
      with open({str(log)!r}, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
      if sys.argv[4] == "scp":
        shutil.copy(sys.argv[5], {str(directory / "copied.tar.gz")!r})
      if sys.argv[4] == "describe":
        if {describe_status}:
          sys.stderr.write("ERROR: NOT_FOUND: Resource was not found\\n")
        else:
          print({describe_output!r})
        sys.exit({describe_status})
  """))
  script.chmod(0o755)
  return log


def run_tpu_pod_with_fake_gcloud(tmp_path, describe_output, describe_status):
  log = write_fake_gcloud(tmp_path, describe_output, describe_status)
  env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
         "TMPDIR": str(tmp_path)}
  result = run_launcher("tpu_pod.py", *TPU_LAUNCH_ARGS, "--reuse", env=env)
  verbs = []
  if log.exists():
    verbs = [json.loads(line)[3] for line in log.read_text().splitlines()]
  return result, verbs


@pytest.mark.parametrize("describe_output, describe_status, verbs", [
    ("READY\tv4-32", 0, ["describe", "scp", "ssh", "ssh"]),
    ("PREEMPTED\tv4-32", 0,
     ["describe", "delete", "create", "scp", "ssh", "ssh"]),
    ("", 1, ["describe", "create", "scp", "ssh", "ssh"]),
])
def test_tpu_pod_reuse_follows_state(tmp_path, describe_output,
                                     describe_status, verbs):
  result, called = run_tpu_pod_with_fake_gcloud(tmp_path, describe_output,
                                                describe_status)
  assert result.returncode == 0, result.stderr
  assert called == verbs
  assert [path.name for path in tmp_path.glob("*.tar.gz")] == [
      "copied.tar.gz"]


def test_tpu_pod_archive_content(tmp_path):
  result, _ = run_tpu_pod_with_fake_gcloud(tmp_path, "READY\tv4-32", 0)
  assert result.returncode == 0, result.stderr
  with tarfile.open(tmp_path / "copied.tar.gz") as archive:
    names = archive.getnames()
  for name in ("setup.cfg", "pyproject.toml", "constraints.txt", "README.md",
               "configs/pmc_oa_shared_feature.py",
               "shared_encoder_jax/distributed.py"):
    assert name in names
  assert not [name for name in names if "__pycache__" in name]
  assert not [name for name in names if name.startswith(("tests", "launch"))]


@pytest.mark.parametrize("describe_output, message", [
    ("READY\tv4-8", "is a v4-8, not the requested v4-32"),
    ("CREATING\tv4-32", "is in state CREATING, not READY"),
])
def test_tpu_pod_reuse_rejects_unusable_vm(tmp_path, describe_output,
                                           message):
  result, called = run_tpu_pod_with_fake_gcloud(tmp_path, describe_output, 0)
  assert result.returncode == 1
  assert message in result.stderr
  assert called == ["describe"]


def test_slurm_writes_and_submits_script(tmp_path):
  fake_bin = tmp_path / "fake_bin"
  fake_bin.mkdir()
  sbatch = fake_bin / "sbatch"
  sbatch.write_text(f"#!{sys.executable}\nimport sys\n"
                    "print('Submitted batch job 7', sys.argv[1:])\n")
  sbatch.chmod(0o755)
  venv = tmp_path / "venv"
  venv.mkdir()
  write_fake_venv(venv, "")
  script_file = tmp_path / "job.sbatch"
  args = (*SLURM_ARGS, f"--venv={venv}", f"--script-file={script_file}")
  env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
  result = run_launcher("slurm.py", *args, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout == f"Submitted batch job 7 ['{script_file}']\n"
  script, _ = slurm_dry_run(*args)
  assert script_file.read_text() == "\n".join(script) + "\n"

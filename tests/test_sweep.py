"""Sweeps: grid expansion, the runner in launch/sweep.py and the report.

The runner runs as a subprocess, the way users start it, with a fake train
command: a small script that writes the files the trainer writes. No test
trains a model.
"""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import sweep as sweep_lib
from shared_encoder_jax import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "pmc_oa_shared_feature.py") + (
    ":small")
RUN_NAMES = ["separate-f0.5-s0", "separate-f0.5-s1", "separate-f1-s0",
             "separate-f1-s1", "shared-f0.5-s0", "shared-f0.5-s1",
             "shared-f1-s0", "shared-f1-s1"]
TINY = {f"model.{field}": value
        for field, value in config_lib.MODEL_SIZES["tiny"].items()}
TINY["model.modality_dim"] = 8

SWEEP_TEMPLATE = """
import ml_collections
from shared_encoder_jax import sweep as sweep_lib


def get_sweep(arg=""):
  sweep = sweep_lib.new_sweep()
  sweep.name = "demo"
  sweep.base_config = {base_config!r}
  sweep.fixed = {fixed!r}
  sweep.axes = {{
      "encoder": {{
          "separate": {{"model.shared_layers": "none",
                        "model.modality": "none"}},
          "shared": {{"model.shared_layers": "all"}},
      }},
      "fraction": {{"f0.5": {{"data.data_fraction": 0.5}},
                    "f1": {{"data.data_fraction": 1.0}}}},
      "seed": {{"s0": {{"seed": 0}}, "s1": {{"seed": 1}}}},
  }}
{extra}
  return sweep
"""

# Stands in for shared-encoder-train: records its arguments, then writes a
# checkpoint and a test result. FAKE_TRAIN_FAIL and FAKE_TRAIN_WAIT make it
# fail or wait for SIGTERM instead.
FAKE_TRAIN = """
import json, os, signal, sys, time

args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
workdir = args["workdir"]
name = os.path.basename(workdir)
checkpoints = os.path.join(workdir, "checkpoints")
call = {"argv": sys.argv[1:], "run": name, "start": time.time(),
        "checkpoints_before": sorted(os.listdir(checkpoints))
        if os.path.isdir(checkpoints) else []}
print("fake training in", workdir, flush=True)

def record(**fields):
  call.update(fields, end=time.time())
  with open(os.environ["FAKE_TRAIN_CALLS"], "a") as f:
    f.write(json.dumps(call) + "\\n")

if name in os.environ.get("FAKE_TRAIN_FAIL", "").split(","):
  print("fake failure: out of memory", flush=True)
  record(exit=3)
  sys.exit(3)
if os.environ.get("FAKE_TRAIN_WAIT"):
  def stop(signum, frame):
    os.makedirs(os.path.join(checkpoints, "7"), exist_ok=True)
    record(exit=0, signal=signum)
    sys.exit(0)
  signal.signal(signal.SIGTERM, stop)
  open(os.path.join(workdir, "started"), "w").close()
  # Gives up after 30 s, so that a failing test leaves no process behind.
  time.sleep(30)
  record(exit=1)
  sys.exit(1)
time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
os.makedirs(os.path.join(checkpoints, "10"), exist_ok=True)
os.makedirs(os.path.join(workdir, "evaluation"), exist_ok=True)
seed = int(args.get("config.seed", "0"))
result = {"split": "test", "step": 10, "num_pairs": 100,
          "chance": {"recall@10": 0.1},
          "image_to_text": {"recall@10": 0.5 + seed / 10},
          "text_to_image": {"recall@10": 0.3}}
with open(os.path.join(workdir, "evaluation", "test_step_10.json"),
          "w") as f:
  json.dump(result, f)
record(exit=0)
"""


def write_sweep(tmp_path, extra="", fixed=None, name="sweep.py"):
  path = tmp_path / name
  body = SWEEP_TEMPLATE.format(base_config=BASE_CONFIG,
                               fixed={"total_steps": 10} if fixed is None
                               else fixed,
                               extra=textwrap.indent(textwrap.dedent(extra),
                                                     "  "))
  path.write_text(body)
  return str(path)


@pytest.fixture
def fake_train(tmp_path):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  return shlex.join([sys.executable, str(script)])


def run_sweep_cli(*args, env=None, timeout=60):
  environment = {**os.environ, **(env or {})}
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "sweep.py"), *args],
      cwd=REPO, env=environment, capture_output=True, text=True,
      timeout=timeout)


def read_calls(path):
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()]


def make_done(workdir, step=5):
  (workdir / "evaluation").mkdir(parents=True)
  (workdir / "evaluation" / f"test_step_{step}.json").write_text(json.dumps({
      "split": "test", "step": step, "num_pairs": 100,
      "chance": {"recall@10": 0.1},
      "image_to_text": {"recall@10": 0.9},
      "text_to_image": {"recall@10": 0.7}}))


# Grid expansion.


def test_grid_expands_in_axis_order(tmp_path):
  sweep = sweep_lib.load_sweep(write_sweep(tmp_path))

  runs = sweep.runs()

  assert [run.name for run in runs] == RUN_NAMES
  assert runs[0].labels == {"encoder": "separate", "fraction": "f0.5",
                            "seed": "s0"}
  assert runs[0].overrides == {
      "total_steps": 10, "model.shared_layers": "none",
      "model.modality": "none", "data.data_fraction": 0.5, "seed": 0}
  assert sweep.variant(runs[-1]) == "shared"


def test_exclude_rules_drop_combinations(tmp_path):
  extra = """
  sweep.exclude = [{"encoder": "separate", "fraction": ["f0.5"]},
                   {"seed": "s1", "fraction": "f1"}]
  """
  sweep = sweep_lib.load_sweep(write_sweep(tmp_path, extra))

  names = [run.name for run in sweep.runs()]

  assert names == ["separate-f1-s0", "shared-f0.5-s0", "shared-f0.5-s1",
                   "shared-f1-s0"]


def test_exclude_function_drops_combinations(tmp_path):
  extra = """
  sweep.exclude = lambda labels: labels["seed"] == "s1"
  """
  sweep = sweep_lib.load_sweep(write_sweep(tmp_path, extra))

  names = [run.name for run in sweep.runs()]

  assert names == [name for name in RUN_NAMES if name.endswith("s0")]


def test_exclude_unknown_label_rejected(tmp_path):
  extra = """
  sweep.exclude = [{"encoder": "shared_token"}]
  """
  with pytest.raises(sweep_lib.SweepError, match="shared_token"):
    sweep_lib.load_sweep(write_sweep(tmp_path, extra))


def test_field_set_twice_rejected(tmp_path):
  sweep = sweep_lib.load_sweep(write_sweep(
      tmp_path, fixed={"model.modality": "token"}))

  with pytest.raises(sweep_lib.SweepError,
                     match="model.modality is set by fixed and by axis "
                     "'encoder'"):
    sweep.runs()


def test_nested_override_dicts_flatten(tmp_path):
  sweep = sweep_lib.load_sweep(write_sweep(
      tmp_path, fixed={"model": {"depth": 2, "width": 64}}))

  overrides = sweep.runs()[0].overrides

  assert overrides["model.depth"] == 2
  assert overrides["model.width"] == 64


def test_default_configdict_gets_hint(tmp_path):
  path = tmp_path / "plain.py"
  path.write_text(textwrap.dedent("""
      import ml_collections

      def get_sweep(arg=""):
        sweep = ml_collections.ConfigDict()
        sweep.axes = {"seed": {"s0": {"data.fraction_seed": 0}}}
        return sweep
      """))

  with pytest.raises(sweep_lib.SweepError, match="new_sweep"):
    sweep_lib.load_sweep(str(path))


def test_unknown_sweep_field_rejected(tmp_path):
  with pytest.raises(sweep_lib.SweepError, match="exlude"):
    sweep_lib.load_sweep(write_sweep(tmp_path, "sweep.exlude = []"))


def test_unknown_override_field_names_run(tmp_path):
  sweep = sweep_lib.load_sweep(write_sweep(
      tmp_path, fixed={"optimizer.learning_rat": 1e-3}))
  run = sweep.runs()[0]

  with pytest.raises(sweep_lib.SweepError,
                     match="run 'separate-f0.5-s0': override "
                     "optimizer.learning_rat"):
    sweep_lib.resolve_config(sweep.base_config, run.overrides, run.name)


def test_invalid_override_value_names_field():
  with pytest.raises(sweep_lib.SweepError,
                     match="run 'r': model.shared_layers='0-9' names layer"):
    sweep_lib.resolve_config(BASE_CONFIG, {"model.shared_layers": "0-9"}, "r")


def test_wrong_override_type_names_field():
  with pytest.raises(sweep_lib.SweepError,
                     match="override total_steps='ten' has the wrong type"):
    sweep_lib.resolve_config(BASE_CONFIG, {"total_steps": "ten"}, "r")


def test_layer_helpers_list_shared_layers():
  early = sweep_lib.early_specific_layers(1, 4)
  late = sweep_lib.late_specific_layers(2, 4)

  assert config_lib.parse_shared_layers(early, 4) == (1, 2, 3)
  assert config_lib.parse_shared_layers(late, 4) == (0, 1)
  assert sweep_lib.early_specific_layers(0, 4) == "all"
  assert sweep_lib.late_specific_layers(4, 4) == "none"
  with pytest.raises(sweep_lib.SweepError, match="depth 4"):
    sweep_lib.late_specific_layers(5, 4)


def test_example_sweep_expands_and_validates(monkeypatch):
  monkeypatch.chdir(REPO)

  sweep = sweep_lib.load_sweep("configs/sweeps/example.py")
  names = [run.name for run in sweep.runs()]
  layers = sweep_lib.load_sweep("configs/sweeps/example.py:layers")
  layer_runs = layers.runs()

  assert len(names) == 8
  assert names[0] == "separate-f0.25-s0"
  assert names[-1] == "shared_feature-f1-s1"
  assert len(layer_runs) == 40  # (1 separate + 3 x 3 shared) x 2 x 2
  assert not [run.name for run in layer_runs
              if run.name.startswith(("separate-feature", "separate-token"))]
  for run in [*sweep.runs(), *layer_runs]:
    sweep_lib.resolve_config(sweep.base_config, run.overrides, run.name)


def test_command_flags_match_resolved_config(tmp_path):
  fixed = {**TINY, "recall_ks": (1, 5), "optimizer.learning_rate": 2e-3,
           "data.augment.random_resized_crop": True,
           "data.builder_config.manifest": "my list.csv"}
  sweep = sweep_lib.load_sweep(write_sweep(tmp_path, fixed=fixed))
  run = sweep.runs()[5]
  expected = sweep_lib.resolve_config(sweep.base_config, run.overrides,
                                      run.name)
  command = sweep_lib.train_command(["train"], sweep.base_config, "w",
                                    run.overrides)
  # Parses the flags the way shared-encoder-train does.
  parse = textwrap.dedent("""
      import json, sys
      from absl import flags
      from ml_collections import config_flags
      argv = json.loads(sys.argv[1])
      config = config_flags.DEFINE_config_file(
          "config", None, "", lock_config=True, sys_argv=argv)
      flags.DEFINE_string("workdir", None, "")
      flags.FLAGS(argv)
      print(config.value.to_json())
      """)

  result = subprocess.run([sys.executable, "-c", parse, json.dumps(command)],
                          capture_output=True, text=True, timeout=60)

  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == json.loads(expected.to_json())


# The runner.


def test_run_trains_every_new_run(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  calls = tmp_path / "calls.jsonl"

  result = run_sweep_cli("run", sweep_file, f"--root={root}",
                         f"--train-command={fake_train}",
                         env={"FAKE_TRAIN_CALLS": str(calls)})

  assert result.returncode == 0, result.stdout + result.stderr
  assert sorted(call["run"] for call in read_calls(calls)) == RUN_NAMES
  assert result.stdout.count("done   [") == 8
  assert "8 finished now" in result.stdout
  workdir = root / "demo" / "shared-f1-s1"
  record = json.loads((workdir / "sweep_run.json").read_text())
  assert record["labels"] == {"encoder": "shared", "fraction": "f1",
                              "seed": "s1"}
  assert record["overrides"]["seed"] == 1
  assert record["config"]["data"]["data_fraction"] == 1.0
  assert record["config"]["model"]["shared_layers"] == "all"
  assert record["attempts"][-1]["exit_status"] == 0
  assert "fake training in" in (workdir / "train.log").read_text()


def test_done_skipped_partial_resumed(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  calls = tmp_path / "calls.jsonl"
  make_done(root / "demo" / "separate-f0.5-s0")
  (root / "demo" / "separate-f0.5-s1" / "checkpoints" / "3").mkdir(
      parents=True)

  result = run_sweep_cli("run", sweep_file, f"--root={root}",
                         f"--train-command={fake_train}",
                         env={"FAKE_TRAIN_CALLS": str(calls)})

  assert result.returncode == 0, result.stdout + result.stderr
  by_run = {call["run"]: call for call in read_calls(calls)}
  assert "separate-f0.5-s0" not in by_run
  assert "skip   [1/8] separate-f0.5-s0: done (test at step 5)" in (
      result.stdout)
  resumed = by_run["separate-f0.5-s1"]
  assert resumed["checkpoints_before"] == ["3"]
  workdir = root / "demo" / "separate-f0.5-s1"
  assert resumed["argv"] == [
      f"--config={BASE_CONFIG}", f"--workdir={workdir}",
      "--config.total_steps=10", "--config.model.shared_layers=none",
      "--config.model.modality=none", "--config.data.data_fraction=0.5",
      "--config.seed=1"]
  assert "1 already done" in result.stdout


def test_failed_run_reported_sweep_continues(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  calls = tmp_path / "calls.jsonl"

  result = run_sweep_cli(
      "run", sweep_file, f"--root={root}", f"--train-command={fake_train}",
      env={"FAKE_TRAIN_CALLS": str(calls),
           "FAKE_TRAIN_FAIL": "separate-f1-s0"})

  assert result.returncode == 1
  assert len(read_calls(calls)) == 8
  assert "FAILED [3/8] separate-f1-s0" in result.stdout
  assert "fake failure: out of memory" in result.stdout
  assert "1 failed (separate-f1-s0)" in result.stdout
  record = json.loads(
      (root / "demo" / "separate-f1-s0" / "sweep_run.json").read_text())
  assert record["attempts"][-1]["exit_status"] == 3


def test_dry_run_lists_runs_only(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  make_done(root / "demo" / "shared-f1-s0")
  (root / "demo" / "shared-f1-s1" / "checkpoints" / "4").mkdir(parents=True)

  result = run_sweep_cli("run", sweep_file, f"--root={root}",
                         f"--train-command={fake_train}", "--dry-run")

  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert "(1 done, 1 partial, 6 new)" in lines[0]
  assert "[7/8] shared-f1-s0: done (test at step 5), skipped" in lines
  assert ("[8/8] shared-f1-s1: partial (checkpoint at step 4), resumes"
          in lines)
  assert "[1/8] separate-f0.5-s0: new, starts" in lines
  commands = [shlex.split(line) for line in lines if line.startswith("  ")]
  assert len(commands) == 7
  assert f"--workdir={root}/demo/separate-f0.5-s0" in commands[0]
  assert sorted(os.listdir(root / "demo")) == ["shared-f1-s0",
                                               "shared-f1-s1"]


def test_parallel_runs_overlap(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  calls = tmp_path / "calls.jsonl"

  result = run_sweep_cli(
      "run", sweep_file, f"--root={tmp_path / 'root'}", "--parallel=2",
      f"--train-command={fake_train}",
      env={"FAKE_TRAIN_CALLS": str(calls), "FAKE_TRAIN_SECONDS": "0.3"})

  assert result.returncode == 0, result.stdout + result.stderr
  intervals = [(call["start"], call["end"]) for call in read_calls(calls)]
  concurrent = [sum(start <= moment < end for start, end in intervals)
                for moment, _ in intervals]
  assert max(concurrent) == 2


def test_sigint_stops_runs_at_checkpoint(tmp_path, fake_train):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  calls = tmp_path / "calls.jsonl"
  first = root / "demo" / "separate-f0.5-s0"
  runner = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "launch", "sweep.py"), "run",
       sweep_file, f"--root={root}", f"--train-command={fake_train}",
       "--stop-timeout=10"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "FAKE_TRAIN_CALLS": str(calls),
           "FAKE_TRAIN_WAIT": "1"})
  try:
    deadline = time.monotonic() + 30
    while not (first / "started").exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    output, _ = runner.communicate(timeout=30)
  finally:
    if runner.poll() is None:
      runner.kill()

  assert runner.returncode == 130, output
  assert [call["signal"] for call in read_calls(calls)] == [signal.SIGTERM]
  assert (first / "checkpoints" / "7").is_dir()
  assert "checkpoint at step 7" in output
  assert "7 not started" in output
  assert sweep_lib.run_status(str(first)).state == sweep_lib.STATE_PARTIAL


def test_status_lists_each_state(tmp_path):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  make_done(root / "demo" / "separate-f0.5-s0")
  (root / "demo" / "separate-f0.5-s1" / "checkpoints" / "4").mkdir(
      parents=True)

  result = run_sweep_cli("status", sweep_file, f"--root={root}")

  assert result.returncode == 0, result.stderr
  rows = [line.split() for line in result.stdout.splitlines()]
  assert ["separate-f0.5-s0", "done", "5", "0.8000", "-"] in rows
  assert ["separate-f0.5-s1", "partial", "4", "-", "-"] in rows
  assert ["shared-f1-s1", "new", "-", "-", "-"] in rows
  assert "1 done, 1 partial, 6 new." in result.stdout


def test_changed_overrides_rejected_on_rerun(tmp_path, fake_train):
  root = tmp_path / "root"
  calls = tmp_path / "calls.jsonl"
  env = {"FAKE_TRAIN_CALLS": str(calls), "FAKE_TRAIN_FAIL": RUN_NAMES[0]}
  first = run_sweep_cli("run", write_sweep(tmp_path), f"--root={root}",
                        f"--train-command={fake_train}", env=env)
  changed = write_sweep(tmp_path, fixed={"total_steps": 20})

  result = run_sweep_cli("run", changed, f"--root={root}",
                         f"--train-command={fake_train}", env=env)

  assert first.returncode == 1
  assert result.returncode == 2
  assert "total_steps 10 -> 20" in result.stderr


def test_emit_slurm_writes_launcher_script(tmp_path):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"
  make_done(root / "demo" / "separate-f0.5-s0")

  result = run_sweep_cli("run", sweep_file, f"--root={root}",
                         "--emit=slurm", "--", "--nodes=1",
                         "--gpus-per-node=2", "--time=1:00:00")

  assert result.returncode == 0, result.stderr
  script = root / "demo" / "slurm_jobs.sh"
  text = script.read_text()
  commands = [shlex.split(line.removesuffix(" || status=1"))
              for line in text.splitlines()
              if line.endswith("|| status=1")]
  assert len(commands) == 7
  workdir = root / "demo" / "shared-f1-s1"
  assert commands[-1][1] == os.path.join(REPO, "launch", "slurm.py")
  assert "--job-name=demo-shared-f1-s1" in commands[-1]
  assert f"--script-file={workdir}/slurm.sbatch" in commands[-1]
  assert f"--workdir={workdir}" in commands[-1]
  assert "--config.seed=1" in commands[-1]
  assert "# [1] separate-f0.5-s0: done, left out" in text
  assert (workdir / "sweep_run.json").exists()
  syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True,
                          text=True)
  assert syntax.returncode == 0, syntax.stderr


def test_emit_dry_run_prints_sbatch_scripts(tmp_path):
  sweep_file = write_sweep(tmp_path)
  root = tmp_path / "root"

  result = run_sweep_cli("run", sweep_file, f"--root={root}",
                         "--emit=slurm", "--dry-run", "--", "--nodes=1",
                         "--gpus-per-node=2", "--time=1:00:00")

  assert result.returncode == 0, result.stderr
  assert result.stdout.count("#SBATCH --nodes=1") == 8
  assert "#SBATCH --job-name=demo-separate-f0.5-s0" in result.stdout
  assert not root.exists()


def test_emit_rejects_bad_launcher_options(tmp_path):
  result = run_sweep_cli("run", write_sweep(tmp_path),
                         f"--root={tmp_path / 'root'}", "--emit=slurm", "--",
                         "--nodes=1")

  assert result.returncode == 2
  assert "--gpus-per-node" in result.stderr


def test_launcher_options_need_emit(tmp_path):
  result = run_sweep_cli("run", write_sweep(tmp_path), "--dry-run", "--",
                         "--nodes=1")

  assert result.returncode == 2
  assert "need --emit" in result.stderr


# The report.

# (image->text, text->image) Recall@10 of each finished run; shared-f1-s1
# has only a checkpoint.
RECALLS = {
    "separate-f0.5-s0": (0.40, 0.50), "separate-f0.5-s1": (0.50, 0.60),
    "separate-f1-s0": (0.60, 0.60), "separate-f1-s1": (0.70, 0.80),
    "shared-f0.5-s0": (0.55, 0.65), "shared-f0.5-s1": (0.60, 0.70),
    "shared-f1-s0": (0.80, 0.90),
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
  captions = [f"a {size} nodule in the {side} {zone} zone"
              for size in ("small", "large", "dense")
              for side in ("left", "right")
              for zone in ("upper", "middle", "lower")]
  tokenizer = tokenizer_lib.train_tokenizer(captions, 60, 16)
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  tokenizer.save(str(path))
  return path


@pytest.fixture
def finished_sweep(tmp_path, tokenizer_file):
  """A sweep whose runs wrote what the trainer writes, with known values."""
  sweep = sweep_lib.load_sweep(write_sweep(tmp_path, fixed=TINY))
  root = tmp_path / "root"
  for run in sweep.runs():
    workdir = root / "demo" / run.name
    (workdir / "checkpoints" / "20").mkdir(parents=True)
    if run.name not in RECALLS:
      continue
    config = sweep_lib.resolve_config(sweep.base_config, run.overrides)
    (workdir / "config.json").write_text(config.to_json())
    (workdir / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
    image_to_text, text_to_image = RECALLS[run.name]
    (workdir / "evaluation").mkdir()
    (workdir / "evaluation" / "test_step_20.json").write_text(json.dumps({
        "split": "test", "step": 20, "num_pairs": 1000, "loss": 2.5,
        "chance": {"recall@10": 0.01},
        "image_to_text": {"recall@10": image_to_text, "median_rank": 4.0},
        "text_to_image": {"recall@10": text_to_image, "median_rank": 6.0}}))
    # Validation at steps 10 and 20, where step 20 is the test value and
    # step 10 half of it; step 10 appears twice, as after a resume, and the
    # later line counts.
    lines = [{"step": 10, "split": "validation",
              "image_to_text/recall_at_10": 0.0,
              "text_to_image/recall_at_10": 0.0},
             {"step": 10, "split": "train", "loss": 3.0},
             {"step": 10, "split": "validation",
              "image_to_text/recall_at_10": image_to_text / 2,
              "text_to_image/recall_at_10": text_to_image / 2},
             {"step": 20, "split": "validation",
              "image_to_text/recall_at_10": image_to_text,
              "text_to_image/recall_at_10": text_to_image}]
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines))
  return sweep, root


def test_report_table_matches_hand_computed(finished_sweep, tmp_path):
  sweep, root = finished_sweep

  report = sweep_lib.write_report(sweep, str(root), str(tmp_path / "out"))

  rows = [line for line in report.markdown.splitlines()
          if line.startswith("| ")]
  # separate 0.5: 0.45, 0.55; 1: 0.60, 0.75. shared 0.5: 0.60, 0.65;
  # 1: 0.85. Sample standard deviations: 0.0707, 0.1061, 0.0354.
  assert rows[0] == "| variant | fraction 0.5 | fraction 1 |"
  assert rows[1] == ("| separate | 50.00 ± 7.07 (2/2) | "
                     "67.50 ± 10.61 (2/2) |")
  assert rows[2] == "| shared | 62.50 ± 3.54 (2/2) | 85.00 (1/2) |"
  assert "Chance (%): 1.00." in report.markdown


def test_report_csv_holds_raw_numbers(finished_sweep, tmp_path):
  sweep, root = finished_sweep

  sweep_lib.write_report(sweep, str(root), str(tmp_path / "out"))

  with open(tmp_path / "out" / "results.csv") as f:
    rows = {(row["variant"], row["fraction"]): row
            for row in csv.DictReader(f)}
  separate = rows[("separate", "1")]
  assert float(separate["mean"]) == pytest.approx(0.675)
  assert float(separate["std"]) == pytest.approx(0.10606602, rel=1e-6)
  assert separate["num_seeds"] == "2"
  assert separate["seeds"] == "s0 s1"
  assert separate["encoder"] == "separate"
  assert float(separate["chance"]) == pytest.approx(0.01)
  shared = rows[("shared", "1")]
  assert shared["std"] == ""
  assert shared["num_seeds"] == "1"
  assert shared["planned_runs"] == "2"


def test_report_other_metric(finished_sweep, tmp_path):
  sweep, root = finished_sweep

  report = sweep_lib.write_report(sweep, str(root), str(tmp_path / "out"),
                                  metric="image_to_text/recall@10")
  median = sweep_lib.write_report(sweep, str(root), str(tmp_path / "rank"),
                                  metric="mean_median_rank")

  assert "| separate | 45.00 ± 7.07 (2/2) | 65.00 ± 7.07 (2/2) |" in (
      report.markdown)
  assert "| shared | 5 ± 0 (2/2) | 5 (1/2) |" in median.markdown


def test_unknown_metric_lists_keys(finished_sweep):
  sweep, root = finished_sweep

  with pytest.raises(sweep_lib.SweepError, match="recall@10"):
    sweep_lib.collect_results(sweep, str(root), metric="mean_recall@3")


def test_report_counts_parameters_per_variant(finished_sweep, tmp_path):
  sweep, root = finished_sweep

  report = sweep_lib.write_report(sweep, str(root), str(tmp_path / "out"))

  separate, shared = report.counts["separate"], report.counts["shared"]
  assert separate["shared_blocks"] == 0
  assert separate["image_blocks"] == separate["text_blocks"] > 0
  assert shared["image_blocks"] == shared["text_blocks"] == 0
  assert shared["shared_blocks"] == separate["image_blocks"]
  for counts in (separate, shared):
    assert counts["total"] == sum(
        counts[key] for key in ("shared_blocks", "image_blocks",
                                "text_blocks", "other"))
  assert f"| separate | {separate['total']:,} | 0 |" in report.markdown


def test_parameters_missing_tokenizer_shown_na(finished_sweep, tmp_path):
  sweep, root = finished_sweep
  for name in RECALLS:
    if name.startswith("shared"):
      (root / "demo" / name / "tokenizer.model").unlink()

  report = sweep_lib.write_report(sweep, str(root), str(tmp_path / "out"))

  assert report.counts["shared"] is None
  assert report.counts["separate"] is not None
  assert "| shared | n/a | | | | |" in report.markdown


def test_validation_curves_average_seeds(finished_sweep):
  sweep, root = finished_sweep
  results = sweep_lib.collect_results(sweep, str(root))

  fraction, curves = sweep_lib.validation_curves(results, "mean_recall@10")

  assert fraction == 1.0
  assert sorted(curves) == ["separate", "shared"]
  assert curves["separate"][20] == pytest.approx([0.60, 0.75])
  assert curves["separate"][10] == pytest.approx([0.30, 0.375])
  assert curves["shared"][20] == pytest.approx([0.85])


def test_report_cli_writes_png_plots(finished_sweep, tmp_path):
  sweep, root = finished_sweep
  output = tmp_path / "out"

  result = run_sweep_cli("report", sweep.spec, f"--root={root}",
                         f"--output={output}")

  assert result.returncode == 0, result.stderr
  assert "| separate | 50.00 ± 7.07 (2/2) |" in result.stdout
  for name in ("metric_vs_fraction.png", "validation_curves.png"):
    data = (output / name).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
    assert len(data) > 10_000, name
  markdown = (output / "report.md").read_text()
  assert "![Test metric against data fraction](metric_vs_fraction.png)" in (
      markdown)
  assert (output / "parameters.csv").read_text().startswith(
      "variant,total,shared_blocks")


def test_report_without_results_fails(tmp_path):
  result = run_sweep_cli("report", write_sweep(tmp_path),
                         f"--root={tmp_path / 'root'}",
                         f"--output={tmp_path / 'out'}")

  assert result.returncode == 1
  assert "no run of sweep demo" in result.stderr

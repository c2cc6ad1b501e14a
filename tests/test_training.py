"""End-to-end: train on the small synthetic dataset, resume, stop, export."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import tiny_config
from shared_encoder_jax import bundle as bundle_lib
from shared_encoder_jax import checkpointing
from shared_encoder_jax import export as export_lib
from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import metric_logging
from shared_encoder_jax import preprocessing
from shared_encoder_jax import train as train_lib
from shared_encoder_jax.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(data_dir):
  config = tiny_config()
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="module")
def trained_workdir(synthetic_data_dir, tmp_path_factory):
  """A workdir trained for 12 steps without interruption."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  metrics = train_lib.train_and_evaluate(config_for(synthetic_data_dir),
                                         workdir)
  return workdir, metrics


def test_run_writes_every_output(trained_workdir):
  workdir, metrics = trained_workdir
  for name in ("config.json", "provenance.json", "tokenizer.model",
               "metrics.jsonl", "evaluation/test_step_12.json",
               "evaluation/validation_step_6.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert metrics["num_pairs"] == 1000
  assert metrics["chance"]["recall@10"] == 0.01
  assert 0 <= metrics["image_to_text"]["recall@10"] <= 1
  with open(os.path.join(workdir, "provenance.json")) as f:
    launch = json.load(f)[0]
  assert launch["config"]["model"]["width"] == 32
  assert len(launch["data"]["sha256"]) == 64
  assert "jax" in launch["packages"]
  assert sorted(metric_logging.read_metrics(workdir)) == list(range(1, 13))


INTERRUPT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, "tests")
    import conftest
    from shared_encoder_jax import checkpointing
    from shared_encoder_jax import metric_logging
    from shared_encoder_jax import train

    data_dir, workdir, action, delay = sys.argv[1:5]
    log_train_line = metric_logging.log_train_line
    save = checkpointing.Checkpoints.save

    def signal_after_step_8(step, *args):
      log_train_line(step, *args)
      if step == 8:
        os.kill(os.getpid(), getattr(signal, action))

    def kill_while_saving_step_6(self, state, *args, **kwargs):
      saved = save(self, state, *args, **kwargs)
      if int(state.step) == 6:
        timer = threading.Timer(
            float(delay), os.kill, (os.getpid(), signal.SIGKILL))
        timer.start()
      return saved

    if action == "kill_during_save":
      checkpointing.Checkpoints.save = kill_while_saving_step_6
    else:
      metric_logging.log_train_line = signal_after_step_8
    config = conftest.tiny_config()
    config.data.data_dir = data_dir
    result = train.train_and_evaluate(config, workdir)
    print("RESULT", result.get("stopped_by_signal"), result["step"])
""")


def run_interrupted(data_dir, workdir, action, delay=0.0):
  """Run the tiny config in a subprocess that interrupts itself."""
  # Same 8-device XLA_FLAGS as this process (set in conftest).
  return subprocess.run(
      [sys.executable, "-c", INTERRUPT_SCRIPT, data_dir, workdir, action,
       str(delay)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_resumes_bitwise(reference_workdir, workdir, data_dir, start_step):
  train_lib.train_and_evaluate(config_for(data_dir), workdir)
  with open(os.path.join(workdir, "provenance.json")) as f:
    assert [launch["start_step"] for launch in json.load(f)] == [0, start_step]
  reference = metric_logging.read_metrics(reference_workdir)
  resumed = metric_logging.read_metrics(workdir)
  for step in range(1, 13):
    assert resumed[step]["loss"] == reference[step]["loss"], step
    assert resumed[step]["grad_norm"] == reference[step]["grad_norm"], step


def test_killed_run_resumes_bitwise(trained_workdir, synthetic_data_dir,
                                    tmp_path):
  workdir = str(tmp_path)
  killed = run_interrupted(synthetic_data_dir, workdir, "SIGKILL")
  assert killed.returncode == -9, killed.stderr
  assert max(metric_logging.read_metrics(workdir)) == 8
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"),
                                          10, 1, read_only=True)
  latest = checkpoints.latest_step()
  checkpoints.close()
  # The asynchronous save of step 6 may not have finished before the kill.
  assert latest in (3, 6), latest
  assert_resumes_bitwise(trained_workdir[0], workdir, synthetic_data_dir,
                         latest)


def test_sigterm_saves_at_current_step(trained_workdir, synthetic_data_dir,
                                       tmp_path):
  workdir = str(tmp_path)
  stopped = run_interrupted(synthetic_data_dir, workdir, "SIGTERM")
  assert stopped.returncode == 0, stopped.stderr
  assert "RESULT SIGTERM 8" in stopped.stdout
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"),
                                          10, 1, read_only=True)
  assert checkpoints.all_steps() == [3, 6, 8]
  checkpoints.close()
  assert_resumes_bitwise(trained_workdir[0], workdir, synthetic_data_dir, 8)


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.5])
def test_kill_during_async_save_resumes(trained_workdir, synthetic_data_dir,
                                        tmp_path, delay):
  workdir = str(tmp_path)
  killed = run_interrupted(synthetic_data_dir, workdir, "kill_during_save",
                           delay)
  assert killed.returncode == -9, killed.stderr
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  checkpoints = checkpointing.Checkpoints(checkpoint_dir, 10, 1,
                                          read_only=True)
  latest = checkpoints.latest_step()
  checkpoints.close()
  # An unfinished save leaves only a temporary folder, of a later step than
  # the latest complete one.
  temporary = [name for name in os.listdir(checkpoint_dir) if "tmp" in name]
  assert len(temporary) <= 1, temporary
  assert latest in (3, 6, 9, 12), latest
  for name in temporary:
    assert int(name.split(".")[0]) > latest, (name, latest)
  assert_resumes_bitwise(trained_workdir[0], workdir, synthetic_data_dir,
                         latest)
  assert not [name for name in os.listdir(checkpoint_dir) if "tmp" in name]


def test_resume_with_other_model_is_rejected(trained_workdir,
                                             synthetic_data_dir):
  config = config_for(synthetic_data_dir)
  config.model.modality = "token"
  with pytest.raises(train_lib.config_lib.ConfigError, match="'model'"):
    train_lib.train_and_evaluate(config, trained_workdir[0])


def test_nonfinite_loss_stops_without_checkpoint(synthetic_data_dir, tmp_path,
                                                 monkeypatch):
  training_batches = input_pipeline.training_batches

  def poison_eighth_batch(*args):
    for number, batch in enumerate(training_batches(*args), start=1):
      if number == 8:
        # Images travel as uint8, which has no NaN; a float batch is
        # normalised on the devices all the same.
        batch = dict(batch, image=np.full(batch["image"].shape, np.nan,
                                          np.float32))
      yield batch

  monkeypatch.setattr(input_pipeline, "training_batches", poison_eighth_batch)
  config = config_for(synthetic_data_dir)
  with pytest.raises(checkpointing.NonFiniteError, match="Step 8 produced"):
    train_lib.train_and_evaluate(config, str(tmp_path))
  checkpoints = checkpointing.Checkpoints(str(tmp_path / "checkpoints"), 10, 1,
                                          read_only=True)
  assert checkpoints.all_steps() == [3, 6]
  checkpoints.close()


def _expected_embeddings(workdir, data_dir, image_dir):
  """Write 5 test images as PNG; embed them and their captions in-process."""
  from PIL import Image

  config, tokenizer, model, params, _ = train_lib.load_trained(workdir)
  builder = input_pipeline.load_builder(config.data)
  source = input_pipeline.data_source(builder, "test")
  paths, captions, images = [], [], []
  for i in range(5):
    example = source[i]
    path = os.path.join(image_dir, f"scan_{i}.png")
    Image.fromarray(example["image"][:, :, 0]).save(path)
    paths.append(path)
    captions.append(example["caption"].decode())
    images.append(preprocessing.preprocess_image(
        example["image"], config.model.image_size, config.data.image_mean,
        config.data.image_std))
  image_emb, text_emb, _ = model.apply(
      {"params": params}, np.stack(images), tokenizer.tokenize(captions))
  return (paths, captions, np.asarray(loss_lib.l2_normalize(image_emb)),
          np.asarray(loss_lib.l2_normalize(text_emb)))


LOADER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from shared_encoder_jax.bundle import Bundle

    bundle_dir, request, output = sys.argv[1:4]
    with open(request) as f:
      request = json.load(f)
    bundle = Bundle.load(bundle_dir)
    np.savez(output, images=bundle.embed_images(request["paths"]),
             texts=bundle.embed_texts(request["captions"]))
    forbidden = [name for name in sys.modules
                 if name.split(".")[0] in ("tensorflow", "tensorflow_datasets",
                                           "grain", "orbax", "optax")
                 or name in ("shared_encoder_jax.train",
                             "shared_encoder_jax.train_step",
                             "shared_encoder_jax.data.input_pipeline")]
    print(json.dumps(sorted(forbidden)))
""")


def test_bundle_embeds_like_model_in_fresh_process(trained_workdir,
                                                   synthetic_data_dir,
                                                   tmp_path):
  workdir = trained_workdir[0]
  bundle_dir = export_lib.export_bundle(workdir, str(tmp_path / "bundle"))
  assert sorted(os.listdir(bundle_dir)) == [
      "SHA256SUMS", "config.json", "model.safetensors", "tokenizer.model"]
  paths, captions, image_want, text_want = _expected_embeddings(
      workdir, synthetic_data_dir, str(tmp_path))
  request = tmp_path / "request.json"
  request.write_text(json.dumps({"paths": paths, "captions": captions}))
  output = tmp_path / "embeddings.npz"

  result = subprocess.run(
      [sys.executable, "-c", LOADER_SCRIPT, bundle_dir, str(request),
       str(output)],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.strip().splitlines()[-1]) == []
  got = np.load(output)
  np.testing.assert_allclose(got["images"], image_want, atol=1e-5)
  np.testing.assert_allclose(got["texts"], text_want, atol=1e-5)


def test_export_refuses_to_overwrite_and_detects_corruption(trained_workdir,
                                                            tmp_path):
  workdir = trained_workdir[0]
  bundle_dir = export_lib.export_bundle(workdir, str(tmp_path / "bundle"),
                                        step=6)
  with open(os.path.join(bundle_dir, "config.json")) as f:
    assert json.load(f)["source"]["step"] == 6
  with pytest.raises(FileExistsError, match="--overwrite"):
    export_lib.export_bundle(workdir, bundle_dir)
  with open(os.path.join(bundle_dir, "model.safetensors"), "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\x00\x01\x02\x03")
  with pytest.raises(bundle_lib.BundleError, match="model.safetensors"):
    bundle_lib.Bundle.load(bundle_dir)
  export_lib.export_bundle(workdir, bundle_dir, overwrite=True)
  bundle_lib.Bundle.load(bundle_dir)
  with pytest.raises(FileNotFoundError, match="available steps"):
    export_lib.export_bundle(workdir, str(tmp_path / "other"), step=5)


def test_evaluate_command_writes_metrics(trained_workdir):
  workdir = trained_workdir[0]
  result = subprocess.run(
      [sys.executable, "-m", "shared_encoder_jax.cli.evaluate",
       f"--workdir={workdir}", "--step=6", "--splits=validation"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert result.returncode == 0, result.stderr
  assert "validation (step 6): 1000 pairs" in result.stdout
  with open(os.path.join(workdir, "evaluation",
                         "validation_step_6.json")) as f:
    written = json.load(f)
  with open(os.path.join(workdir, "evaluation", "test_step_12.json")) as f:
    assert json.load(f)["step"] == 12
  assert written["split"] == "validation" and written["num_pairs"] == 1000


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, "tests")
    import conftest  # sets 8 devices; each process here uses 4 instead
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    from shared_encoder_jax import distributed
    from shared_encoder_jax import train

    data_dir, workdir = sys.argv[1:3]
    distributed.initialize()
    import jax
    print("DEVICES", jax.process_count(), jax.local_device_count(),
          jax.device_count())
    config = conftest.tiny_config()
    config.data.data_dir = data_dir
    result = train.train_and_evaluate(config, workdir)
    print("RESULT", result["step"], result["image_to_text"]["recall@10"])
""")


def test_two_processes_match_one_process(trained_workdir, synthetic_data_dir,
                                         tmp_path):
  """Two processes of 4 devices train like one process of 8 devices."""
  import socket

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  workdir = str(tmp_path / "two_processes")
  processes = []
  for process_id in range(2):
    env = dict(os.environ, SHARED_ENCODER_COORDINATOR=f"127.0.0.1:{port}",
               SHARED_ENCODER_NUM_PROCESSES="2",
               SHARED_ENCODER_PROCESS_ID=str(process_id),
               JAX_PLATFORMS="cpu")
    processes.append(subprocess.Popen(
        [sys.executable, "-c", TWO_PROCESS_SCRIPT, synthetic_data_dir,
         workdir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=600))
  finally:
    for process in processes:
      process.kill()
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-5000:]
    assert "DEVICES 2 4 8" in stdout
    assert "RESULT 12" in stdout

  reference_workdir, reference_metrics = trained_workdir
  reference = metric_logging.read_metrics(reference_workdir)
  two = metric_logging.read_metrics(workdir)
  assert sorted(two) == list(range(1, 13))
  for step in range(1, 13):
    np.testing.assert_allclose(two[step]["loss"], reference[step]["loss"],
                               rtol=1e-5, err_msg=str(step))

  # The checkpoint the two processes wrote restores in this one process.
  config, _, _, params, step = train_lib.load_trained(workdir)
  _, _, _, reference_params, _ = train_lib.load_trained(reference_workdir)
  assert step == 12
  for got, want in zip(jax.tree.leaves(params),
                       jax.tree.leaves(reference_params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                               atol=1e-5)

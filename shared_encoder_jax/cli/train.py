"""Train a shared (or separate) image–text encoder.

  shared-encoder-train --config=configs/pmc_oa_shared_feature.py:small \
      --workdir=runs/shared_feature [--config.batch_size=64 ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from shared_encoder_jax import evaluation

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: "
    "configs/pmc_oa_shared_feature.py:small.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, logs, metrics and the "
    "tokenizer; an existing one is resumed.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", "~/.cache/shared_encoder_jax/xla",
    "Persistent cache of compiled programs (a local path or gs://...); "
    "empty turns it off.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast and free of TensorFlow.
  from shared_encoder_jax import distributed
  from shared_encoder_jax import train as train_lib
  from shared_encoder_jax.cli import console

  console.quiet_library_logs()
  console.use_compilation_cache(_COMPILATION_CACHE_DIR.value)
  with console.exit_on_user_error():
    # Several processes (SLURM, a TPU slice, launch/local.py) connect here;
    # a single process continues alone.
    distributed.initialize()
    metrics = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "stopped_by_signal" in metrics:
    print(f"Stopped by {metrics['stopped_by_signal']} at step "
          f"{metrics['step']}; rerun the same command to resume.")
    return
  print(evaluation.format_metrics(f"test (step {metrics['step']})", metrics))
  logging.info("Done. Outputs are in %s.", _WORKDIR.value)


def run():
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())

"""Shared fixtures. Every test process has 8 simulated CPU devices."""

import os

# Must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

from shared_encoder_jax import config as config_lib  # noqa: E402

SMALL_DATASET = "synthetic_radiology/small"


def tiny_config():
  """A config that trains in seconds on the small synthetic dataset."""
  config = config_lib.base_config()
  config_lib.set_model_size(config, "tiny")
  config.model.modality_dim = 8
  config.tokenizer.vocab_size = 300
  config.batch_size = 16
  config.eval_batch_size = 200
  config.total_steps = 12
  config.log_every_steps = 1
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
  config.keep_last_checkpoints = 10
  config.data.name = SMALL_DATASET
  config.data.num_threads = 1
  return config


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the small synthetic dataset, built once."""
  import tensorflow_datasets as tfds
  from shared_encoder_jax.data import synthetic_radiology_builder  # noqa: F401

  data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
  tfds.builder(SMALL_DATASET, data_dir=data_dir).download_and_prepare()
  return data_dir

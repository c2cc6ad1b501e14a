"""Config files load, and every invalid field fails with a message naming it."""

import importlib.util
import os
import subprocess
import sys

import pytest

from shared_encoder_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ["pmc_oa_separate.py", "pmc_oa_shared_feature.py",
                "pmc_oa_shared_token.py"]


def load_config_file(name, arg):
  spec = importlib.util.spec_from_file_location(
      name[:-3], os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("arg", ["", "small"])
def test_config_files_validate(name, arg):
  config = load_config_file(name, arg)
  config_lib.validate(config, num_devices=1)
  expected_width = 768 if arg == "" else 128
  assert config.model.width == expected_width


def test_paper_configs_differ_only_in_sharing_and_modality():
  separate = load_config_file("pmc_oa_separate.py", "")
  feature = load_config_file("pmc_oa_shared_feature.py", "")
  token = load_config_file("pmc_oa_shared_token.py", "")
  assert (separate.model.shared_layers, separate.model.modality) == (
      "none", "none")
  assert (feature.model.shared_layers, feature.model.modality,
          feature.model.modality_dim) == ("all", "feature", 20)
  assert (token.model.shared_layers, token.model.modality,
          token.model.num_modality_tokens) == ("all", "token", 1)
  assert separate.optimizer == feature.optimizer == token.optimizer
  assert feature.optimizer.learning_rate == 5e-4
  assert (feature.optimizer.b1, feature.optimizer.b2) == (0.9, 0.98)
  assert feature.optimizer.eps == 1e-6
  assert feature.optimizer.weight_decay == 0.2
  assert feature.optimizer.warmup_steps == 0
  assert feature.early_stopping_patience == 10


def test_unknown_config_argument():
  with pytest.raises(config_lib.ConfigError, match="'huge' is unknown"):
    config_lib.pmc_oa_experiment("huge")


def _set(config, dotted, value):
  *groups, field = dotted.split(".")
  target = config
  for group in groups:
    target = target[group]
  target[field] = value


@pytest.mark.parametrize("dotted, value, num_devices, message", [
    ("model.modality_dim", 128, 1, "model.modality_dim=128"),
    ("model.modality_dim", 0, 1, "model.modality_dim=0"),
    ("model.shared_layers", "0-4", 1, "model.shared_layers='0-4'"),
    ("model.shared_layers", "7", 1, "layer(s) [7]"),
    ("model.shared_layers", "early", 1, "model.shared_layers='early'"),
    ("batch_size", 100, 8, "batch_size=100"),
    ("eval_batch_size", 12, 8, "eval_batch_size=12"),
    ("model.modality", "prefix", 1, "model.modality='prefix'"),
    ("model.image_size", 65, 1, "model.image_size=65"),
    ("model.num_heads", 3, 1, "model.num_heads=3"),
    ("model.num_modality_tokens", 0, 1, "model.num_modality_tokens=0"),
    ("model.dtype", "float64", 1, "model.dtype='float64'"),
    ("total_steps", 0, 1, "total_steps=0"),
    ("optimizer.learning_rate", -1.0, 1, "optimizer.learning_rate=-1.0"),
    ("keep_last_checkpoints", 0, 1, "keep_last_checkpoints"),
    ("tokenizer.model_type", "wordpiece", 1, "tokenizer.model_type"),
])
def test_invalid_field_is_named(dotted, value, num_devices, message):
  config = config_lib.pmc_oa_experiment("small")
  if dotted == "model.num_modality_tokens":
    config.model.modality = "token"
  _set(config, dotted, value)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, num_devices=num_devices)
  assert message in str(error.value)


def test_unknown_field_in_config_file_is_named():
  config = config_lib.pmc_oa_experiment("small")
  config.model.unlock()
  config.model.modality_size = 20
  with pytest.raises(config_lib.ConfigError, match="'model.modality_size'"):
    config_lib.validate(config)


def _run_train_cli(*args, tmp_path):
  return subprocess.run(
      [sys.executable, "-m", "shared_encoder_jax.cli.train",
       "--config=configs/pmc_oa_shared_feature.py:small",
       f"--workdir={tmp_path}", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_unknown_override_names_field(tmp_path):
  result = _run_train_cli("--config.model.modality_size=4", tmp_path=tmp_path)
  assert result.returncode != 0
  assert "modality_size" in result.stderr
  assert not os.listdir(tmp_path)


def test_cli_invalid_value_fails_before_compiling(tmp_path):
  result = _run_train_cli("--config.model.modality_dim=128",
                          tmp_path=tmp_path)
  assert result.returncode == 1
  assert "model.modality_dim=128" in result.stderr
  assert "Compiling" not in result.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))

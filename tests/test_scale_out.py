"""Loss modes, micro-batches and rematerialisation give the same updates."""

import jax
import ml_collections
import numpy as np
import pytest

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import model as model_lib
from shared_encoder_jax import optimizer as optimizer_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train_step as train_step_lib
from test_train_step import EOT, VOCAB, assert_params_close, make_batch


def make_config(loss_kind="clip", loss_mode="full", **model_overrides):
  config = config_lib.base_config()
  config_lib.set_model_size(config, "tiny")
  config.model.modality_dim = 8
  if loss_kind == "siglip":
    config_lib.use_siglip(config, loss_mode)
  else:
    config.loss.mode = loss_mode
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


def run_steps(config, mesh_shape=(1, 1, 1), num_micro_batches=1, steps=2):
  model = model_lib.build_model(config.model, VOCAB, EOT)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 10)
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding_lib.make_mesh(
      ml_collections.ConfigDict(dict(zip(sharding_lib.MESH_AXES,
                                         mesh_shape))), devices=devices)
  state = train_step_lib.create_train_state(model, tx, mesh, seed=0)
  step = train_step_lib.make_train_step(
      model, tx, schedule, mesh, train_step_lib.state_shardings(mesh, state),
      config.loss.kind, config.loss.mode, num_micro_batches)
  losses = []
  for seed in range(steps):
    state, metrics = step(state, make_batch(model, seed))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


@pytest.mark.parametrize("kind, mode, mesh_shape", [
    ("clip", "local", (2, 4, 1)),
    ("clip", "full", (2, 2, 2)),
    ("siglip", "full", (8, 1, 1)),
    ("siglip", "chunked", (2, 2, 2)),
])
def test_loss_modes_on_mesh_match_one_device(kind, mode, mesh_shape):
  config = make_config(kind, mode)
  losses, params = run_steps(config, mesh_shape)
  reference = make_config(kind, "full")
  want_losses, want_params = run_steps(reference)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert_params_close(params, want_params)


def test_siglip_adds_logit_bias_parameter():
  _, params = run_steps(make_config("siglip"), steps=1)
  assert params["logit_bias"].shape == ()
  # The bias starts at -10 and moves after one step.
  assert params["logit_bias"] != -10.0
  assert abs(float(params["logit_bias"]) + 10.0) < 0.01
  _, clip_params = run_steps(make_config("clip"), steps=1)
  assert "logit_bias" not in clip_params


@pytest.mark.parametrize("kind, num_micro_batches", [
    ("clip", 2), ("clip", 4), ("siglip", 4)])
def test_micro_batches_match_one_large_batch(kind, num_micro_batches):
  config = make_config(kind)
  losses, params = run_steps(config, (2, 1, 1), num_micro_batches)
  want_losses, want_params = run_steps(config, (2, 1, 1))
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert_params_close(params, want_params)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_match_no_remat(remat):
  losses, params = run_steps(make_config(remat=remat))
  want_losses, want_params = run_steps(make_config())
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  assert_params_close(params, want_params)


@pytest.mark.parametrize("field, value, message", [
    ("loss.mode", "chunked", "loss.mode='chunked' is not a mode of"),
    ("loss.kind", "triplet", "loss.kind='triplet'"),
    ("model.use_logit_bias", True, "model.use_logit_bias=True"),
    ("model.remat", "some", "model.remat='some'"),
    ("num_micro_batches", 3, "num_micro_batches=3"),
])
def test_scale_out_config_errors(field, value, message):
  config = config_lib.pmc_oa_experiment("small")
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert message in str(error.value)

"""Mesh shapes, sharding rules and restoring onto another mesh (8 devices)."""

import jax
import ml_collections
import numpy as np
import pytest

from shared_encoder_jax import checkpointing
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train_step as train_step_lib
from test_train_step import assert_params_close
from test_train_step import make_batch
from test_train_step import make_setup

MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def mesh_config(data, fsdp, tensor):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize("sizes, expected", [
    ((-1, 1, 1), (8, 1, 1)),
    ((2, -1, 1), (2, 4, 1)),
    ((2, 2, -1), (2, 2, 2)),
    ((1, 8, 1), (1, 8, 1)),
])
def test_mesh_shape_fills_devices(sizes, expected):
  assert sharding_lib.mesh_shape(mesh_config(*sizes), 8) == expected


@pytest.mark.parametrize("sizes, message", [
    ((-1, -1, 1), "At most one"),
    ((3, -1, 1), "not a multiple of 3"),
    ((2, 2, 1), "has 4 devices but 8"),
    ((0, 8, 1), "positive or -1"),
])
def test_mesh_shape_errors_name_sizes(sizes, message):
  with pytest.raises(sharding_lib.MeshError, match=message):
    sharding_lib.mesh_shape(mesh_config(*sizes), 8)


def sharded_state(mesh_shape, shared_layers="all"):
  _, model, tx, schedule = make_setup(shared_layers=shared_layers)
  mesh = sharding_lib.make_mesh(mesh_config(*mesh_shape))
  state = train_step_lib.create_train_state(model, tx, mesh, seed=0)
  return mesh, model, tx, schedule, state


def shard_shape(array):
  shapes = {shard.data.shape for shard in array.addressable_shards}
  assert len(shapes) == 1
  return shapes.pop()


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_parameter_and_optimizer_shards_follow_rules(mesh_shape):
  _, fsdp, tensor = mesh_shape
  _, model, _, _, state = sharded_state(mesh_shape)
  width, mlp, heads = model.width, model.mlp_dim, model.num_heads
  head_dim = width // heads
  block = state.params["shared_blocks_0"]
  adam = state.opt_state[0]
  expected = {
      ("mlp", "fc1", "kernel"): (width // fsdp, mlp // tensor),
      ("mlp", "fc1", "bias"): (mlp // tensor,),
      ("mlp", "fc2", "kernel"): (mlp // tensor, width // fsdp),
      ("attention", "query", "kernel"): (width // fsdp, heads // tensor,
                                         head_dim),
      ("attention", "out", "kernel"): (heads // tensor, head_dim,
                                       width // fsdp),
      ("mlp_norm", "scale"): (width,),
  }
  for path, shape in expected.items():
    leaf, mu, nu = block, adam.mu["shared_blocks_0"], adam.nu["shared_blocks_0"]
    for key in path:
      leaf, mu, nu = leaf[key], mu[key], nu[key]
    assert shard_shape(leaf) == shape, path
    assert shard_shape(mu) == shape, path
    assert shard_shape(nu) == shape, path
  vocab, embedding_width = state.params["token_embedding"]["embedding"].shape
  assert shard_shape(state.params["token_embedding"]["embedding"]) == (
      vocab, embedding_width // fsdp)
  assert shard_shape(state.params["logit_scale"]) == ()


def test_shared_layer_is_sharded_once():
  _, _, _, _, state = sharded_state((2, 4, 1))
  names = [name for name in state.params if "blocks" in name]
  assert names == ["shared_blocks_0", "shared_blocks_1"]
  kernel = state.params["shared_blocks_0"]["mlp"]["fc1"]["kernel"]
  assert len(kernel.addressable_shards) == 8
  assert len({str(shard.index) for shard in kernel.addressable_shards}) == 4


@pytest.mark.parametrize("mesh_shape", [(2, 4, 1), (2, 2, 2)])
def test_sharded_steps_match_one_device(mesh_shape):
  mesh, model, tx, schedule, state = sharded_state(mesh_shape)
  step = train_step_lib.make_train_step(
      model, tx, schedule, mesh,
      train_step_lib.state_shardings(mesh, state))
  mesh1 = sharding_lib.make_mesh(devices=jax.devices()[:1])
  state1 = train_step_lib.create_train_state(model, tx, mesh1, seed=0)
  step1 = train_step_lib.make_train_step(
      model, tx, schedule, mesh1,
      train_step_lib.state_shardings(mesh1, state1))
  for seed in range(2):
    batch = make_batch(model, seed)
    state, metrics = step(state, batch)
    state1, metrics1 = step1(state1, batch)
    np.testing.assert_allclose(metrics["loss"], metrics1["loss"], rtol=1e-5)
  assert_params_close(state.params, state1.params)
  assert step._cache_size() == 1


@pytest.mark.parametrize("restore_mesh", [(1, 1, 1), (1, 2, 2)])
def test_checkpoint_restores_onto_other_mesh(tmp_path, restore_mesh):
  mesh, model, tx, _, state = sharded_state((2, 4, 1))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), 2, 1)
  checkpoints.save(state, {"data_position": 0}, 1.0)
  checkpoints.close()

  num_devices = int(np.prod(restore_mesh))
  other = sharding_lib.make_mesh(mesh_config(*restore_mesh),
                                 devices=jax.devices()[:num_devices])
  shapes = train_step_lib.abstract_state(model, tx)
  target = checkpointing.restore_target(
      shapes, train_step_lib.state_shardings(other, shapes))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), 2, 1)
  restored, _ = checkpoints.restore(0, target)
  checkpoints.close()
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(got.sharding.device_set) == num_devices
  kernel = restored.params["shared_blocks_0"]["mlp"]["fc1"]["kernel"]
  expected_rows = model.width // restore_mesh[1]
  assert shard_shape(kernel)[0] == expected_rows

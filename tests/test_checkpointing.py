"""Checkpoint retention and the non-finite guard."""

import jax
import jax.numpy as jnp
import pytest

from shared_encoder_jax import checkpointing
from shared_encoder_jax import train_step as train_step_lib


def make_state(step, nonfinite_step=-1):
  return train_step_lib.TrainState(
      step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((3,), step,
                                                               jnp.float32)},
      opt_state={}, rng=jax.random.PRNGKey(0),
      nonfinite_step=jnp.asarray(nonfinite_step, jnp.int32))


def test_keeps_latest_and_best(tmp_path):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep_last=2,
                                          keep_best=1)
  losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0}
  for step, loss in losses.items():
    checkpoints.save(make_state(step), {"data_position": step}, loss)
  assert checkpoints.all_steps() == [2, 4, 5]
  assert checkpoints.best_step() == 2
  assert checkpoints.latest_step() == 5
  checkpoints.close()

  # A resumed run reads the saved losses back and still keeps the best.
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep_last=2,
                                          keep_best=1)
  assert checkpoints.best_step() == 2
  checkpoints.save(make_state(6), {}, 2.5)
  assert checkpoints.all_steps() == [2, 5, 6]
  checkpoints.close()


def test_latest_kept_when_not_best(tmp_path):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep_last=1,
                                          keep_best=1)
  checkpoints.save(make_state(1), {}, 1.0)
  checkpoints.save(make_state(2), {}, 9.0)
  checkpoints.save(make_state(3), {})  # no validation loss
  assert checkpoints.all_steps() == [1, 3]
  checkpoints.close()


def test_restore_returns_saved_values(tmp_path):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), 2, 1)
  checkpoints.save(make_state(7), {"data_position": 7, "best": None}, 0.5)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        make_state(0))
  state, trainer_state = checkpoints.restore(7, target)
  assert int(state.step) == 7
  assert float(state.params["w"][0]) == 7.0
  assert trainer_state == {"data_position": 7, "best": None}
  checkpoints.close()


def test_nonfinite_state_is_never_saved(tmp_path):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), 2, 1)
  checkpoints.save(make_state(3), {}, 1.0)
  with pytest.raises(checkpointing.NonFiniteError, match="Step 4"):
    checkpoints.save(make_state(5, nonfinite_step=4), {}, float("nan"))
  assert checkpoints.all_steps() == [3]
  checkpoints.close()

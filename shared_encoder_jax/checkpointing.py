"""Orbax checkpoints of the train state and the trainer's own counters.

A checkpoint contains two items: `state` (step, parameters, optimizer state,
RNG, non-finite marker) and `trainer` (JSON: data position, early-stopping
counters). The manager keeps the latest `keep_last` checkpoints and, among
those saved with a validation loss, the best `keep_best`. A checkpoint
survives when either rule keeps it, so the latest one is never deleted and a
run can always resume.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy

VALIDATION_LOSS = "validation_loss"


def workdir_path(path) -> str:
  """Return a local path made absolute, or a bucket path (gs://) unchanged."""
  path = str(path)
  return path if "://" in path else os.path.abspath(path)


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient."""


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, directory: str, keep_last: int, keep_best: int,
               async_save: bool = False, read_only: bool = False):
    """Open (or create) the checkpoints folder `directory`.

    With `read_only` nothing is written or deleted, not even a running
    job's temporary folders, so evaluation and export can read a workdir
    while training continues in it.
    """
    policies = [preservation_policy.LatestN(keep_last)]
    if keep_best:
      policies.append(preservation_policy.BestN(
          get_metric_fn=lambda metrics: metrics[VALIDATION_LOSS],
          reverse=True,  # BestN keeps the top of an ascending sort
          n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy(
            policies),
        # The preservation policy decides what is deleted. best_fn is set too
        # because Orbax 0.12 writes metrics to disk only when it is set, and
        # BestN needs them again after a restart.
        best_fn=lambda metrics: metrics[VALIDATION_LOSS],
        best_mode="min",
        # Async: `save` returns once the arrays are copied to host memory
        # and the files are written in the background. A save interrupted
        # by a crash leaves only a temporary folder, removed at the next
        # start (cleanup_tmp_directories).
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only)
    self.directory = workdir_path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "trainer"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """Return the kept step with the lowest validation loss."""
    return self.manager.best_step()

  def save(self, state, trainer_state: dict,
           validation_loss: float | None = None) -> bool:
    """Save at `state.step`; return False if that step is already saved.

    Raises NonFiniteError, and writes nothing, when the state is marked as
    having seen a non-finite loss or gradient.
    """
    nonfinite_step = int(jax.device_get(state.nonfinite_step))
    if nonfinite_step >= 0:
      raise NonFiniteError(
          f"Step {nonfinite_step} produced a non-finite loss or gradient; "
          "stopping without saving. The checkpoints in "
          f"{self.directory} are from before that step. Lower "
          "optimizer.learning_rate or set optimizer.grad_clip_norm, then "
          "rerun to resume from the latest checkpoint.")
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    metrics = None
    if validation_loss is not None:
      metrics = {VALIDATION_LOSS: float(validation_loss)}
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            trainer=ocp.args.JsonSave(dict(trainer_state))),
        metrics=metrics, force=True)
    logging.info("Saving checkpoint at step %d in %s.", step, self.directory)
    return True

  def wait(self) -> None:
    """Block until every started save is complete on disk."""
    self.manager.wait_until_finished()

  def restore(self, step: int, state_target):
    """Restore (state, trainer_state) at `step`.

    `state_target` gives every leaf's shape, dtype and sharding
    (`jax.ShapeDtypeStruct` with `sharding`), so arrays load straight onto
    the mesh.
    """
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state_target),
            trainer=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["trainer"])

  def close(self):
    """Finish pending saves and release the manager."""
    self.manager.close()


def restore_target(state_shapes, shardings):
  """Abstract state with shardings, for `Checkpoints.restore`."""
  return jax.tree.map(
      lambda shape, sharding: jax.ShapeDtypeStruct(
          shape.shape, shape.dtype, sharding=sharding),
      state_shapes, shardings)

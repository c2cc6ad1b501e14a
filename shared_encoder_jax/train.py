"""Training loop: data, tokenizer, model, sharded state, steps, checkpoints.

`train_and_evaluate(config, workdir)` runs a whole job and resumes from the
workdir's latest checkpoint when there is one. The workdir receives:

  config.json            the resolved config of the first launch
  provenance.json        one entry per launch: config, git commit, packages,
                         devices, data fingerprint
  tokenizer.model        the SentencePiece model the run uses
  checkpoints/<step>/    Orbax checkpoints
  metrics.jsonl          train and validation scalars
  tensorboard/           the same scalars as TensorBoard event files
  evaluation/            retrieval metrics as JSON, per split and step
  data_subset.json       the training examples used: data fraction, count
                         and a fingerprint of their ids
"""

from __future__ import annotations

import json
import math
import signal
import threading

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from shared_encoder_jax import checkpointing
from shared_encoder_jax import config as config_lib
from shared_encoder_jax import evaluation
from shared_encoder_jax import metric_logging
from shared_encoder_jax import model as model_lib
from shared_encoder_jax import optimizer as optimizer_lib
from shared_encoder_jax import provenance
from shared_encoder_jax import tokenizer as tokenizer_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train_step as train_step_lib
from shared_encoder_jax.data import data_fraction
from shared_encoder_jax.data import input_pipeline

TOKENIZER_FILE = "tokenizer.model"
CONFIG_FILE = "config.json"
DATA_SUBSET_FILE = "data_subset.json"
# Config groups that must match between the launch that wrote a workdir's
# checkpoints and a launch that resumes from them.
RESUME_INVARIANT_FIELDS = ("model", "tokenizer", "data.name",
                           "data.builder_config", "seed", "data.shuffle_seed",
                           "data.data_fraction", "data.fraction_seed",
                           "batch_size")


def load_or_train_tokenizer(config, builder, workdir: str,
                            train_indices=None) -> tokenizer_lib.Tokenizer:
  """Load the workdir's tokenizer, else the configured file, else train one.

  A trained tokenizer is trained only on the examples the run uses
  (`train_indices`, all of the split if None).
  """
  context = config.model.text_context
  path = epath.Path(workdir) / TOKENIZER_FILE
  if path.exists():
    logging.info("Using the workdir's tokenizer %s.", path)
    return tokenizer_lib.Tokenizer.from_file(path, context)
  if config.tokenizer.model_path:
    tokenizer = tokenizer_lib.Tokenizer.from_file(config.tokenizer.model_path,
                                                  context)
    logging.info("Using tokenizer %s.", config.tokenizer.model_path)
  else:
    captions = input_pipeline.read_captions(
        builder, config.data.train_split, config.data.caption_key,
        config.tokenizer.max_training_captions, config.data.shuffle_seed,
        train_indices)
    logging.info("Training a SentencePiece tokenizer (vocab_size <= %d) on "
                 "%d training captions.", config.tokenizer.vocab_size,
                 len(captions))
    tokenizer = tokenizer_lib.train_tokenizer(
        captions, config.tokenizer.vocab_size, context,
        config.tokenizer.model_type)
  tokenizer.save(path)
  return tokenizer


def _field(config_dict: dict, dotted: str):
  value = config_dict
  for key in dotted.split("."):
    value = value.get(key) if isinstance(value, dict) else None
  return value


def check_resume_compatible(workdir: str, config) -> None:
  """Fail if the workdir's checkpoints were made with a different setup."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  current = json.loads(config.to_json())
  for dotted in RESUME_INVARIANT_FIELDS:
    if _field(saved, dotted) != _field(current, dotted):
      raise config_lib.ConfigError(
          f"Config field {dotted!r} differs from the one that wrote the "
          f"checkpoints in {workdir} (saved: {_field(saved, dotted)}, now: "
          f"{_field(current, dotted)}). Use a new --workdir, or restore the "
          "old value to resume.")


def log_config(config) -> None:
  logging.info("Config:\n%s", config)


def log_parameter_counts(params) -> dict:
  counts = model_lib.count_parameters(params)
  logging.info(
      "Parameters: %s total; Transformer blocks: %s shared, %s image-only, "
      "%s text-only; embeddings, norms and projections: %s.",
      f"{counts['total']:,}", f"{counts['shared_blocks']:,}",
      f"{counts['image_blocks']:,}", f"{counts['text_blocks']:,}",
      f"{counts['other']:,}")
  return counts


class Evaluator:
  """Embeds whole splits with the current parameters and scores retrieval.

  A retrieved item is a hit when it is in the query's group (the dataset's
  `group` feature, when it has one: identical images, or a study's images).
  """

  def __init__(self, config, builder, transform, model, mesh):
    self.config = config
    self.builder = builder
    self.transform = transform
    self.mesh = mesh
    self.embed_step = train_step_lib.make_embed_step(model, mesh)
    self._groups = {}

  def __call__(self, params, split: str) -> dict:
    source = input_pipeline.data_source(self.builder, split, skip_image=True)
    sharding = sharding_lib.batch_sharding(self.mesh)
    batches = input_pipeline.evaluation_batches(
        source, self.transform, self.config.eval_batch_size,
        self.config.data.num_threads,
        input_pipeline.process_rows(sharding, self.config.eval_batch_size))
    image_emb, text_emb, logit_scale = evaluation.embed_batches(
        self.embed_step, params, batches,
        input_pipeline.batch_placement(self.config, sharding))
    if split not in self._groups:
      self._groups[split] = (evaluation.read_groups(source)
                             if "group" in self.builder.info.features
                             else None)
    metrics = evaluation.retrieval_metrics(
        image_emb, text_emb, self.config.recall_ks, self._groups[split])
    logit_bias = params.get("logit_bias")
    if logit_bias is not None:
      logit_bias = float(jax.device_get(logit_bias))
    metrics["loss"] = evaluation.validation_loss(image_emb, text_emb,
                                                 logit_scale, logit_bias)
    return metrics


def write_evaluation(workdir: str, split: str, step: int,
                     metrics: dict) -> str:
  directory = epath.Path(workdir) / "evaluation"
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{split}_step_{step}.json"
  path.write_text(json.dumps({"split": split, "step": step, **metrics},
                             indent=2))
  return str(path)


def select_training_subset(config, builder, workdir, primary: bool):
  """Indices of the training examples the run uses; record them.

  Logs the count and writes `data_subset.json` (process 0) with the fraction,
  seed, count and the SHA-256 of the chosen ids.
  """
  data = config.data
  ids = input_pipeline.read_ids(builder, data.train_split, data.id_key)
  indices = data_fraction.select(ids, data.data_fraction, data.fraction_seed)
  chosen = [ids[index] for index in indices]
  subset = {"split": data.train_split, "data_fraction": data.data_fraction,
            "fraction_seed": data.fraction_seed,
            "num_examples": len(indices), "split_size": len(ids),
            "ids_sha256": data_fraction.ids_fingerprint(chosen)}
  logging.info("Training on %d of %d examples of split %r (data_fraction "
               "%s, fraction_seed %d); ids SHA-256 %s.", len(indices),
               len(ids), data.train_split, data.data_fraction,
               data.fraction_seed, subset["ids_sha256"])
  if primary:
    (epath.Path(workdir) / DATA_SUBSET_FILE).write_text(
        json.dumps(subset, indent=2))
  return indices


def _scalar_summary(metrics: dict) -> dict:
  scalars = {"loss": metrics["loss"]}
  for direction in ("image_to_text", "text_to_image"):
    for key, value in metrics[direction].items():
      scalars[f"{direction}/{key.replace('@', '_at_')}"] = value
  return scalars


def _primary_first(name: str, make):
  """Run `make()` in process 0, then in the others, which reuse its output.

  For work that writes shared files (preparing the dataset, training the
  tokenizer) that the other processes then read.
  """
  if jax.process_count() == 1:
    return make()
  if jax.process_index() == 0:
    result = make()
  multihost_utils.sync_global_devices(f"shared_encoder_jax {name}")
  if jax.process_index() != 0:
    result = make()
  return result


class TerminationSignal:
  """Records SIGTERM (sent on preemption, by SLURM and by `kill`).

  The training loop calls `should_stop` between steps and then saves a
  checkpoint and returns, so the next launch resumes at that step.
  """

  def __init__(self):
    self.received = None
    self._previous = None
    if jax.process_count() > 1:
      pass  # JAX's coordination service handles SIGTERM (see should_stop).
    elif threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    else:
      logging.warning("Training outside the main thread: SIGTERM will not "
                      "save a checkpoint before exiting.")

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  @property
  def reason(self) -> str:
    return self.received or "a preemption notice"

  def should_stop(self, step: int) -> bool:
    """Return whether to save and stop before `step`; all processes agree."""
    if jax.process_count() == 1:
      return self.received is not None
    # JAX's coordination service turns a preemption notice (SIGTERM) to any
    # process into one step at which every process returns True.
    return multihost_utils.reached_preemption_sync_point(step)

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Train, evaluate on validation along the way and on test at the end.

  Returns the test metrics (see `evaluation.retrieval_metrics`), or
  {"step": N, "stopped_by_signal": "SIGTERM"} when SIGTERM stopped the run
  after saving a checkpoint at step N.
  """
  mesh = sharding_lib.make_mesh(config.mesh)
  config_lib.validate(config, num_devices=sharding_lib.batch_devices(mesh))
  workdir = epath.Path(checkpointing.workdir_path(workdir))
  workdir.mkdir(parents=True, exist_ok=True)
  check_resume_compatible(workdir, config)
  log_config(config)
  logging.info("Mesh: %s over %d %s device(s).", dict(mesh.shape),
               mesh.size, jax.devices()[0].platform)

  primary = jax.process_index() == 0
  builder = _primary_first(
      "dataset", lambda: input_pipeline.load_builder(config.data))
  train_source = input_pipeline.data_source(
      builder, config.data.train_split, skip_image=True)
  train_indices = select_training_subset(config, builder, workdir, primary)
  tokenizer = _primary_first(
      "tokenizer", lambda: load_or_train_tokenizer(config, builder, workdir,
                                                   train_indices))
  model = model_lib.build_model(config.model, tokenizer.vocab_size,
                                tokenizer.eos_id)
  model = model.clone(joint_shared_layers=config.joint_shared_layers)

  steps_per_epoch = len(train_indices) // config.batch_size
  total_steps = config.total_steps
  if total_steps == -1:
    total_steps = max(1, math.ceil(config.num_epochs * steps_per_epoch))
  eval_every = config.eval_every_steps
  if eval_every == -1:
    eval_every = max(steps_per_epoch, 1)
  checkpoint_every = config.checkpoint_every_steps
  if checkpoint_every == -1:
    checkpoint_every = eval_every
  logging.info("%d training examples, %d steps per epoch, %d steps in all; "
               "evaluating every %d and checkpointing every %d steps.",
               len(train_indices), steps_per_epoch, total_steps, eval_every,
               checkpoint_every)

  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, total_steps)
  logging.info("Inferring the train state's shapes and shardings.")
  state_shapes = train_step_lib.abstract_state(model, tx, config.seed)
  shardings = train_step_lib.state_shardings(mesh, state_shapes)
  log_parameter_counts(state_shapes.params)

  checkpoints = checkpointing.Checkpoints(
      workdir / "checkpoints", config.keep_last_checkpoints,
      config.keep_best_checkpoints, async_save=config.async_checkpointing)
  latest = checkpoints.latest_step()
  if latest is None:
    logging.info("Initialising the train state on the mesh.")
    state = train_step_lib.create_train_state(model, tx, mesh, config.seed)
    trainer_state = {"data_position": 0, "best_validation_loss": None,
                     "evaluations_without_improvement": 0}
    if primary:
      (workdir / CONFIG_FILE).write_text(config.to_json(indent=2))
  else:
    logging.info("Resuming from the checkpoint at step %d.", latest)
    state, trainer_state = checkpoints.restore(
        latest, checkpointing.restore_target(state_shapes, shardings))
  step = int(jax.device_get(state.step))

  if primary:
    provenance_path = provenance.record_launch(
        workdir, config.to_dict(), input_pipeline.fingerprint(builder), step)
    logging.info("Recorded provenance in %s.", provenance_path)

  transform = input_pipeline.example_transform(config, tokenizer)
  evaluate = Evaluator(config, builder, transform, model, mesh)
  data_sharding = sharding_lib.batch_sharding(mesh)
  to_device = input_pipeline.batch_placement(config, data_sharding)
  train_step = train_step_lib.make_train_step(
      model, tx, schedule, mesh, shardings, config.loss.kind,
      config.loss.mode, config.num_micro_batches)
  batches = input_pipeline.training_batches(
      input_pipeline.training_dataset(
          train_source,
          input_pipeline.example_transform(config, tokenizer, training=True),
          config.batch_size, config.data.shuffle_seed, train_indices,
          input_pipeline.process_rows(data_sharding, config.batch_size)),
      trainer_state["data_position"], config.data.num_threads)

  # Process 0 alone writes metrics and evaluation files; every process takes
  # part in checkpoints.
  writer = (metric_logging.MetricWriter(workdir) if primary else
            metric_logging.NullWriter())
  throughput = metric_logging.Throughput(config.batch_size, total_steps, step)
  stopped_early = False
  termination = TerminationSignal()
  try:
    while step < total_steps and not stopped_early:
      if termination.should_stop(step):
        checkpoints.save(state, trainer_state)
        checkpoints.wait()
        logging.info("Stopped by %s at step %d after saving a checkpoint; "
                     "rerun the same command to resume.",
                     termination.reason, step)
        return {"step": step, "stopped_by_signal": termination.reason}
      batch = to_device(next(batches))
      state, metrics = train_step(state, batch)
      step += 1
      trainer_state["data_position"] += 1

      if step % config.log_every_steps == 0 or step == total_steps:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        nonfinite_step = int(jax.device_get(state.nonfinite_step))
        if nonfinite_step >= 0:
          raise checkpointing.NonFiniteError(
              f"Step {nonfinite_step} produced a non-finite loss or gradient "
              f"(loss at step {step}: {scalars['loss']}). Stopping; no "
              "checkpoint was written after it. Lower "
              "optimizer.learning_rate or set optimizer.grad_clip_norm, then "
              "rerun to resume from the latest checkpoint.")
        writer.write(step, "train", scalars)
        metric_logging.log_train_line(step, total_steps, scalars,
                                      *throughput.update(step))

      if step % eval_every == 0 or step == total_steps:
        metrics = evaluate(state.params, config.data.validation_split)
        writer.write(step, "validation", _scalar_summary(metrics))
        if primary:
          write_evaluation(workdir, "validation", step, metrics)
        logging.info("Step %d, validation loss %.4f.\n%s", step,
                     metrics["loss"], evaluation.format_metrics(
                         "validation", metrics))
        best = trainer_state["best_validation_loss"]
        if best is None or metrics["loss"] < best:
          trainer_state["best_validation_loss"] = metrics["loss"]
          trainer_state["evaluations_without_improvement"] = 0
        else:
          trainer_state["evaluations_without_improvement"] += 1
        patience = config.early_stopping_patience
        if patience and trainer_state[
            "evaluations_without_improvement"] >= patience:
          logging.info("Early stopping at step %d: no better validation "
                       "loss in %d evaluations.", step, patience)
          stopped_early = True
        checkpoints.save(state, trainer_state, metrics["loss"])
        throughput.reset(step)  # evaluation time is not training time
      elif step % checkpoint_every == 0:
        checkpoints.save(state, trainer_state)

    params = state.params
    final_step = step
    if stopped_early and config.keep_best_checkpoints:
      checkpoints.wait()
      best_step = checkpoints.best_step()
      logging.info("Evaluating the best checkpoint (step %d) on test.",
                   best_step)
      best_state, _ = checkpoints.restore(
          best_step, checkpointing.restore_target(state_shapes, shardings))
      params, final_step = best_state.params, best_step

    test_metrics = evaluate(params, config.data.test_split)
    if primary:
      path = write_evaluation(workdir, "test", final_step, test_metrics)
      logging.info("Test metrics written to %s.", path)
    logging.info("%s", evaluation.format_metrics("test", test_metrics))
    test_metrics["step"] = final_step
    return test_metrics
  finally:
    termination.restore()
    writer.close()
    checkpoints.close()


def load_trained(workdir: str, step: int | None = None):
  """Load (config, tokenizer, model, params, step) from a training workdir.

  `step` defaults to the latest checkpoint. Used by the evaluate and export
  commands.
  """
  workdir = epath.Path(checkpointing.workdir_path(workdir))
  config_path = workdir / CONFIG_FILE
  if not config_path.exists():
    raise FileNotFoundError(
        f"{config_path} not found: {workdir} is not a training workdir (it "
        "has no config.json). Pass the --workdir that train wrote to.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  tokenizer = tokenizer_lib.Tokenizer.from_file(
      workdir / TOKENIZER_FILE, config.model.text_context)
  model = model_lib.build_model(config.model, tokenizer.vocab_size,
                                tokenizer.eos_id)

  checkpoints = checkpointing.Checkpoints(
      workdir / "checkpoints", config.keep_last_checkpoints,
      config.keep_best_checkpoints, read_only=True)
  try:
    available = checkpoints.all_steps()
    if not available:
      raise FileNotFoundError(f"No checkpoint in {checkpoints.directory}.")
    if step is None:
      step = max(available)
    elif step not in available:
      raise FileNotFoundError(
          f"No checkpoint at step {step} in {checkpoints.directory}; "
          f"available steps: {sorted(available)}.")
    total_steps = max(config.total_steps, 1)
    tx, _ = optimizer_lib.make_optimizer(config.optimizer, total_steps)
    mesh = sharding_lib.make_mesh(config.get("mesh"))
    shapes = train_step_lib.abstract_state(model, tx, config.seed)
    shardings = train_step_lib.state_shardings(mesh, shapes)
    state, _ = checkpoints.restore(
        step, checkpointing.restore_target(shapes, shardings))
  finally:
    checkpoints.close()
  return config, tokenizer, model, state.params, step

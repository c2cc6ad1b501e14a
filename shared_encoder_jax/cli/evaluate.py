"""Evaluate a training checkpoint or an exported bundle on dataset splits.

  shared-encoder-evaluate --workdir=runs/shared_feature [--step=N] \
      [--splits=validation,test] [--evaluators=retrieval,zero_shot,linear_probe]
  shared-encoder-evaluate --bundle=exports/shared_feature \
      --dataset=synthetic_radiology --data_dir=data/tensorflow_datasets \
      --evaluators=retrieval,zero_shot --output=results.json

Evaluators (see `shared_encoder_jax/evaluators.py`): retrieval (the
default), zero_shot and linear_probe. With --workdir, each result is written
to `<workdir>/evaluation/<evaluator>_<split>_step_<N>.json`, except
retrieval, which keeps the training loop's name `<split>_step_<N>.json`.
With --dataset naming another dataset than the one trained on, the files
go to `<workdir>/evaluation/<dataset>/` instead. With --bundle, or with
--output, all results go to one JSON file. NaN values are written as null.
The command also prints each result with its chance rate.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

from absl import app
from absl import flags

from shared_encoder_jax import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_BUNDLE = flags.DEFINE_string(
    "bundle", None, "An exported bundle folder, instead of --workdir.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to evaluate; default: the latest.")
_SPLITS = flags.DEFINE_list(
    "splits", None, "Splits to evaluate; default: the data config's test "
    "split.")
_EVALUATORS = flags.DEFINE_list(
    "evaluators", ["retrieval"],
    "Evaluators to run: retrieval, zero_shot, linear_probe.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "TFDS dataset name (NAME or NAME/CONFIG); default: the "
    "workdir's training data. Required with --bundle.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory; default: the workdir's "
    "data.data_dir, or the base config's with --bundle.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON file for all results. Required with --bundle.")
_RECALL_KS = flags.DEFINE_list(
    "recall_ks", None, "Recall@K values for retrieval; default: the "
    "checkpoint's recall_ks, or 1,5,10,50,200 for a bundle.")
_PER_CLASS = flags.DEFINE_integer(
    "zero_shot_per_class", 200,
    "Maximum single-label examples per class for zero_shot.")
_PROBE_MAX_TRAIN = flags.DEFINE_integer(
    "probe_max_train", 2000,
    "Maximum training examples of the linear probe, split evenly by class.")
_PROBE_SHOTS = flags.DEFINE_list(
    "probe_shots", ["1", "4", "16", "full"],
    "Training examples per class of each linear probe; 'full' is all.")
_UNCERTAIN = flags.DEFINE_enum(
    "uncertain", "exclude", ["exclude", "ones", "zeros"],
    "Multi-label zero_shot: leave uncertain (-1) labels out of the AUROC, "
    "or count them as positive (ones) or negative (zeros).")
_BLANK_AS_NEGATIVE = flags.DEFINE_bool(
    "blank_as_negative", False,
    "Multi-label zero_shot: count blank (NaN) labels as negative instead "
    "of leaving them out.")


def _json_ready(value):
  """Replace NaN and infinities by None so the file is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {key: _json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(item) for item in value]
  return value


def _percent(value) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def format_result(name: str, label: str, metrics: dict) -> str:
  """Format one evaluator's metrics for the console, headed by `label`."""
  if name == "retrieval":
    return evaluation.format_metrics(label, metrics)
  lines = [f"{label} {name}:"]
  if name == "zero_shot":
    single = metrics.get("single_label")
    if single:
      lines.append(
          f"  single-label, {single['num_examples']} images: accuracy "
          f"{_percent(single['accuracy'])} (chance "
          f"{_percent(single['chance']['accuracy'])}), balanced accuracy "
          f"{_percent(single['balanced_accuracy'])}, macro F1 "
          f"{single['macro_f1']:.3f}")
    multi = metrics.get("multi_label")
    if multi:
      lines.append(
          f"  multi-label, {multi['num_examples']} images: macro AUROC "
          f"{multi['macro_auroc']:.3f} over {multi['num_labels_scored']} "
          "labels (chance 0.5)")
  elif name == "linear_probe":
    for shots, probe in metrics["probes"].items():
      lines.append(
          f"  {shots}: accuracy {_percent(probe['accuracy'])} (chance "
          f"{_percent(probe['chance']['accuracy'])}), balanced accuracy "
          f"{_percent(probe['balanced_accuracy'])}, macro F1 "
          f"{probe['macro_f1']:.3f}, C={probe['c']:g}")
  return "\n".join(lines)


def _options(recall_ks, zero_shot_per_class, probe_max_train, probe_shots,
             uncertain, blank_as_negative):
  from shared_encoder_jax import config as config_lib
  from shared_encoder_jax import evaluators as evaluators_lib

  shots = []
  for value in probe_shots:
    if str(value) == "full":
      shots.append(None)
    elif str(value).isdigit() and int(value) > 0:
      shots.append(int(value))
    else:
      raise config_lib.ConfigError(
          f"--probe_shots contains {value!r}; use positive integers or "
          "'full', e.g. --probe_shots=1,4,16,full.")
  return evaluators_lib.Options(
      recall_ks=tuple(int(k) for k in recall_ks) if recall_ks else None,
      zero_shot_per_class=zero_shot_per_class,
      probe_max_train=probe_max_train, probe_shots=tuple(shots),
      uncertain=uncertain, blank_as_negative=blank_as_negative)


def _data_config(base, dataset: str | None, data_dir: str | None):
  """Return a copy of `base` set to `dataset` and `data_dir` where given."""
  from shared_encoder_jax import config as config_lib

  data = base.copy_and_resolve_references()
  if dataset and dataset != base.name:
    fresh = config_lib.base_config().data
    # Another dataset: its own builder config, not the training one's.
    data.builder_config = fresh.builder_config
    data.manual_dir = fresh.manual_dir
    data.name = dataset
  if data_dir:
    data.data_dir = data_dir
  return data


def _result_path(workdir: str, subfolder: str | None, name: str, split: str,
                 step: int) -> str:
  directory = os.path.join(workdir, "evaluation")
  if subfolder:
    directory = os.path.join(directory, subfolder)
  file_name = (f"{split}_step_{step}.json" if name == "retrieval" else
               f"{name}_{split}_step_{step}.json")
  return os.path.join(directory, file_name)


def _write_json(path: str, content: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(_json_ready(content), f, indent=2)


def run_evaluation(workdir: str | None = None, bundle: str | None = None,
                   step: int | None = None,
                   evaluators: tuple[str, ...] = ("retrieval",),
                   splits: tuple[str, ...] | None = None,
                   dataset: str | None = None, data_dir: str | None = None,
                   output: str | None = None, options=None) -> dict:
  """Run the evaluators, write their JSON and return {evaluator: {split: ...}}.

  Exactly one of `workdir` and `bundle` is given; `dataset` and `output`
  are required with `bundle`. See the module docstring for the files.
  """
  import jax
  from shared_encoder_jax import config as config_lib
  from shared_encoder_jax import evaluators as evaluators_lib

  if (workdir is None) == (bundle is None):
    raise config_lib.ConfigError(
        "Pass exactly one of --workdir and --bundle.")
  unknown = sorted(set(evaluators) - set(evaluators_lib.EVALUATORS))
  if unknown:
    raise config_lib.ConfigError(
        f"--evaluators lists unknown evaluators {unknown}; choose from "
        f"{sorted(evaluators_lib.EVALUATORS)}.")
  if workdir is not None:
    embedder = evaluators_lib.CheckpointEmbedder(workdir, step)
    data = _data_config(embedder.config.data, dataset, data_dir)
    other_dataset = data.name != embedder.config.data.name
    subfolder = re.sub(r"[^A-Za-z0-9_.-]", "_", data.name) if (
        other_dataset) else None
  else:
    if not dataset or not output:
      raise config_lib.ConfigError(
          "--bundle needs --dataset (a TFDS name) and --output (a JSON "
          "file for the results).")
    embedder = evaluators_lib.BundleEmbedder(bundle)
    data = _data_config(config_lib.base_config().data, dataset, data_dir)
  data_set = evaluators_lib.Dataset.load(data)
  options = options or evaluators_lib.Options()
  primary = jax.process_index() == 0

  results = {}
  for name in evaluators:
    results[name] = {}
    for split in splits or [data.test_split]:
      metrics = evaluators_lib.evaluate(name, embedder, data_set, split,
                                        options)
      results[name][split] = metrics
      label = split
      if workdir is not None:
        label = f"{split} (step {embedder.step})"
      print(format_result(name, label, metrics))
      if workdir is not None and output is None and primary:
        path = _result_path(workdir, subfolder, name, split, embedder.step)
        _write_json(path, {"evaluator": name, "split": split,
                           "step": embedder.step, "dataset": data.name,
                           **metrics})
        print(f"Written to {path}")
  if output is not None and primary:
    _write_json(output, {"model": embedder.description,
                         "dataset": data.name, "results": results})
    print(f"Written to {output}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from shared_encoder_jax import evaluators as evaluators_lib
  from shared_encoder_jax.cli import console

  console.quiet_library_logs()
  with console.exit_on_user_error():
    try:
      run_evaluation(
          workdir=_WORKDIR.value, bundle=_BUNDLE.value, step=_STEP.value,
          evaluators=tuple(_EVALUATORS.value),
          splits=tuple(_SPLITS.value) if _SPLITS.value else None,
          dataset=_DATASET.value, data_dir=_DATA_DIR.value,
          output=_OUTPUT.value,
          options=_options(_RECALL_KS.value, _PER_CLASS.value,
                           _PROBE_MAX_TRAIN.value, _PROBE_SHOTS.value,
                           _UNCERTAIN.value, _BLANK_AS_NEGATIVE.value))
    except evaluators_lib.EvaluationError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)


def run():
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())

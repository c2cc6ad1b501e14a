"""Evaluate a training checkpoint on dataset splits (zero-shot retrieval).

  shared-encoder-evaluate --workdir=runs/shared_feature [--step=N] \
      [--splits=validation,test]

Writes `evaluation/<split>_step_<N>.json` in the workdir and prints the
recalls with their chance rates.
"""

import sys

from absl import app
from absl import flags

from shared_encoder_jax import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to evaluate; default: the latest.")
_SPLITS = flags.DEFINE_list(
    "splits", None, "Splits to evaluate; default: the config's test split.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from shared_encoder_jax import sharding as sharding_lib
  from shared_encoder_jax import train as train_lib
  from shared_encoder_jax.cli import console
  from shared_encoder_jax.data import input_pipeline

  console.quiet_library_logs()
  with console.exit_on_user_error():
    config, tokenizer, model, params, step = train_lib.load_trained(
        _WORKDIR.value, _STEP.value)
    builder = input_pipeline.load_builder(config.data)
    evaluate = train_lib.Evaluator(
        config, builder, input_pipeline.example_transform(config, tokenizer),
        model, sharding_lib.make_mesh(config.get("mesh")))
    for split in _SPLITS.value or [config.data.test_split]:
      metrics = evaluate(params, split)
      path = train_lib.write_evaluation(_WORKDIR.value, split, step, metrics)
      print(evaluation.format_metrics(f"{split} (step {step})", metrics))
      print(f"Written to {path}")


def run():
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())

"""Training speed fed by the input pipeline versus pre-made in-memory batches.

Trains the small shared config (batch 128 of 64x64 images, 4-layer width-128
encoder) twice over, in alternating rounds so that machine drift cancels:

  pipeline   batches from the real input pipeline: array_record reads, PNG
             decoding, resize and crop, normalisation and tokenisation in
             `data.num_threads` threads, this process's rows;
  in-memory  the same number of batches, pre-made once in host memory
             before timing.

Both copy batches to the devices with `BatchPlacement`, which normalises
the uint8 images there.

Both run the same jitted train step with asynchronous dispatch, as the
training loop does, and block on the result at the end of each round. The
decoding threads and the step compete for the same cores, so the ratio
shows whether decoding starves the step.

Run from the repository root (the embedded dataset is built on first use):

  python benchmarks/input_pipeline.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from shared_encoder_jax import config as config_lib  # noqa: E402
from shared_encoder_jax import model as model_lib  # noqa: E402
from shared_encoder_jax import optimizer as optimizer_lib  # noqa: E402
from shared_encoder_jax import sharding as sharding_lib  # noqa: E402
from shared_encoder_jax import tokenizer as tokenizer_lib  # noqa: E402
from shared_encoder_jax import train_step as train_step_lib  # noqa: E402
from shared_encoder_jax.data import input_pipeline  # noqa: E402


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5,
                      help="rounds of each kind, alternating")
  parser.add_argument("--steps", type=int, default=20,
                      help="training steps per round")
  parser.add_argument("--threads", type=int, default=None,
                      help="decoding threads (default: data.num_threads)")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data directory (default: data.data_dir)")
  return parser.parse_args()


def main():
  args = parse_args()
  config = config_lib.pmc_oa_experiment("small")
  if args.threads is not None:
    config.data.num_threads = args.threads
  if args.data_dir:
    config.data.data_dir = args.data_dir

  builder = input_pipeline.load_builder(config.data)
  source = input_pipeline.data_source(builder, config.data.train_split,
                                      skip_image=True)
  captions = input_pipeline.read_captions(
      builder, config.data.train_split, config.data.caption_key, 5000, 0)
  tokenizer = tokenizer_lib.train_tokenizer(
      captions, config.tokenizer.vocab_size, config.model.text_context)
  transform = input_pipeline.example_transform(config, tokenizer,
                                               training=True)

  mesh = sharding_lib.make_mesh(config.mesh)
  model = model_lib.build_model(config.model, tokenizer.vocab_size,
                                tokenizer.eos_id)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 10_000)
  shapes = train_step_lib.abstract_state(model, tx, config.seed)
  shardings = train_step_lib.state_shardings(mesh, shapes)
  state = train_step_lib.create_train_state(model, tx, mesh, config.seed)
  step_fn = train_step_lib.make_train_step(
      model, tx, schedule, mesh, shardings, config.loss.kind,
      config.loss.mode, config.num_micro_batches)
  data_sharding = sharding_lib.batch_sharding(mesh)
  rows = input_pipeline.process_rows(data_sharding, config.batch_size)
  dataset = input_pipeline.training_dataset(
      source, transform, config.batch_size, config.data.shuffle_seed,
      rows=rows)

  # Pre-made batches: decoded once, before any timing.
  premade = list(itertools.islice(input_pipeline.training_batches(
      dataset, 0, config.data.num_threads), args.steps))
  to_device = input_pipeline.batch_placement(config, data_sharding)
  state, _ = step_fn(state, to_device(premade[0]))
  jax.block_until_ready(state)  # compiled

  def run_round(batches):
    nonlocal state
    start = time.perf_counter()
    metrics = None
    for batch in itertools.islice(batches, args.steps):
      state, metrics = step_fn(state, to_device(batch))
    jax.block_until_ready((state, metrics))
    return args.steps / (time.perf_counter() - start)

  position = len(premade)
  pipeline_rates, memory_rates = [], []
  for round_number in range(args.rounds):
    # Each pipeline round starts a fresh iterator at a new position, as a
    # resumed run does, so the thread start-up is inside the timing.
    pipeline_rates.append(run_round(input_pipeline.training_batches(
        dataset, position, config.data.num_threads)))
    position += args.steps
    memory_rates.append(run_round(iter(premade)))
    print(f"round {round_number + 1}: pipeline "
          f"{pipeline_rates[-1]:.2f} steps/s, in-memory "
          f"{memory_rates[-1]:.2f} steps/s", flush=True)

  pipeline = statistics.median(pipeline_rates)
  memory = statistics.median(memory_rates)
  ratios = [p / m for p, m in zip(pipeline_rates, memory_rates)]
  print()
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{config.data.num_threads} decoding threads; batch "
        f"{config.batch_size}, {args.steps} steps x {args.rounds} rounds")
  print(f"pipeline   median {pipeline:.3f} steps/s "
        f"({pipeline * config.batch_size:.1f} examples/s), rounds "
        f"{min(pipeline_rates):.3f}-{max(pipeline_rates):.3f}")
  print(f"in-memory  median {memory:.3f} steps/s "
        f"({memory * config.batch_size:.1f} examples/s), rounds "
        f"{min(memory_rates):.3f}-{max(memory_rates):.3f}")
  print(f"ratio pipeline / in-memory: median of medians "
        f"{pipeline / memory:.3f}; per round {min(ratios):.3f}-"
        f"{max(ratios):.3f}")


if __name__ == "__main__":
  main()

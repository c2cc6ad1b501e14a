"""This codebase's train step against OpenCLIP's on the same model, side by side.

OpenCLIP (the `open_clip_torch` package, PyTorch) builds a two-tower CLIP
with exactly the tower dimensions, vocabulary and batch of a named setup, in
float32. The optimizer is AdamW with the same b1, b2, eps, learning rate and
weight decay, and the loss is the symmetric InfoNCE over the batch. The same process
layout runs this codebase's separate-encoder step and its shared-encoder
step. Each side is a long-lived worker process pinned to the same CPUs
(`--threads` of them, the same thread count on both sides), with
OMP_WAIT_POLICY=PASSIVE so that idle OpenMP threads sleep instead of
spinning. After warm-up the workers take turns (OpenCLIP, separate, shared,
OpenCLIP, ...) for `--rounds` rounds, so that drift of the machine touches
all sides alike. Reported per side: the median step time over all rounds
with its interquartile range, examples/s, and the throughput ratio to
OpenCLIP (median over rounds, with its range).

OpenCLIP lives in its own virtual environment, never in the project's:

  make install openclip-env     # once: .venv, and .venv-openclip with torch
  .venv/bin/python benchmarks/openclip_anchor.py --setup small
  .venv/bin/python benchmarks/openclip_anchor.py --setup b16

Run it on a quiet Linux machine (it pins processes to CPUs with
sched_setaffinity). The three workers stay alive together: B/16 needs about
15 GiB. See docs/performance.md for the numbers.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = os.path.join(REPO, ".venv-openclip", "bin", "python")
# Timed steps per turn and number of rounds, by setup.
DEFAULTS = {"small": (10, 7), "b16": (2, 5)}
SIDES = ("openclip", "separate", "shared")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--setup", default="small", choices=["small", "b16"])
  parser.add_argument("--rounds", type=int, default=0,
                      help="alternating rounds; 0: 7 for small, 5 for b16")
  parser.add_argument("--steps-per-turn", type=int, default=0,
                      help="timed steps per turn; 0: 10 for small, 2 for b16")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps per side after building")
  parser.add_argument("--threads", type=int, default=len(
      os.sched_getaffinity(0)), help="CPUs (and threads) for each side; "
      "the default is every CPU this process may use")
  parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON,
                      help="the Python of the OpenCLIP environment")
  parser.add_argument(
      "--torch-optimizer", default="fused",
      choices=["fused", "foreach", "for-loop"],
      help="torch's AdamW implementation (fused is its fastest on CPU)")
  parser.add_argument("--json", default="", help="also write results here")
  parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
  parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Workers. Each prints "ready" once built, compiled and warmed up, then reads
# "run N" lines and prints the N step times of each as a JSON list.

def _serve(run_steps):
  print("ready", flush=True)
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == "quit":
      break
    print(json.dumps(run_steps(int(command[1]))), flush=True)


def openclip_worker(spec: dict, threads: int, optimizer: str, warmup: int):
  """OpenCLIP's two-tower model, loss and AdamW on random inputs."""
  import numpy as np
  import torch
  from open_clip.loss import ClipLoss
  from open_clip.model import CLIP

  torch.set_num_threads(threads)
  torch.set_num_interop_threads(1)
  torch.manual_seed(0)
  mlp_ratio = spec["mlp_dim"] / spec["width"]
  model = CLIP(
      embed_dim=spec["embed_dim"],
      vision_cfg=dict(layers=spec["depth"], width=spec["width"],
                      head_width=spec["width"] // spec["num_heads"],
                      mlp_ratio=mlp_ratio, patch_size=spec["patch_size"],
                      image_size=spec["image_size"]),
      text_cfg=dict(context_length=spec["text_context"],
                    vocab_size=spec["vocab_size"], width=spec["width"],
                    heads=spec["num_heads"], layers=spec["depth"],
                    mlp_ratio=mlp_ratio))
  model.train()
  # OpenCLIP's training script: no weight decay on gains, biases and the
  # logit scale. Unlike this codebase it decays the token and position
  # embeddings, which changes no cost.
  no_decay = lambda name, p: (p.ndim < 2 or "bn" in name or "ln" in name or
                              "bias" in name or "logit_scale" in name)
  named = list(model.named_parameters())
  groups = [
      {"params": [p for n, p in named if no_decay(n, p)],
       "weight_decay": 0.0},
      {"params": [p for n, p in named if not no_decay(n, p)],
       "weight_decay": spec["weight_decay"]}]
  kind = {"fused": dict(fused=True), "foreach": dict(foreach=True),
          "for-loop": dict(foreach=False)}[optimizer]
  adamw = torch.optim.AdamW(groups, lr=spec["learning_rate"],
                            betas=(spec["b1"], spec["b2"]), eps=spec["eps"],
                            **kind)
  loss_fn = ClipLoss()
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.standard_normal(
      (spec["batch_size"], 3, spec["image_size"], spec["image_size"]),
      np.float32))
  tokens = torch.from_numpy(rng.integers(
      3, spec["vocab_size"], (spec["batch_size"], spec["text_context"])))

  def run_steps(count):
    times = []
    for _ in range(count):
      start = time.perf_counter()
      adamw.zero_grad(set_to_none=True)
      image_features, text_features, logit_scale = model(images, tokens)
      loss = loss_fn(image_features, text_features, logit_scale)
      loss.backward()
      adamw.step()
      loss.item()
      times.append(time.perf_counter() - start)
    return times

  run_steps(warmup)
  _serve(run_steps)


def jax_worker(setup: str, variant: str, warmup: int):
  """This codebase's train step (`train_step.make_train_step`)."""
  from shared_encoder_jax import step_benchmark

  step = step_benchmark.build_step(setup, variant)
  step.run(warmup)
  _serve(step.run)


# ---------------------------------------------------------------------------
# The driver.

def setup_spec(setup: str) -> dict:
  from shared_encoder_jax import step_benchmark

  fields = step_benchmark.model_fields(setup, "separate")
  spec = {k: fields[k] for k in ("image_size", "patch_size", "width",
                                 "depth", "num_heads", "mlp_dim",
                                 "text_context", "embed_dim")}
  spec.update(step_benchmark.OPTIMIZER,
              batch_size=step_benchmark.SETUPS[setup]["batch_size"],
              vocab_size=step_benchmark.SETUPS[setup]["vocab_size"])
  return spec


class Worker:
  """A worker process on the pinned CPUs, driven over stdin/stdout."""

  def __init__(self, side: str, args, spec: dict):
    python = args.torch_python if side == "openclip" else sys.executable
    command = [python, os.path.abspath(__file__), "--worker", side,
               "--setup", args.setup, "--threads", str(args.threads),
               "--warmup", str(args.warmup),
               "--torch-optimizer", args.torch_optimizer,
               "--spec", json.dumps(spec)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE",
               OMP_NUM_THREADS=str(args.threads), JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    self.side = side
    self.process = subprocess.Popen(command, env=env, text=True,
                                    stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
    self._expect_ready()

  def _expect_ready(self):
    line = self.process.stdout.readline().strip()
    if line != "ready":
      self.close()
      raise RuntimeError(
          f"The {self.side} worker exited before it was ready; its error is "
          f"above.")

  def run(self, count: int) -> list[float]:
    try:
      self.process.stdin.write(f"run {count}\n")
      self.process.stdin.flush()
      line = self.process.stdout.readline()
    except BrokenPipeError:
      line = ""
    if not line:
      raise RuntimeError(f"The {self.side} worker exited while running "
                         f"steps; its error is above.")
    return json.loads(line)

  def close(self):
    """Ask the worker to quit; kill it if it does not within 60 s."""
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.process.kill()
    self.process.wait()


def drive(args) -> dict:
  if not os.path.exists(args.torch_python):
    sys.exit(f"No OpenCLIP environment at {args.torch_python}: run "
             f"`make openclip-env` first (or pass --torch-python).")
  steps, rounds = DEFAULTS[args.setup]
  steps = args.steps_per_turn or steps
  rounds = args.rounds or rounds
  from shared_encoder_jax import step_benchmark

  spec = setup_spec(args.setup)
  print(f"{args.setup}: batch {spec['batch_size']}, {args.threads} threads, "
        f"{rounds} rounds of {steps} steps per side", file=sys.stderr)
  workers = {}
  try:
    for side in SIDES:
      print(f"starting {side} (build, compile, {args.warmup} warm-up "
            f"steps)", file=sys.stderr, flush=True)
      workers[side] = Worker(side, args, spec)
    times = {side: [] for side in SIDES}
    round_medians = {side: [] for side in SIDES}
    for r in range(rounds):
      for side in SIDES:
        measured = workers[side].run(steps)
        times[side] += measured
        round_medians[side].append(
            step_benchmark.summarize(measured)["median"])
      print(f"round {r + 1}/{rounds}: " + ", ".join(
          f"{side} {round_medians[side][-1]:.4f} s"
          for side in SIDES), file=sys.stderr, flush=True)
  finally:
    for worker in workers.values():
      worker.close()
  return summarize(args, spec, times, round_medians)


def summarize(args, spec, times, round_medians) -> dict:
  from shared_encoder_jax import step_benchmark

  batch = spec["batch_size"]
  result = {"setup": args.setup, "batch_size": batch,
            "threads": args.threads, "torch_optimizer": args.torch_optimizer,
            "sides": {}}
  for side in SIDES:
    timing = step_benchmark.summarize(times[side])
    ratios = [o / s for o, s in zip(round_medians["openclip"],
                                    round_medians[side])]
    result["sides"][side] = {
        "median_step_seconds": timing["median"], "q1": timing["q1"],
        "q3": timing["q3"],
        "examples_per_second": batch / timing["median"],
        "ratio_to_openclip": step_benchmark.summarize(ratios)["median"],
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "round_medians": round_medians[side]}
  return result


def print_result(result: dict) -> None:
  print(f"\n{result['setup']} (batch {result['batch_size']}, "
        f"{result['threads']} threads, torch AdamW "
        f"{result['torch_optimizer']})\n")
  print("| side | median step s (IQR) | examples/s | throughput vs OpenCLIP "
        "(range over rounds) |")
  print("|---|---|---|---|")
  names = {"openclip": "OpenCLIP", "separate": "this codebase, separate",
           "shared": "this codebase, shared"}
  for side, r in result["sides"].items():
    print(f"| {names[side]} | {r['median_step_seconds']:.4f} "
          f"({r['q1']:.4f}–{r['q3']:.4f}) | {r['examples_per_second']:.2f} | "
          f"{r['ratio_to_openclip']:.2f}× ({r['ratio_min']:.2f}–"
          f"{r['ratio_max']:.2f}) |")


def main():
  args = parse_args()
  if args.worker:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    if args.worker == "openclip":
      openclip_worker(json.loads(args.spec), args.threads,
                      args.torch_optimizer, args.warmup)
    else:
      jax_worker(args.setup, args.worker, args.warmup)
    return
  result = drive(args)
  print_result(result)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()

"""Building blocks of the train-step benchmarks in `benchmarks/`.

Builds the real train step (`train_step.make_train_step`) for a named setup
on random in-memory inputs, times it, counts its FLOPs analytically, measures
the machine's matmul ceiling, and splits a profile of the step into
attention, dense, elementwise, layout and optimizer time.

It imports only JAX, Flax, optax and NumPy (no ml_collections, TensorFlow or
grain), so `benchmarks/gpu_readiness.py` runs on accelerator machines that
have nothing else installed.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import resource
import tempfile
import time
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shared_encoder_jax import model as model_lib
from shared_encoder_jax import optimizer as optimizer_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train_step as train_step_lib
from shared_encoder_jax.model_sizes import MODEL_SIZES

# Named setups: model size, the benchmark's global batch (smaller than the
# experiment configs' 128 and 256, to fit 2 CPU cores), and the vocabulary
# of the experiment configs at this size (`config.pmc_oa_experiment`).
SETUPS = {
    "small": dict(size="small", batch_size=64, vocab_size=1000),
    "b16": dict(size="paper", batch_size=8, vocab_size=49408),
}
# Encoder variants: that of configs/pmc_oa_shared_feature.py and of
# configs/pmc_oa_separate.py.
VARIANTS = {
    "shared": dict(shared_layers="all", modality="feature"),
    "separate": dict(shared_layers="none", modality="none"),
}
# `base_config().optimizer`; tests/test_step_benchmark.py checks they agree.
OPTIMIZER = dict(learning_rate=5e-4, b1=0.9, b2=0.98, eps=1e-6,
                 weight_decay=0.2, warmup_steps=0, grad_clip_norm=0.0)
# The other `base_config().model` fields the benchmarks use.
MODEL_DEFAULTS = dict(image_channels=3, modality_dim=20,
                      num_modality_tokens=1, dtype="float32",
                      logit_scale_init=1 / 0.07, logit_scale_max=100.0,
                      use_logit_bias=False, logit_bias_init=0.0,
                      remat="none")
EOT_ID = 2


def model_fields(setup: str, variant: str, **overrides) -> dict[str, Any]:
  """Return the `config.model` fields of a named setup and encoder variant."""
  if setup not in SETUPS:
    raise ValueError(f"Unknown setup {setup!r}; choose from {sorted(SETUPS)}.")
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; choose from "
                     f"{sorted(VARIANTS)}.")
  fields = dict(MODEL_DEFAULTS, **MODEL_SIZES[SETUPS[setup]["size"]],
                **VARIANTS[variant])
  fields.update(overrides)
  return fields


def build_model(fields: dict[str, Any], vocab_size: int):
  """`model.build_model` without ml_collections: `shared_layers` is "all"
  or "none" here."""
  fields = dict(fields)
  spec = fields.pop("shared_layers")
  if spec not in ("all", "none"):
    raise ValueError(f"shared_layers must be 'all' or 'none' here, got "
                     f"{spec!r}.")
  shared = tuple(range(fields["depth"])) if spec == "all" else ()
  return model_lib.SharedEncoderCLIP(vocab_size=vocab_size, eot_id=EOT_ID,
                                     shared_layers=shared, **fields)


def random_batch(model, batch_size: int, seed: int = 0) -> dict[str, Any]:
  """Normalised-looking float32 images and token rows that end in EOT."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal(
      (batch_size, model.image_size, model.image_size, model.image_channels),
      np.float32)
  tokens = rng.integers(EOT_ID + 1, model.vocab_size,
                        (batch_size, model.text_context), np.int32)
  tokens[:, -1] = EOT_ID
  return {"image": images, "text": tokens}


@dataclasses.dataclass
class Step:
  """A compiled train step with its state, batch and model."""
  model: Any
  compiled: Any
  state: Any
  batch: dict[str, Any]
  batch_size: int
  compile_seconds: float
  lower_seconds: float
  num_devices: int

  def run(self, count: int) -> list[float]:
    """Run `count` steps; return the wall time of each, synchronised."""
    times = []
    for _ in range(count):
      start = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
    return times


def build_step(setup: str, variant: str, *, batch_size: int | None = None,
               dtype: str = "float32", mesh=None, **overrides) -> Step:
  """Build and compile the train step of a named setup on `mesh`."""
  fields = model_fields(setup, variant, dtype=dtype, **overrides)
  model = build_model(fields, SETUPS[setup]["vocab_size"])
  batch_size = batch_size or SETUPS[setup]["batch_size"]
  tx, schedule = optimizer_lib.make_optimizer(
      types.SimpleNamespace(**OPTIMIZER), total_steps=10_000)
  mesh = mesh or sharding_lib.make_mesh()
  shapes = train_step_lib.abstract_state(model, tx)
  shardings = train_step_lib.state_shardings(mesh, shapes)
  step = train_step_lib.make_train_step(model, tx, schedule, mesh, shardings)
  state = train_step_lib.create_train_state(model, tx, mesh, seed=0)
  batch = jax.device_put(random_batch(model, batch_size),
                         sharding_lib.batch_sharding(mesh))
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  return Step(model=model, compiled=compiled, state=state, batch=batch,
              batch_size=batch_size, compile_seconds=done - lowered_at,
              lower_seconds=lowered_at - start, num_devices=mesh.size)


def _tower_forward_flops(tokens: int, width: int, mlp_dim: int,
                         depth: int) -> int:
  """Forward FLOPs of `depth` pre-LN blocks on one sequence.

  Per block: Q, K, V and output projections 2·T·4·D², the MLP 2·T·2·D·M,
  the scores Q·Kᵀ and the weighted sum of values 2·2·T²·D. Causal text
  attention is counted in full, as XLA computes it.
  """
  return depth * (2 * tokens * (4 * width ** 2 + 2 * width * mlp_dim) +
                  4 * tokens ** 2 * width)


def analytic_flops(model, batch_size: int) -> dict[str, int]:
  """Matmul FLOPs of one train step, by the formula in the docstrings.

  Forward per example: both towers (`_tower_forward_flops`) with T_image =
  1 + modality tokens + patches and T_text = context + modality tokens, the
  patch embedding 2·patches·(p²·C)·D_embedding, and the two projections
  2·D·E each. Backward costs twice the forward (gradients with respect to
  activations and to weights), so a step is 3 × forward × batch, plus the
  B×B logits of the loss (2·B²·E, times 3). Elementwise work (LayerNorm,
  GELU, softmax, the optimizer) is not counted.
  """
  extra = model.num_modality_tokens if model.modality == "token" else 0
  image_tokens = 1 + extra + model.num_patches
  text_tokens = model.text_context + extra
  embedding_width = (model.width - model.modality_dim
                     if model.modality == "feature" else model.width)
  patch = (2 * model.num_patches * model.patch_size ** 2 *
           model.image_channels * embedding_width)
  towers = sum(_tower_forward_flops(tokens, model.width, model.mlp_dim,
                                    model.depth)
               for tokens in (image_tokens, text_tokens))
  projections = 2 * 2 * model.width * model.embed_dim
  forward = towers + patch + projections
  loss = 3 * 2 * batch_size ** 2 * model.embed_dim
  return {"per_example_forward": forward,
          "step": 3 * forward * batch_size + loss}


def xla_flops(step: Step) -> float | None:
  """Return XLA's own FLOP count of the step, where the backend has one.

  XLA counts the program of one device. Every device runs it on its part of
  the batch, so the step's count is that times the device count.
  """
  try:
    analysis = step.compiled.cost_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) * step.num_devices if flops else None


def model_matmul_shapes(model, batch_size: int) -> list[tuple[int, int, int]]:
  """List (m, k, n) of the model's largest dense matmuls at a batch size.

  Pass the per-device batch to get the shapes that one device runs.
  """
  rows = batch_size * (1 + model.num_patches)
  text_rows = batch_size * model.text_context
  width, mlp = model.width, model.mlp_dim
  return [(rows, width, mlp), (rows, mlp, width), (rows, width, width),
          (text_rows, width, mlp)]


# Square and rectangular shapes that run near peak on CPUs and GPUs.
FIXED_MATMUL_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048),
                       (4096, 4096, 4096), (8192, 1024, 4096))


def matmul_ceiling(shapes: Sequence[tuple[int, int, int]],
                   dtype=jnp.float32, seconds_per_shape: float = 0.5,
                   device=None) -> dict[str, Any]:
  """Measure the best rate of `shapes` (m, k, n) matmuls on one device.

  Each shape runs repeatedly for about `seconds_per_shape`, and its rate is
  the best of 3 such rounds. Returns the best rate and each shape's rate,
  in FLOP/s.
  """
  device = device or jax.devices()[0]
  matmul = jax.jit(jnp.matmul)
  rates = {}
  for m, k, n in shapes:
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((m, k), np.float32).astype(dtype),
                       device)
    b = jax.device_put(rng.standard_normal((k, n), np.float32).astype(dtype),
                       device)
    jax.block_until_ready(matmul(a, b))
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    single = max(time.perf_counter() - start, 1e-6)
    repeats = max(1, int(seconds_per_shape / single))
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(repeats):
        out = matmul(a, b)
      jax.block_until_ready(out)
      best = min(best, (time.perf_counter() - start) / repeats)
    rates[f"{m}x{k}x{n}"] = 2 * m * k * n / best
  return {"best": max(rates.values()), "by_shape": rates}


def memory(step: Step) -> dict[str, float | None]:
  """Report peak memory: XLA's estimate for one device, and the process's.

  `compiled_bytes` is the arguments, outputs and temporaries of the compiled
  step minus its aliased (donated) buffers. `device_peak_bytes` is the
  allocator's peak where the device reports one (GPU, TPU), and
  `process_max_rss_bytes` the host process's peak resident memory.
  """
  result: dict[str, float | None] = {"compiled_bytes": None,
                                     "device_peak_bytes": None}
  try:
    analysis = step.compiled.memory_analysis()
    result["compiled_bytes"] = float(
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
        analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  except Exception:  # Not every backend implements it.
    pass
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    result["device_peak_bytes"] = float(stats["peak_bytes_in_use"])
  result["process_max_rss_bytes"] = float(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return result


# ---------------------------------------------------------------------------
# Where the step's time goes, from a profile.

CATEGORIES = ("dense", "attention", "elementwise", "layout", "optimizer")
_CONTAINER_OPCODES = {"conditional", "while", "call", "async-start",
                      "async-done"}
_INSTRUCTION = re.compile(
    r"^\s+(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def _parse_hlo(text: str):
  """Instruction name -> (opcode, op_name, called computations)."""
  instructions, computations, current = {}, collections.defaultdict(list), ""
  for line in text.splitlines():
    if not line.startswith(" "):
      match = _COMPUTATION.match(line)
      if match:
        current = match.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode = match.group(1), match.group(2)
    op_name = re.search(r'op_name="([^"]*)"', line)
    called = re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)",
                        line)
    called += re.findall(r"branch_computations=\{([^}]*)\}", line)
    called = [c.strip().lstrip("%") for group in called
              for c in group.split(",")]
    instructions[name] = (opcode, op_name.group(1) if op_name else "",
                          called)
    computations[current].append(name)
  return instructions, computations


def _category(name, instructions, computations) -> str | None:
  """Classify one executed instruction; return None for containers."""
  opcode, op_name, called = instructions[name]
  if opcode in _CONTAINER_OPCODES:
    return None
  ops = [(opcode, op_name)]
  for computation in called:
    ops += [instructions[n][:2] for n in computations.get(computation, ())]
  names = " ".join(op for _, op in ops)
  opcodes = {code for code, _ in ops}
  if "/optimizer/" in names:
    return "optimizer"
  if "/attention/core/" in names:
    return "attention"
  if opcodes & {"dot", "convolution", "custom-call"}:
    return "dense"
  if opcodes & {"copy", "transpose"} and not opcodes - {
      "copy", "transpose", "bitcast", "parameter", "fusion", "reshape"}:
    return "layout"
  return "elementwise"


def _trace_events(trace_dir: str) -> list[dict]:
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                           recursive=True))
  if not files:
    return []
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def time_breakdown(step: Step, steps: int = 2) -> dict[str, Any] | None:
  """Split the step's kernel time into categories, from a JAX profile.

  Profiles `steps` steps and matches each executed HLO instruction by name
  to its op_name metadata. XLA's CPU thunks carry the instruction names.
  NOTE: GPU and TPU profiles were not checked; there the result may be None.
  The categories:
    * "optimizer": everything under the train step's `optimizer` scope;
    * "attention": the attention core (scores, softmax, weighted sum), while
      the Q, K, V and output projections count as dense;
    * "dense": the other matmuls and convolutions;
    * "layout": copies and transposes;
    * "elementwise": the rest (LayerNorm, GELU, residual adds, the loss,
      gathers).
  Shares are of the summed instruction time, and instructions that run
  concurrently each count in full. Returns None when the profile has no
  per-instruction events.
  """
  instructions, computations = _parse_hlo(step.compiled.as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    try:
      step.run(steps)
    finally:
      jax.profiler.stop_trace()
    events = _trace_events(trace_dir)
  totals = collections.Counter()
  for event in events:
    name = event.get("name")
    if event.get("ph") != "X" or name not in instructions:
      continue
    category = _category(name, instructions, computations)
    if category:
      totals[category] += event.get("dur", 0)
  total = sum(totals.values())
  if not total:
    return None
  return {"shares": {c: totals[c] / total for c in CATEGORIES},
          "seconds_per_step": total / 1e6 / steps}


def summarize(times: Sequence[float]) -> dict[str, float]:
  """Median step time with its spread (interquartile range, min, max)."""
  times = np.asarray(times)
  q1, median, q3 = np.percentile(times, [25, 50, 75])
  return {"median": float(median), "q1": float(q1), "q3": float(q3),
          "min": float(times.min()), "max": float(times.max()),
          "count": int(times.size)}


def measure(step: Step, *, warmup: int, steps: int,
            ceiling: float | None = None,
            profile: bool = True,
            progress: Callable[[str], None] = lambda _: None
            ) -> dict[str, Any]:
  """Time `steps` steps after `warmup`, and report rates and the profile.

  `ceiling` is the FLOP/s that all of the step's devices together could
  reach: one device's matmul rate times the device count on accelerators,
  one device's rate for host devices that share the same cores.
  """
  progress(f"warm-up ({warmup} steps)")
  step.run(warmup)
  progress(f"timing ({steps} steps)")
  timing = summarize(step.run(steps))
  flops = analytic_flops(step.model, step.batch_size)
  achieved = flops["step"] / timing["median"]
  result = {
      "step_seconds": timing,
      "examples_per_second": step.batch_size / timing["median"],
      "compile_seconds": step.compile_seconds,
      "lower_seconds": step.lower_seconds,
      "flops_per_step": flops["step"],
      "xla_flops_per_step": xla_flops(step),
      "achieved_flops_per_second": achieved,
      "ceiling_flops_per_second": ceiling,
      "ceiling_fraction": achieved / ceiling if ceiling else None,
      "memory": memory(step),
  }
  if profile:
    progress("profiling")
    result["breakdown"] = time_breakdown(step)
  return result

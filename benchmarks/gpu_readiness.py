"""One short run of the shared ViT-B/16 (`paper` size) train step on an accelerator.

Measures, at batch 256 in bfloat16 compute (float32 parameters and
optimizer state, float32 loss):
  * compile time, and the median step time over `--steps` steps after
    `--warmup`, with examples/s;
  * the analytic FLOPs per step (`step_benchmark.analytic_flops`) and the
    model FLOP utilisation (MFU) against two peaks: the best bf16 matmul
    rate measured here (fixed shapes plus the model's own) and the
    datasheet's dense bf16 peak for the device (`--peak-tflops` overrides);
  * peak device memory;
  * the same with `joint_shared_layers` (each shared layer run once over
    both modalities' tokens), unless `--no-joint`.

It needs only JAX, Flax, optax and NumPy, and this repository on the path:
the accelerator machines have no TensorFlow, TFDS, grain or ml_collections.

  python benchmarks/gpu_readiness.py               # B/16, batch 256, bf16
  python benchmarks/gpu_readiness.py --json gpu.json

On a machine without an accelerator it refuses to run unless
`--allow-cpu` (used by the test with `--setup small`).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# Dense bf16 peak without sparsity, TFLOP/s, by a substring of
# `jax.devices()[0].device_kind`. NOTE: these are the vendors' published
# figures as commonly quoted (H100/H200 SXM, A100, L4, TPU v4-v6e), not
# re-checked against a datasheet here; --peak-tflops overrides them.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0),
    ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5", 197.0),
    ("TPU v4", 275.0),
)
BF16_SHAPES = ((4096, 4096, 4096), (8192, 8192, 8192))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--setup", default="b16", choices=["small", "b16"])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dtype", default="bfloat16",
                      choices=["bfloat16", "float32"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="datasheet peak; 0: look up the device kind")
  parser.add_argument("--no-joint", action="store_true",
                      help="skip the joint-shared-layers measurement")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run on CPU (for testing the script)")
  parser.add_argument("--json", default="", help="also write results here")
  return parser.parse_args(argv)


def datasheet_peak(device_kind: str) -> float | None:
  for name, tflops in DATASHEET_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops * 1e12
  return None


def main():
  args = parse_args()
  import jax
  import jax.numpy as jnp
  from shared_encoder_jax import step_benchmark

  device = jax.devices()[0]
  if device.platform == "cpu" and not args.allow_cpu:
    sys.exit("No accelerator found (JAX sees only the CPU). Run this on a "
             "GPU or TPU machine, or pass --allow-cpu to test the script.")
  print(f"device: {device.device_kind} ({device.platform}), "
        f"{jax.device_count()} device(s), jax {jax.__version__}", flush=True)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  peak = (args.peak_tflops * 1e12 if args.peak_tflops else
          datasheet_peak(device.device_kind))

  results = []
  for joint in ([False] if args.no_joint else [False, True]):
    label = "joint" if joint else "per modality"
    print(f"shared layers {label}: compiling", flush=True)
    step = step_benchmark.build_step(args.setup, "shared",
                                     batch_size=args.batch, dtype=args.dtype,
                                     joint_shared_layers=joint)
    if not results:
      shapes = list(BF16_SHAPES if device.platform != "cpu" else []) + (
          step_benchmark.model_matmul_shapes(step.model, args.batch))
      ceiling = step_benchmark.matmul_ceiling(shapes, dtype=dtype)
      print(f"measured {args.dtype} matmul ceiling: "
            f"{ceiling['best'] / 1e12:.1f} TFLOP/s", flush=True)
    result = step_benchmark.measure(step, warmup=args.warmup,
                                    steps=args.steps,
                                    ceiling=ceiling["best"], profile=False)
    achieved = result["achieved_flops_per_second"]
    result.update(joint_shared_layers=joint, device=device.device_kind,
                  dtype=args.dtype, batch_size=args.batch,
                  datasheet_peak_flops_per_second=peak,
                  mfu_measured=achieved / ceiling["best"],
                  mfu_datasheet=achieved / peak if peak else None,
                  ceiling_by_shape=ceiling["by_shape"])
    results.append(result)
    memory = result["memory"]
    peak_bytes = memory["device_peak_bytes"] or memory["compiled_bytes"]
    t = result["step_seconds"]
    print(f"shared layers {label}: step {t['median'] * 1e3:.1f} ms "
          f"(IQR {t['q1'] * 1e3:.1f}-{t['q3'] * 1e3:.1f}), "
          f"{result['examples_per_second']:.0f} examples/s, compile "
          f"{result['compile_seconds']:.1f} s, "
          f"{achieved / 1e12:.1f} TFLOP/s, MFU {100 * result['mfu_measured']:.1f}% "
          f"of measured matmul, "
          + (f"{100 * result['mfu_datasheet']:.1f}% of datasheet "
             f"{peak / 1e12:.0f} TFLOP/s" if peak else
             "no datasheet peak for this device (pass --peak-tflops)")
          + (f", peak memory {peak_bytes / 2 ** 30:.1f} GiB"
             if peak_bytes else ""), flush=True)
    del step
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()

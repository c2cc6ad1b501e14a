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

With several devices the batch is split over all of them and the MFU
compares against the per-device peaks times the device count.

On a machine without an accelerator it refuses to run unless
`--allow-cpu` (used by the test with `--setup small`).
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# Dense bf16 peak per device without sparsity, TFLOP/s, for the first
# regular expression that matches `jax.devices()[0].device_kind` (more
# specific names first). NOTE: these are the vendors' published figures as
# commonly quoted, not re-checked against a datasheet here; --peak-tflops
# overrides them.
DATASHEET_BF16_TFLOPS = (
    (r"H100 PCIe", 756.0), (r"H100 NVL", 835.0), (r"\bH100\b", 989.0),
    (r"\bH200\b", 989.0), (r"\bA100\b", 312.0), (r"\bL4\b", 121.0),
    (r"TPU v6 lite", 918.0), (r"TPU v5 lite", 197.0), (r"TPU v5p?$", 459.0),
    (r"TPU v4\b", 275.0),
)
BF16_SHAPES = ((4096, 4096, 4096), (8192, 8192, 8192))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--setup", default="b16", choices=["small", "b16"])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dtype", default="bfloat16",
                      choices=["bfloat16", "float32"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps before timing")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="peak TFLOP/s of one device; 0: look up the "
                      "device kind (bf16 only)")
  parser.add_argument("--no-joint", action="store_true",
                      help="skip the joint-shared-layers measurement")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run on CPU (for testing the script)")
  parser.add_argument("--json", default="", help="also write results here")
  return parser.parse_args(argv)


def datasheet_peak(device_kind: str) -> float | None:
  """Return the bf16 peak FLOP/s of one device of this kind, if known."""
  for pattern, tflops in DATASHEET_BF16_TFLOPS:
    if re.search(pattern, device_kind):
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
  # The step's devices together; host devices would share the same cores.
  devices = jax.device_count() if device.platform != "cpu" else 1
  if args.peak_tflops:
    peak = args.peak_tflops * 1e12 * devices
  elif args.dtype == "bfloat16" and datasheet_peak(device.device_kind):
    peak = datasheet_peak(device.device_kind) * devices
  else:
    peak = None

  results = []
  for joint in ([False] if args.no_joint else [False, True]):
    label = "joint" if joint else "per modality"
    print(f"shared layers {label}: compiling", flush=True)
    step = step_benchmark.build_step(args.setup, "shared",
                                     batch_size=args.batch, dtype=args.dtype,
                                     joint_shared_layers=joint)
    if not results:
      shapes = list(BF16_SHAPES if device.platform != "cpu" else []) + (
          step_benchmark.model_matmul_shapes(step.model,
                                             args.batch // step.num_devices))
      ceiling = step_benchmark.matmul_ceiling(shapes, dtype=dtype)
      print(f"measured {args.dtype} matmul ceiling: "
            f"{ceiling['best'] / 1e12:.1f} TFLOP/s per device", flush=True)
      measured_peak = ceiling["best"] * devices
    result = step_benchmark.measure(step, warmup=args.warmup,
                                    steps=args.steps, ceiling=measured_peak,
                                    profile=False)
    achieved = result["achieved_flops_per_second"]
    result.update(joint_shared_layers=joint, device=device.device_kind,
                  devices=devices, dtype=args.dtype, batch_size=args.batch,
                  datasheet_peak_flops_per_second=peak,
                  mfu_measured=achieved / measured_peak,
                  mfu_datasheet=achieved / peak if peak else None,
                  ceiling_by_shape=ceiling["by_shape"])
    results.append(result)
    memory = result["memory"]
    if memory["device_peak_bytes"]:
      # The allocator's peak since the process started, over every run.
      memory_text = (f", device memory peak so far "
                     f"{memory['device_peak_bytes'] / 2 ** 30:.1f} GiB")
    elif memory["compiled_bytes"]:
      memory_text = (f", XLA's memory estimate "
                     f"{memory['compiled_bytes'] / 2 ** 30:.1f} GiB")
    else:
      memory_text = ""
    t = result["step_seconds"]
    print(f"shared layers {label}: step {t['median'] * 1e3:.1f} ms "
          f"(IQR {t['q1'] * 1e3:.1f}-{t['q3'] * 1e3:.1f}), "
          f"{result['examples_per_second']:.0f} examples/s, compile "
          f"{result['compile_seconds']:.1f} s, "
          f"{achieved / 1e12:.1f} TFLOP/s, MFU {100 * result['mfu_measured']:.1f}% "
          f"of measured matmul, "
          + (f"{100 * result['mfu_datasheet']:.1f}% of datasheet "
             f"{peak / 1e12:.0f} TFLOP/s" if peak else
             "no datasheet peak for this device and dtype (pass "
             "--peak-tflops)") + memory_text, flush=True)
    del step
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()

"""Measure the train step's speed against the machine's matmul ceiling.

Reports time, throughput, FLOP/s against the matmul ceiling, where the time
goes, and memory.

The named setups are `small`, the CPU config at batch 64, and `b16`,
ViT-B/16 towers (the `paper` size) at batch 8. The encoder variants are
`shared` (all layers shared, with modality features) and `separate` (two
towers). The device counts are 1 and 8 forced host devices with the batch
split over them. For each combination the script compiles the real train
step on random in-memory inputs and reports:
  * compile time (persistent compilation cache off);
  * median step time over `--steps` steps after `--warmup`, with its spread,
    and examples per second;
  * the analytic FLOPs per step (`step_benchmark.analytic_flops`; XLA's own
    count beside it), the achieved FLOP/s, and that as a fraction of the
    ceiling: the best f32 matmul rate of a fixed set of shapes plus the
    model's own, measured in the same process;
  * the share of attention, dense, elementwise, layout and optimizer time
    in a profile of two steps;
  * peak memory (XLA's estimate per device and the process's peak RSS).

With several devices the mesh is `fsdp` by default: the batch is split over
the devices and so are the parameters and optimizer state. (Replicated
over 8 host devices, B/16's state and gradients need about 27 GiB.)

Each measurement runs in its own process (the host device count is fixed
when JAX starts), so a failure loses one row. Run from the repository root
on a quiet machine:

  .venv/bin/python benchmarks/train_step.py                # everything
  .venv/bin/python benchmarks/train_step.py --setups small --devices 1
  .venv/bin/python benchmarks/train_step.py --json results.json

The full run takes about 10 minutes on 2 cores and needs about 15 GiB of
memory (B/16 on 8 devices). See docs/performance.md.
"""

import argparse
import json
import os
import subprocess
import sys

DEFAULT_STEPS = {"small": 30, "b16": 6}
RESULT_PREFIX = "RESULT "
MIB = 2 ** 20


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--setups", nargs="+", default=["small", "b16"],
                      choices=["small", "b16"])
  parser.add_argument("--variants", nargs="+",
                      default=["separate", "shared"],
                      choices=["separate", "shared"])
  parser.add_argument("--devices", nargs="+", type=int, default=[1, 8],
                      help="host device counts, each in its own process")
  parser.add_argument("--mesh", default="fsdp", choices=["fsdp", "data"],
                      help="mesh axis of the devices when there are several")
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps; 0: 30 for small, 6 for b16")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps before timing")
  parser.add_argument("--no-profile", action="store_true",
                      help="skip the time breakdown")
  parser.add_argument("--json", default="",
                      help="also write every result to this JSON file")
  parser.add_argument("--child", action="store_true",
                      help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def run_child(args):
  """Measure one setup and variant on this process's devices."""
  import jax
  from shared_encoder_jax import sharding as sharding_lib
  from shared_encoder_jax import step_benchmark

  devices = jax.device_count()
  setup, variant = args.setups[0], args.variants[0]
  log = lambda msg: print(f"[{devices} device(s)] {setup}/{variant}: {msg}",
                          file=sys.stderr, flush=True)
  axes = {"data": 1, "fsdp": 1, "tensor": 1}
  axes[args.mesh] = -1
  log("compiling")
  step = step_benchmark.build_step(setup, variant,
                                   mesh=sharding_lib.make_mesh(axes))
  shapes = (list(step_benchmark.FIXED_MATMUL_SHAPES) +
            step_benchmark.model_matmul_shapes(
                step.model, step.batch_size // step.num_devices))
  log("measuring the matmul ceiling")
  ceiling = step_benchmark.matmul_ceiling(shapes)
  result = step_benchmark.measure(
      step, warmup=args.warmup, steps=args.steps or DEFAULT_STEPS[setup],
      ceiling=ceiling["best"], profile=not args.no_profile, progress=log)
  result.update(setup=setup, variant=variant, devices=devices,
                mesh=args.mesh if devices > 1 else "-",
                batch_size=step.batch_size,
                ceiling_by_shape=ceiling["by_shape"])
  print(RESULT_PREFIX + json.dumps(result))


def spawn(args, devices: int, setup: str, variant: str) -> dict | None:
  """Run one measurement in a child process; None if it failed."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  env.setdefault("JAX_PLATFORMS", "cpu")
  # Compile times are those without the persistent compilation cache.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  command = [sys.executable, os.path.abspath(__file__), "--child",
             "--setups", setup, "--variants", variant, "--mesh", args.mesh,
             "--steps", str(args.steps), "--warmup", str(args.warmup)]
  if args.no_profile:
    command.append("--no-profile")
  child = subprocess.run(command, env=env, text=True, stdout=subprocess.PIPE)
  lines = [line for line in child.stdout.splitlines()
           if line.startswith(RESULT_PREFIX)]
  if child.returncode != 0 or not lines:
    if child.returncode == -9:
      reason = "killed by SIGKILL, usually for lack of memory"
    elif child.returncode < 0:
      reason = f"killed by signal {-child.returncode}"
    else:
      reason = f"exit status {child.returncode}, error above"
    print(f"[{devices} device(s)] {setup}/{variant}: failed ({reason}); "
          f"its row is missing.", file=sys.stderr, flush=True)
    return None
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def _gflops(value):
  return f"{value / 1e9:.1f}" if value else "-"


def print_speed_table(results: list[dict]) -> None:
  print("\n## Step time and throughput\n")
  print("| setup | variant | devices (mesh) | batch | median step s (IQR) | "
        "examples/s | compile s | GFLOP/step (XLA) | GFLOP/s | "
        "ceiling GFLOP/s | of ceiling |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    t = r["step_seconds"]
    print(f"| {r['setup']} | {r['variant']} | {r['devices']} ({r['mesh']}) | "
          f"{r['batch_size']} | {t['median']:.4f} ({t['q1']:.4f}–"
          f"{t['q3']:.4f}) | {r['examples_per_second']:.1f} | "
          f"{r['compile_seconds']:.1f} | {_gflops(r['flops_per_step'])} "
          f"({_gflops(r['xla_flops_per_step'])}) | "
          f"{_gflops(r['achieved_flops_per_second'])} | "
          f"{_gflops(r['ceiling_flops_per_second'])} | "
          f"{100 * r['ceiling_fraction']:.0f}% |")


def print_breakdown_table(results: list[dict]) -> None:
  print("\n## Where the time goes (share of summed kernel time)\n")
  print("| setup | variant | devices | kernel s/step | dense | attention | "
        "elementwise | layout | optimizer |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    breakdown = r.get("breakdown")
    if not breakdown:
      continue
    seconds = breakdown["seconds_per_step"]
    cells = " | ".join(
        f"{100 * breakdown['shares'][c]:.0f}% "
        f"({seconds * breakdown['shares'][c]:.3f} s)"
        for c in ("dense", "attention", "elementwise", "layout",
                  "optimizer"))
    print(f"| {r['setup']} | {r['variant']} | {r['devices']} | "
          f"{seconds:.3f} | {cells} |")
  print("\nKernel time is summed over the kernels of a profiled step. "
        "Kernels that overlap each count in full, and profiling slows the "
        "step, so it can exceed the step time.")


def print_memory_table(results: list[dict]) -> None:
  print("\n## Memory\n")
  print("| setup | variant | devices | XLA estimate per device MiB | "
        "process peak RSS MiB |")
  print("|---|---|---|---|---|")
  for r in results:
    m = r["memory"]
    estimate = (f"{m['compiled_bytes'] / MIB:.0f}"
                if m["compiled_bytes"] else "-")
    print(f"| {r['setup']} | {r['variant']} | {r['devices']} | {estimate} | "
          f"{m['process_max_rss_bytes'] / MIB:.0f} |")


def print_tables(results: list[dict]) -> None:
  print_speed_table(results)
  if any(r.get("breakdown") for r in results):
    print_breakdown_table(results)
  print_memory_table(results)

  print("\nCeiling: the best float32 matmul rate on one device of these "
        "shapes (m×k×n), the model's own at the per-device batch last:")
  printed_shapes = set()
  for r in results:
    shapes = ", ".join(r["ceiling_by_shape"])
    if shapes not in printed_shapes:
      printed_shapes.add(shapes)
      print(f"- {r['setup']}, {r['devices']} device(s): {shapes}")


def main():
  args = parse_args()
  if args.child:
    run_child(args)
    return
  results = []
  for devices in args.devices:
    for setup in args.setups:
      for variant in args.variants:
        result = spawn(args, devices, setup, variant)
        if result:
          results.append(result)
  if not results:
    sys.exit("Every measurement failed; see the messages above.")
  print_tables(results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()

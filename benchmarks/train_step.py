"""Speed of the train step: time, throughput, FLOP/s against the matmul
ceiling, where the time goes, and memory.

For each named setup (`small`: the CPU config at batch 64; `b16`: the
paper's ViT-B/16 towers at batch 8), each encoder variant (`shared`: all
layers shared with modality features; `separate`: two towers) and each
device count (1, and 8 forced host devices with the batch split over them),
it compiles the real train step on random in-memory inputs and reports:
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

Each device count runs in its own process (the host device count is fixed
when JAX starts). Run from the repository root on a quiet machine:

  python benchmarks/train_step.py                       # everything
  python benchmarks/train_step.py --setups small --devices 1
  python benchmarks/train_step.py --json results.json   # also save results

The full run takes about 10 minutes on 2 cores. See docs/performance.md.
"""

import argparse
import json
import os
import subprocess
import sys

DEFAULT_STEPS = {"small": 30, "b16": 6}
MIB = 2 ** 20


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--setups", nargs="+", default=["small", "b16"],
                      choices=["small", "b16"])
  parser.add_argument("--variants", nargs="+",
                      default=["separate", "shared"],
                      choices=["separate", "shared"])
  parser.add_argument("--devices", nargs="+", type=int, default=[1, 8],
                      help="host device counts, each in its own process")
  parser.add_argument("--steps", type=int, default=0,
                      help="timed steps; 0: 30 for small, 6 for b16")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--no-profile", action="store_true",
                      help="skip the time breakdown")
  parser.add_argument("--json", default="",
                      help="also write every result to this JSON file")
  parser.add_argument("--child", action="store_true",
                      help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def run_child(args):
  """Measure every setup × variant on this process's devices."""
  import jax
  from shared_encoder_jax import step_benchmark

  devices = jax.device_count()
  log = lambda msg: print(f"[{devices} device(s)] {msg}", file=sys.stderr,
                          flush=True)
  results = []
  for setup in args.setups:
    for variant in args.variants:
      log(f"{setup}/{variant}: compiling")
      step = step_benchmark.build_step(setup, variant)
      shapes = (list(step_benchmark.FIXED_MATMUL_SHAPES) +
                step_benchmark.model_matmul_shapes(step.model,
                                                   step.batch_size))
      log(f"{setup}/{variant}: measuring the matmul ceiling")
      ceiling = step_benchmark.matmul_ceiling(shapes)
      result = step_benchmark.measure(
          step, warmup=args.warmup,
          steps=args.steps or DEFAULT_STEPS[setup],
          ceiling=ceiling["best"], profile=not args.no_profile,
          progress=lambda msg, s=setup, v=variant: log(f"{s}/{v}: {msg}"))
      result.update(setup=setup, variant=variant, devices=devices,
                    batch_size=step.batch_size,
                    ceiling_by_shape=ceiling["by_shape"])
      results.append(result)
      del step
  print(json.dumps(results))


def spawn(args, devices: int) -> list[dict]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  env.setdefault("JAX_PLATFORMS", "cpu")
  command = [sys.executable, os.path.abspath(__file__), "--child",
             "--setups", *args.setups, "--variants", *args.variants,
             "--steps", str(args.steps), "--warmup", str(args.warmup)]
  if args.no_profile:
    command.append("--no-profile")
  output = subprocess.run(command, env=env, check=True, text=True,
                          stdout=subprocess.PIPE).stdout
  return json.loads(output.strip().splitlines()[-1])


def _gflops(value):
  return f"{value / 1e9:.1f}" if value else "-"


def print_tables(results: list[dict]) -> None:
  print("\n## Step time and throughput\n")
  print("| setup | variant | devices | batch | median step s (IQR) | "
        "examples/s | compile s | GFLOP/step (XLA) | GFLOP/s | "
        "ceiling GFLOP/s | of ceiling |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    t = r["step_seconds"]
    print(f"| {r['setup']} | {r['variant']} | {r['devices']} | "
          f"{r['batch_size']} | {t['median']:.4f} ({t['q1']:.4f}–"
          f"{t['q3']:.4f}) | {r['examples_per_second']:.1f} | "
          f"{r['compile_seconds']:.1f} | {_gflops(r['flops_per_step'])} "
          f"({_gflops(r['xla_flops_per_step'])}) | "
          f"{_gflops(r['achieved_flops_per_second'])} | "
          f"{_gflops(r['ceiling_flops_per_second'])} | "
          f"{100 * r['ceiling_fraction']:.0f}% |")
  if any(r.get("breakdown") for r in results):
    print("\n## Where the time goes (share of summed kernel time)\n")
    print("| setup | variant | devices | dense | attention | elementwise | "
          "layout | optimizer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
      shares = (r.get("breakdown") or {}).get("shares")
      if not shares:
        continue
      cells = " | ".join(f"{100 * shares[c]:.0f}%" for c in
                         ("dense", "attention", "elementwise", "layout",
                          "optimizer"))
      print(f"| {r['setup']} | {r['variant']} | {r['devices']} | {cells} |")
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
  print("\nCeiling: best f32 matmul rate of "
        + ", ".join(results[0]["ceiling_by_shape"]) + " (m×k×n).")


def main():
  args = parse_args()
  if args.child:
    run_child(args)
    return
  results = []
  for devices in args.devices:
    results += spawn(args, devices)
  print_tables(results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()

"""Per-device memory of the sharded contrastive losses, from compilation only.

Compiles `jax.value_and_grad` of each loss mode (clip full, clip local,
siglip full, siglip chunked) on 8 forced host CPU devices, with abstract
inputs (`jax.ShapeDtypeStruct` with shardings, so nothing is allocated), and
prints the per-device sizes from `compiled.memory_analysis()`.

The first table sweeps the global batch on 8 devices. There local = global/8
and chunk = local, so every mode is quadratic in the global batch, and its
growth per doubling approaches 4x once the [rows, columns] blocks outweigh
the [batch, dim] terms. The modes differ by constant factors: global²,
global²/8 and global²/64. The second table keeps the local batch fixed and
varies the device count n, which separates the growth orders: full ~ n²,
local ~ n, chunked ~ constant.

The numbers come from the CPU compiler's buffer assignment. GPU and TPU
compilers fuse differently, so for them the sizes are estimates.

Run from the repository root: python benchmarks/loss_memory.py
"""

import os

# Must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from shared_encoder_jax import sharded_loss as sharded_loss_lib  # noqa: E402

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
MIB = 2 ** 20


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--global-batches", type=int, nargs="+",
      default=[1024, 2048, 4096, 8192, 16384, 32768],
      help="global batch sizes for the 8-device sweep")
  parser.add_argument("--dim", type=int, default=512,
                      help="embedding dimension")
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"],
                      help="dtype of the embeddings")
  parser.add_argument(
      "--mesh", default="8,1,1",
      help="data,fsdp,tensor sizes of the mesh for the batch sweep, whose "
           "product must be 8")
  parser.add_argument(
      "--local-batch", type=int, default=2048,
      help="per-device batch for the device-count sweep; 0 skips it")
  parser.add_argument("--forward-only", action="store_true",
                      help="compile the loss alone, without its gradient")
  return parser.parse_args()


def make_mesh(shape):
  devices = np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape)
  return Mesh(devices, MESH_AXES)


def compile_loss(mesh, kind, mode, global_batch, dim, dtype, forward_only):
  """Compile one loss mode and return its memory analysis and seconds."""
  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, kind, mode)
  embeddings = jax.ShapeDtypeStruct(
      (global_batch, dim), dtype, sharding=NamedSharding(mesh, P(BATCH_AXES)))
  scalar = jax.ShapeDtypeStruct((), jnp.float32,
                                sharding=NamedSharding(mesh, P()))
  num_scalars = 1 if kind == "clip" else 2
  args = (embeddings, embeddings) + (scalar,) * num_scalars
  if not forward_only:
    loss_fn = jax.value_and_grad(loss_fn, argnums=tuple(range(len(args))))

  start = time.perf_counter()
  compiled = jax.jit(loss_fn).lower(*args).compile()
  return compiled.memory_analysis(), time.perf_counter() - start


def format_ratio(value, previous):
  if previous is None or previous == 0:
    return "-"
  return f"{value / previous:.2f}x"


def print_table(rows, size_column):
  header = (f"{'mode':<15} {size_column:>12} {'temp MiB':>11} {'growth':>7} "
            f"{'args MiB':>9} {'compile s':>9}")
  print(header)
  print("-" * len(header))
  for row in rows:
    print(f"{row['mode']:<15} {row['size']:>12} {row['temp']:>11.1f} "
          f"{row['growth']:>7} {row['args']:>9.1f} "
          f"{row['seconds']:>9.1f}")


def sweep(meshes_and_batches, args, dtype, size_column):
  """Compile every mode for each (label, mesh, global batch), print a table."""
  rows = []
  for kind, mode in sharded_loss_lib.VALID_MODES:
    previous_temp = None
    for label, mesh, global_batch in meshes_and_batches:
      stats, seconds = compile_loss(mesh, kind, mode, global_batch, args.dim,
                                    dtype, args.forward_only)
      temp = stats.temp_size_in_bytes / MIB
      rows.append({
          "mode": f"{kind} {mode}", "size": label, "temp": temp,
          "growth": format_ratio(temp, previous_temp),
          "args": stats.argument_size_in_bytes / MIB, "seconds": seconds})
      previous_temp = temp
    rows.append(None)
  print_table([row for row in rows if row is not None], size_column)


def main():
  args = parse_args()
  dtype = jnp.dtype(args.dtype)
  mesh_shape = tuple(int(size) for size in args.mesh.split(","))
  if len(mesh_shape) != 3 or int(np.prod(mesh_shape)) != 8:
    raise ValueError(f"--mesh {args.mesh!r} must be three sizes whose product "
                     "is 8, such as 8,1,1 or 2,2,2.")
  compiled_function = ("loss" if args.forward_only
                       else "value_and_grad of the loss")
  print(f"JAX {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} devices. Compiled {compiled_function}, dim "
        f"{args.dim}, {args.dtype} embeddings.\nSizes are per device, from "
        "compiled.memory_analysis(). Growth is temp / temp of the row above.")

  mesh = make_mesh(mesh_shape)
  print(f"\nGlobal batch sweep on mesh data,fsdp,tensor = {mesh_shape}:")
  sweep([(global_batch, mesh, global_batch)
         for global_batch in args.global_batches], args, dtype,
        "global batch")

  if args.local_batch:
    print(f"\nDevice-count sweep with local batch {args.local_batch} "
          "(global = local x devices):")
    sweep([(devices, make_mesh((devices, 1, 1)), args.local_batch * devices)
           for devices in (1, 2, 4, 8)], args, dtype, "devices")


if __name__ == "__main__":
  main()

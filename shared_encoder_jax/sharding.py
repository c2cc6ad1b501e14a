"""Device mesh and the one table that decides how every array is split.

The mesh has three axes:
  * `data`: plain data parallelism (parameters replicated);
  * `fsdp`: data parallelism whose devices also split the parameters and
    optimizer state (fully sharded data parallel);
  * `tensor`: tensor parallelism, splitting attention heads and MLP width.
The batch is split over `data` × `fsdp`.

Every parameter gets logical axis names from `PARAMETER_AXES` (by its name in
the parameter tree), and `LOGICAL_AXIS_RULES` maps logical names to mesh axes.
Optimizer-state leaves that mirror a parameter (Adam's moments) get that
parameter's names. A shared layer is one parameter subtree, so it is sharded
once, not once per modality.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from shared_encoder_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or None: not split).
LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),     # the model width of weight matrices
    ("activation", None),  # the model width of activations
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("vocab", None),
    ("length", None),
    ("joint", None),       # the joint embedding space
    ("patch", None),
    ("channels", None),
    ("modality", None),
)

# (regular expression on the "/"-joined parameter path, logical axes). The
# first match wins; a parameter that matches none is replicated.
PARAMETER_AXES = (
    (r"attention/(query|key|value)/kernel$", ("embed", "heads", "head_dim")),
    (r"attention/(query|key|value)/bias$", ("heads", "head_dim")),
    (r"attention/out/kernel$", ("heads", "head_dim", "embed")),
    (r"mlp/fc1/kernel$", ("embed", "mlp")),
    (r"mlp/fc1/bias$", ("mlp",)),
    (r"mlp/fc2/kernel$", ("mlp", "embed")),
    (r"patch_embedding/kernel$", ("patch", "patch", "channels", "embed")),
    (r"token_embedding/embedding$", ("vocab", "embed")),
    (r"(image|text)_projection/kernel$", ("embed", "joint")),
)


class MeshError(ConfigError):
  """The mesh sizes in the config do not fit the available devices."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolve `config.mesh` (-1 = the remaining devices) into axis sizes."""
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f"At most one of mesh.data, mesh.fsdp, mesh.tensor may "
                    f"be -1; got {dict(zip(MESH_AXES, sizes))}.")
  if any(size == 0 or size < -1 for size in sizes):
    raise MeshError(f"Mesh sizes must be positive or -1; got "
                    f"{dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(
          f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} "
          f"devices: {num_devices} is not a multiple of {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(
        f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices "
        f"but {num_devices} are available; set one of mesh.data, mesh.fsdp, "
        "mesh.tensor to -1 to use the rest.")
  return tuple(sizes)


def make_mesh(mesh_config=None, devices: Sequence | None = None) -> Mesh:
  """Build the (data, fsdp, tensor) mesh; default: all devices on `data`."""
  devices = list(jax.devices() if devices is None else devices)
  if mesh_config is None:
    shape = (len(devices), 1, 1)
  else:
    shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def logical_to_mesh(logical_axes: Sequence[str | None]) -> P:
  """Translate logical axis names into a PartitionSpec over mesh axes."""
  rules = dict(LOGICAL_AXIS_RULES)
  used, spec = set(), []
  for name in logical_axes:
    axis = rules.get(name) if name else None
    # A mesh axis can split only one dimension of an array.
    axes = () if axis is None else (axis if isinstance(axis, tuple) else
                                    (axis,))
    if used.intersection(axes):
      axis = None
    used.update(axes)
    spec.append(axis)
  return P(*spec)


def parameter_axes(path: str, ndim: int) -> tuple[str | None, ...]:
  """Logical axis names of the parameter at `path` ("a/b/kernel")."""
  for pattern, axes in PARAMETER_AXES:
    if re.search(pattern, path) and len(axes) == ndim:
      return axes
  return (None,) * ndim


def _key_name(key) -> str | None:
  name = getattr(key, "key", None)
  return name if isinstance(name, str) else None


def _path_string(path) -> str:
  return "/".join(name for name in map(_key_name, path) if name)


def _fits(spec: P, shape, mesh: Mesh) -> P:
  """Drop mesh axes that do not divide their dimension evenly."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * len(shape)):
    axes = () if axis is None else (axis if isinstance(axis, tuple) else
                                    (axis,))
    size = math.prod(mesh.shape[a] for a in axes)
    fitted.append(axis if size > 1 and dim % size == 0 else None)
  return P(*fitted)


def tree_shardings(tree, mesh: Mesh):
  """NamedSharding for every leaf of a parameter or train-state tree.

  Leaves are matched to `PARAMETER_AXES` by the dict keys on their path, so
  optimizer moments get the sharding of their parameter. A dimension a mesh
  axis does not divide evenly stays unsplit.
  """
  def sharding(path, leaf):
    shape = getattr(leaf, "shape", ())
    spec = logical_to_mesh(parameter_axes(_path_string(path), len(shape)))
    return NamedSharding(mesh, _fits(spec, shape, mesh))

  return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) dimension over data × fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
  """Return how many ways the batch is split (data × fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]

"""Multi-process start-up: `jax.distributed.initialize` from the environment.

`initialize()` must run before anything that starts a JAX backend (including
`jax.devices()`). It decides how this process joins a run, in this order:

1. Explicit settings, from its arguments or from the environment variables
   SHARED_ENCODER_COORDINATOR (host:port of process 0),
   SHARED_ENCODER_NUM_PROCESSES and SHARED_ENCODER_PROCESS_ID. An argument
   takes precedence over its variable. `launch/local.py` sets the variables.
2. A SLURM job step with more than one task (processes started by `srun`).
3. A Cloud TPU VM slice with more than one host (TPU VM metadata, or the
   TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES variable on GKE).

For 2 and 3 it calls `jax.distributed.initialize()` without arguments, so
JAX's own cluster detection (`jax._src.clusters`) finds the coordinator,
process count and process id. Otherwise the run is a single process and
nothing is initialised.

On SLURM, JAX gives each process only the GPU whose index is SLURM_LOCALID,
unless JAX_LOCAL_DEVICE_IDS lists the GPUs to use. `launch/slurm.py` sets that
variable when it starts one process per node.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

COORDINATOR_ENV = "SHARED_ENCODER_COORDINATOR"
NUM_PROCESSES_ENV = "SHARED_ENCODER_NUM_PROCESSES"
PROCESS_ID_ENV = "SHARED_ENCODER_PROCESS_ID"

EXPLICIT = "explicit"
SLURM = "slurm"
TPU = "tpu"


class DistributedSettingsError(ValueError):
  """The multi-process settings are incomplete or invalid."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """Settings with which this process joins a multi-process run.

  Attributes:
    source: EXPLICIT, SLURM or TPU.
    coordinator_address: "host:port" of process 0, or None where JAX detects
      it.
    num_processes: the number of processes, or None where JAX detects it.
    process_id: this process's index in [0, num_processes), or None where JAX
      detects it.
  """
  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _parse_int(value, name: str) -> int:
  if isinstance(value, int):
    return value
  try:
    return int(value)
  except ValueError:
    raise DistributedSettingsError(
        f"Invalid {name} {value!r}: expected an integer.") from None


def _validate_coordinator(address: str) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedSettingsError(
        f"Invalid coordinator address {address!r}: expected host:port, for "
        f"example 10.0.0.1:1234. Set {COORDINATOR_ENV} (or the "
        "coordinator_address argument) to the address of process 0.")


def _explicit_group(coordinator_address, num_processes, process_id
                    ) -> ProcessGroup | None:
  """Read the explicit settings and return None when none are set."""
  env_names = {"coordinator_address": COORDINATOR_ENV,
               "num_processes": NUM_PROCESSES_ENV,
               "process_id": PROCESS_ID_ENV}
  arguments = {"coordinator_address": coordinator_address,
               "num_processes": num_processes,
               "process_id": process_id}
  resolved = {}
  for name, env_name in env_names.items():
    value = arguments[name]
    if value is None:
      # An empty variable counts as unset.
      value = os.environ.get(env_name, "").strip() or None
    resolved[name] = value
  if all(value is None for value in resolved.values()):
    return None

  if resolved["num_processes"] is not None:
    count = _parse_int(resolved["num_processes"],
                       f"num_processes ({NUM_PROCESSES_ENV})")
    if count < 1:
      raise DistributedSettingsError(
          f"Invalid num_processes {count}: expected 1 or more. Set "
          f"{NUM_PROCESSES_ENV} to the total number of processes.")
    resolved["num_processes"] = count
  if resolved["process_id"] is not None:
    resolved["process_id"] = _parse_int(resolved["process_id"],
                                        f"process_id ({PROCESS_ID_ENV})")

  # A count of 1 alone is a complete setting that selects a single process.
  if resolved["num_processes"] == 1 and resolved["process_id"] in (None, 0):
    return ProcessGroup(EXPLICIT, resolved["coordinator_address"], 1, 0)

  missing = [name for name, value in resolved.items() if value is None]
  if missing:
    present_names = [f"{name} ({env_names[name]})"
                     for name, value in resolved.items() if value is not None]
    missing_names = [f"{name} ({env_names[name]})" for name in missing]
    raise DistributedSettingsError(
        "Incomplete multi-process settings: "
        f"{' and '.join(missing_names)} "
        f"{'is' if len(missing_names) == 1 else 'are'} missing, but "
        f"{' and '.join(present_names)} "
        f"{'is' if len(present_names) == 1 else 'are'} set. "
        f"Set all three variables {COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and "
        f"{PROCESS_ID_ENV} (or pass all three arguments), or none of them "
        "for a single process.")

  _validate_coordinator(resolved["coordinator_address"])
  if not 0 <= resolved["process_id"] < resolved["num_processes"]:
    raise DistributedSettingsError(
        f"Invalid process_id {resolved['process_id']}: expected 0 to "
        f"{resolved['num_processes'] - 1} because num_processes is "
        f"{resolved['num_processes']}. Set {PROCESS_ID_ENV} to a distinct "
        "index for each process.")
  return ProcessGroup(EXPLICIT, **resolved)


def _slurm_group() -> ProcessGroup | None:
  """Return the SLURM job step's group when it has more than one task."""
  # jax._src is private and may move in a later JAX version. Importing it
  # here limits such a failure to detection instead of every import of this
  # module.
  from jax._src import clusters

  if "SLURM_JOB_ID" not in os.environ:
    return None
  num_tasks = _parse_int(os.environ.get("SLURM_NTASKS", "1"), "SLURM_NTASKS")
  if num_tasks <= 1:
    return None
  if not clusters.SlurmCluster.is_env_present():
    raise DistributedSettingsError(
        f"SLURM job {os.environ['SLURM_JOB_ID']} has {num_tasks} tasks, but "
        "this process was not started by srun (SLURM_STEP_NODELIST, "
        "SLURM_PROCID or SLURM_LOCALID is missing), so JAX cannot find the "
        "other processes. Start the command with srun, or set "
        f"{NUM_PROCESSES_ENV}=1 to run a single process.")
  return ProcessGroup(SLURM, None, num_tasks,
                      _parse_int(os.environ["SLURM_PROCID"], "SLURM_PROCID"))


def _tpu_group() -> ProcessGroup | None:
  """Return the TPU slice's group when the slice has more than one host."""
  from jax._src import clusters

  # The same order as JAX's detection: GKE before Compute Engine. Both return
  # False quickly outside a Cloud TPU VM, without a metadata request.
  for cluster in (clusters.GkeTpuCluster, clusters.GceTpuCluster):
    if cluster.is_env_present():
      num_hosts = cluster.get_process_count()
      if num_hosts > 1:
        return ProcessGroup(TPU, None, num_hosts, None)
      return None
  return None


def detect_process_group(coordinator_address: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None
                         ) -> ProcessGroup | None:
  """Detect how this process joins a run, without initialising anything.

  Args and the order of detection are those of `initialize`.

  Returns:
    The process group, or None for a single-process run.

  Raises:
    DistributedSettingsError: the explicit settings are incomplete or
      invalid, or a SLURM job has several tasks but this process was not
      started by srun.
  """
  group = _explicit_group(coordinator_address, num_processes, process_id)
  if group is not None:
    return group if group.num_processes > 1 else None
  return _slurm_group() or _tpu_group()


def _ensure_cpu_collectives() -> None:
  # CPU devices of different processes exchange data through a collectives
  # implementation. JAX 0.7.0 to 0.10.2 default to gloo. Without one,
  # cross-process computations on CPU fail, so gloo is restored where the
  # option was turned off.
  if jax.config.jax_cpu_collectives_implementation is None:
    logging.info("Setting jax_cpu_collectives_implementation to gloo for "
                 "cross-process computations on CPU.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> ProcessGroup | None:
  """Call `jax.distributed.initialize` when this process is one of several.

  Call it once per process, before any other JAX call. A second call after a
  successful one logs and returns the group again.

  The three settings go together: set all of them, or none to let SLURM or
  TPU detection decide. A count of 1 alone selects a single process.

  Args:
    coordinator_address: "host:port" of process 0; default: the variable
      SHARED_ENCODER_COORDINATOR.
    num_processes: the total number of processes; default:
      SHARED_ENCODER_NUM_PROCESSES.
    process_id: this process's index in [0, num_processes); default:
      SHARED_ENCODER_PROCESS_ID.

  Returns:
    The process group, or None for a single-process run.

  Raises:
    DistributedSettingsError: see `detect_process_group`.
  """
  group = detect_process_group(coordinator_address, num_processes, process_id)
  if group is None:
    logging.info("Single-process run: no multi-process settings, SLURM job "
                 "step or multi-host TPU slice found.")
    return None
  if jax.distributed.is_initialized():
    logging.info("jax.distributed is already initialised, so it is not "
                 "initialised again.")
    return group

  _ensure_cpu_collectives()
  if group.source == EXPLICIT:
    logging.info("Multi-process run from explicit settings: coordinator %s, "
                 "process %d of %d.", group.coordinator_address,
                 group.process_id, group.num_processes)
    jax.distributed.initialize(group.coordinator_address, group.num_processes,
                               group.process_id)
  else:
    logging.info("Multi-process run detected on %s: %d processes%s. JAX "
                 "detects the coordinator.", group.source, group.num_processes,
                 "" if group.process_id is None
                 else f", this is process {group.process_id}")
    jax.distributed.initialize()
  logging.info("jax.distributed initialised.")
  return group


def is_primary() -> bool:
  """Return whether this is process 0, the one that writes logs and exports.

  Calling it starts the JAX backend, so call `initialize` first.
  """
  return jax.process_index() == 0

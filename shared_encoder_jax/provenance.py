"""Provenance records: config, code version, package versions, data."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess

import jax
from etils import epath

PACKAGES = ("shared-encoder-jax", "jax", "jaxlib", "flax", "optax",
            "orbax-checkpoint", "tensorflow-datasets", "tensorflow-cpu",
            "tensorflow", "grain", "sentencepiece", "ml-collections",
            "numpy", "safetensors")


def git_commit() -> dict:
  """Commit of the checkout this package runs from, and whether it is dirty."""
  source_dir = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True,
        text=True, check=True, timeout=10).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=source_dir, capture_output=True, text=True, check=True,
        timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return versions


def record_launch(workdir: str, config_dict: dict, data_fingerprint: dict,
                  start_step: int) -> str:
  """Append this launch to `workdir/provenance.json`; return the file's path.

  The file contains a list with one entry per launch, so a resumed run adds to
  it instead of replacing what an earlier launch recorded.
  """
  path = epath.Path(workdir) / "provenance.json"
  launches = []
  if path.exists():
    launches = json.loads(path.read_text())
  launches.append({
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "start_step": start_step,
      "config": config_dict,
      "git": git_commit(),
      "packages": package_versions(),
      "python": platform.python_version(),
      "devices": [str(d) for d in jax.devices()],
      "data": data_fingerprint,
  })
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(launches, indent=2))
  tmp.replace(path)
  return str(path)

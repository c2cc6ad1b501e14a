"""Nested, reproducible training subsets chosen by example id.

Every id gets a rank from SHA-256 of (fraction seed, id); a fraction f keeps
the round(f * n) ids of lowest rank (at least one). The choice depends only
on the ids and the seed, not on the order of the data, the machine or the
model's init seed, and a smaller fraction is a subset of a larger one:
10% of a split is inside 25%, which is inside 50%, inside 100%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def id_ranks(ids: Sequence[str], seed: int) -> np.ndarray:
  """Position of each id in the seed's order (0 = chosen first)."""
  keys = [hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
          for example_id in ids]
  # Ties (identical ids) fall back to index order, so the result is defined
  # even with duplicates, which the dataset builders reject anyway.
  order = sorted(range(len(ids)), key=lambda index: (keys[index], index))
  ranks = np.empty(len(ids), np.int64)
  ranks[order] = np.arange(len(ids))
  return ranks


def select(ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of the ids that `fraction` of them keeps."""
  if not 0 < fraction <= 1:
    raise ValueError(f"data_fraction={fraction} must be in (0, 1].")
  count = max(1, round(fraction * len(ids)))
  if fraction == 1:
    return np.arange(len(ids))
  return np.sort(np.flatnonzero(id_ranks(ids, seed) < count))


def ids_fingerprint(ids: Sequence[str]) -> str:
  """SHA-256 of the sorted ids, one per line, to compare subsets."""
  return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()

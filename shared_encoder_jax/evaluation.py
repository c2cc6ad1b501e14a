"""Zero-shot cross-modal retrieval evaluation.

Row i of the image and text embeddings is a matching pair. Without groups, a
query's rank is 1 + the number of candidates of the other modality that score
strictly higher than its match, plus those that tie with the match and come
before it in split order. Ties are thus broken deterministically by index.

Groups. `groups[i]` names the group of pair i, for example the dataset's
`group` feature: identical images share a group, and so do the images of one
study. With groups, every candidate of the query's own group is a match, in
both directions, so a caption shared by several images or several captions of
one image all count as hits. Let `best` be the highest score among a
query's matches and `b` the lowest index of a match that scores `best`. Then

  rank = 1 + #{c not in the group : score(c) > best}
           + #{c not in the group : score(c) == best and c < b}.

Every row is a candidate, duplicates included: two identical images of
another group that both outscore the match both count. Without groups each
pair is its own group, which gives the ranks above.
"""

from __future__ import annotations

import fractions
import math
from typing import Sequence

import numpy as np
from jax.experimental import multihost_utils

from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import sharded_loss


def match_ranks(similarity: np.ndarray, chunk_rows: int = 1024,
                groups: Sequence | np.ndarray | None = None) -> np.ndarray:
  """1-based rank of each row's best match in `similarity` (see module doc).

  Row i matches column j when `groups[i] == groups[j]`; without `groups`
  only the diagonal entry matches. Works on `chunk_rows` rows at a time to
  bound memory on large splits.
  """
  num_rows, num_columns = similarity.shape
  if groups is None:
    codes = np.arange(max(num_rows, num_columns))
  else:
    if len(groups) != num_rows or num_rows != num_columns:
      raise ValueError(
          f"groups has {len(groups)} entries for a {num_rows}x{num_columns} "
          "similarity matrix; pass one group per pair of a square matrix.")
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
  ranks = np.empty(num_rows, np.int64)
  columns = np.arange(num_columns)[None, :]
  for start in range(0, num_rows, chunk_rows):
    rows = np.arange(start, min(start + chunk_rows, num_rows))
    block = similarity[rows]
    same = codes[rows][:, None] == codes[None, :num_columns]
    if groups is None:
      best = block[np.arange(len(rows)), rows][:, None]
      best_index = rows[:, None]
    else:
      best = np.where(same, block, -np.inf).max(axis=1, keepdims=True)
      # argmax finds the first True: the lowest index among the best matches.
      best_index = np.argmax(same & (block == best), axis=1)[:, None]
    before = ~same & ((block > best) |
                      ((block == best) & (columns < best_index)))
    ranks[rows] = 1 + before.sum(axis=1)
  return ranks


def chance_recall(group_sizes: np.ndarray, num_candidates: int,
                  k: int) -> float:
  """Mean recall@k of a ranking in uniformly random order.

  A query whose group has m of the n = `num_candidates` candidates misses
  all of them in the top k with probability C(n - m, k) / C(n, k). This is
  computed as an exact fraction, so a group of one gives exactly k / n.
  """
  sizes, counts = np.unique(np.asarray(group_sizes), return_counts=True)
  total = fractions.Fraction(0)
  for size, count in zip(sizes.tolist(), counts.tolist()):
    miss = fractions.Fraction(math.comb(num_candidates - size, k),
                              math.comb(num_candidates, k))
    total += count * (1 - miss)
  return float(total / len(group_sizes))


def retrieval_metrics(image_embeddings: np.ndarray,
                      text_embeddings: np.ndarray,
                      ks: Sequence[int],
                      groups: Sequence | np.ndarray | None = None) -> dict:
  """Recall@K both ways, with the chance rate for each K.

  K larger than the number of pairs is clipped to it (and reported clipped).
  Returns a dict with `num_pairs`, `image_to_text` and `text_to_image`, the
  latter two mapping "recall@K" to a fraction, plus "median_rank". With
  `groups` (one per pair; see the module docstring) any pair of the query's
  group is a hit, the chance rates count every group member, and the dict
  also has `num_groups`.
  """
  image = np.asarray(loss_lib.l2_normalize(image_embeddings))
  text = np.asarray(loss_lib.l2_normalize(text_embeddings))
  return similarity_retrieval_metrics(image @ text.T, ks, groups)


def similarity_retrieval_metrics(similarity: np.ndarray, ks: Sequence[int],
                                 groups: Sequence | np.ndarray | None = None
                                 ) -> dict:
  """`retrieval_metrics` of an image-by-text similarity matrix."""
  num_pairs = len(similarity)
  results = {"num_pairs": num_pairs, "chance": {}}
  clipped = sorted({min(k, num_pairs) for k in ks})
  for direction, sim in (("image_to_text", similarity),
                         ("text_to_image", similarity.T)):
    ranks = match_ranks(sim, groups=groups)
    results[direction] = {f"recall@{k}": float(np.mean(ranks <= k))
                          for k in clipped}
    results[direction]["median_rank"] = float(np.median(ranks))
  if groups is None:
    results["chance"] = {f"recall@{k}": k / num_pairs for k in clipped}
  else:
    _, codes, sizes = np.unique(np.asarray(groups), return_inverse=True,
                                return_counts=True)
    group_sizes = sizes[codes.reshape(-1)]
    results["num_groups"] = len(sizes)
    results["chance"] = {
        f"recall@{k}": chance_recall(group_sizes, num_pairs, k)
        for k in clipped}
  return results


def read_groups(source, key: str = "group") -> np.ndarray | None:
  """Return the `key` feature of every example of a split, as str.

  `source` is a random-access data source (`input_pipeline.data_source`).
  Returns None when its examples have no `key` feature. An empty group
  becomes the example's own group, so it matches only its own pair.
  """
  if len(source) == 0 or key not in source[0]:
    return None
  groups = []
  for index in range(len(source)):
    value = source[index][key]
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    groups.append(str(value) if value != "" else f"\0pair {index}")
  return np.asarray(groups, dtype=object)


def validation_loss(image_embeddings, text_embeddings, logit_scale,
                    logit_bias=None) -> float:
  """Compute the training loss with the whole split as one batch.

  InfoNCE, or SigLIP's sigmoid loss when `logit_bias` is given. One batch of
  the whole split makes the value independent of the batch size.
  """
  if logit_bias is None:
    return float(loss_lib.clip_loss(image_embeddings, text_embeddings,
                                    logit_scale))
  return float(sharded_loss.siglip_loss(image_embeddings, text_embeddings,
                                        logit_scale, logit_bias))


def embed_batches(embed_step, params, batches, to_device):
  """Embed padded batches; return (image, text) embeddings without padding.

  `to_device` places a batch on the mesh (`input_pipeline.BatchPlacement`).
  """
  images, texts, logit_scale = [], [], None
  for batch in batches:
    mask = batch["mask"]
    image_emb, text_emb, logit_scale = embed_step(params,
                                                  to_device(batch))
    # Gathers the rows other processes hold (a copy when there is one).
    image_emb, text_emb = multihost_utils.process_allgather(
        (image_emb, text_emb), tiled=True)
    images.append(np.asarray(image_emb, np.float32)[mask])
    texts.append(np.asarray(text_emb, np.float32)[mask])
  return np.concatenate(images), np.concatenate(texts), float(logit_scale)


def format_metrics(split: str, metrics: dict) -> str:
  """Format recall@K with its chance rate, one console line per direction."""
  lines = [f"{split}: {metrics['num_pairs']} pairs"]
  for direction in ("image_to_text", "text_to_image"):
    parts = []
    for key, value in metrics[direction].items():
      if key.startswith("recall@"):
        parts.append(f"R@{key[7:]} {100 * value:.1f}% "
                     f"(chance {100 * metrics['chance'][key]:.1f}%)")
    parts.append(f"median rank {metrics[direction]['median_rank']:.0f}")
    lines.append(f"  {direction.replace('_', ' ')}: " + ", ".join(parts))
  return "\n".join(lines)

"""Zero-shot cross-modal retrieval evaluation.

Row i of the image and text embeddings is a matching pair. A query's rank is
1 + the number of candidates of the other modality that score strictly higher
than its match, plus those that tie with the match and come before it in split
order. Ties are thus broken deterministically by index.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.experimental import multihost_utils

from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import sharded_loss


def match_ranks(similarity: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
  """1-based rank of the diagonal entry in each row of `similarity`.

  Works on `chunk_rows` rows at a time to bound memory on large splits.
  """
  ranks = np.empty(len(similarity), np.int64)
  columns = np.arange(similarity.shape[1])[None, :]
  for start in range(0, len(similarity), chunk_rows):
    rows = np.arange(start, min(start + chunk_rows, len(similarity)))
    block = similarity[rows]
    target = block[np.arange(len(rows)), rows][:, None]
    before = (block > target) | ((block == target) & (columns < rows[:, None]))
    ranks[rows] = 1 + before.sum(axis=1)
  return ranks


def retrieval_metrics(image_embeddings: np.ndarray,
                      text_embeddings: np.ndarray,
                      ks: Sequence[int]) -> dict:
  """Recall@K both ways, with the chance rate for each K.

  K larger than the number of pairs is clipped to it (and reported clipped).
  Returns a dict with `num_pairs`, `image_to_text` and `text_to_image`, the
  latter two mapping "recall@K" to a fraction, plus "median_rank".
  """
  image = np.asarray(loss_lib.l2_normalize(image_embeddings))
  text = np.asarray(loss_lib.l2_normalize(text_embeddings))
  similarity = image @ text.T
  num_pairs = len(similarity)
  results = {"num_pairs": num_pairs, "chance": {}}
  clipped = sorted({min(k, num_pairs) for k in ks})
  for direction, sim in (("image_to_text", similarity),
                         ("text_to_image", similarity.T)):
    ranks = match_ranks(sim)
    results[direction] = {f"recall@{k}": float(np.mean(ranks <= k))
                          for k in clipped}
    results[direction]["median_rank"] = float(np.median(ranks))
  results["chance"] = {f"recall@{k}": k / num_pairs for k in clipped}
  return results


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

"""AdamW with decoupled weight decay on weight matrices, and the LR schedule."""

import jax
import optax


def weight_decay_mask(params):
  """True for the dense and convolution kernels, which get weight decay.

  Biases, LayerNorm scales, embeddings (token, position, class, modality) and
  the logit scale are excluded, as in CLIP training.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(optimizer_config, total_steps: int):
  """Linear warm-up from 0 (optional), then cosine decay to 0 at total_steps."""
  peak = optimizer_config.learning_rate
  warmup = min(optimizer_config.warmup_steps, total_steps)
  cosine = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
  if warmup == 0:
    return cosine
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), cosine], [warmup])


def make_optimizer(optimizer_config, total_steps: int):
  """Return (optax transformation, learning-rate schedule)."""
  schedule = learning_rate_schedule(optimizer_config, total_steps)
  adamw = optax.adamw(
      schedule, b1=optimizer_config.b1, b2=optimizer_config.b2,
      eps=optimizer_config.eps, weight_decay=optimizer_config.weight_decay,
      mask=weight_decay_mask)
  if optimizer_config.grad_clip_norm > 0:
    return optax.chain(
        optax.clip_by_global_norm(optimizer_config.grad_clip_norm),
        adamw), schedule
  return adamw, schedule

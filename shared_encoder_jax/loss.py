"""Contrastive losses."""

import jax
import jax.numpy as jnp


def l2_normalize(x, axis=-1, eps=1e-12):
  """Scale rows of `x` to unit L2 norm (float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis,
                                               keepdims=True), eps))


def clip_loss(image_embeddings, text_embeddings, logit_scale):
  """Symmetric InfoNCE over the whole batch, computed in float32.

  Row i of each input is a matching pair; every other row of the batch is a
  negative. Returns the mean of the image→text and text→image cross-entropies.
  Under `jax.jit` with a batch sharded over devices, XLA gathers the other
  devices' embeddings, so the loss is the full global-batch loss.
  """
  image = l2_normalize(image_embeddings)
  text = l2_normalize(text_embeddings)
  logits = jnp.asarray(logit_scale, jnp.float32) * image @ text.T
  image_to_text = jax.nn.log_softmax(logits, axis=1)
  text_to_image = jax.nn.log_softmax(logits, axis=0)
  diagonal = jnp.arange(logits.shape[0])
  return -0.5 * (image_to_text[diagonal, diagonal].mean() +
                 text_to_image[diagonal, diagonal].mean())

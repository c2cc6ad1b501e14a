"""Global-batch CLIP and SigLIP losses under `jax.shard_map`.

The embeddings arrive split over the batch axes of the mesh, and every mode
returns the loss of the whole global batch, equal to `loss.clip_loss` or
`siglip_loss` run on one device, with equal gradients:

  kind     mode       each device computes                  memory per device
  clip     full       all rows against all columns          O(global²)
  clip     local      its own rows against all columns      O(local × global)
  siglip   full       all rows against all columns          O(global²)
  siglip   chunked    its own rows against one chunk of     O(local × chunk)
                      text at a time, passed round a ring

`full` gathers with `all_gather(to="invarying")`, whose transpose slices the
cotangent, so the backward pass needs no collective. `local` gathers with the
default (varying) `all_gather`, whose transpose is a `psum_scatter`, so each
device receives the gradient that every device's rows send to its embeddings,
and averages the per-device losses with `pmean`. `chunked` moves text with
`ppermute` and sums the per-device losses with `psum`. Its backward pass sends
the chunks round the ring a second time, each together with its accumulating
gradient, so it too holds one [local, chunk] block at a time; the price is
twice the forward pass's ring traffic.

All similarity, softmax and sigmoid arithmetic is float32 whatever the input
dtype: inputs are L2-normalised in float32 before any collective, and the
similarity matmul uses `Precision.HIGHEST`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from shared_encoder_jax import loss as loss_lib

BATCH_AXES = ("data", "fsdp")
VALID_MODES = (("clip", "full"), ("clip", "local"), ("siglip", "full"),
               ("siglip", "chunked"))

# Initial values from the SigLIP paper (Zhai et al. 2023, "Sigmoid Loss for
# Language Image Pre-Training"): t' = log 10, so temperature t = exp(t') = 10,
# and bias b = -10, so that the many negatives start with a small loss.
SIGLIP_LOG_TEMPERATURE_INIT = math.log(10.0)
SIGLIP_BIAS_INIT = -10.0


def _matmul(a, b):
  # HIGHEST keeps the matmul in full float32 on TPU and GPU, whose default
  # precision for float32 operands may round them to bfloat16 or TF32.
  # NOTE: `loss.clip_loss` uses the default precision. The two agree on CPU,
  # the only backend the tests run on, but may differ by more than 1e-5
  # elsewhere.
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _similarity(a, b):
  return _matmul(a, b.T)


def _mean_cross_entropy(logits, labels):
  """Mean over rows of -log softmax(logits)[row, labels[row]]."""
  log_probs = jax.nn.log_softmax(logits, axis=1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


def _pair_labels(shape, positive_diagonal):
  """z = +1 for matching pairs (the diagonal, if it has them), else -1."""
  if positive_diagonal:
    return 2.0 * jnp.eye(*shape, dtype=jnp.float32) - 1.0
  return -jnp.ones(shape, jnp.float32)


def _sigmoid_loss_sum(image, text, logit_scale, logit_bias, positive_diagonal):
  """Sum of -log σ(z · (t x·y + b)) over all pairs of rows."""
  logits = logit_scale * _similarity(image, text) + logit_bias
  labels = _pair_labels(logits.shape, positive_diagonal)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def siglip_loss(image_embeddings, text_embeddings, logit_scale, logit_bias):
  """SigLIP sigmoid loss over the whole batch, computed in float32.

  Returns -1/|B| Σ_i Σ_j log σ(z_ij (t x_i·y_j + b)), where z_ij is +1 for
  i = j and -1 otherwise, and x, y are the L2-normalised embeddings.

  Args:
    image_embeddings: [batch, dim] array, any float dtype.
    text_embeddings: [batch, dim] array; row i matches image row i.
    logit_scale: the temperature t itself, already exponentiated. A model
      learns t' and passes t = exp(t'), initialised with
      t' = SIGLIP_LOG_TEMPERATURE_INIT (t = 10).
    logit_bias: the bias b, initialised with SIGLIP_BIAS_INIT (-10).
  """
  image = loss_lib.l2_normalize(image_embeddings)
  text = loss_lib.l2_normalize(text_embeddings)
  total = _sigmoid_loss_sum(image, text,
                            jnp.asarray(logit_scale, jnp.float32),
                            jnp.asarray(logit_bias, jnp.float32),
                            positive_diagonal=True)
  return total / image.shape[0]


def _clip_full(image, text, logit_scale, *, axes):
  # The invariant gather gives every device the same global batch, and the
  # loss is then invariant too, so it needs no reduction.
  image = jax.lax.all_gather(image, axes, tiled=True, to="invarying")
  text = jax.lax.all_gather(text, axes, tiled=True, to="invarying")
  logits = logit_scale * _similarity(image, text)
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (_mean_cross_entropy(logits, labels) +
                _mean_cross_entropy(logits.T, labels))


def _clip_local(image, text, logit_scale, *, axes):
  local_batch = image.shape[0]
  all_image = jax.lax.all_gather(image, axes, tiled=True)
  all_text = jax.lax.all_gather(text, axes, tiled=True)
  # `all_gather` and `axis_index` both order a tuple of axes major to minor,
  # which is also how P(axes) lays out the global batch.
  labels = jax.lax.axis_index(axes) * local_batch + jnp.arange(local_batch)
  # Row i of the global logits is image_i against all text, and column j is
  # all images against text_j. So each device computes its rows and columns.
  image_to_text = _mean_cross_entropy(
      logit_scale * _similarity(image, all_text), labels)
  text_to_image = _mean_cross_entropy(
      logit_scale * _similarity(text, all_image), labels)
  # Shards are equal-sized, so the mean of local means is the global mean.
  # The transpose of pmean gives each device 1/n of the cotangent, and the
  # `psum_scatter` of the gathers then sums the n contributions back.
  return jax.lax.pmean(0.5 * (image_to_text + text_to_image), axes)


def _siglip_full(image, text, logit_scale, logit_bias, *, axes):
  image = jax.lax.all_gather(image, axes, tiled=True, to="invarying")
  text = jax.lax.all_gather(text, axes, tiled=True, to="invarying")
  total = _sigmoid_loss_sum(image, text, logit_scale, logit_bias,
                            positive_diagonal=True)
  return total / image.shape[0]


def _make_ring_loss_sum(axes, num_shards):
  """Build the per-device SigLIP loss sum over a ring of text chunks.

  The returned function maps (image, text, scale, bias), all varying over
  `axes`, to the sum of -log σ(z · logits) of the device's images against
  every text row of the global batch, holding one [local, chunk] block at a
  time. Its custom VJP keeps only the inputs as residuals and sends the text
  chunks round the ring again in the backward pass, each with the gradient
  accumulated for it so far. Plain autodiff of the forward ring would keep
  every received chunk, O(global × dim) per device.
  """
  ring = tuple((i, (i + 1) % num_shards) for i in range(num_shards))

  def shift(x):
    return jax.lax.ppermute(x, axes, ring)

  @jax.custom_vjp
  def ring_loss_sum(image, text, logit_scale, logit_bias):
    # Step 0 pairs each device's images with its own text, which contains the
    # positives. Each later step receives the next chunk, all negatives, so
    # after num_shards - 1 shifts every device has seen every text row once.
    total = _sigmoid_loss_sum(image, text, logit_scale, logit_bias,
                              positive_diagonal=True)

    def step(carry, _):
      text_chunk, total = carry
      text_chunk = shift(text_chunk)
      total = total + _sigmoid_loss_sum(image, text_chunk, logit_scale,
                                        logit_bias, positive_diagonal=False)
      return (text_chunk, total), None

    (_, total), _ = jax.lax.scan(step, (text, total), None,
                                 length=num_shards - 1)
    return total

  def forward(image, text, logit_scale, logit_bias):
    total = ring_loss_sum(image, text, logit_scale, logit_bias)
    return total, (image, text, logit_scale, logit_bias)

  def backward(residuals, total_cotangent):
    image, text, logit_scale, logit_bias = residuals

    def block_grads(text_chunk, positive_diagonal):
      similarity = _similarity(image, text_chunk)
      labels = _pair_labels(similarity.shape, positive_diagonal)
      logits = logit_scale * similarity + logit_bias
      # d/dl of -log σ(z l) is -z σ(-z l).
      logits_grad = (-total_cotangent * labels *
                     jax.nn.sigmoid(-labels * logits))
      return (logit_scale * _matmul(logits_grad, text_chunk),
              logit_scale * _matmul(logits_grad.T, image),
              jnp.sum(logits_grad * similarity), jnp.sum(logits_grad))

    image_grad, text_grad, scale_grad, bias_grad = block_grads(
        text, positive_diagonal=True)

    def step(carry, _):
      text_chunk, chunk_grad, image_grad, scale_grad, bias_grad = carry
      text_chunk, chunk_grad = shift(text_chunk), shift(chunk_grad)
      grads = block_grads(text_chunk, positive_diagonal=False)
      return (text_chunk, chunk_grad + grads[1], image_grad + grads[0],
              scale_grad + grads[2], bias_grad + grads[3]), None

    carry = (text, text_grad, image_grad, scale_grad, bias_grad)
    (_, text_grad, image_grad, scale_grad, bias_grad), _ = jax.lax.scan(
        step, carry, None, length=num_shards - 1)
    # Device i now has the finished gradient of the chunk that started on
    # device i + 1, so one more shift returns every chunk's gradient home.
    return image_grad, shift(text_grad), scale_grad, bias_grad

  ring_loss_sum.defvjp(forward, backward)
  return ring_loss_sum


def _siglip_chunked(image, text, logit_scale, logit_bias, *, axes,
                    num_shards):
  # Marking the scalars as varying makes the custom VJP's per-device scale
  # and bias gradients varying too, and the transpose of this cast sums them
  # over the devices.
  logit_scale, logit_bias = jax.lax.pcast((logit_scale, logit_bias), axes,
                                          to="varying")
  total = _make_ring_loss_sum(axes, num_shards)(image, text, logit_scale,
                                                logit_bias)
  global_batch = image.shape[0] * num_shards
  return jax.lax.psum(total, axes) / global_batch


def _check_batch_axes(mesh: Mesh, batch_axes) -> tuple[str, ...]:
  if isinstance(batch_axes, str):
    batch_axes = (batch_axes,)
  batch_axes = tuple(batch_axes)
  if not batch_axes:
    raise ValueError("batch_axes is empty. Name at least one mesh axis.")
  missing = [axis for axis in batch_axes if axis not in mesh.axis_names]
  if missing:
    raise ValueError(
        f"Invalid batch_axes {batch_axes}, because the mesh has no axes "
        f"{missing}. The mesh axes are {mesh.axis_names}.")
  if len(set(batch_axes)) != len(batch_axes):
    raise ValueError(f"batch_axes {batch_axes} repeats an axis.")
  return batch_axes


def make_sharded_loss(mesh: Mesh, kind: str, mode: str,
                      batch_axes: str | Sequence[str] = BATCH_AXES
                      ) -> Callable[..., jax.Array]:
  """Build a global-batch contrastive loss that runs under `jax.shard_map`.

  Args:
    mesh: the device mesh. Mesh axes not in `batch_axes` (such as `tensor`)
      see replicated embeddings and compute the same loss.
    kind: "clip" (symmetric InfoNCE, as `loss.clip_loss`) or "siglip" (as
      `siglip_loss`).
    mode: "full" or "local" for clip, "full" or "chunked" for siglip; the
      module docstring compares them.
    batch_axes: the mesh axes that split the batch, major to minor. Use
      ("data",) with the one-axis mesh of `train_step.make_mesh`.

  Returns:
    `loss(image_embeddings, text_embeddings, logit_scale, logit_bias=None)`,
    a float32 scalar. The embeddings are [global_batch, dim] arrays, and
    global_batch must divide evenly over `batch_axes`. `logit_scale` is the
    already-exponentiated multiplier (CLIP scale or SigLIP temperature).
    `logit_bias` is required for siglip and must be None for clip. The
    function raises ValueError if it is not, and also for embeddings of
    unequal shapes or a global batch that does not divide evenly. Call it inside
    `jax.jit`, where inputs of any sharding are resharded to the batch split,
    and take reverse-mode gradients of it as of any JAX function: they equal
    the single-device gradients of the global-batch loss. Forward-mode
    differentiation (`jax.jvp`) fails for siglip chunked, whose gradient is a
    custom VJP.

  Raises:
    ValueError: for a (kind, mode) pair not in VALID_MODES, or batch axes that
      the mesh does not have.
  """
  if (kind, mode) not in VALID_MODES:
    raise ValueError(
        f"Invalid loss kind and mode ({kind!r}, {mode!r}). Valid pairs are "
        f"{', '.join(map(str, VALID_MODES))}.")
  axes = _check_batch_axes(mesh, batch_axes)
  num_shards = math.prod(mesh.shape[axis] for axis in axes)

  if kind == "clip":
    body = {"full": _clip_full, "local": _clip_local}[mode]
    body = functools.partial(body, axes=axes)
  elif mode == "full":
    body = functools.partial(_siglip_full, axes=axes)
  else:
    body = functools.partial(_siglip_chunked, axes=axes,
                             num_shards=num_shards)

  def normalized_body(image, text, *scalars):
    # Normalising before the collectives makes them move float32, so the
    # gradient sums in `psum_scatter` and round the ring are float32 too.
    return body(loss_lib.l2_normalize(image), loss_lib.l2_normalize(text),
                *scalars)

  batch_spec = P(axes, None)
  num_scalars = 1 if kind == "clip" else 2
  # check_vma=True (the default) types every value as varying or invariant
  # over each mesh axis, and the transposes above rely on it. With it off,
  # JAX 0.10.2 gave wrong gradients: a quarter of the reference for the
  # embeddings in full mode over 4 batch shards.
  mapped = jax.shard_map(
      normalized_body, mesh=mesh,
      in_specs=(batch_spec, batch_spec) + (P(),) * num_scalars,
      out_specs=P(), check_vma=True)

  def sharded_loss(image_embeddings, text_embeddings, logit_scale,
                   logit_bias=None):
    image_shape, text_shape = image_embeddings.shape, text_embeddings.shape
    if len(image_shape) != 2 or image_shape != text_shape:
      raise ValueError(
          f"image_embeddings {image_shape} and text_embeddings {text_shape} "
          "must have the same shape [global_batch, dim].")
    if image_shape[0] % num_shards:
      raise ValueError(
          f"Global batch {image_shape[0]} does not divide over the "
          f"{num_shards} shards of batch axes {axes}; use a multiple of "
          f"{num_shards}.")
    scale = jnp.asarray(logit_scale, jnp.float32)
    if kind == "clip":
      if logit_bias is not None:
        raise ValueError("The clip loss takes no logit_bias, so pass None.")
      return mapped(image_embeddings, text_embeddings, scale)
    if logit_bias is None:
      raise ValueError("logit_bias is missing, but the siglip loss needs it.")
    bias = jnp.asarray(logit_bias, jnp.float32)
    return mapped(image_embeddings, text_embeddings, scale, bias)

  return sharded_loss

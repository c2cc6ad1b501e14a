"""Global-batch CLIP and SigLIP losses under shard_map, on 8 host devices."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import sharded_loss as sharded_loss_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
GLOBAL_BATCH, DIM = 32, 16
TOLERANCE = 1e-5
# Away from the SigLIP initialisation (t = 10, b = -10), where σ(-10) ≈ 5e-5
# would leave the gradients through the negatives close to zero.
CLIP_SCALE, SIGLIP_SCALE, SIGLIP_BIAS = 7.0, 5.0, -3.0


def make_mesh(shape):
  return Mesh(np.array(jax.devices()).reshape(shape), MESH_AXES)


def make_embeddings(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(GLOBAL_BATCH, DIM))
  # Text correlated with its image, so positives stand out from negatives.
  text = image + rng.normal(size=(GLOBAL_BATCH, DIM))
  return image.astype(dtype), text.astype(dtype)


def scalars_for(kind):
  if kind == "clip":
    return (np.float32(CLIP_SCALE),)
  return np.float32(SIGLIP_SCALE), np.float32(SIGLIP_BIAS)


def reference_loss(kind):
  return loss_lib.clip_loss if kind == "clip" else sharded_loss_lib.siglip_loss


def shard_batch(mesh, *arrays, batch_axes=BATCH_AXES):
  sharding = NamedSharding(mesh, P(batch_axes))
  return tuple(jax.device_put(array, sharding) for array in arrays)


def value_and_grads(loss_fn, *args):
  """Loss and gradients w.r.t. every argument, under jit."""
  argnums = tuple(range(len(args)))
  return jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))(*args)


def assert_grads_close(got_grads, want_grads, names):
  for got, want, name in zip(got_grads, want_grads, names):
    # Entries near zero differ by float32 rounding of sums taken in another
    # order, so the absolute tolerance scales with the largest entry.
    atol = TOLERANCE * max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=TOLERANCE, atol=atol,
                               err_msg=f"gradient w.r.t. {name}")


def numpy_siglip_loss(image, text, scale, bias):
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = scale * image.astype(np.float64) @ text.T.astype(np.float64) + bias
  labels = 2 * np.eye(len(image)) - 1
  # -log σ(x) = log(1 + exp(-x)), computed stably.
  return np.logaddexp(0, -labels * logits).sum() / len(image)


def own_negatives_only_loss(mesh, kind):
  """Deliberately wrong: each device's loss over its local batch, averaged."""
  reference = reference_loss(kind)

  def local(image, text, *scalars):
    return jax.lax.pmean(reference(image, text, *scalars), BATCH_AXES)

  num_scalars = len(scalars_for(kind))
  return jax.shard_map(
      local, mesh=mesh,
      in_specs=(P(BATCH_AXES), P(BATCH_AXES)) + (P(),) * num_scalars,
      out_specs=P())


def test_siglip_loss_matches_numpy():
  image, text = make_embeddings()
  got = sharded_loss_lib.siglip_loss(image, text, SIGLIP_SCALE, SIGLIP_BIAS)
  want = numpy_siglip_loss(image, text, SIGLIP_SCALE, SIGLIP_BIAS)
  np.testing.assert_allclose(got, want, rtol=TOLERANCE)


def test_siglip_init_is_temperature_10_bias_minus_10():
  temperature = np.exp(sharded_loss_lib.SIGLIP_LOG_TEMPERATURE_INIT)
  np.testing.assert_allclose(temperature, 10.0, rtol=1e-12)
  assert sharded_loss_lib.SIGLIP_BIAS_INIT == -10.0


@pytest.mark.parametrize("kind,mode", sharded_loss_lib.VALID_MODES)
@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_sharded_loss_and_grads_match_one_device(mesh_shape, kind, mode):
  mesh = make_mesh(mesh_shape)
  image, text = make_embeddings()
  scalars = scalars_for(kind)
  want_loss, want_grads = value_and_grads(reference_loss(kind), image, text,
                                          *scalars)

  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, kind, mode)
  got_loss, got_grads = value_and_grads(loss_fn, *shard_batch(mesh, image,
                                                              text), *scalars)

  assert got_loss.shape == ()
  np.testing.assert_allclose(got_loss, want_loss, rtol=TOLERANCE,
                             atol=TOLERANCE)
  names = ["image", "text", "logit_scale", "logit_bias"][:len(want_grads)]
  assert_grads_close(got_grads, want_grads, names)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_own_negatives_only_loss_differs(mesh_shape, kind):
  mesh = make_mesh(mesh_shape)
  image, text = make_embeddings()
  scalars = scalars_for(kind)
  want = reference_loss(kind)(image, text, *scalars)
  wrong = jax.jit(own_negatives_only_loss(mesh, kind))(
      *shard_batch(mesh, image, text), *scalars)
  # The comparison in the equality test must be able to reject this value.
  assert not np.allclose(wrong, want, rtol=TOLERANCE, atol=TOLERANCE)
  assert abs(float(wrong) - float(want)) > 1e-2


@pytest.mark.parametrize("kind,mode", sharded_loss_lib.VALID_MODES)
def test_one_axis_data_mesh_matches_one_device(kind, mode):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  image, text = make_embeddings(seed=1)
  scalars = scalars_for(kind)
  want_loss, want_grads = value_and_grads(reference_loss(kind), image, text,
                                          *scalars)

  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, kind, mode,
                                               batch_axes=("data",))
  inputs = shard_batch(mesh, image, text, batch_axes=("data",))
  got_loss, got_grads = value_and_grads(loss_fn, *inputs, *scalars)

  np.testing.assert_allclose(got_loss, want_loss, rtol=TOLERANCE,
                             atol=TOLERANCE)
  names = ["image", "text", "logit_scale", "logit_bias"][:len(want_grads)]
  assert_grads_close(got_grads, want_grads, names)


@pytest.mark.parametrize("kind,mode", sharded_loss_lib.VALID_MODES)
def test_bfloat16_inputs_use_float32_arithmetic(kind, mode):
  mesh = make_mesh((2, 2, 2))
  image, text = make_embeddings(seed=2, dtype=jnp.bfloat16)
  scalars = tuple(jnp.bfloat16(value) for value in scalars_for(kind))
  # bfloat16 represents the scalars exactly, so float32 arithmetic on the
  # upcast inputs is the reference. The lowered program is checked as well,
  # for matmuls, exponentials and logarithms on bfloat16 operands.
  want = reference_loss(kind)(np.asarray(image, np.float32),
                              np.asarray(text, np.float32),
                              *(np.float32(value) for value in scalars))

  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, kind, mode)
  inputs = shard_batch(mesh, image, text) + scalars
  got = jax.jit(loss_fn)(*inputs)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)

  argnums = tuple(range(len(inputs)))
  lowered = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums)).lower(
      *inputs).as_text()
  arithmetic = re.compile(r"dot_general|exponential|logistic|\blog")
  bfloat16_ops = [line.strip() for line in lowered.splitlines()
                  if arithmetic.search(line) and "bf16" in line]
  assert not bfloat16_ops, bfloat16_ops


@pytest.mark.parametrize("kind,mode", [("clip", "chunked"), ("siglip", "local"),
                                       ("infonce", "full")])
def test_invalid_kind_and_mode_raise(kind, mode):
  message = rf"\('{kind}', '{mode}'\)\. Valid pairs"
  with pytest.raises(ValueError, match=message):
    sharded_loss_lib.make_sharded_loss(make_mesh((8, 1, 1)), kind, mode)


def test_unknown_batch_axis_raises():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  with pytest.raises(ValueError, match="fsdp"):
    sharded_loss_lib.make_sharded_loss(mesh, "clip", "full")


def test_clip_rejects_logit_bias():
  mesh = make_mesh((8, 1, 1))
  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, "clip", "local")
  image, text = make_embeddings()
  with pytest.raises(ValueError, match="logit_bias"):
    loss_fn(image, text, CLIP_SCALE, SIGLIP_BIAS)


def test_siglip_requires_logit_bias():
  mesh = make_mesh((8, 1, 1))
  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, "siglip", "chunked")
  image, text = make_embeddings()
  with pytest.raises(ValueError, match="logit_bias"):
    loss_fn(image, text, SIGLIP_SCALE)


def test_uneven_global_batch_raises():
  mesh = make_mesh((2, 2, 2))
  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, "clip", "full")
  image, text = make_embeddings()
  with pytest.raises(ValueError, match="Global batch 30 does not divide"):
    loss_fn(image[:30], text[:30], CLIP_SCALE)


def test_mismatched_embedding_shapes_raise():
  mesh = make_mesh((8, 1, 1))
  loss_fn = sharded_loss_lib.make_sharded_loss(mesh, "siglip", "full")
  image, text = make_embeddings()
  with pytest.raises(ValueError, match="same shape"):
    loss_fn(image, text[:16], SIGLIP_SCALE, SIGLIP_BIAS)

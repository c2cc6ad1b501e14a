"""The fast train step against a straightforward reference of the same step.

The model's speed-ups (2-D projections, the attention layout, the optimizer
under a conditional, joint shared layers) must not change results. The
reference here is the model written out plainly from its parameter tree,
once, for any array module: NumPy in float64 gives the loss of the first
step, and jax.numpy gives the gradients for three steps of a NumPy AdamW.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared_encoder_jax import train as train_lib
from test_train_step import (assert_params_close, compiled_step, make_batch,
                             make_setup, numpy_adamw, numpy_clip_loss, EOT)


def layer_norm(xp, x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / xp.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(xp, x):
  return 0.5 * x * (1 + xp.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def softmax(xp, x):
  e = xp.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def block(xp, x, p, causal):
  """One pre-LN block on (batch, length, width)."""
  y = layer_norm(xp, x, p["attention_norm"])
  a = p["attention"]
  q, k, v = (xp.einsum("btd,dhk->bhtk", y, a[n]["kernel"]) +
             a[n]["bias"][None, :, None, :]
             for n in ("query", "key", "value"))
  scores = xp.einsum("bhqk,bhsk->bhqs", q, k) / np.sqrt(q.shape[-1])
  if causal:
    length = x.shape[1]
    allowed = np.tril(np.ones((length, length), bool))
    scores = xp.where(allowed, scores, -1e30)
  heads = xp.einsum("bhqs,bhsk->bqhk", softmax(xp, scores), v)
  x = x + xp.einsum("bqhk,hkd->bqd", heads, a["out"]["kernel"]) + (
      a["out"]["bias"])
  y = layer_norm(xp, x, p["mlp_norm"])
  m = p["mlp"]
  hidden = gelu(xp, y @ m["fc1"]["kernel"] + m["fc1"]["bias"])
  return x + hidden @ m["fc2"]["kernel"] + m["fc2"]["bias"]


def blocks(xp, model, params, x, modality):
  for i in range(model.depth):
    name = (f"shared_blocks_{i}" if i in model.shared_layers else
            f"{modality}_blocks_{i}")
    x = block(xp, x, params[name], causal=modality == "text")
  return x


def with_feature(xp, x, vector):
  feature = xp.broadcast_to(vector, x.shape[:-1] + vector.shape)
  return xp.concatenate([x, feature], axis=-1)


def reference_embed(xp, model, params, images, tokens):
  """(image embeddings, text embeddings, logit scale), written plainly."""
  batch, p = images.shape[0], model.patch_size
  n = model.image_size // p
  patches = images.reshape(batch, n, p, n, p, -1).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(batch, n * n, -1)
  kernel = params["patch_embedding"]["kernel"]
  x = patches @ kernel.reshape(-1, kernel.shape[-1]) + (
      params["patch_embedding"]["bias"])
  if model.modality == "feature":
    x = with_feature(xp, x, params["image_modality_embedding"])
  first = [xp.broadcast_to(params["class_token"], (batch, 1, model.width))]
  if model.modality == "token":
    first.append(xp.broadcast_to(params["image_modality_embedding"],
                                 (batch,) + params[
                                     "image_modality_embedding"].shape))
  x = xp.concatenate(first + [x], axis=1) + params["image_position_embedding"]
  x = layer_norm(xp, x, params["image_pre_norm"])
  x = blocks(xp, model, params, x, "image")
  image = layer_norm(xp, x[:, 0], params["image_final_norm"]) @ (
      params["image_projection"]["kernel"])

  eot = np.argmax(np.asarray(tokens) == model.eot_id, axis=-1)
  x = params["token_embedding"]["embedding"][np.asarray(tokens)]
  if model.modality == "feature":
    x = with_feature(xp, x, params["text_modality_embedding"])
  elif model.modality == "token":
    extra = xp.broadcast_to(params["text_modality_embedding"],
                            (batch,) + params["text_modality_embedding"].shape)
    x = xp.concatenate([x[:, :1], extra, x[:, 1:]], axis=1)
    eot = eot + model.num_modality_tokens
  x = x + params["text_position_embedding"]
  x = blocks(xp, model, params, x, "text")
  pooled = x[np.arange(batch), eot]
  text = layer_norm(xp, pooled, params["text_final_norm"]) @ (
      params["text_projection"]["kernel"])
  scale = xp.minimum(xp.exp(params["logit_scale"]), model.logit_scale_max)
  return image, text, scale


# (modality, shared layers, joint shared layers, devices)
VARIANTS = [("feature", "all", False, 1), ("none", "none", False, 1),
            ("token", "0", False, 1), ("feature", "all", True, 1),
            ("token", "0", True, 8)]


def setup_variant(modality, shared_layers, joint, total_steps=10):
  config, model, tx, schedule = make_setup(modality, shared_layers,
                                           total_steps=total_steps)
  return config, model.clone(joint_shared_layers=joint), tx, schedule


@pytest.mark.parametrize("modality,shared_layers,joint,devices", VARIANTS)
def test_steps_match_reference_step(modality, shared_layers, joint, devices):
  """The first loss in float64, the parameters after three AdamW steps."""
  config, model, tx, schedule = setup_variant(modality, shared_layers, joint,
                                              total_steps=5)
  _, state, step = compiled_step(model, tx, schedule,
                                 jax.devices()[:devices])
  params = jax.tree.map(lambda p: np.asarray(p, np.float64),
                        jax.device_get(state.params))
  mu = jax.tree.map(np.zeros_like, params)
  nu = jax.tree.map(np.zeros_like, params)

  def reference_loss(p, batch):
    image, text, scale = reference_embed(jnp, model, p, batch["image"],
                                         batch["text"])
    image = image / jnp.linalg.norm(image, axis=1, keepdims=True)
    text = text / jnp.linalg.norm(text, axis=1, keepdims=True)
    logits = scale * image @ text.T
    diagonal = jnp.arange(logits.shape[0])
    return -0.5 * (jax.nn.log_softmax(logits, 1)[diagonal, diagonal].mean() +
                   jax.nn.log_softmax(logits, 0)[diagonal, diagonal].mean())

  # Not jitted: the token ids index and compare as concrete arrays.
  reference_grad = jax.grad(reference_loss)
  for i in range(3):
    batch = make_batch(model, seed=i)
    if i == 0:
      # The first loss against the model written out in float64 NumPy.
      image, text, scale = reference_embed(np, model, params, batch["image"],
                                           batch["text"])
      first_loss = numpy_clip_loss(image, text, scale)
    grads = reference_grad(jax.tree.map(jnp.float32, params), batch)
    lr = 5e-4 * 0.5 * (1 + np.cos(np.pi * i / 5))  # cosine, no warm-up
    params, mu, nu = numpy_adamw(params, jax.device_get(grads), mu, nu,
                                 i + 1, lr, config.optimizer)
    state, metrics = step(state, batch)
    if i == 0:
      np.testing.assert_allclose(metrics["loss"], first_loss, rtol=1e-5)
  assert int(state.step) == 3
  assert_params_close(state.params, params)


def test_reference_matches_model_and_sees_a_change():
  """The reference agrees with the model and differs once a weight does."""
  _, model, _, _ = make_setup()
  params = jax.device_get(model.init(jax.random.PRNGKey(0), *(
      jnp.asarray(v) for v in make_batch(model, batch=2).values()))["params"])
  params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  batch = make_batch(model, batch=4)
  got = model.apply({"params": params}, batch["image"], batch["text"])
  want = reference_embed(np, model, params64, batch["image"], batch["text"])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
  for layer in params64:
    if "blocks" in layer:
      params64[layer]["attention"]["query"]["kernel"] *= 1.5
  changed = reference_embed(np, model, params64, batch["image"],
                            batch["text"])
  assert np.abs(changed[0] - got[0]).max() > 1e-3


def test_training_run_compiles_the_train_step_once(synthetic_data_dir,
                                                   tmp_path, caplog):
  """Twelve steps with logging, evaluation and checkpoints in between."""
  from conftest import tiny_config

  config = tiny_config()
  config.data.data_dir = synthetic_data_dir
  caplog.set_level("WARNING")
  with jax.log_compiles():
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  compiles = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Compiling") and
              "_train_step" in r.getMessage()]
  assert len(compiles) == 1, compiles

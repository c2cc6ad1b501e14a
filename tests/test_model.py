"""Model structure: shapes, parameter sharing, pooling, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import model as model_lib

VOCAB, EOT = 50, 3


def build(modality="feature", shared_layers="all", size="tiny", **overrides):
  config = config_lib.base_config()
  config_lib.set_model_size(config, size)
  config.model.modality = modality
  config.model.modality_dim = 8
  config.model.shared_layers = shared_layers
  for key, value in overrides.items():
    config.model[key] = value
  return model_lib.build_model(config.model, VOCAB, EOT)


def token_rows(batch, context, lengths, seed=0):
  """Rows of [start=2, random ids >= 4 ..., EOT, pad 0 ...]."""
  rng = np.random.default_rng(seed)
  rows = np.zeros((batch, context), np.int32)
  for i, length in enumerate(lengths):
    rows[i, 0] = 2
    rows[i, 1:length - 1] = rng.integers(4, VOCAB, length - 2)
    rows[i, length - 1] = EOT
  return jnp.asarray(rows)


def init(model, batch=2):
  images = jax.random.normal(jax.random.PRNGKey(1),
                             (batch, model.image_size, model.image_size, 3))
  tokens = token_rows(batch, model.text_context, [5 + i for i in range(batch)])
  params = model.init(jax.random.PRNGKey(0), images, tokens)["params"]
  return params, images, tokens


@pytest.mark.parametrize("modality", ["feature", "token", "none"])
@pytest.mark.parametrize("shared_layers", ["all", "none", "0"])
def test_output_shapes_every_mode(modality, shared_layers):
  model = build(modality, shared_layers)
  params, images, tokens = init(model, batch=3)
  image_emb, text_emb, scale = model.apply({"params": params}, images, tokens)
  assert image_emb.shape == (3, model.embed_dim)
  assert text_emb.shape == (3, model.embed_dim)
  assert scale.shape == ()
  assert np.all(np.isfinite(image_emb))
  assert np.all(np.isfinite(text_emb))


def test_feature_mode_embedding_widths():
  model = build("feature")
  params, _, _ = init(model)
  embedding_width = model.width - model.modality_dim
  assert params["patch_embedding"]["kernel"].shape[-1] == embedding_width
  assert params["token_embedding"]["embedding"].shape == (VOCAB,
                                                           embedding_width)
  assert params["image_modality_embedding"].shape == (model.modality_dim,)
  assert params["text_modality_embedding"].shape == (model.modality_dim,)


def test_token_mode_extends_positions():
  model = build("token", num_modality_tokens=2)
  params, _, _ = init(model)
  assert params["image_modality_embedding"].shape == (2, model.width)
  assert params["image_position_embedding"].shape == (
      1 + 2 + model.num_patches, model.width)
  assert params["text_position_embedding"].shape == (
      model.text_context + 2, model.width)


def test_none_mode_has_no_modality_parameters():
  params, _, _ = init(build("none"))
  assert "image_modality_embedding" not in params
  assert "text_modality_embedding" not in params


def test_shared_layer_is_one_subtree():
  model = build(shared_layers="1", depth=3)
  params, _, _ = init(model)
  block_names = sorted(k for k in params if "_blocks_" in k)
  assert block_names == ["image_blocks_0", "image_blocks_2", "shared_blocks_1",
                         "text_blocks_0", "text_blocks_2"]


def test_separate_layers_exist_twice():
  params, _, _ = init(build(shared_layers="none"))
  assert "image_blocks_0" in params
  assert "text_blocks_0" in params
  assert not any(k.startswith("shared_blocks") for k in params)
  image = jax.tree.leaves(params["image_blocks_0"])
  text = jax.tree.leaves(params["text_blocks_0"])
  assert len(image) == len(text)
  assert not all(np.array_equal(a, b) for a, b in zip(image, text))


def _block_grad_norm(grads, name):
  return float(jnp.sqrt(sum(jnp.sum(g ** 2)
                            for g in jax.tree.leaves(grads[name]))))


def test_shared_layer_gets_gradient_from_both_modalities():
  model = build(shared_layers="all")
  params, images, tokens = init(model)

  def image_only(p):
    return jnp.sum(model.apply({"params": p}, images,
                               method=model.encode_image) ** 2)

  def text_only(p):
    return jnp.sum(model.apply({"params": p}, tokens,
                               method=model.encode_text) ** 2)

  image_grads = jax.grad(image_only)(params)
  text_grads = jax.grad(text_only)(params)
  for i in range(model.depth):
    assert _block_grad_norm(image_grads, f"shared_blocks_{i}") > 0
    assert _block_grad_norm(text_grads, f"shared_blocks_{i}") > 0
  # The modality-specific parts get gradient from their own modality only.
  assert _block_grad_norm(image_grads, "text_final_norm") == 0
  assert _block_grad_norm(text_grads, "image_final_norm") == 0


def test_separate_layer_gets_gradient_from_its_modality_only():
  model = build(shared_layers="none")
  params, images, _ = init(model)
  grads = jax.grad(lambda p: jnp.sum(model.apply(
      {"params": p}, images, method=model.encode_image) ** 2))(params)
  assert _block_grad_norm(grads, "image_blocks_0") > 0
  assert _block_grad_norm(grads, "text_blocks_0") == 0


@pytest.mark.parametrize("modality", ["feature", "token"])
def test_text_pooled_at_end_of_text_position(modality):
  model = build(modality)
  params, _, _ = init(model)
  tokens = token_rows(1, model.text_context, [6])
  encode = lambda t: model.apply({"params": params}, t,
                                 method=model.encode_text)
  reference = encode(tokens)
  # Ids after the end-of-text token are invisible to it (causal mask), even
  # ids larger than the end-of-text id.
  after = tokens.at[0, 7:].set(VOCAB - 1)
  np.testing.assert_array_equal(encode(after), reference)
  # An id before it changes the embedding.
  before = tokens.at[0, 2].set(tokens[0, 2] % (VOCAB - 5) + 4 + 1)
  assert not np.allclose(encode(before), reference)


def test_logit_scale_initialised_and_clamped():
  model = build()
  params, images, tokens = init(model)
  _, _, scale = model.apply({"params": params}, images, tokens)
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-6)
  params = dict(params, logit_scale=jnp.asarray(10.0))
  _, _, scale = model.apply({"params": params}, images, tokens)
  assert float(scale) == 100.0


def test_paper_size_parameter_ratio():
  counts = {}
  for shared in ("all", "none"):
    model = build("feature" if shared == "all" else "none", shared, "paper")
    model = model.clone(vocab_size=49408)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            *model_lib.dummy_inputs(model))
    counts[shared] = model_lib.count_parameters(shapes["params"])
  assert counts["all"]["shared_blocks"] == counts["none"]["image_blocks"]
  assert counts["all"]["image_blocks"] == counts["all"]["text_blocks"] == 0
  ratio = counts["all"]["total"] / counts["none"]["total"]
  assert 0.55 < ratio < 0.65, ratio


def test_bfloat16_compute_keeps_float32_params_and_loss():
  model = build(dtype="bfloat16")
  params, images, tokens = init(model)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  image_emb, text_emb, scale = model.apply({"params": params}, images, tokens)
  assert image_emb.dtype == jnp.bfloat16
  assert loss_lib.clip_loss(image_emb, text_emb, scale).dtype == jnp.float32

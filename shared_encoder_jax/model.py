"""The shared image–text encoder (Flax linen).

One pre-LN Transformer stack serves image patches and text tokens. Layer `i`
is either shared, one parameter subtree `shared_blocks_i` applied to both
modalities, or modality-specific, two subtrees `image_blocks_i` and
`text_blocks_i`. Sharing every layer gives the shared encoder; sharing none
gives the two-tower (separate encoders) baseline.

The `modality` field sets how the encoder distinguishes the two modalities:
  * "feature": a learnable `modality_dim` vector concatenated to every token;
    the patch and token embeddings are `width - modality_dim` wide.
  * "token": `num_modality_tokens` learnable tokens in the sequence, after the
    start token for text and after the class token for images.
  * "none": nothing.

This module imports only JAX and Flax, so the export loader can use it on
machines without TensorFlow.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
           "float16": jnp.float16}


class MlpBlock(nn.Module):
  """Two dense layers with a GELU between them, on (rows, width) inputs."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.with_logical_constraint(x, ("batch", "mlp"))
    x = nn.gelu(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


def attention(query, key, value, causal: bool):
  """Softmax attention over (batch, heads, length, head_dim) inputs.

  The query is scaled before the score matmul (a smaller tensor than the
  scores), and the softmax runs in float32.
  """
  head_dim = query.shape[-1]
  scores = jnp.einsum("bhqd,bhkd->bhqk", query * head_dim ** -0.5, key)
  scores = scores.astype(jnp.float32)
  if causal:
    length = scores.shape[-1]
    mask = jnp.tril(jnp.ones((length, length), bool))
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", weights, value)


class HeadsDense(nn.Module):
  """A dense layer whose kernel has a heads axis, applied as a 2-D matmul.

  "in" maps (rows, width) to (rows, heads, head_dim) with a kernel of shape
  (width, heads, head_dim). "out" maps (rows, heads, head_dim) to
  (rows, width) with a kernel of shape (heads, head_dim, width). The
  parameters, their names and their initial values are those of
  `nn.DenseGeneral`, so checkpoints and sharding rules see the same tree,
  but the matmul is written on the flattened kernel: XLA's CPU backend runs
  the weight gradient of a dot that contracts two axes several times slower.
  """
  shape: tuple[int, ...]  # the kernel's shape
  direction: str  # "in" or "out"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    num_in = 1 if self.direction == "in" else 2
    fan_in = int(np.prod(self.shape[:num_in]))
    fan_out = int(np.prod(self.shape[num_in:]))
    default_init = nn.initializers.lecun_normal()
    kernel = self.param(
        "kernel",
        lambda rng, shape: default_init(rng, (fan_in, fan_out)).reshape(shape),
        self.shape)
    bias = self.param("bias", nn.initializers.zeros, self.shape[num_in:])
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    rows = x.shape[0]
    y = x.reshape(rows, fan_in) @ kernel.reshape(fan_in, fan_out)
    y = y + bias.reshape(fan_out)
    return y.reshape((rows,) + self.shape[num_in:])


class PatchEmbedding(nn.Module):
  """Non-overlapping patches times a kernel, with an optional appended vector.

  The parameters are those of `nn.Conv` with a (patch, patch, channels,
  features) kernel and stride `patch` (same names, shapes and initial
  values), but the patches are flattened and multiplied as one 2-D matmul.
  With `feature` (the image modality feature), the output has its values
  appended to every patch: the kernel gets zero columns and the bias gets
  the feature, so no concatenation of the activations is needed.
  """
  features: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, feature=None):
    batch, height, width, channels = images.shape
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias,
                                                   dtype=self.dtype)
    rows, cols = height // p, width // p
    patches = images[:, :rows * p, :cols * p].reshape(
        batch, rows, p, cols, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch * rows * cols, p * p * channels)
    kernel = kernel.reshape(p * p * channels, self.features)
    if feature is not None:
      kernel = jnp.pad(kernel, ((0, 0), (0, feature.shape[-1])))
      bias = jnp.concatenate([bias, feature.astype(bias.dtype)])
    x = patches @ kernel + bias
    return x.reshape(batch, rows * cols, -1)


class SelfAttention(nn.Module):
  """Multi-head self-attention over one or more sequences per example.

  `x` is (rows, width) with rows = batch × total length: each example's
  tokens of every segment (length, causal) of `segments`, one segment after
  the other. The projections run once over all rows as 2-D matmuls, and
  attention runs per segment, with a causal mask where `causal` is set.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, segments):
    rows, width = x.shape
    heads = (self.num_heads, width // self.num_heads)
    total = sum(length for length, _ in segments)
    batch = rows // total

    def project(name):
      y = HeadsDense((width,) + heads, "in", dtype=self.dtype, name=name)(x)
      return y.reshape(batch, total, *heads)

    query, key, value = project("query"), project("key"), project("value")
    outputs, start = [], 0
    for length, causal in segments:
      def heads_major(t):
        t = nn.with_logical_constraint(
            t[:, start:start + length],
            ("batch", "length", "heads", "head_dim"))
        return t.transpose(0, 2, 1, 3)

      with jax.named_scope("core"):
        y = attention(heads_major(query), heads_major(key),
                      heads_major(value), causal)
      outputs.append(y.transpose(0, 2, 1, 3))
      start += length
    y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
    return HeadsDense(heads + (width,), "out", dtype=self.dtype,
                      name="out")(y.reshape(rows, *heads))


class EncoderBlock(nn.Module):
  """Pre-LN Transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

  Works on (rows, width) arrays that contain the sequences of `segments`
  (see `SelfAttention`). The dense layers are then plain 2-D matmuls, whose
  weight gradients contract one axis instead of two, which XLA runs several
  times faster on CPU. A shared block can also take both modalities in one
  call.
  """
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, segments):
    y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    x = x + SelfAttention(self.num_heads, dtype=self.dtype,
                          name="attention")(y, segments)
    y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
    return nn.with_logical_constraint(x, ("batch", "activation"))


class SharedEncoderCLIP(nn.Module):
  """Image and text encoders built on one partly or fully shared Transformer.

  `vocab_size` and `eot_id` come from the tokenizer. `shared_layers` lists
  the indices of layers whose weights serve both modalities.
  """
  vocab_size: int
  eot_id: int
  image_size: int = 224
  patch_size: int = 16
  image_channels: int = 3
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  text_context: int = 77
  embed_dim: int = 512
  modality: str = "feature"
  modality_dim: int = 20
  num_modality_tokens: int = 1
  shared_layers: Sequence[int] = ()
  dtype: str = "float32"
  logit_scale_init: float = 1 / 0.07
  logit_scale_max: float = 100.0
  use_logit_bias: bool = False
  logit_bias_init: float = 0.0
  remat: str = "none"
  # Whether a shared layer runs once over both modalities when they are
  # embedded together, as in the train step (see `__call__`). It changes
  # speed, not results, so it is not one of the CONFIG_FIELDS.
  joint_shared_layers: bool = False

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def _extra_tokens(self) -> int:
    return self.num_modality_tokens if self.modality == "token" else 0

  @property
  def _embedding_width(self) -> int:
    if self.modality == "feature":
      return self.width - self.modality_dim
    return self.width

  def setup(self):
    dtype = _DTYPES[self.dtype]
    block_class = EncoderBlock
    if self.remat != "none":
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if self.remat == "dots" else None)
      # Argument 2 (`segments`, after self and x) is static: the shapes and
      # masks of the sequences.
      block_class = nn.remat(EncoderBlock, policy=policy, static_argnums=(2,))
    block = lambda: block_class(self.num_heads, self.mlp_dim, dtype=dtype)
    shared = set(self.shared_layers)
    self.shared_blocks = {str(i): block() for i in range(self.depth)
                          if i in shared}
    self.image_blocks = {str(i): block() for i in range(self.depth)
                         if i not in shared}
    self.text_blocks = {str(i): block() for i in range(self.depth)
                        if i not in shared}

    normal = nn.initializers.normal
    scale = self.width ** -0.5
    self.patch_embedding = PatchEmbedding(self._embedding_width,
                                          self.patch_size, dtype=dtype)
    self.class_token = self.param("class_token", normal(scale),
                                  (self.width,))
    self.image_position_embedding = self.param(
        "image_position_embedding", normal(scale),
        (1 + self._extra_tokens + self.num_patches, self.width))
    self.image_pre_norm = nn.LayerNorm(dtype=dtype)
    self.image_final_norm = nn.LayerNorm(dtype=dtype)
    self.image_projection = nn.Dense(self.embed_dim, use_bias=False,
                                     dtype=dtype)

    self.token_embedding = nn.Embed(
        self.vocab_size, self._embedding_width, embedding_init=normal(0.02),
        dtype=dtype)
    self.text_position_embedding = self.param(
        "text_position_embedding", normal(0.01),
        (self.text_context + self._extra_tokens, self.width))
    self.text_final_norm = nn.LayerNorm(dtype=dtype)
    self.text_projection = nn.Dense(self.embed_dim, use_bias=False,
                                    dtype=dtype)

    if self.modality == "feature":
      self.image_modality_embedding = self.param(
          "image_modality_embedding", normal(scale), (self.modality_dim,))
      self.text_modality_embedding = self.param(
          "text_modality_embedding", normal(scale), (self.modality_dim,))
    elif self.modality == "token":
      shape = (self.num_modality_tokens, self.width)
      self.image_modality_embedding = self.param(
          "image_modality_embedding", normal(scale), shape)
      self.text_modality_embedding = self.param(
          "text_modality_embedding", normal(scale), shape)

    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(np.log(self.logit_scale_init)),
        ())
    if self.use_logit_bias:
      self.logit_bias = self.param(
          "logit_bias", nn.initializers.constant(self.logit_bias_init), ())

  def _block(self, i: int, modality: str):
    key = str(i)
    if key in self.shared_blocks:
      return self.shared_blocks[key]
    return (self.image_blocks if modality == "image" else self.text_blocks)[key]

  def _add_feature(self, x, vector):
    """Concatenate the modality feature vector to every token of `x`."""
    feature = jnp.broadcast_to(vector.astype(x.dtype),
                               x.shape[:-1] + vector.shape)
    return jnp.concatenate([x, feature], axis=-1)

  def _image_tokens(self, images):
    """Patch, class and modality tokens of images, before the blocks."""
    dtype = _DTYPES[self.dtype]
    x = self.patch_embedding(
        images.astype(dtype),
        self.image_modality_embedding if self.modality == "feature" else None)
    batch = x.shape[0]

    parts = [jnp.broadcast_to(self.class_token.astype(dtype),
                              (batch, 1, self.width))]
    if self.modality == "token":
      parts.append(jnp.broadcast_to(self.image_modality_embedding.astype(dtype),
                                    (batch,) + self.image_modality_embedding.shape))
    x = jnp.concatenate(parts + [x], axis=1)
    x = x + self.image_position_embedding.astype(dtype)
    return self.image_pre_norm(x)

  def _text_tokens(self, tokens):
    """Token embeddings before the blocks, and each row's pooling position.

    The sequence is pooled at the first end-of-text token, found by its
    position in `tokens`; every row must contain `eot_id`.
    """
    dtype = _DTYPES[self.dtype]
    eot_position = jnp.argmax(tokens == self.eot_id, axis=-1)
    x = self.token_embedding(tokens)
    if self.modality == "feature":
      x = self._add_feature(x, self.text_modality_embedding)
    elif self.modality == "token":
      batch = x.shape[0]
      modality_tokens = jnp.broadcast_to(
          self.text_modality_embedding.astype(dtype),
          (batch,) + self.text_modality_embedding.shape)
      x = jnp.concatenate([x[:, :1], modality_tokens, x[:, 1:]], axis=1)
      eot_position = eot_position + self.num_modality_tokens
    x = x + self.text_position_embedding.astype(dtype)
    return x, eot_position

  def _pool_image(self, x):
    return self.image_projection(self.image_final_norm(x[:, 0]))

  def _pool_text(self, x, eot_position):
    pooled = x[jnp.arange(x.shape[0]), eot_position]
    return self.text_projection(self.text_final_norm(pooled))

  def _run_blocks(self, x, modality: str):
    batch, length, width = x.shape
    segments = ((length, modality == "text"),)
    x = x.reshape(batch * length, width)
    for i in range(self.depth):
      x = self._block(i, modality)(x, segments)
    return x.reshape(batch, length, width)

  def encode_image(self, images):
    """Embed images of shape (batch, size, size, channels) into the joint space."""
    return self._pool_image(self._run_blocks(self._image_tokens(images),
                                             "image"))

  def encode_text(self, tokens):
    """Embed token ids of shape (batch, text_context) into the joint space."""
    x, eot_position = self._text_tokens(tokens)
    return self._pool_text(self._run_blocks(x, "text"), eot_position)

  def clamped_logit_scale(self):
    """exp(logit_scale), clamped at `logit_scale_max`, in float32."""
    return jnp.minimum(jnp.exp(self.logit_scale.astype(jnp.float32)),
                       self.logit_scale_max)

  def __call__(self, images, tokens):
    """Return (image embeddings, text embeddings, logit scale).

    With `joint_shared_layers`, a shared layer takes the image and text rows
    in one call: one matmul per projection over both modalities' tokens
    (whose weight gradient then needs no separate sum), attention still per
    modality. The result is that of `encode_image` and `encode_text` up to
    float rounding.
    """
    if not (self.joint_shared_layers and self.shared_blocks and
            images.shape[0] == tokens.shape[0]):
      return (self.encode_image(images), self.encode_text(tokens),
              self.clamped_logit_scale())
    image, (text, eot_position) = (self._image_tokens(images),
                                   self._text_tokens(tokens))
    batch, image_length, _ = image.shape
    text_length = text.shape[1]
    segments = ((image_length, False), (text_length, True))
    # Each example's image tokens, then its text tokens: the rows stay in
    # batch order, so the batch sharding of the mesh still applies.
    joint = None
    for i in range(self.depth):
      if str(i) in self.shared_blocks:
        if joint is None:
          joint = jnp.concatenate([image, text], axis=1).reshape(
              -1, self.width)
        joint = self.shared_blocks[str(i)](joint, segments)
        continue
      if joint is not None:
        joint = joint.reshape(batch, -1, self.width)
        image, text, joint = (joint[:, :image_length],
                              joint[:, image_length:], None)
      image = self.image_blocks[str(i)](
          image.reshape(-1, self.width), segments[:1]).reshape(image.shape)
      text = self.text_blocks[str(i)](
          text.reshape(-1, self.width), segments[1:]).reshape(text.shape)
    if joint is not None:
      joint = joint.reshape(batch, -1, self.width)
      image, text = joint[:, :image_length], joint[:, image_length:]
    return (self._pool_image(image), self._pool_text(text, eot_position),
            self.clamped_logit_scale())


# The `config.model` fields that set the architecture; `shared_layers` is the
# string form ("all", "none", "0-5", ...).
CONFIG_FIELDS = ("image_size", "patch_size", "image_channels", "width",
                 "depth", "num_heads", "mlp_dim", "text_context", "embed_dim",
                 "modality", "modality_dim", "num_modality_tokens",
                 "shared_layers", "dtype", "logit_scale_init",
                 "logit_scale_max", "use_logit_bias", "logit_bias_init",
                 "remat")


def build_model(model_config, vocab_size: int, eot_id: int) -> SharedEncoderCLIP:
  """Build the model from a `config.model` group (or an equivalent dict)."""
  # Imported here: the rest of this module needs only JAX and Flax.
  from shared_encoder_jax import config as config_lib
  fields = {name: model_config[name] for name in CONFIG_FIELDS}
  fields["shared_layers"] = config_lib.parse_shared_layers(
      fields["shared_layers"], fields["depth"])
  return SharedEncoderCLIP(vocab_size=vocab_size, eot_id=eot_id, **fields)


def dummy_inputs(model: SharedEncoderCLIP, batch_size: int = 1):
  """Zero images and token rows of the model's input shapes (for init)."""
  images = jnp.zeros((batch_size, model.image_size, model.image_size,
                      model.image_channels), jnp.float32)
  tokens = jnp.full((batch_size, model.text_context), model.eot_id, jnp.int32)
  return images, tokens


def count_parameters(params) -> dict[str, int]:
  """Count parameters in total and by group (blocks, embeddings, other)."""
  counts = {"total": 0, "shared_blocks": 0, "image_blocks": 0,
            "text_blocks": 0, "other": 0}
  for name, subtree in params.items():
    size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree))
    counts["total"] += size
    group = name.rsplit("_", 1)[0]
    counts[group if group in counts else "other"] += size
  return counts

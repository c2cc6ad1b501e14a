"""Train state and the jit-compiled train and embedding steps.

The batch is split over the mesh's data × fsdp devices and the state is
sharded as `sharding.py` decides. The state is created already placed on the
mesh (`jax.jit` with `out_shardings`), so parameters never pass through the
host. Imports only JAX, Flax and optax.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from shared_encoder_jax import model as model_lib
from shared_encoder_jax import sharded_loss
from shared_encoder_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint needs to continue training exactly.

  `nonfinite_step` is -1 until a step produces a non-finite loss or
  gradient. Then it contains that step's number and every later update is
  skipped, so the parameters stay those of the last finite step.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_step: jax.Array


def _init_state(rng, model, tx):
  init_rng, state_rng = jax.random.split(rng)
  params = model.init(init_rng, *model_lib.dummy_inputs(model))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=state_rng,
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def abstract_state(model, tx, seed: int = 0):
  """Shapes and dtypes of the train state, from `jax.eval_shape` (no FLOPs)."""
  return jax.eval_shape(functools.partial(_init_state, model=model, tx=tx),
                        jax.random.PRNGKey(seed))


def state_shardings(mesh: Mesh, state_shapes):
  """Shardings of every leaf of the train state (see `sharding.py`)."""
  return sharding_lib.tree_shardings(state_shapes, mesh)


def apply_on_mesh(model, mesh: Mesh, params, images, tokens):
  """Run the model with its activation sharding constraints on `mesh`."""
  # set_mesh is not allowed inside jit; the abstract mesh is enough for
  # sharding constraints written with PartitionSpecs.
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), (
      nn.logical_axis_rules(sharding_lib.LOGICAL_AXIS_RULES)):
    return model.apply({"params": params}, images, tokens)


def create_train_state(model, tx, mesh: Mesh, seed: int) -> TrainState:
  """Initialise the train state directly on the mesh with its shardings."""
  shardings = state_shardings(mesh, abstract_state(model, tx, seed))
  init = jax.jit(functools.partial(_init_state, model=model, tx=tx),
                 out_shardings=shardings)
  return init(jax.random.PRNGKey(seed))


def _loss_and_grads(params, batch, *, model, mesh, contrastive_loss):
  """Loss, logit scale and parameter gradients of one (global) batch."""
  def loss_fn(params):
    image_emb, text_emb, logit_scale = apply_on_mesh(
        model, mesh, params, batch["image"], batch["text"])
    loss = contrastive_loss(image_emb, text_emb, logit_scale,
                            params.get("logit_bias"))
    return loss, logit_scale

  (loss, logit_scale), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params)
  return loss, logit_scale, grads


def _accumulated_loss_and_grads(params, batch, *, model, mesh,
                                contrastive_loss, num_micro_batches):
  """Compute what `_loss_and_grads` does, in micro-batches (GradCache).

  A contrastive loss needs every negative of the batch, so the gradient is
  not a sum of per-micro-batch gradients. Instead:
    1. embed every micro-batch without gradient;
    2. take the loss and its gradient with respect to the embeddings over
       the whole batch;
    3. embed each micro-batch again and back-propagate its slice of that
       gradient into the parameters.
  Memory contains one micro-batch's activations at a time, at the cost of a
  second forward pass.
  """
  size = batch["image"].shape[0]
  rows = size // num_micro_batches

  # Micro-batch j takes rows j, j + k, j + 2k, ...: with the batch split over
  # devices in contiguous blocks, each micro-batch spans every device.
  def split(x):
    return x.reshape((rows, num_micro_batches) + x.shape[1:]).swapaxes(0, 1)

  def merge(x):
    return x.swapaxes(0, 1).reshape((size,) + x.shape[2:])

  def embed(p, images, tokens):
    image_emb, text_emb, _ = apply_on_mesh(model, mesh, p, images, tokens)
    return image_emb, text_emb

  def clamped_scale(p):
    return jnp.minimum(jnp.exp(p["logit_scale"].astype(jnp.float32)),
                       model.logit_scale_max)

  micro_batches = (split(batch["image"]), split(batch["text"]))
  image_emb, text_emb = jax.lax.map(lambda xs: embed(params, *xs),
                                    micro_batches)
  image_emb, text_emb = merge(image_emb), merge(text_emb)

  logit_scale = clamped_scale(params)
  bias = params.get("logit_bias")
  loss, embedding_grads = jax.value_and_grad(
      lambda *args: contrastive_loss(*args), argnums=(0, 1, 2, 3) if
      bias is not None else (0, 1, 2))(image_emb, text_emb, logit_scale, bias)
  image_grad, text_grad, scale_grad = embedding_grads[:3]

  def backpropagate(grads, xs):
    images, tokens, image_cotangent, text_cotangent = xs
    _, vjp = jax.vjp(lambda p: embed(p, images, tokens), params)
    (micro_grads,) = vjp((image_cotangent, text_cotangent))
    return jax.tree.map(jnp.add, grads, micro_grads), None

  grads, _ = jax.lax.scan(
      backpropagate, jax.tree.map(jnp.zeros_like, params),
      micro_batches + (split(image_grad), split(text_grad)))
  _, scale_vjp = jax.vjp(clamped_scale, params)
  grads = jax.tree.map(jnp.add, grads, scale_vjp(scale_grad)[0])
  if bias is not None:
    grads = dict(grads, logit_bias=grads["logit_bias"] + embedding_grads[3])
  return loss, logit_scale, grads


def _train_step(state: TrainState, batch, *, model, tx, schedule, mesh,
                contrastive_loss, num_micro_batches):
  if num_micro_batches > 1:
    loss, logit_scale, grads = _accumulated_loss_and_grads(
        state.params, batch, model=model, mesh=mesh,
        contrastive_loss=contrastive_loss,
        num_micro_batches=num_micro_batches)
  else:
    loss, logit_scale, grads = _loss_and_grads(
        state.params, batch, model=model, mesh=mesh,
        contrastive_loss=contrastive_loss)
  step = state.step + 1
  with jax.named_scope("optimizer"):
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & (state.nonfinite_step < 0)

    def update(params, opt_state):
      updates, new_opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_opt_state

    # A conditional, not a select over every leaf: skipping costs nothing
    # and applying writes each parameter and moment once.
    new_params, new_opt_state = jax.lax.cond(
        apply, update, lambda params, opt_state: (params, opt_state),
        state.params, state.opt_state)
  nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, step,
                             state.nonfinite_step)
  new_state = state.replace(step=step, params=new_params,
                            opt_state=new_opt_state,
                            nonfinite_step=nonfinite_step)
  metrics = {"loss": loss, "grad_norm": grad_norm, "logit_scale": logit_scale,
             "learning_rate": schedule(state.step)}
  return new_state, metrics


def make_train_step(model, tx, schedule, mesh: Mesh, shardings,
                    loss_kind: str = "clip", loss_mode: str = "full",
                    num_micro_batches: int = 1):
  """Compile-once train step: (state, batch) -> (state, metrics).

  The loss is computed over the global batch with `jax.shard_map` (see
  `sharded_loss.py`). With `num_micro_batches` > 1 the batch is processed
  in that many parts with the same result (GradCache, see
  `_accumulated_loss_and_grads`). The input state is donated, so its buffers
  are reused for the new state.
  """
  contrastive_loss = sharded_loss.make_sharded_loss(mesh, loss_kind,
                                                    loss_mode)
  batch_spec = {"image": sharding_lib.batch_sharding(mesh), "text": sharding_lib.batch_sharding(mesh)}
  return jax.jit(
      functools.partial(_train_step, model=model, tx=tx, schedule=schedule,
                        mesh=mesh, contrastive_loss=contrastive_loss,
                        num_micro_batches=num_micro_batches),
      in_shardings=(shardings, batch_spec),
      out_shardings=(shardings, sharding_lib.replicated(mesh)),
      donate_argnums=0)


def make_embed_step(model, mesh: Mesh):
  """Compiled (params, batch) -> (image embeddings, text embeddings, scale)."""
  def embed(params, batch):
    return apply_on_mesh(model, mesh, params, batch["image"], batch["text"])

  return jax.jit(embed, out_shardings=(sharding_lib.batch_sharding(mesh),
                                       sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)))

"""Loss, optimizer and the jit-compiled train step, on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import model as model_lib
from shared_encoder_jax import optimizer as optimizer_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train_step as train_step_lib

VOCAB, EOT, BATCH = 50, 3, 16


def numpy_clip_loss(image, text, scale):
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = scale * image.astype(np.float64) @ text.T.astype(np.float64)

  def cross_entropy(x):
    x = x - x.max(axis=1, keepdims=True)
    log_softmax = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return -np.mean(np.diagonal(log_softmax))

  return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def test_clip_loss_matches_numpy():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(12, 8)).astype(np.float32)
  text = rng.normal(size=(12, 8)).astype(np.float32)
  got = loss_lib.clip_loss(image, text, jnp.float32(14.0))
  np.testing.assert_allclose(got, numpy_clip_loss(image, text, 14.0),
                             rtol=1e-5)


def test_clip_loss_is_float32_for_bfloat16_inputs():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)
  text = jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)
  loss = loss_lib.clip_loss(image, text, jnp.bfloat16(10.0))
  assert loss.dtype == jnp.float32
  reference = numpy_clip_loss(np.asarray(image, np.float32),
                              np.asarray(text, np.float32), 10.0)
  np.testing.assert_allclose(loss, reference, rtol=1e-5)


def make_setup(modality="feature", shared_layers="all", total_steps=10,
               **optimizer_overrides):
  config = config_lib.base_config()
  config_lib.set_model_size(config, "tiny")
  config.model.modality = modality
  config.model.modality_dim = 8
  config.model.shared_layers = shared_layers
  for key, value in optimizer_overrides.items():
    config.optimizer[key] = value
  model = model_lib.build_model(config.model, VOCAB, EOT)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, total_steps)
  return config, model, tx, schedule


def make_batch(model, seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, model.image_size, model.image_size,
                            3)).astype(np.float32)
  tokens = np.zeros((batch, model.text_context), np.int32)
  for i in range(batch):
    length = int(rng.integers(3, model.text_context))
    tokens[i, 0] = 2
    tokens[i, 1:length - 1] = rng.integers(4, VOCAB, length - 2)
    tokens[i, length - 1] = EOT
  return {"image": images, "text": tokens}


def compiled_step(model, tx, schedule, devices):
  mesh = sharding_lib.make_mesh(devices=devices)
  state = train_step_lib.create_train_state(model, tx, mesh, seed=0)
  shardings = train_step_lib.state_shardings(mesh, state)
  step = train_step_lib.make_train_step(model, tx, schedule, mesh, shardings)
  return mesh, state, step


def numpy_adamw(params, grads, mu, nu, count, lr, config):
  """One AdamW update in NumPy, decay on "kernel" leaves only."""
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  treedef = jax.tree.structure(params)
  new_params, new_mu, new_nu = [], [], []
  for (path, p), g, m, v in zip(flat_params, jax.tree.leaves(grads),
                                jax.tree.leaves(mu), jax.tree.leaves(nu)):
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    m = config.b1 * m + (1 - config.b1) * g
    v = config.b2 * v + (1 - config.b2) * g * g
    m_hat = m / (1 - config.b1 ** count)
    v_hat = v / (1 - config.b2 ** count)
    update = m_hat / (np.sqrt(v_hat) + config.eps)
    if path[-1].key == "kernel":
      update = update + config.weight_decay * p
    new_params.append(p - lr * update)
    new_mu.append(m)
    new_nu.append(v)
  unflatten = lambda leaves: jax.tree.unflatten(treedef, leaves)
  return unflatten(new_params), unflatten(new_mu), unflatten(new_nu)


def assert_params_close(got_tree, want_tree, rtol=1e-4, atol=5e-6):
  """Compare parameter (or gradient) trees leaf by leaf.

  The default atol is 1% of one AdamW step's update at learning rate 5e-4.
  Attention key biases are skipped: softmax
  ignores a bias added to every key, so their gradient is rounding noise,
  which Adam's normalisation amplifies to a full-size update.
  """
  for (path, got), want in zip(
      jax.tree_util.tree_flatten_with_path(got_tree)[0],
      jax.tree.leaves(want_tree)):
    name = jax.tree_util.keystr(path)
    if name.endswith("['key']['bias']"):
      continue
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def test_three_steps_match_numpy_adamw():
  config, model, tx, schedule = make_setup(total_steps=5)
  _, state, step = compiled_step(model, tx, schedule, jax.devices()[:1])
  params = jax.device_get(state.params)
  mu = jax.tree.map(lambda p: np.zeros(p.shape), params)
  nu = jax.tree.map(lambda p: np.zeros(p.shape), params)

  def loss_fn(p, batch):
    image, text, scale = model.apply({"params": p}, batch["image"],
                                     batch["text"])
    return loss_lib.clip_loss(image, text, scale)

  for i in range(3):
    batch = make_batch(model, seed=i)
    grads = jax.grad(loss_fn)(jax.tree.map(jnp.float32, params), batch)
    lr = 5e-4 * 0.5 * (1 + np.cos(np.pi * i / 5))  # cosine, no warm-up
    params, mu, nu = numpy_adamw(params, jax.device_get(grads), mu, nu,
                                 i + 1, lr, config.optimizer)
    state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["learning_rate"], lr, rtol=1e-6)

  assert int(state.step) == 3
  assert_params_close(state.params, params)


def test_weight_decay_mask_excludes_non_kernels():
  _, model, _, _ = make_setup()
  params = model.init(jax.random.PRNGKey(0),
                      *model_lib.dummy_inputs(model))["params"]
  mask = optimizer_lib.weight_decay_mask(params)
  assert mask["shared_blocks_0"]["mlp"]["fc1"]["kernel"]
  assert not mask["shared_blocks_0"]["mlp"]["fc1"]["bias"]
  assert not mask["shared_blocks_0"]["attention_norm"]["scale"]
  assert not mask["token_embedding"]["embedding"]
  assert not mask["image_position_embedding"]
  assert not mask["class_token"]
  assert not mask["logit_scale"]
  assert mask["patch_embedding"]["kernel"]


def test_warmup_then_cosine_schedule():
  _, _, _, schedule = make_setup(total_steps=110, warmup_steps=10)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(5), 2.5e-4, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), 2.5e-4, rtol=1e-5)
  assert float(schedule(110)) < 1e-9


def test_training_lowers_loss_on_fixed_batch():
  _, model, tx, schedule = make_setup(total_steps=1000, warmup_steps=5,
                                      learning_rate=1e-3)
  _, state, step = compiled_step(model, tx, schedule, jax.devices()[:1])
  batch = make_batch(model)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses


def test_step_compiles_once_and_donates_state():
  _, model, tx, schedule = make_setup()
  _, state, step = compiled_step(model, tx, schedule, jax.devices()[:1])
  first_state = state
  for seed in range(4):
    state, _ = step(state, make_batch(model, seed))
  assert step._cache_size() == 1
  assert first_state.params["logit_scale"].is_deleted()


def test_eight_devices_split_batch_and_match_one_device():
  assert jax.device_count() == 8
  _, model, tx, schedule = make_setup(grad_clip_norm=1.0)
  batch = make_batch(model)

  mesh8, state8, step8 = compiled_step(model, tx, schedule, jax.devices())
  sharded = {key: jax.device_put(value, sharding_lib.batch_sharding(mesh8))
             for key, value in batch.items()}
  shard_shapes = {shard.data.shape for shard in sharded["image"].addressable_shards}
  assert shard_shapes == {(BATCH // 8,) + batch["image"].shape[1:]}
  assert len(sharded["text"].addressable_shards) == 8

  _, state1, step1 = compiled_step(model, tx, schedule, jax.devices()[:1])
  for _ in range(2):
    state8, metrics8 = step8(state8, sharded)
    state1, metrics1 = step1(state1, batch)
    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics8["grad_norm"], metrics1["grad_norm"],
                               rtol=1e-5)
  assert_params_close(state8.params, state1.params)


def test_eight_device_gradients_match_one_device():
  _, model, _, _ = make_setup()
  batch = make_batch(model)
  params = model.init(jax.random.PRNGKey(0),
                      *model_lib.dummy_inputs(model))["params"]

  def loss_fn(p, b):
    image, text, scale = model.apply({"params": p}, b["image"], b["text"])
    return loss_lib.clip_loss(image, text, scale)

  grads1 = jax.jit(jax.grad(loss_fn))(params, batch)
  mesh = sharding_lib.make_mesh()
  sharded = jax.device_put(batch, sharding_lib.batch_sharding(mesh))
  replicated = jax.device_put(params, sharding_lib.replicated(mesh))
  grads8 = jax.jit(jax.grad(loss_fn))(replicated, sharded)
  # Gradients reach 0.5; float32 sums in another order differ by ~1e-7.
  assert_params_close(grads8, grads1, rtol=1e-4, atol=1e-6)


def test_nonfinite_loss_skips_update_and_records_step():
  _, model, tx, schedule = make_setup()
  _, state, step = compiled_step(model, tx, schedule, jax.devices()[:1])
  state, _ = step(state, make_batch(model, 0))
  before = jax.device_get(state.params)
  bad = make_batch(model, 1)
  bad["image"][0, 0, 0, 0] = np.nan
  state, metrics = step(state, bad)
  assert not np.isfinite(metrics["loss"])
  assert int(state.nonfinite_step) == 2
  state, _ = step(state, make_batch(model, 2))  # later steps are skipped too
  assert int(state.nonfinite_step) == 2
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("modality", ["token", "none"])
def test_state_has_replicated_shardings(modality):
  _, model, tx, _ = make_setup(modality)
  mesh = sharding_lib.make_mesh()
  state = train_step_lib.create_train_state(model, tx, mesh, seed=0)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_fully_replicated
    assert len(leaf.sharding.device_set) == 8

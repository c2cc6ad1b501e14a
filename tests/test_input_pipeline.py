"""Training order, data fractions, host shards and evaluation padding."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from shared_encoder_jax import evaluation
from shared_encoder_jax import preprocessing
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import tokenizer as tokenizer_lib
from shared_encoder_jax.data import data_fraction
from shared_encoder_jax.data import input_pipeline

from conftest import tiny_config


@dataclasses.dataclass(frozen=True)
class IdTransform:
  """Stands in for ExampleTransform: keeps the id and a number per example."""

  def __call__(self, example, rng=None):
    del rng
    return {"id": example["id"], "value": np.float32(example["value"])}

  def padding(self):
    return {"id": "", "value": np.float32(-1)}

  def finish_batch(self, batch):
    return batch


def make_source(size):
  return [{"id": f"example-{index:04d}", "value": index}
          for index in range(size)]


def batch_ids(dataset, positions):
  return [list(dataset[position]["id"]) for position in positions]


def test_fractions_are_nested():
  ids = [f"pmc-{index}" for index in range(2000)]
  chosen = {fraction: set(data_fraction.select(ids, fraction, seed=3))
            for fraction in (0.1, 0.25, 0.5, 1.0)}
  assert len(chosen[0.1]) == 200
  assert len(chosen[0.25]) == 500
  assert len(chosen[1.0]) == 2000
  assert chosen[0.1] < chosen[0.25] < chosen[0.5] < chosen[1.0]


def test_fraction_ignores_order_and_init():
  ids = [f"pmc-{index}" for index in range(500)]
  reordered = list(reversed(ids))
  first = {ids[i] for i in data_fraction.select(ids, 0.2, seed=0)}
  second = {reordered[i] for i in data_fraction.select(reordered, 0.2, seed=0)}
  assert first == second
  other_seed = {ids[i] for i in data_fraction.select(ids, 0.2, seed=1)}
  assert other_seed != first


def test_fraction_is_stable_across_machines():
  # SHA-256 ranks do not depend on the platform or library versions; the
  # value below was computed once and must never change.
  ids = [f"id{index}" for index in range(100)]
  chosen = [ids[i] for i in data_fraction.select(ids, 0.1, seed=0)]
  assert len(chosen) == 10
  assert data_fraction.ids_fingerprint(chosen) == (
      "443cfaffddbbd17900abfac1e38731d9fa28e2ab4ff2fdde011110ee6b1b4b4e")


def test_epoch_drops_last_partial_batch():
  source = make_source(50)
  dataset = input_pipeline.training_dataset(source, IdTransform(), 8, seed=0)
  epoch = batch_ids(dataset, range(6))  # 50 // 8 = 6 batches per epoch
  flat = list(itertools.chain(*epoch))
  assert len(flat) == 48
  assert len(set(flat)) == 48
  next_epoch = set(itertools.chain(*batch_ids(dataset, range(6, 12))))
  assert len(next_epoch) == 48
  assert list(itertools.chain(*batch_ids(dataset, range(6, 12)))) != flat


def test_two_hosts_read_disjoint_shards():
  source = make_source(64)
  whole = input_pipeline.training_dataset(source, IdTransform(), 16, seed=5)
  hosts = [input_pipeline.training_dataset(source, IdTransform(), 16, seed=5,
                                           rows=rows)
           for rows in ((0, 8), (8, 16))]
  seen = []
  for position in range(4):  # one epoch
    first, second = (host[position]["id"] for host in hosts)
    assert len(first) == len(second) == 8
    assert not set(first) & set(second)
    assert list(first) + list(second) == list(whole[position]["id"])
    seen += list(first) + list(second)
  assert sorted(seen) == sorted(example["id"] for example in source)


def test_fraction_limits_training_examples():
  source = make_source(100)
  ids = [example["id"] for example in source]
  indices = data_fraction.select(ids, 0.25, seed=0)
  dataset = input_pipeline.training_dataset(source, IdTransform(), 5, seed=0,
                                            indices=indices)
  seen = set(itertools.chain(*batch_ids(dataset, range(20))))
  assert seen == {ids[index] for index in indices}


def test_resumed_iterator_sees_same_ids(synthetic_data_dir):
  config = tiny_config()
  config.data.data_dir = synthetic_data_dir
  config.data.augment.random_resized_crop = True
  config.data.augment.horizontal_flip = True
  builder = input_pipeline.load_builder(config.data)
  source = input_pipeline.data_source(builder, "train")
  captions = input_pipeline.read_captions(builder, "train", "caption", 300, 0)
  tokenizer = tokenizer_lib.train_tokenizer(captions, 300, 16)
  transform = input_pipeline.example_transform(config, tokenizer,
                                               training=True)

  def make():
    return input_pipeline.training_dataset(source, transform, 16, seed=1)

  uninterrupted = list(itertools.islice(
      input_pipeline.training_batches(make(), 0, 1), 8))
  before = list(itertools.islice(
      input_pipeline.training_batches(make(), 0, 1), 5))
  after = list(itertools.islice(
      input_pipeline.training_batches(make(), 5, 1), 3))
  for expected, actual in zip(uninterrupted, before + after):
    assert list(expected["id"]) == list(actual["id"])
    np.testing.assert_array_equal(expected["image"], actual["image"])
    np.testing.assert_array_equal(expected["text"], actual["text"])


def test_evaluation_over_four_hosts_matches_one():
  source = make_source(37)
  one_host = list(input_pipeline.evaluation_batches(source, IdTransform(), 8,
                                                    num_threads=1))
  hosts = [list(input_pipeline.evaluation_batches(
      source, IdTransform(), 8, num_threads=1, rows=(2 * h, 2 * h + 2)))
           for h in range(4)]
  assert all(len(batches) == 5 for batches in hosts)  # hosts stay in step

  scored = []
  for number, whole in enumerate(one_host):
    rows = np.concatenate([hosts[h][number]["value"] for h in range(4)])
    np.testing.assert_array_equal(rows, whole["value"])
    for h in range(4):
      np.testing.assert_array_equal(hosts[h][number]["mask"], whole["mask"])
    scored += list(rows[whole["mask"]])
  assert sorted(scored) == list(range(37))

  def metrics(values):
    angle = np.asarray(values)[:, None] * np.array([[0.1, 0.37]])
    image = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)
    text = image + 0.05 * np.sin(7 * np.arange(len(values)))[:, None]
    return evaluation.retrieval_metrics(image, text, (1, 5))

  single = np.concatenate([b["value"][b["mask"]] for b in one_host])
  assert metrics(scored) == metrics(single)


def test_process_rows_cover_batch():
  mesh = sharding_lib.make_mesh(tiny_config().mesh)
  sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  assert input_pipeline.process_rows(sharding, 16) == (0, 16)
  assert jax.process_count() == 1


def test_random_resized_crop_is_seeded():
  image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
  first = preprocessing.random_resized_crop(
      image, 16, np.random.default_rng(7), (0.3, 0.6))
  again = preprocessing.random_resized_crop(
      image, 16, np.random.default_rng(7), (0.3, 0.6))
  other = preprocessing.random_resized_crop(
      image, 16, np.random.default_rng(8), (0.3, 0.6))
  assert first.shape == (16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_random_resized_crop_handles_thin_images():
  image = np.full((1, 200, 3), 9, np.uint8)
  cropped = preprocessing.random_resized_crop(
      image, 8, np.random.default_rng(0))
  assert cropped.shape == (8, 8, 3)


def test_too_small_fraction_names_field():
  with pytest.raises(input_pipeline.DatasetError, match="data_fraction"):
    input_pipeline.training_dataset(make_source(10), IdTransform(), 16, 0)

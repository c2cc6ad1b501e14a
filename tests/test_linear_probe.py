"""Linear probe on synthetic embeddings: C choice, few-shot, determinism."""

import numpy as np
import pytest

from shared_encoder_jax import linear_probe

NUM_CLASSES = 5


def clustered(rng, centers, n, noise=1.0):
  labels = rng.integers(0, len(centers), size=n)
  features = centers[labels] + noise * rng.normal(size=(n, centers.shape[1]))
  return features, labels


@pytest.fixture(scope="module")
def splits():
  rng = np.random.default_rng(0)
  centers = 3 * rng.normal(size=(NUM_CLASSES, 16))
  return (clustered(rng, centers, 600), clustered(rng, centers, 200),
          clustered(rng, centers, 300))


def run(splits, **options):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
  return linear_probe.few_shot_probes(train_x, train_y, val_x, val_y,
                                      test_x, test_y, NUM_CLASSES, **options)


def test_probe_separates_clusters(splits):
  results = run(splits, shots=(4, None))
  assert results["full"]["accuracy"] > 0.9
  assert results["full"]["macro_f1"] > 0.9
  assert results["full"]["num_train"] == 600
  assert results["4-shot"]["accuracy"] > 2 * results["4-shot"]["chance"][
      "accuracy"]
  assert results["4-shot"]["num_train"] == 4 * NUM_CLASSES


def test_chosen_c_is_from_grid(splits):
  results = run(splits, shots=(None,))
  assert results["full"]["c"] in linear_probe.C_GRID
  assert len(results["full"]["validation_accuracy"]) == len(
      linear_probe.C_GRID)


def test_probe_is_deterministic(splits):
  first = run(splits, shots=(1, 4), seed=3)
  second = run(splits, shots=(1, 4), seed=3)
  assert first == second


def test_ties_choose_smallest_c():
  # Two points per class far apart: every C classifies validation right.
  train_x = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
  train_y = np.array([0, 0, 1, 1])
  results = linear_probe.linear_probe(train_x, train_y, train_x, train_y,
                                      train_x, train_y, 2,
                                      c_grid=(10.0, 1.0, 100.0))
  assert set(results["validation_accuracy"].values()) == {1.0}
  assert results["c"] == 1.0


def test_refit_on_train_and_validation_counts_both(splits):
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
  results = linear_probe.linear_probe(
      train_x[:50], train_y[:50], val_x, val_y, test_x, test_y, NUM_CLASSES,
      c_grid=(1.0,), refit_on_train_and_validation=True)
  assert results["refit_on_train_and_validation"] is True
  assert results["accuracy"] > 0.9


def test_few_shot_indices_per_class():
  labels = np.array([0, 0, 0, 1, 1, 2, 0, 1])
  indices = linear_probe.few_shot_indices(labels, 2, seed=0)
  assert np.bincount(labels[indices]).tolist() == [2, 2, 1]
  assert list(indices) == sorted(indices)
  np.testing.assert_array_equal(
      indices, linear_probe.few_shot_indices(labels, 2, seed=0))


def test_single_class_training_set_raises():
  x = np.eye(3)
  with pytest.raises(ValueError, match="at least two classes"):
    linear_probe.linear_probe(x, [0, 0, 0], x, [0, 0, 0], x, [0, 0, 0], 2)

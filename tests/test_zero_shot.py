"""Zero-shot classification with a toy text embedder of known geometry."""

import re

import numpy as np
import pytest

from shared_encoder_jax import zero_shot

CLASSES = ("nodule", "mass", "cavity", "calcification", "consolidation")


def toy_embedder(names):
  """Embed a prompt as +e_k for the name k it contains, -e_k after "no".

  A last coordinate shared by every prompt keeps the prompts of one class
  from being identical before ensembling.
  """
  def embed_texts(texts):
    out = np.zeros((len(texts), len(names) + 1))
    for row, text in enumerate(texts):
      (index,) = [i for i, name in enumerate(names) if name in text]
      out[row, index] = -1.0 if re.search(r"\bno\b", text) else 1.0
      out[row, -1] = 0.1 * (1 + len(text) % 3)
    return out
  return embed_texts


def test_class_embeddings_are_unit_class_directions():
  classes = zero_shot.class_embeddings(toy_embedder(CLASSES), CLASSES,
                                       zero_shot.RADIOLOGY_TEMPLATES)
  assert classes.shape == (5, 6)
  np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0)
  np.testing.assert_array_equal(classes[:, :5].argmax(axis=1), range(5))


def test_separable_images_score_perfectly():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, size=300)
  images = np.eye(6)[labels] + 0.1 * rng.normal(size=(300, 6))
  results = zero_shot.single_label_zero_shot(
      toy_embedder(CLASSES), images, labels, CLASSES)
  assert results["accuracy"] == 1.0
  assert results["balanced_accuracy"] == 1.0
  assert results["macro_f1"] == 1.0
  assert results["chance"]["accuracy"] == pytest.approx(0.2)
  assert sum(results["examples_per_class"]) == 300


def test_random_images_score_near_chance():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 5, size=2000)
  images = rng.normal(size=(2000, 6))
  results = zero_shot.single_label_zero_shot(
      toy_embedder(CLASSES), images, labels, CLASSES)
  assert results["accuracy"] == pytest.approx(0.2, abs=0.05)
  assert results["balanced_accuracy"] == pytest.approx(0.2, abs=0.05)


def test_metrics_average_over_present_classes():
  # Class 2 of 3 never occurs: balanced accuracy averages classes 0 and 1.
  results = zero_shot.classification_metrics(
      np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), num_classes=3)
  assert results["accuracy"] == 0.75
  assert results["balanced_accuracy"] == 0.75
  assert results["examples_per_class"] == [2, 2, 0]
  assert results["chance"]["accuracy"] == pytest.approx(1 / 3)


def test_multi_label_auroc_separable_is_one():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, size=(400, 5)).astype(float)
  images = np.concatenate([labels, np.ones((400, 1))], axis=1)
  images += 0.05 * rng.normal(size=images.shape)
  results = zero_shot.multi_label_zero_shot(
      toy_embedder(CLASSES), images, labels, CLASSES)
  assert results["macro_auroc"] == 1.0
  assert results["num_labels_scored"] == 5
  assert results["skipped_labels"] == []


def test_multi_label_auroc_random_is_half():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, size=(2000, 5)).astype(float)
  images = rng.normal(size=(2000, 6))
  results = zero_shot.multi_label_zero_shot(
      toy_embedder(CLASSES), images, labels, CLASSES)
  assert results["macro_auroc"] == pytest.approx(0.5, abs=0.05)


# One label, values 1, 0, -1 (uncertain), NaN (blank), 1, 0, and image
# scores s (the toy score is 2s, the same order):
#   exclude both:       pos {.9, .6}      neg {.1, .7}       -> 3/4
#   uncertain ones:     pos {.9, .6, .2}  neg {.1, .7}       -> 4/6
#   uncertain zeros:    pos {.9, .6}      neg {.1, .7, .2}   -> 5/6
#   blank as negative:  pos {.9, .6}      neg {.1, .7, .95}  -> 3/6
# A second label, all negative, has one class only and is skipped.
POLICY_VALUES = np.array([[1, 0], [0, 0], [-1, 0], [np.nan, 0], [1, 0],
                          [0, 0]])
POLICY_SCORES = np.array([0.9, 0.1, 0.2, 0.95, 0.6, 0.7])


@pytest.mark.parametrize("uncertain, blank_as_negative, expected", [
    ("exclude", False, 3 / 4),
    ("ones", False, 4 / 6),
    ("zeros", False, 5 / 6),
    ("exclude", True, 3 / 6),
])
def test_uncertain_and_blank_policies(uncertain, blank_as_negative,
                                      expected):
  names = ("effusion", "edema")
  images = np.stack([POLICY_SCORES, np.zeros(6),
                     np.sqrt(1 - POLICY_SCORES**2)], axis=1)
  results = zero_shot.multi_label_zero_shot(
      toy_embedder(names), images, POLICY_VALUES, names,
      uncertain=uncertain, blank_as_negative=blank_as_negative)
  assert results["per_label"]["effusion"]["auroc"] == pytest.approx(expected)
  assert results["macro_auroc"] == pytest.approx(expected)
  assert results["skipped_labels"] == ["edema"]
  assert np.isnan(results["per_label"]["edema"]["auroc"])


def test_label_values_outside_chexpert_raise():
  with pytest.raises(ValueError, match="found \\[2.0\\]"):
    zero_shot.binary_targets(np.array([1, 2, 0]))


def test_unknown_uncertain_policy_raises():
  with pytest.raises(ValueError, match="uncertain='maybe'"):
    zero_shot.binary_targets(np.array([1.0]), uncertain="maybe")


def test_single_label_subset_takes_first_per_class():
  findings = [[0], [1, 2], [1], [0], [], [0], [2], [1]]
  indices, labels = zero_shot.single_label_subset(findings, ("a", "b", "c"),
                                                  per_class=2)
  np.testing.assert_array_equal(indices, [0, 2, 3, 6, 7])
  np.testing.assert_array_equal(labels, [0, 1, 0, 2, 1])


def test_single_label_subset_accepts_names():
  findings = [["b"], [b"a"], ["a", "b"], ["c"]]
  indices, labels = zero_shot.single_label_subset(findings, ("a", "b", "c"),
                                                  per_class=5)
  np.testing.assert_array_equal(indices, [0, 1, 3])
  np.testing.assert_array_equal(labels, [1, 0, 2])


def test_single_label_subset_rejects_unknown_name():
  with pytest.raises(ValueError, match="'d'"):
    zero_shot.single_label_subset([["d"]], ("a", "b"), per_class=1)

"""Retrieval ranks and recalls on hand-computed examples."""

import numpy as np
import pytest

from shared_encoder_jax import evaluation


def test_ranks_break_ties_by_index():
  similarity = np.array([[0.5, 0.9, 0.5],   # match 0.5 ties column 2 (later)
                         [0.7, 0.7, 0.1],   # ties column 0 (earlier)
                         [0.3, 0.2, 0.1]])  # two candidates higher
  np.testing.assert_array_equal(evaluation.match_ranks(similarity), [2, 2, 3])


def test_ranks_in_chunks_equal_one_pass():
  similarity = np.random.default_rng(0).normal(size=(50, 50))
  np.testing.assert_array_equal(
      evaluation.match_ranks(similarity, chunk_rows=7),
      evaluation.match_ranks(similarity))


def test_retrieval_metrics_on_hand_example():
  # Unit vectors on a circle; text i is image i rotated slightly, except
  # text 3, which points at image 0.
  angles = np.array([0.0, 1.5, 3.0, 4.5])
  images = np.stack([np.cos(angles), np.sin(angles)], 1)
  text_angles = angles + 0.1
  text_angles[3] = 0.05
  texts = np.stack([np.cos(text_angles), np.sin(text_angles)], 1)
  metrics = evaluation.retrieval_metrics(images, texts, ks=(1, 2, 10))
  assert metrics["num_pairs"] == 4
  # Image→text ranks [2, 1, 1, 2]: text 3 outscores text 0 for image 0,
  # and text 2 outscores text 3 for image 3.
  np.testing.assert_array_equal(
      evaluation.match_ranks(images @ texts.T), [2, 1, 1, 2])
  assert metrics["image_to_text"]["recall@1"] == pytest.approx(0.5)
  assert metrics["image_to_text"]["recall@2"] == 1.0
  # K=10 is clipped to the 4 pairs, with chance 4/4.
  assert metrics["image_to_text"]["recall@4"] == 1.0
  assert "recall@10" not in metrics["image_to_text"]
  assert metrics["chance"] == {"recall@1": 0.25, "recall@2": 0.5,
                               "recall@4": 1.0}
  # Text→image: text 3 retrieves images 0 and 1 before image 3 (rank 3).
  assert metrics["text_to_image"]["recall@1"] == pytest.approx(0.75)
  assert metrics["text_to_image"]["median_rank"] == 1.0


def test_format_metrics_shows_chance():
  images = np.eye(3)
  metrics = evaluation.retrieval_metrics(images, images, ks=(1,))
  text = evaluation.format_metrics("test", metrics)
  assert "R@1 100.0% (chance 33.3%)" in text

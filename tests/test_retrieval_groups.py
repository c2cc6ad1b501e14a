"""Group-aware retrieval ranks, recalls and chance rates, computed by hand."""

import numpy as np
import pytest

from shared_encoder_jax import evaluation

# Five pairs of four distinct images and five captions. Pairs 0 and 1 share
# image A (two captions of one image, group "A"). Pairs 2 and 3 have the
# same caption "t" but different images B and C (groups "B" and "C").
# Rows are images of pairs 0-4, columns captions of pairs 0-4; rows 0 and 1
# are equal (same image) and so are columns 2 and 3 (same caption).
#                       a0   a1   t    t    d
SIMILARITY = np.array([[0.9, 0.5, 0.5, 0.5, 0.1],   # A
                       [0.9, 0.5, 0.5, 0.5, 0.1],   # A
                       [0.2, 0.3, 0.6, 0.6, 0.6],   # B
                       [0.7, 0.1, 0.4, 0.4, 0.2],   # C
                       [0.3, 0.3, 0.8, 0.8, 0.3]])  # D
GROUPS = ["A", "A", "B", "C", "D"]


def reference_ranks(similarity, groups):
  """The module docstring's rank definition, one query at a time."""
  ranks = []
  for row, scores in enumerate(similarity):
    matches = [c for c in range(len(scores)) if groups[c] == groups[row]]
    best = max(scores[c] for c in matches)
    first_best = min(c for c in matches if scores[c] == best)
    others = [c for c in range(len(scores)) if groups[c] != groups[row]]
    ranks.append(1 + sum(scores[c] > best for c in others) +
                 sum(scores[c] == best and c < first_best for c in others))
  return np.array(ranks)


def test_image_to_text_ranks_by_hand():
  # Row 0: best match a0 (0.9), nothing higher: 1.
  # Row 1: same image, a0 is also its match: 1 (2 without groups).
  # Row 2: match column 2 (0.6); columns 3 and 4 tie at 0.6 but come
  #   after it: 1.
  # Row 3: match column 3 (0.4); a0 (0.7) is higher and column 2 ties
  #   before it: 3.
  # Row 4: match column 4 (0.3); columns 2, 3 higher, 0, 1 tie before: 5.
  ranks = evaluation.match_ranks(SIMILARITY, groups=GROUPS)
  np.testing.assert_array_equal(ranks, [1, 1, 1, 3, 5])


def test_text_to_image_ranks_by_hand():
  # Column 0 (a0): rows 0 and 1 both match at 0.9: 1.
  # Column 1 (a1): rows 0 and 1 match at 0.5, nothing higher: 1.
  # Column 2 (t of B): match row 2 (0.6); row 4 (0.8) is higher: 2.
  # Column 3 (t of C): match row 3 (0.4); rows 0, 1, 2, 4 higher: 5.
  # Column 4 (d): match row 4 (0.3); row 2 (0.6) higher: 2.
  ranks = evaluation.match_ranks(SIMILARITY.T, groups=GROUPS)
  np.testing.assert_array_equal(ranks, [1, 1, 2, 5, 2])


def test_tied_matches_use_lowest_index():
  # Row 0 matches columns 0 and 2, all three scores tie. The best match
  # counts as column 0, so the non-match column 1 does not come before it.
  similarity = np.full((3, 3), 0.5)
  ranks = evaluation.match_ranks(similarity, groups=["a", "b", "a"])
  np.testing.assert_array_equal(ranks, [1, 2, 1])


def test_grouped_recalls_by_hand():
  metrics = evaluation.similarity_retrieval_metrics(SIMILARITY, (1, 2, 10),
                                                    GROUPS)
  assert metrics["num_pairs"] == 5
  assert metrics["num_groups"] == 4
  # Image→text ranks [1, 1, 1, 3, 5].
  assert metrics["image_to_text"]["recall@1"] == pytest.approx(0.6)
  assert metrics["image_to_text"]["recall@2"] == pytest.approx(0.6)
  assert metrics["image_to_text"]["recall@5"] == 1.0
  assert metrics["image_to_text"]["median_rank"] == 1.0
  # Text→image ranks [1, 1, 2, 5, 2].
  assert metrics["text_to_image"]["recall@1"] == pytest.approx(0.4)
  assert metrics["text_to_image"]["recall@2"] == pytest.approx(0.8)
  assert metrics["text_to_image"]["median_rank"] == 2.0


def test_grouped_chance_by_hand():
  metrics = evaluation.similarity_retrieval_metrics(SIMILARITY, (1, 2, 10),
                                                    GROUPS)
  # Two queries have 2 matches among 5 candidates, three have 1.
  # K=1: 1 - 3/5 = 0.4 and 1/5 = 0.2, mean (2*0.4 + 3*0.2) / 5 = 0.28.
  # K=2: 1 - C(3,2)/C(5,2) = 0.7 and 2/5 = 0.4, mean (1.4 + 1.2) / 5 = 0.52.
  assert metrics["chance"]["recall@1"] == pytest.approx(0.28)
  assert metrics["chance"]["recall@2"] == pytest.approx(0.52)
  # K=10 is clipped to the 5 candidates.
  assert metrics["chance"]["recall@5"] == pytest.approx(1.0)
  assert "recall@10" not in metrics["chance"]


def test_ungrouped_ranks_by_hand():
  # Without groups row 1 matches only a1 (0.5), and a0 (0.9) is higher.
  np.testing.assert_array_equal(evaluation.match_ranks(SIMILARITY),
                                [1, 2, 1, 3, 5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_reference_with_ties(seed):
  rng = np.random.default_rng(seed)
  # Scores on a coarse grid, so ties are frequent.
  similarity = rng.integers(0, 5, size=(40, 40)).astype(np.float32)
  groups = rng.integers(0, 25, size=40)
  np.testing.assert_array_equal(
      evaluation.match_ranks(similarity, chunk_rows=7, groups=groups),
      reference_ranks(similarity, groups))
  np.testing.assert_array_equal(
      evaluation.match_ranks(similarity, chunk_rows=7),
      reference_ranks(similarity, np.arange(40)))


def test_own_groups_equal_no_groups():
  rng = np.random.default_rng(3)
  images = rng.normal(size=(30, 8))
  texts = images + rng.normal(size=(30, 8))
  ungrouped = evaluation.retrieval_metrics(images, texts, (1, 5, 50))
  grouped = evaluation.retrieval_metrics(images, texts, (1, 5, 50),
                                         groups=[f"g{i}" for i in range(30)])
  assert grouped.pop("num_groups") == 30
  assert grouped["image_to_text"] == ungrouped["image_to_text"]
  assert grouped["text_to_image"] == ungrouped["text_to_image"]
  assert grouped["chance"] == pytest.approx(ungrouped["chance"])


def test_ungrouped_metrics_keep_keys():
  images = np.eye(4)
  metrics = evaluation.retrieval_metrics(images, images, (1, 5))
  assert set(metrics) == {"num_pairs", "chance", "image_to_text",
                          "text_to_image"}
  assert metrics["chance"] == {"recall@1": 0.25, "recall@4": 1.0}


def test_groups_of_wrong_length_raise():
  with pytest.raises(ValueError, match="groups has 2 entries"):
    evaluation.match_ranks(np.eye(3), groups=["a", "b"])


def test_read_groups_gives_empty_own_group():
  source = [{"group": b"s1"}, {"group": b""}, {"group": b"s1"},
            {"group": b""}]
  groups = evaluation.read_groups(source)
  assert groups[0] == groups[2] == "s1"
  assert groups[1] != groups[3]
  assert evaluation.read_groups([{"id": b"x"}]) is None

"""Tests for the synthetic radiology generator and its TFDS builder."""

from __future__ import annotations

import collections
import hashlib
import re

import numpy as np
import pytest

from shared_encoder_jax.data import synthetic_radiology as sr

NUM_SAMPLED = 400  # examples per check that renders scans directly


def _examples(
    split: str, count: int, seed: int = sr.DEFAULT_SEED
) -> list[sr.Example]:
  return [
      sr.generate_example(sr.example_rng(seed, split, i), split == "test")
      for i in range(count)
  ]


@pytest.fixture(scope="module")
def sampled_test_split() -> list[sr.Example]:
  return _examples("test", NUM_SAMPLED)


@pytest.fixture(scope="module")
def sampled_train_split() -> list[sr.Example]:
  return _examples("train", NUM_SAMPLED)


# --- Determinism -------------------------------------------------------------


def test_same_seed_gives_identical_split():
  first = list(sr.generate_split("train", 20, seed=7))
  second = list(sr.generate_split("train", 20, seed=7))
  assert [key for key, _ in first] == [key for key, _ in second]
  for (_, a), (_, b) in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    assert a["findings"] == b["findings"]
    assert a["group"] == b["group"]


def test_different_seed_changes_split():
  first = list(sr.generate_split("train", 20, seed=7))
  second = list(sr.generate_split("train", 20, seed=8))
  for (_, a), (_, b) in zip(first, second):
    assert not np.array_equal(a["image"], b["image"])
  captions_a = [record["caption"] for _, record in first]
  captions_b = [record["caption"] for _, record in second]
  assert captions_a != captions_b


def test_shorter_split_is_prefix():
  short = list(sr.generate_split("train", 5, seed=3))
  long = list(sr.generate_split("train", 12, seed=3))
  assert [key for key, _ in short] == [key for key, _ in long[:5]]
  assert [r["group"] for _, r in short] == [r["group"] for _, r in long[:5]]


def test_splits_share_no_images():
  groups = {
      split: {record["group"] for _, record in sr.generate_split(split, 300)}
      for split in sr.SPLITS
  }
  assert not groups["train"] & groups["validation"]
  assert not groups["train"] & groups["test"]
  assert not groups["validation"] & groups["test"]


def test_record_fields():
  key, record = next(sr.generate_split("validation", 1))
  assert key == "validation-000000"
  assert record["id"] == key
  assert record["image"].shape == (sr.IMAGE_SIZE, sr.IMAGE_SIZE, 1)
  assert record["image"].dtype == np.uint8
  assert 1 <= len(record["findings"]) <= sr.MAX_FINDINGS
  assert set(record["findings"]) <= set(sr.FINDING_TYPES)
  assert record["group"] == hashlib.sha1(record["image"].tobytes()).hexdigest()


def test_invalid_split_raises():
  with pytest.raises(ValueError, match="Invalid split"):
    sr.example_rng(0, "dev", 0)
  with pytest.raises(ValueError, match="Invalid split"):
    next(sr.generate_split("dev", 1))


# --- Captions ----------------------------------------------------------------

_CAPTION_PREFIX = re.compile(
    r"^(findings|finding|single finding):\s*", re.IGNORECASE
)


def _split_phrases(caption: str) -> list[str]:
  text = _CAPTION_PREFIX.sub("", caption.strip())
  assert text.endswith("."), caption
  text = text[:-1]
  return [p.strip() for p in re.split(r";|,| and ", text) if p.strip()]


def _matching_values(
    words: str, synonyms: dict[str, tuple[str, ...]]
) -> set[str]:
  padded = f" {words} "
  return {
      value
      for value, phrases in synonyms.items()
      if any(f" {phrase} " in padded for phrase in phrases)
  }


def _parse_phrase(phrase: str) -> tuple[str, str, str, str, str]:
  """Parse (type, size, intensity, side, level) from one finding phrase."""
  words = " ".join(re.findall(r"[a-z]+", phrase.lower()))
  parsed = []
  tables = [
      sr.TYPE_SYNONYMS,
      sr.SIZE_SYNONYMS,
      sr.INTENSITY_SYNONYMS,
      {side: (side,) for side in sr.SIDES},
      sr.LEVEL_SYNONYMS,
  ]
  for table in tables:
    values = _matching_values(words, table)
    assert len(values) == 1, f"{phrase!r} matches {values} of {sorted(table)}"
    parsed.append(values.pop())
  return tuple(parsed)


def test_synonyms_do_not_overlap_between_values():
  tables = (
      sr.TYPE_SYNONYMS,
      sr.SIZE_SYNONYMS,
      sr.INTENSITY_SYNONYMS,
      sr.LEVEL_SYNONYMS,
  )
  for table in tables:
    for value, phrases in table.items():
      for phrase in phrases:
        assert _matching_values(phrase, table) == {value}, phrase


@pytest.mark.parametrize("split", ["train", "test"])
def test_caption_describes_every_finding(
    split, sampled_train_split, sampled_test_split
):
  examples = sampled_train_split if split == "train" else sampled_test_split
  for example in examples:
    phrases = _split_phrases(example.caption)
    assert len(phrases) == len(example.findings), example.caption
    for phrase, finding in zip(phrases, example.findings):
      expected = (
          finding.finding_type,
          finding.size,
          finding.intensity,
          finding.side,
          finding.level,
      )
      assert _parse_phrase(phrase) == expected, example.caption


def test_captions_are_short(sampled_test_split):
  lengths = [len(example.caption.split()) for example in sampled_test_split]
  assert max(lengths) <= 28
  three_findings = [
      length
      for length, example in zip(lengths, sampled_test_split)
      if len(example.findings) == 3
  ]
  assert three_findings, "no example with three findings"


def test_captions_vary_for_same_content():
  # One finding written with different random generators gets varied
  # wording.
  finding = sr.Finding(
      "nodule", "right", "upper", "small", "dense", (16.0, 18.0)
  )
  captions = {
      sr.write_caption(np.random.default_rng(i), [finding]) for i in range(50)
  }
  assert len(captions) >= 10


def test_finding_order_in_caption_varies(sampled_train_split):
  # The caption lists findings in sampled order, so the first finding is
  # not always in the same zone or of the same type.
  first_types = collections.Counter(
      example.findings[0].finding_type
      for example in sampled_train_split
      if len(example.findings) > 1
  )
  assert len(first_types) == len(sr.FINDING_TYPES)


# --- Held-out combinations ---------------------------------------------------


def _has_held_out_pair(record: dict) -> bool:
  return sr.contains_held_out_pair(record["findings"])


def test_held_out_pairs_absent_from_train_and_validation():
  split_sizes = (("train", 3000), ("validation", sr.NUM_VALIDATION_EXAMPLES))
  for split, count in split_sizes:
    records = [record for _, record in sr.generate_split(split, count)]
    offending = [r["id"] for r in records if _has_held_out_pair(r)]
    assert not offending, f"{split} contains held-out pairs: {offending[:5]}"


def test_held_out_pairs_present_in_test():
  records = [
      record for _, record in sr.generate_split("test", sr.NUM_TEST_EXAMPLES)
  ]
  assert len(records) == 1000
  with_pair = sum(_has_held_out_pair(r) for r in records)
  assert with_pair >= 0.1 * len(records)
  for first, second in sr.HELD_OUT_PAIRS:
    assert any(
        first in r["findings"] and second in r["findings"] for r in records
    ), (first, second)


def test_contains_held_out_pair():
  first, second = sr.HELD_OUT_PAIRS[0]
  assert sr.contains_held_out_pair([first, second])
  assert sr.contains_held_out_pair([second, "mass", first])
  assert not sr.contains_held_out_pair([first])


# --- Rendering ---------------------------------------------------------------


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
  out = mask.copy()
  for _ in range(steps):
    padded = np.pad(out, 1)
    out = (
        padded[1:-1, 1:-1]
        | padded[:-2, 1:-1]
        | padded[2:, 1:-1]
        | padded[1:-1, :-2]
        | padded[1:-1, 2:]
    )
  return out


def _finding_contrasts(examples: list[sr.Example]) -> dict[str, list[float]]:
  """Return the mean grey level in each finding minus that of a ring around it.

  The ring lies 3 to 4 pixels outside the finding's core.
  """
  contrasts = collections.defaultdict(list)
  for example in examples:
    image = example.image.astype(np.float64)
    for i, finding in enumerate(example.findings):
      mask = example.masks[i]
      others = np.delete(example.masks, i, axis=0).any(axis=0)
      ring = _dilate(mask, 4) & ~_dilate(mask, 2) & ~_dilate(others, 2)
      contrast = image[mask].mean() - image[ring].mean()
      contrasts[finding.intensity].append(contrast)
  return contrasts


def test_findings_are_visible(sampled_test_split):
  # Noise has a standard deviation of at most 9 grey levels per pixel. The
  # ring of a large finding in a lower zone can reach the brighter heart or
  # diaphragm, which lowers the contrast of a few faint findings.
  contrasts = _finding_contrasts(sampled_test_split)
  assert min(contrasts["dense"]) >= 25.0
  assert np.percentile(contrasts["faint"], 5) >= 10.0
  assert np.mean(np.array(contrasts["faint"]) > 0.0) >= 0.99


def test_dense_findings_brighter_than_faint(sampled_test_split):
  contrasts = _finding_contrasts(sampled_test_split)
  assert np.median(contrasts["dense"]) >= 1.8 * np.median(contrasts["faint"])


def test_finding_masks_nonempty_and_disjoint(
    sampled_test_split, sampled_train_split
):
  for example in sampled_test_split + sampled_train_split:
    expected_shape = (len(example.findings), sr.IMAGE_SIZE, sr.IMAGE_SIZE)
    assert example.masks.shape == expected_shape
    assert example.masks.any(axis=(1, 2)).all()
    assert example.masks.sum(axis=0).max() <= 1


def test_finding_position_matches_zone(sampled_test_split):
  # The patient's right is the image left. The lung thirds lie near rows 17,
  # 32 and 47.
  level_rows = {"upper": (0, 24), "middle": (24, 40), "lower": (40, 64)}
  for example in sampled_test_split:
    for mask, finding in zip(example.masks, example.findings):
      rows, cols = np.nonzero(mask)
      if finding.side == "right":
        assert cols.mean() < sr.IMAGE_SIZE / 2, finding
      else:
        assert cols.mean() > sr.IMAGE_SIZE / 2, finding
      low, high = level_rows[finding.level]
      assert low <= rows.mean() < high, finding


def test_finding_area_grows_with_size():
  examples = _examples("test", 1200, seed=11)
  areas = collections.defaultdict(list)
  for example in examples:
    for mask, finding in zip(example.masks, example.findings):
      areas[finding.finding_type, finding.size].append(mask.sum())
  for finding_type in sr.FINDING_TYPES:
    means = [np.mean(areas[finding_type, size]) for size in sr.SIZES]
    assert means[0] < means[1] < means[2], (finding_type, means)


def test_images_use_grey_range(sampled_test_split):
  for example in sampled_test_split[:50]:
    assert example.image.dtype == np.uint8
    assert example.image.shape == (sr.IMAGE_SIZE, sr.IMAGE_SIZE)
    assert int(example.image.max()) - int(example.image.min()) >= 100


# --- TFDS builder ------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_small_builder(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  from shared_encoder_jax.data import synthetic_radiology_builder  # noqa: F401

  data_dir = tmp_path_factory.mktemp("tfds")
  builder = tfds.builder(
      "synthetic_radiology", config="small", data_dir=data_dir
  )
  builder.download_and_prepare()
  return builder


def test_builder_split_sizes(prepared_small_builder):
  splits = prepared_small_builder.info.splits
  assert splits["train"].num_examples == 1_000
  assert splits["validation"].num_examples == sr.NUM_VALIDATION_EXAMPLES
  assert splits["test"].num_examples == 1_000


def test_builder_defaults_to_array_record(prepared_small_builder):
  assert prepared_small_builder.info.file_format.value == "array_record"


def test_builder_keeps_requested_file_format(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from shared_encoder_jax.data import synthetic_radiology_builder  # noqa: F401

  builder = tfds.builder(
      "synthetic_radiology",
      config="small",
      data_dir=tmp_path,
      file_format="tfrecord",
  )
  assert builder.info.file_format.value == "tfrecord"


def test_builder_default_config_size(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from shared_encoder_jax.data import synthetic_radiology_builder  # noqa: F401

  builder = tfds.builder("synthetic_radiology", data_dir=tmp_path)
  assert builder.builder_config.name == "default"
  assert builder.builder_config.num_train_examples == sr.NUM_TRAIN_EXAMPLES


def test_data_source_reads_generated_records(prepared_small_builder):
  tfds = pytest.importorskip("tensorflow_datasets")
  source = tfds.data_source(
      "synthetic_radiology/small",
      split="test",
      data_dir=prepared_small_builder.data_dir_root,
  )
  assert len(source) == 1000
  expected = dict(sr.generate_split("test", sr.NUM_TEST_EXAMPLES))
  names = prepared_small_builder.info.features["findings"].feature.names

  seen_ids = set()
  for index in range(len(source)):
    record = source[index]
    example_id = record["id"].decode()
    seen_ids.add(example_id)
    reference = expected[example_id]
    assert record["image"].shape == (sr.IMAGE_SIZE, sr.IMAGE_SIZE, 1)
    assert record["image"].dtype == np.uint8
    np.testing.assert_array_equal(record["image"], reference["image"])
    assert record["caption"].decode() == reference["caption"]
    assert [names[i] for i in record["findings"]] == reference["findings"]
    assert record["group"].decode() == reference["group"]
  assert seen_ids == set(expected)

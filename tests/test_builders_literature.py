"""Tests for the PMC-OA, ROCO, ROCOv2, Quilt-1M and DeepEyeNet builders.

Each test writes a small copy of the dataset in its released layout, with
solid-colour images whose colour identifies the record, builds it with TFDS
and reads it back.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from shared_encoder_jax.data import image_decoding
from shared_encoder_jax.data.builders import deepeyenet
from shared_encoder_jax.data.builders import image_text
from shared_encoder_jax.data.builders import pmc_oa
from shared_encoder_jax.data.builders import quilt_1m
from shared_encoder_jax.data.builders import roco

# Solid colours far enough apart that JPEG error cannot turn one into
# another.
COLOURS = [
    (220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 30),
    (200, 40, 200), (30, 200, 210), (120, 60, 20), (250, 250, 250),
    (10, 10, 10), (128, 128, 128), (240, 140, 20), (90, 20, 140),
]
# Allowed difference between the colour written and the mean colour read
# back, because JPEG (quality 95) shifts a solid colour by a few levels.
JPEG_TOLERANCE = 4


# -- Helpers ----------------------------------------------------------------


def _save_image(path: Path, colour) -> Path:
  """Write a 12x10 solid-colour image, JPEG or PNG by the path's suffix."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new("RGB", (12, 10), tuple(colour))
  if path.suffix == ".png":
    image.save(path, format="PNG")
  else:
    image.save(path, format="JPEG", quality=95)
  return path


def _write_jsonl(path: Path, lines) -> None:
  """Write JSONL, with str items written as they are (for broken lines)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(
      (line if isinstance(line, str) else json.dumps(line)) + "\n"
      for line in lines), encoding="utf-8")


def _write_csv(path: Path, header, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", newline="", encoding="utf-8") as file:
    writer = csv.writer(file)
    writer.writerow(header)
    writer.writerows(rows)


def _build(builder_cls, source: Path, data_dir: Path, config="default"):
  builder = builder_cls(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _examples(builder, split: str) -> dict[str, dict]:
  """The split's examples keyed by id (data source order is not kept)."""
  source = builder.as_data_source(split)
  examples = [source[index] for index in range(len(source))]
  return {_text(example["id"]): example for example in examples}


def _report(builder) -> dict:
  path = Path(builder.data_dir) / image_text.REPORT_FILE
  return json.loads(path.read_text())


def _skipped(report: dict, split: str) -> dict[str, int]:
  return report["splits"][split]["skipped_by_kind"]


def _mean_colour(example) -> np.ndarray:
  return example["image"].reshape(-1, 3).astype(np.float64).mean(axis=0)


def _assert_image_matches(example, path: Path, colour) -> None:
  """Check pixels, hash and group of an example against its source file."""
  difference = np.abs(_mean_colour(example) - np.array(colour))
  assert difference.max() <= JPEG_TOLERANCE, (path, _mean_colour(example))
  expected_hash = image_decoding.content_hash(
      image_decoding.read_image(path))
  assert _text(example["image_hash"]) == expected_hash
  assert _text(example["group"]) == expected_hash


# -- PMC-OA -----------------------------------------------------------------

PMC_OA_ROWS = {
    # id: (split, caption, colour index)
    "PMC212319_Fig3_4.jpg": ("train", "A. Real time image of ARF1-GFP.", 0),
    "PMC212319_Fig3_5.jpg": ("train", "B. The same cell after 5 min.", 1),
    "PMC3970251_Fig1_0.jpg": ("validation", "Axial CT of the pelvis.", 2),
    "PMC2766744_Fig2_1.jpg": ("test", "Radiograph of the pelvis.", 3),
}


def _pmc_oa_row(name: str) -> dict:
  caption = PMC_OA_ROWS[name][1]
  pmcid = name.split("_")[0]
  return {"image": name, "caption": caption, "pmcid": pmcid,
          "url_name": "figure.jpg"}


@pytest.fixture(scope="module")
def pmc_oa_jsonl(tmp_path_factory):
  """PMC-OA as released: JSONL manifests and the release image folder."""
  root = tmp_path_factory.mktemp("pmc_oa_jsonl")
  source = root / "pmc_oa"
  for name, (_, _, colour) in PMC_OA_ROWS.items():
    _save_image(source / pmc_oa.RELEASE_IMAGE_DIR / name, COLOURS[colour])
  _write_jsonl(source / "train.jsonl", [
      _pmc_oa_row("PMC212319_Fig3_4.jpg"),
      '{"image": "PMC212319_Fig3_6.jpg", "caption": "C. cut off',
      _pmc_oa_row("PMC212319_Fig3_5.jpg"),
  ])
  _write_jsonl(source / "valid.jsonl", [_pmc_oa_row("PMC3970251_Fig1_0.jpg")])
  _write_jsonl(source / "test.jsonl", [
      _pmc_oa_row("PMC2766744_Fig2_1.jpg"),
      # The same subfigure again.
      {"image": "PMC212319_Fig3_4.jpg", "caption": "Listed twice."},
  ])
  builder = _build(pmc_oa.PmcOa, source, root / "tfds")
  return builder, source


def test_pmc_oa_jsonl_splits_and_records(pmc_oa_jsonl):
  builder, source = pmc_oa_jsonl
  for split in ("train", "validation", "test"):
    examples = _examples(builder, split)
    expected = {name for name, row in PMC_OA_ROWS.items() if row[0] == split}
    assert set(examples) == expected
    for name, example in examples.items():
      _, caption, colour = PMC_OA_ROWS[name]
      assert _text(example["caption"]) == caption
      _assert_image_matches(
          example, source / pmc_oa.RELEASE_IMAGE_DIR / name, COLOURS[colour])


def test_pmc_oa_reports_bad_json_and_repeats(pmc_oa_jsonl):
  builder, source = pmc_oa_jsonl
  report = _report(builder)
  assert _skipped(report, "train") == {image_text.MALFORMED_ROW: 1}
  malformed = report["splits"]["train"]["records"][0]
  assert malformed["origin"] == f"{source / 'train.jsonl'}:2"
  duplicates = [record for split in report["splits"].values()
                for record in split["records"]
                if record["kind"] == image_text.DUPLICATE_ID]
  assert [record["id"] for record in duplicates] == ["PMC212319_Fig3_4.jpg"]
  assert duplicates[0]["origin"] == f"{source / 'test.jsonl'}:2"


def test_pmc_oa_csv_manifests_images_folder(tmp_path):
  source = tmp_path / "pmc_oa"
  rows = {"train": ("PMC1_Fig1_0.png", "Caption, with a comma.", 4),
          "valid": ("PMC2_Fig1_0.png", "CSV caption.", 5),
          "test": ("PMC3_Fig1_0.png", "Test caption.", 6)}
  for name, (image, caption, colour) in rows.items():
    _save_image(source / "images" / image, COLOURS[colour])
    _write_csv(source / f"{name}.csv", ["image", "caption"], [[image, caption]])
  # A JSONL manifest takes precedence over the CSV of the same split.
  _write_jsonl(source / "valid.jsonl",
               [{"image": "PMC2_Fig1_0.png", "caption": "JSONL caption."}])

  builder = _build(pmc_oa.PmcOa, source, tmp_path / "tfds",
                   config="images_folder")

  for split, name in (("train", "train"), ("validation", "valid"),
                      ("test", "test")):
    image, caption, colour = rows[name]
    examples = _examples(builder, split)
    assert list(examples) == [image]
    expected_caption = "JSONL caption." if name == "valid" else caption
    assert _text(examples[image]["caption"]) == expected_caption
    # PNG in, PNG stored: the pixels are exact.
    assert np.all(examples[image]["image"] == np.array(COLOURS[colour]))
    _assert_image_matches(examples[image], source / "images" / image,
                          COLOURS[colour])


def test_pmc_oa_missing_caption_column(tmp_path):
  source = tmp_path / "pmc_oa"
  _save_image(source / pmc_oa.RELEASE_IMAGE_DIR / "a.jpg", COLOURS[0])
  _write_jsonl(source / "train.jsonl", [{"image": "a.jpg", "text": "x"}])
  with pytest.raises(image_text.ManifestError) as raised:
    _build(pmc_oa.PmcOa, source, tmp_path / "tfds")
  message = str(raised.value)
  assert str(source / "train.jsonl") in message
  assert "['image', 'text']" in message


def test_pmc_oa_without_manifests_raises(tmp_path):
  source = tmp_path / "pmc_oa"
  _save_image(source / pmc_oa.RELEASE_IMAGE_DIR / "a.jpg", COLOURS[0])
  with pytest.raises(image_text.ManifestError, match="train.jsonl"):
    _build(pmc_oa.PmcOa, source, tmp_path / "tfds")


# -- ROCO -------------------------------------------------------------------

# id: (split, subset, caption, colour index, image naming). Naming "id" is
# images/<id>.jpg (fetch.py since 2022), "pmc" is images/<PMCID>_<name>
# (older fetch.py), "none" writes no image.
ROCO_ROWS = {
    "ROCO_00001": ("train", "radiology", "Axial CT of the pelvis.", 0, "id"),
    "ROCO_00002": ("train", "radiology", "Chest radiograph, PA.", 1, "pmc"),
    "ROCO_00003": ("train", "radiology", "Image never fetched.", 2, "none"),
    "ROCO_81826": ("train", "non-radiology", "Photograph of a lesion.", 3,
                   "id"),
    "ROCO_00010": ("validation", "radiology", "Sagittal MRI of the knee.", 4,
                   "id"),
    "ROCO_81834": ("validation", "non-radiology", "Histology, HE stain.", 5,
                   "pmc"),
    "ROCO_00020": ("test", "radiology", "Ultrasound of the liver.", 6, "id"),
    "ROCO_81827": ("test", "non-radiology", "Fundus photograph.", 7, "id"),
}
# Captions of the test/radiology folder's first-commit file, which differs
# from its captions.txt here so that the tests can tell which was read.
ROCO_REVISED_CAPTIONS = {"ROCO_00020": "Revised: ultrasound of the liver."}


def _dlinks_row(record_id: str) -> str:
  pmcid = f"PMC{int(record_id.split('_')[1]) + 1000}"
  archive = (f"ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/1e/ed/"
             f"{pmcid}.tar.gz")
  return (f"{record_id}\twget -r {archive} -P /path/to/Dir\t"
          f"fig-{record_id[-2:]}.jpg\n")


def _roco_image_path(data: Path, record_id: str) -> Path:
  split, subset, _, _, naming = ROCO_ROWS[record_id]
  images = data / split / subset / "images"
  if naming == "pmc":
    pmcid = f"PMC{int(record_id.split('_')[1]) + 1000}"
    return images / f"{pmcid}_fig-{record_id[-2:]}.jpg"
  return images / f"{record_id}.jpg"


def _write_roco(root: Path) -> Path:
  """Write the repository layout; non-radiology uses first-commit names."""
  data = root / "roco-dataset" / "data"
  folders = {}
  for record_id, (split, subset, caption, colour, naming) in ROCO_ROWS.items():
    folders.setdefault((split, subset), []).append((record_id, caption))
    if naming != "none":
      _save_image(_roco_image_path(data, record_id), COLOURS[colour])
  split_codes = {"train": "train", "validation": "val", "test": "test"}
  for (split, subset), rows in folders.items():
    folder = data / split / subset
    folder.mkdir(parents=True, exist_ok=True)
    captions = "".join(f"{record_id}\t {caption}\n"
                       for record_id, caption in rows)
    dlinks = "".join(_dlinks_row(record_id) for record_id, _ in rows
                     if record_id != "ROCO_00010")
    if subset == "radiology":
      (folder / "captions.txt").write_text(captions, encoding="utf-8")
      (folder / "dlinks.txt").write_text(dlinks, encoding="utf-8")
    else:
      name = f"fp_{split_codes[split]}_revised.txt"
      (folder / f"captions_{name}").write_text(captions, encoding="utf-8")
      (folder / f"dlinks_{name}").write_text(dlinks, encoding="utf-8")
  validation = data / "validation" / "radiology"
  with (validation / "captions.txt").open("a", encoding="utf-8") as file:
    file.write("ROCO_00011 caption without a tab\n")
  with (validation / "dlinks.txt").open("a", encoding="utf-8") as file:
    file.write("ROCO_00011\tnot a download command\n")
  revised = "".join(f"{record_id}\t {caption}\n"
                    for record_id, caption in ROCO_REVISED_CAPTIONS.items())
  (data / "test" / "radiology" / "captions_tp_test_revised.txt").write_text(
      revised, encoding="utf-8")
  return root / "roco-dataset"


@pytest.fixture(scope="module")
def roco_source(tmp_path_factory):
  return _write_roco(tmp_path_factory.mktemp("roco"))


def test_roco_joins_ids_through_dlinks(roco_source, tmp_path):
  builder = _build(roco.Roco, roco_source, tmp_path / "tfds")
  data = roco_source / "data"

  for split in ("train", "validation", "test"):
    examples = _examples(builder, split)
    expected = {record_id for record_id, row in ROCO_ROWS.items()
                if row[0] == split and row[1] == "radiology"
                and row[4] != "none"}
    assert set(examples) == expected
    for record_id, example in examples.items():
      _, subset, caption, colour, _ = ROCO_ROWS[record_id]
      # The caption's leading space after the tab is stripped.
      assert _text(example["caption"]) == caption
      assert _text(example["subset"]) == subset
      _assert_image_matches(example, _roco_image_path(data, record_id),
                            COLOURS[colour])

  report = _report(builder)
  assert _skipped(report, "train") == {image_text.MISSING_IMAGE: 1}
  missing = report["splits"]["train"]["records"][0]
  assert missing["id"] == "ROCO_00003"
  assert missing["origin"] == (
      f"{data / 'train' / 'radiology' / 'captions.txt'}:3")
  # Both file names that fetch.py versions use are named.
  assert "ROCO_00003.jpg" in missing["detail"]
  assert "PMC1003_fig-03.jpg" in missing["detail"]
  assert _skipped(report, "validation") == {image_text.MALFORMED_ROW: 1}
  assert _skipped(report, "test") == {}


def test_roco_all_reads_first_commit_names(roco_source, tmp_path):
  builder = _build(roco.Roco, roco_source, tmp_path / "tfds", config="all")
  data = roco_source / "data"

  for split in ("train", "validation", "test"):
    examples = _examples(builder, split)
    expected = {record_id for record_id, row in ROCO_ROWS.items()
                if row[0] == split and row[4] != "none"}
    assert set(examples) == expected
    for record_id, example in examples.items():
      _, subset, caption, colour, _ = ROCO_ROWS[record_id]
      assert _text(example["subset"]) == subset
      assert _text(example["caption"]) == caption
      _assert_image_matches(example, _roco_image_path(data, record_id),
                            COLOURS[colour])


def test_roco_prefer_revised_picks_revised(roco_source, tmp_path):
  config = roco.RocoConfig(name="revised", prefer_revised=True)
  builder = _build(roco.Roco, roco_source, tmp_path / "tfds", config=config)

  examples = _examples(builder, "test")
  assert set(examples) == set(ROCO_REVISED_CAPTIONS)
  assert (_text(examples["ROCO_00020"]["caption"]) ==
          ROCO_REVISED_CAPTIONS["ROCO_00020"])


def test_roco_accepts_data_folder_as_root(roco_source, tmp_path):
  builder = _build(roco.Roco, roco_source / "data", tmp_path / "tfds")
  assert set(_examples(builder, "test")) == {"ROCO_00020"}


def test_roco_missing_captions_file(tmp_path):
  source = _write_roco(tmp_path)
  for name in ("captions.txt", "captions_tp_test_revised.txt"):
    (source / "data" / "test" / "radiology" / name).unlink()
  with pytest.raises(image_text.ManifestError) as raised:
    _build(roco.Roco, source, tmp_path / "tfds")
  message = str(raised.value)
  assert str(source / "data" / "test" / "radiology" / "captions.txt") in message
  assert "captions_tp_test_revised.txt" in message


def test_roco_rejects_unknown_subset(roco_source, tmp_path):
  config = roco.RocoConfig(name="bad", subsets=("ct",))
  with pytest.raises(ValueError, match="subsets"):
    _build(roco.Roco, roco_source, tmp_path / "tfds", config=config)


# -- ROCOv2 -----------------------------------------------------------------

ROCO_V2_ROWS = {
    "ROCOv2_2023_train_000001": ("train", "Head CT, axial, without contrast.",
                                 0),
    "ROCOv2_2023_train_000002": ("train", "Chest X-ray showing effusion.", 1),
    "ROCOv2_2023_train_000003": ("train", "Image never unzipped.", None),
    "ROCOv2_2023_valid_000001": ("valid", "MRI of the lumbar spine.", 2),
    "ROCOv2_2023_test_000001": ("test", "Abdominal ultrasound.", 3),
}


def _write_roco_v2(source: Path, columns=("ID", "Caption")) -> None:
  for name in ("train", "valid", "test"):
    rows = [[record_id, caption]
            for record_id, (split, caption, _) in ROCO_V2_ROWS.items()
            if split == name]
    _write_csv(source / f"{name}_captions.csv", columns, rows)
  for record_id, (split, _, colour) in ROCO_V2_ROWS.items():
    if colour is not None:
      _save_image(source / split / f"{record_id}.jpg", COLOURS[colour])


def test_roco_v2_reads_caption_csvs(tmp_path):
  source = tmp_path / "rocov2"
  _write_roco_v2(source)
  builder = _build(roco.RocoV2, source, tmp_path / "tfds")
  assert builder.name == "roco_v2"

  for split, name in (("train", "train"), ("validation", "valid"),
                      ("test", "test")):
    examples = _examples(builder, split)
    expected = {record_id for record_id, row in ROCO_V2_ROWS.items()
                if row[0] == name and row[2] is not None}
    assert set(examples) == expected
    for record_id, example in examples.items():
      _, caption, colour = ROCO_V2_ROWS[record_id]
      assert _text(example["caption"]) == caption
      _assert_image_matches(example, source / name / f"{record_id}.jpg",
                            COLOURS[colour])

  report = _report(builder)
  assert _skipped(report, "train") == {image_text.MISSING_IMAGE: 1}
  assert (report["splits"]["train"]["records"][0]["id"] ==
          "ROCOv2_2023_train_000003")


def test_roco_v2_missing_caption_column(tmp_path):
  source = tmp_path / "rocov2"
  _write_roco_v2(source, columns=("ID", "Text"))
  with pytest.raises(image_text.ManifestError) as raised:
    _build(roco.RocoV2, source, tmp_path / "tfds")
  message = str(raised.value)
  assert "train_captions.csv" in message
  assert "['Caption']" in message
  assert "['ID', 'Text']" in message


# -- Quilt-1M ---------------------------------------------------------------

QUILT_HEADER = ["", "caption", "image_path", "subset", "split", "pathology",
                "roi_text", "noisy_text", "corrected_text", "med_umls_ids",
                "magnification", "height", "width"]
# (caption, image_path, subset, split, colour index or None for no image)
QUILT_ROWS = [
    ("Glands of a moderately differentiated adenocarcinoma.", "q1.jpg",
     "quilt", "train", 0),
    ("The same frame: note the mitotic figures.", "q1.jpg", "quilt",
     "train", 0),
    ("Tweet: classic Reed-Sternberg cell.", "o1.jpg", "openpath", "train", 1),
    ("Figure 2. Granulomas with giant cells.", "p1.jpg", "pubmed", "val", 2),
    ("Squamous cell carcinoma, H&E.", "l1.jpg", "laion", "train", 3),
    ("Psammoma bodies in a meningioma.", "q2.jpg", "quilt", "val", 4),
    ("This image was never downloaded.", "m1.jpg", "openpath", "train", None),
    ("A row with an unknown split.", "q4.jpg", "quilt", "test", 5),
    ("Paper figure reused in a video.", "q3.jpg", "pubmed", "train", 6),
    ("Video frame of the same figure.", "q3.jpg", "quilt", "train", 6),
]
# Ids the builder derives: image_path plus "#n" for the n-th row naming it.
QUILT_IDS = ["q1.jpg#0", "q1.jpg#1", "o1.jpg#0", "p1.jpg#0", "l1.jpg#0",
             "q2.jpg#0", "m1.jpg#0", "q4.jpg#0", "q3.jpg#0", "q3.jpg#1"]


def _write_quilt(source: Path, header=QUILT_HEADER) -> None:
  rows = []
  for number, (caption, image, subset, split, colour) in enumerate(
      QUILT_ROWS):
    values = {"": str(number), "caption": caption, "image_path": image,
              "subset": subset, "split": split,
              "pathology": "['Gastrointestinal']", "roi_text": "['gland']",
              "noisy_text": "", "corrected_text": "", "med_umls_ids": "[]",
              "magnification": "1", "height": "10", "width": "12"}
    rows.append([values.get(column, "") for column in header])
    if colour is not None:
      _save_image(source / "quilt_1m" / image, COLOURS[colour])
  _write_csv(source / "quilt_1M_lookup.csv", header, rows)


def _quilt_expected(split: str, subsets) -> dict[str, tuple]:
  """Map id -> row for the rows the builder keeps in `split`."""
  split_value = {"train": "train", "validation": "val"}[split]
  return {record_id: row for record_id, row in zip(QUILT_IDS, QUILT_ROWS)
          if row[3] == split_value and row[2] in subsets and row[4] is not None}


@pytest.fixture(scope="module")
def quilt_source(tmp_path_factory):
  source = tmp_path_factory.mktemp("quilt") / "quilt"
  _write_quilt(source)
  return source


def test_quilt_all_subsets_and_repeated_images(quilt_source, tmp_path):
  builder = _build(quilt_1m.Quilt1M, quilt_source, tmp_path / "tfds")
  assert builder.name == "quilt_1m"
  assert set(builder.info.splits) == {"train", "validation"}

  for split in ("train", "validation"):
    examples = _examples(builder, split)
    expected = _quilt_expected(split, quilt_1m.SUBSETS)
    assert set(examples) == set(expected)
    for record_id, (caption, image, subset, _, colour) in expected.items():
      example = examples[record_id]
      assert _text(example["caption"]) == caption
      assert _text(example["subset"]) == subset
      _assert_image_matches(example, quilt_source / "quilt_1m" / image,
                            COLOURS[colour])

  report = _report(builder)
  assert _skipped(report, "train") == {image_text.MALFORMED_ROW: 1,
                                       image_text.MISSING_IMAGE: 1}
  by_kind = {record["kind"]: record
             for record in report["splits"]["train"]["records"]}
  assert by_kind[image_text.MISSING_IMAGE]["id"] == "m1.jpg#0"
  assert "'test'" in by_kind[image_text.MALFORMED_ROW]["detail"]
  assert by_kind[image_text.MALFORMED_ROW]["origin"] == (
      f"{quilt_source / 'quilt_1M_lookup.csv'}:9")
  assert _skipped(report, "validation") == {}


def test_quilt_subsets_keep_ids_stable(quilt_source, tmp_path):
  config = quilt_1m.Quilt1MConfig(name="quilt_only", subsets=["quilt"])
  builder = _build(quilt_1m.Quilt1M, quilt_source, tmp_path / "tfds",
                   config=config)

  train = _examples(builder, "train")
  assert set(train) == set(_quilt_expected("train", ("quilt",)))
  # q3.jpg's first row is from pubmed, so the quilt row keeps its "#1".
  assert "q3.jpg#1" in train
  assert {_text(example["subset"]) for example in train.values()} == {"quilt"}
  assert set(_examples(builder, "validation")) == {"q2.jpg#0"}
  # The openpath row without an image is not selected, so not reported.
  assert _skipped(_report(builder), "train") == {image_text.MALFORMED_ROW: 1}


def test_quilt_missing_caption_column(tmp_path):
  source = tmp_path / "quilt"
  header = [column for column in QUILT_HEADER if column != "caption"]
  _write_quilt(source, header=header)
  with pytest.raises(image_text.ManifestError) as raised:
    _build(quilt_1m.Quilt1M, source, tmp_path / "tfds")
  message = str(raised.value)
  assert "quilt_1M_lookup.csv" in message
  assert "['caption']" in message
  assert "'image_path'" in message


def test_quilt_rejects_unknown_subset(quilt_source, tmp_path):
  config = quilt_1m.Quilt1MConfig(name="bad", subsets=("twitter",))
  with pytest.raises(ValueError, match="subsets"):
    _build(quilt_1m.Quilt1M, quilt_source, tmp_path / "tfds", config=config)


# -- DeepEyeNet -------------------------------------------------------------

# image path: (file split, keywords, clinical description, colour index or
# None for no image file)
DEEPEYENET_ROWS = {
    "eyenet0420/train_set/group41-177.jpg": (
        "train", "macular hole", "43-year-old female, macular hole.", 0),
    "eyenet0420/train_set/suspected-mewds-4.jpg": (
        "train", "uveitis, punctate inner choroidopathy (pic)",
        "20 degree view, red free image of left macula.", 1),
    "eyenet0420/train_set/group7-2.jpg": (
        "train", "central serous chorioretinopathy",
        "Fluorescein angiogram, late phase.", 2),
    "eyenet0420/train_set/missing-1.jpg": (
        "train", "drusen", "Color fundus photograph.", None),
    "eyenet0420/val_set/group3-9.jpg": (
        "valid", "retinal vein occlusion", "65-year-old male, OCT scan.", 3),
    "eyenet0420/test_set/group5-1.jpg": (
        "test", "retinitis pigmentosa", "Wide-field fundus photograph.", 4),
}


def _annotation(image: str) -> dict:
  _, keywords, description, _ = DEEPEYENET_ROWS[image]
  return {"keywords": keywords, "clinical-description": description}


def _write_deepeyenet(source: Path, valid_name: str = "valid") -> None:
  for image, (_, _, _, colour) in DEEPEYENET_ROWS.items():
    if colour is not None:
      _save_image(source / image, COLOURS[colour])
  train = [
      {"eyenet0420/train_set/group41-177.jpg":
           _annotation("eyenet0420/train_set/group41-177.jpg")},
      # Two images in one object, as in the repository's README example.
      {"eyenet0420/train_set/suspected-mewds-4.jpg":
           _annotation("eyenet0420/train_set/suspected-mewds-4.jpg"),
       "eyenet0420/train_set/group7-2.jpg":
           _annotation("eyenet0420/train_set/group7-2.jpg")},
      {"eyenet0420/train_set/missing-1.jpg":
           _annotation("eyenet0420/train_set/missing-1.jpg")},
      {"eyenet0420/train_set/broken-1.jpg": "macular hole"},
  ]
  files = {"train": train, valid_name: [], "test": []}
  for image, (split, _, _, _) in DEEPEYENET_ROWS.items():
    if split != "train":
      files[valid_name if split == "valid" else split].append(
          {image: _annotation(image)})
  for name, items in files.items():
    (source / f"DeepEyeNet_{name}.json").write_text(json.dumps(items))


def _deepeyenet_expected(split: str) -> dict[str, tuple]:
  name = {"train": "train", "validation": "valid", "test": "test"}[split]
  return {image: row for image, row in DEEPEYENET_ROWS.items()
          if row[0] == name and row[3] is not None}


def test_deepeyenet_reads_clinical_descriptions(tmp_path):
  source = tmp_path / "DeepEyeNet"
  _write_deepeyenet(source)
  builder = _build(deepeyenet.DeepEyeNet, source, tmp_path / "tfds")
  assert builder.name == "deepeyenet"

  for split in ("train", "validation", "test"):
    examples = _examples(builder, split)
    expected = _deepeyenet_expected(split)
    assert set(examples) == set(expected)
    for image, (_, keywords, description, colour) in expected.items():
      example = examples[image]
      assert _text(example["caption"]) == description
      assert _text(example["keywords"]) == keywords
      _assert_image_matches(example, source / image, COLOURS[colour])

  report = _report(builder)
  assert _skipped(report, "train") == {image_text.MALFORMED_ROW: 1,
                                       image_text.MISSING_IMAGE: 1}
  by_kind = {record["kind"]: record
             for record in report["splits"]["train"]["records"]}
  assert (by_kind[image_text.MISSING_IMAGE]["id"] ==
          "eyenet0420/train_set/missing-1.jpg")
  assert (by_kind[image_text.MALFORMED_ROW]["id"] ==
          "eyenet0420/train_set/broken-1.jpg")
  assert by_kind[image_text.MALFORMED_ROW]["origin"] == (
      f"{source / 'DeepEyeNet_train.json'}:item 3")


def test_deepeyenet_keywords_as_captions(tmp_path):
  source = tmp_path / "DeepEyeNet"
  # Some copies name the validation file DeepEyeNet_val.json.
  _write_deepeyenet(source, valid_name="val")
  builder = _build(deepeyenet.DeepEyeNet, source, tmp_path / "tfds",
                   config="keywords")

  for split in ("train", "validation", "test"):
    examples = _examples(builder, split)
    expected = _deepeyenet_expected(split)
    assert set(examples) == set(expected)
    for image, (_, keywords, _, _) in expected.items():
      assert _text(examples[image]["caption"]) == keywords
      assert _text(examples[image]["keywords"]) == keywords


def test_deepeyenet_missing_caption_field(tmp_path):
  source = tmp_path / "DeepEyeNet"
  _save_image(source / "eyenet0420/train_set/a.jpg", COLOURS[0])
  (source / "DeepEyeNet_train.json").write_text(json.dumps(
      [{"eyenet0420/train_set/a.jpg": {"keywords": "macular hole",
                                       "description": "text"}}]))
  with pytest.raises(image_text.ManifestError) as raised:
    _build(deepeyenet.DeepEyeNet, source, tmp_path / "tfds")
  message = str(raised.value)
  assert str(source / "DeepEyeNet_train.json") in message
  assert "'clinical-description'" in message
  assert "['description', 'keywords']" in message


def test_deepeyenet_rejects_unknown_caption_source(tmp_path):
  source = tmp_path / "DeepEyeNet"
  _write_deepeyenet(source)
  config = deepeyenet.DeepEyeNetConfig(name="bad", caption_source="report")
  with pytest.raises(ValueError, match=re.escape("caption_source='report'")):
    _build(deepeyenet.DeepEyeNet, source, tmp_path / "tfds", config=config)

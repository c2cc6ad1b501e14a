"""The manifest-folder builder, bad-input reports, strict mode and wire-up."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from shared_encoder_jax import train as train_lib
from shared_encoder_jax.data import input_pipeline
from shared_encoder_jax.data import pmc_oa_folder
from shared_encoder_jax.data.builders import image_text
from shared_encoder_jax.data.builders import image_text_folder

from conftest import tiny_config

COLOURS = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200),
           "d": (120, 120, 120)}


def write_png(path, colour, size=(12, 10)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path)


def build(source_dir, data_dir, strict=False, **config):
  config = image_text_folder.ImageTextFolderConfig(name="test", **config)
  builder = image_text_folder.ImageTextFolder(
      config=config, data_dir=str(data_dir), strict=strict)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(source_dir)))
  return builder


def examples_by_id(builder, split):
  source = builder.as_data_source(split)
  return {_text(source[i]["id"]): source[i] for i in range(len(source))}


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def test_folder_builds_from_jsonl(tmp_path):
  source = tmp_path / "source"
  rows = []
  for name, colour in COLOURS.items():
    write_png(str(source / "images" / f"{name}.png"), colour)
    rows.append({"image": f"images/{name}.png", "caption": f"scan {name}",
                 "split": "val" if name == "d" else "train",
                 "label": name.upper()})
  rows.append({"image": "images/a.png", "caption": "second caption of a",
               "split": "train"})
  (source / "manifest.jsonl").write_text(
      "\n".join(json.dumps(row) for row in rows))

  builder = build(source, tmp_path / "tfds")
  train = examples_by_id(builder, "train")
  assert sorted(train) == ["images/a.png#0", "images/a.png#1",
                           "images/b.png#0", "images/c.png#0"]
  assert _text(train["images/b.png#0"]["caption"]) == "scan b"
  assert _text(train["images/b.png#0"]["label"]) == "B"
  np.testing.assert_array_equal(train["images/c.png#0"]["image"][0, 0],
                                COLOURS["c"])
  assert train["images/c.png#0"]["image"].shape == (10, 12, 3)
  # Two captions of one image share its group.
  assert train["images/a.png#0"]["group"] == train["images/a.png#1"]["group"]
  assert train["images/a.png#0"]["group"] != train["images/b.png#0"]["group"]
  validation = examples_by_id(builder, "validation")
  assert list(validation) == ["images/d.png#0"]


def test_folder_reads_csv_per_split(tmp_path):
  source = tmp_path / "source"
  for split, names in (("train", "abc"), ("test", "d")):
    lines = ["path,text,uid"]
    for name in names:
      write_png(str(source / "img" / f"{name}.png"), COLOURS[name])
      lines.append(f"{name}.png,\"caption, with comma {name}\",id-{name}")
    (source / f"{split}.csv").write_text("\n".join(lines) + "\n")
  builder = build(source, tmp_path / "tfds", manifest="{split}.csv",
                  image_dir="img", image_key="path", caption_key="text",
                  id_key="uid")
  assert sorted(builder.info.splits) == ["test", "train"]
  test = examples_by_id(builder, "test")
  assert _text(test["id-d"]["caption"]) == "caption, with comma d"


def write_bad_fixture(source):
  """One good record and one record of each bad-input kind, in order."""
  write_png(str(source / "good.png"), COLOURS["a"])
  write_png(str(source / "other.png"), COLOURS["b"])
  write_png(str(source / "third.png"), COLOURS["c"])
  Image.new("RGB", (64, 64), (1, 2, 3)).save(source / "full.png")
  data = (source / "full.png").read_bytes()
  (source / "truncated.png").write_bytes(data[:len(data) // 2])
  (source / "garbage.png").write_bytes(b"this is not an image at all")
  lines = [
      b'{"id": "ok", "image": "good.png", "caption": "a good scan"}',
      b'{"id": "gone", "image": "missing.png", "caption": "no file"}',
      b'{"id": "junk", "image": "garbage.png", "caption": "not an image"}',
      b'{"id": "cut", "image": "truncated.png", "caption": "cut file"}',
      b'{"id": "blank", "image": "other.png", "caption": "   "}',
      b'{"id": "latin1", "image": "other.png", "caption": "caf\xe9 scan"}',
      b'{"id": "ok", "image": "third.png", "caption": "same id again"}',
      b'{"id": "broken", "image": "other.png", "caption": ',
      b'{"id": "fine", "image": "other.png", "caption": "another scan"}',
  ]
  (source / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_bad_records_are_reported_by_kind(tmp_path, caplog):
  source = tmp_path / "source"
  write_bad_fixture(source)
  with caplog.at_level(logging.INFO):
    builder = build(source, tmp_path / "tfds")
  assert sorted(examples_by_id(builder, "train")) == ["fine", "ok"]

  report = json.loads(
      (tmp_path / "tfds" / "image_text_folder" / "test" / "1.0.0" /
       image_text.REPORT_FILE).read_text())
  train = report["splits"]["train"]
  assert train["examples"] == 2
  assert train["skipped"] == 7
  expected = {
      "gone": ("missing_image", 2),
      "junk": ("undecodable_image", 3),
      "cut": ("truncated_image", 4),
      "blank": ("empty_caption", 5),
      "latin1": ("invalid_utf8", 6),
      "ok": ("duplicate_id", 7),
      "": ("malformed_row", 8),
  }
  manifest = str(source / "manifest.jsonl")
  by_id = {record["id"]: record for record in train["records"]}
  assert sorted(by_id) == sorted(expected)
  for record_id, (kind, line) in expected.items():
    assert by_id[record_id]["kind"] == kind, record_id
    assert by_id[record_id]["origin"] == f"{manifest}:{line}", record_id
  assert train["skipped_by_kind"]["missing_image"] == 1
  summary = [r.getMessage() for r in caplog.records
             if "records skipped" in r.getMessage()]
  assert len(summary) == 1
  assert "2 examples written, 7 records skipped" in summary[0]


def test_strict_build_stops_at_first_bad(tmp_path):
  source = tmp_path / "source"
  write_bad_fixture(source)
  with pytest.raises(image_text.BadInputError) as error:
    build(source, tmp_path / "tfds", strict=True)
  message = str(error.value)
  assert f"{source / 'manifest.jsonl'}:2" in message
  assert "missing_image" in message
  assert not (tmp_path / "tfds" / "image_text_folder" / "test" /
              "1.0.0").exists()


@pytest.mark.parametrize("content, expected", [
    (None, "not found"),
    (b"", "is empty"),
    (b'{"picture": "a.png", "text": "x"}\n', "lacks the column"),
])
def test_manifest_errors_name_file(tmp_path, content, expected):
  source = tmp_path / "source"
  source.mkdir()
  (source / "README").write_text("manual dir must not be empty")
  if content is not None:
    (source / "manifest.jsonl").write_bytes(content)
  with pytest.raises(image_text.ManifestError, match=expected) as error:
    build(source, tmp_path / "tfds")
  assert str(source / "manifest.jsonl") in str(error.value)
  if expected == "lacks the column":
    assert "'picture'" in str(error.value)
    assert "'text'" in str(error.value)


def test_split_without_good_records_is_left_out(tmp_path):
  source = tmp_path / "source"
  write_png(str(source / "a.png"), COLOURS["a"])
  rows = [{"image": "a.png", "caption": "fine", "split": "train"},
          {"image": "nope.png", "caption": "missing", "split": "test"}]
  (source / "manifest.jsonl").write_text(
      "\n".join(json.dumps(row) for row in rows))
  builder = build(source, tmp_path / "tfds")
  assert sorted(builder.info.splits) == ["train"]


def test_config_overrides_reach_builder(tmp_path):
  source = tmp_path / "source"
  lines = ["file,text"]
  for name in "abcd":
    write_png(str(source / f"{name}.png"), COLOURS[name])
    lines.append(f"{name}.png,scan {name}")
  (source / "list.csv").write_text("\n".join(lines))
  config = tiny_config()
  config.data.name = "image_text_folder"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(source)
  config.data.builder_config.manifest = "list.csv"
  config.data.builder_config.image_key = "file"
  config.data.builder_config.caption_key = "text"
  builder = input_pipeline.load_builder(config.data)
  assert builder.builder_config.name.startswith("custom-")
  assert builder.info.splits["train"].num_examples == 4

  config.data.builder_config.not_a_field = 1
  with pytest.raises(input_pipeline.DatasetError, match="not_a_field"):
    input_pipeline.load_builder(config.data)


def test_small_config_trains_on_pmc_oa_folder(tmp_path):
  folder = tmp_path / "pmc_oa"
  pmc_oa_folder.write_folder(str(folder), num_train=64)
  manifest = (folder / "train.jsonl").read_text().splitlines()
  assert len(manifest) == 64
  assert json.loads(manifest[0])["image"].endswith(".jpg")

  config = tiny_config()
  config.data.name = "pmc_oa"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(folder)
  config.data.data_fraction = 0.5
  config.total_steps = 2
  config.eval_every_steps = 2
  metrics = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert metrics["num_pairs"] == 1000
  subset = json.loads((tmp_path / "run" / "data_subset.json").read_text())
  assert subset["num_examples"] == 32
  assert subset["split_size"] == 64


def test_tfds_build_command_builds_folder(tmp_path):
  source = tmp_path / "source"
  for name in "ab":
    write_png(str(source / f"{name}.png"), COLOURS[name])
  (source / "list.csv").write_text("file,text\na.png,scan a\nb.png,scan b\n")
  config = json.dumps({"name": "mine", "manifest": "list.csv",
                       "image_key": "file", "caption_key": "text"})
  result = subprocess.run(
      [sys.executable, "-m", "shared_encoder_jax.data.build",
       "image_text_folder", "--manual_dir", str(source), "--data_dir",
       str(tmp_path / "tfds"), "--config", config],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  folder = tmp_path / "tfds" / "image_text_folder" / "mine" / "1.0.0"
  assert (folder / image_text.REPORT_FILE).exists()
  assert [path.name for path in folder.glob("*.array_record*")] == [
      "image_text_folder-train.array_record-00000-of-00001"]

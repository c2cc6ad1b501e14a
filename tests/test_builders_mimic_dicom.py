"""Tests for the mimic_cxr and dicom_studies builders on small fixtures.

The MIMIC-CXR fixture follows the PhysioNet MIMIC-CXR-JPG 2.0.0 layout:
gzipped CSVs with the release's headers, `files/pXX/pXXXXXXXX/sXXXXXXXX/`
JPEGs and the MIMIC-CXR reports `files/pXX/pXXXXXXXX/sXXXXXXXX.txt`.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from shared_encoder_jax.data.builders import dicom_studies
from shared_encoder_jax.data.builders import image_text
from shared_encoder_jax.data.builders import mimic_cxr

# -- MIMIC-CXR-JPG fixture --------------------------------------------------

METADATA_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
    "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
    "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning")

# dicom_id: (subject_id, study_id, ViewPosition, split, gray level)
IMAGES = {
    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014":
        ("10000032", "50000001", "PA", "train", 40),
    "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962":
        ("10000032", "50000001", "LATERAL", "train", 60),
    "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab":
        ("10000032", "50000002", "AP", "train", 80),
    "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714":
        ("10000032", "50000002", "PA", "train", 100),
    "ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c":
        ("11000011", "50000003", "PA", "validate", 120),
    "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4":
        ("11000011", "50000004", "AP", "validate", 140),
    "8959e402-2175d68d-edba5a6c-520b1bad-7ef5c0c1":
        ("12000012", "50000005", "PA", "test", 160),
    "b4b1c5c3-a47ce4b6-d9a5a5f2-e6fa4b6e-5d3d6c2f":
        ("12000012", "50000005", "AP", "test", 180),
}
LATERAL_ID = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
NO_SECTIONS_ID = "ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c"

REPORTS = {
    "50000001": """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough, eval for pneumonia.

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation.  No pleural effusion or
 pneumothorax is seen.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
    "50000002": """\
                                 FINAL REPORT
 INDICATION:  Shortness of breath.

 FINDINGS:  Heart size is mildly enlarged. There is mild pulmonary edema.
 Small bilateral pleural effusions are present. Lines and tubes are
 unchanged.

 IMPRESSION:  Mild pulmonary edema.
""",
    "50000003": """\
                                 FINAL REPORT
 INDICATION:  Line placement.

 WET READ: PICC tip at the cavoatrial junction.
""",
    "50000004": """\
 Findings and impression: Lungs are clear.
 Technique: Portable AP.
""",
    "50000005": """\
                                 FINAL REPORT
 HISTORY:  Fever.

 IMPRESSION:
 1. Right lower lobe pneumonia.
 2. No effusion.
""",
}

CAPTIONS = {
    "50000001": ("There is no focal consolidation. No pleural effusion or "
                 "pneumothorax is seen. No acute cardiopulmonary process."),
    "50000002": ("Heart size is mildly enlarged. There is mild pulmonary "
                 "edema. Small bilateral pleural effusions are present. "
                 "Lines and tubes are unchanged. Mild pulmonary edema."),
    "50000004": "Lungs are clear.",
    "50000005": "1. Right lower lobe pneumonia. 2. No effusion.",
}

CHEXPERT_HEADER = "subject_id,study_id," + ",".join(mimic_cxr.CHEXPERT_LABELS)
# Atelectasis 1, Cardiomegaly 0, Consolidation -1, Edema blank, ...
CHEXPERT_ROWS = [
    "10000032,50000001,1.0,0.0,-1.0,,,,,,,,,,,",
    "10000032,50000002,,1.0,,1.0,,,,,,1.0,,,,1.0",
    "12000012,50000005,,,1.0,,,,,,,,,1.0,,",
]


def _write_gzip(path: Path, lines: list[str]) -> None:
  path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def _write_gray_jpeg(path: Path, level: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((12, 16), level, np.uint8)).save(path, quality=95)


def _folder(subject: str) -> Path:
  return Path("files", f"p{subject[:2]}", f"p{subject}")


def write_mimic_jpg(root: Path, chexpert: bool = True) -> Path:
  root.mkdir(parents=True, exist_ok=True)
  split_rows = ["dicom_id,study_id,subject_id,split"]
  metadata_rows = [METADATA_HEADER]
  for dicom_id, (subject, study, view, split, level) in IMAGES.items():
    split_rows.append(f"{dicom_id},{study},{subject},{split}")
    metadata_rows.append(
        f"{dicom_id},{subject},{study},CHEST (PA AND LAT),{view},12,16,"
        f"21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect")
    _write_gray_jpeg(
        root / _folder(subject) / f"s{study}" / f"{dicom_id}.jpg", level)
    report = root / _folder(subject) / f"s{study}.txt"
    report.write_text(REPORTS[study])
  _write_gzip(root / mimic_cxr.SPLIT_FILE, split_rows)
  _write_gzip(root / mimic_cxr.METADATA_FILE, metadata_rows)
  if chexpert:
    _write_gzip(root / mimic_cxr.CHEXPERT_FILE,
                [CHEXPERT_HEADER] + CHEXPERT_ROWS)
  return root


def build(builder_class, tmp_path: Path, source: Path, config):
  """Build into tmp_path/tfds; return {split: {id: example}}, the report."""
  builder = builder_class(data_dir=str(tmp_path / "tfds"), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(source)))
  examples = {}
  for split in builder.info.splits:
    data = builder.as_data_source(split)
    examples[split] = {_text(data[i]["id"]): data[i]
                       for i in range(len(data))}
  report = json.loads(
      (Path(builder.data_dir) / image_text.REPORT_FILE).read_text())
  return examples, report


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def mimic_build(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("mimic")
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  return build(mimic_cxr.MimicCxr, tmp_path, source, "default")


def test_mimic_maps_splits_and_filters_lateral(mimic_build):
  examples, _ = mimic_build
  expected = {"train": set(), "validation": set(), "test": set()}
  for dicom_id, (_, _, view, split, _) in IMAGES.items():
    if view != "LATERAL" and dicom_id != NO_SECTIONS_ID:
      expected[mimic_cxr.SPLIT_ALIASES.get(split, split)].add(dicom_id)
  assert {split: set(rows) for split, rows in examples.items()} == expected


def test_mimic_captions_use_chosen_sections(mimic_build):
  examples, _ = mimic_build
  for rows in examples.values():
    for dicom_id, example in rows.items():
      study = IMAGES[dicom_id][1]
      assert _text(example["caption"]) == CAPTIONS[study], dicom_id


def test_mimic_report_counts_missing_sections(mimic_build):
  _, report = mimic_build
  validation = report["splits"]["validation"]
  assert validation["skipped_by_kind"] == {image_text.EMPTY_CAPTION: 1}
  assert validation["records"][0]["id"] == NO_SECTIONS_ID
  assert "none of the sections" in validation["records"][0]["detail"]
  assert report["splits"]["train"]["skipped"] == 0
  assert report["splits"]["test"]["skipped"] == 0


def test_mimic_groups_images_by_study(mimic_build):
  examples, _ = mimic_build
  for rows in examples.values():
    for dicom_id, example in rows.items():
      subject, study, view, _, _ = IMAGES[dicom_id]
      assert _text(example["group"]) == f"s{study}"
      assert _text(example["study_id"]) == study
      assert _text(example["subject_id"]) == subject
      assert _text(example["view_position"]) == view


def test_mimic_chexpert_keeps_blank_as_nan(mimic_build):
  examples, _ = mimic_build
  labels = examples["train"][
      "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]["chexpert"]
  assert labels.dtype == np.float32
  assert labels.shape == (14,)
  assert labels[:3].tolist() == [1.0, 0.0, -1.0]
  assert np.isnan(labels[3:]).all()


def test_mimic_study_without_labels_is_nan(mimic_build):
  examples, _ = mimic_build
  labels = examples["validation"][
      "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"]["chexpert"]
  assert np.isnan(labels).all()


def test_mimic_pixels_match_source_jpegs(mimic_build):
  examples, _ = mimic_build
  for rows in examples.values():
    for dicom_id, example in rows.items():
      image = example["image"]
      assert image.shape == (12, 16, 3)
      assert image.dtype == np.uint8
      level = IMAGES[dicom_id][4]
      assert np.abs(image.astype(int) - level).max() <= 1, dicom_id


def test_mimic_truncates_captions_by_sentence(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  config = mimic_cxr.MimicCxrConfig(name="short", max_caption_chars=70)
  examples, _ = build(mimic_cxr.MimicCxr, tmp_path, source, config)
  caption = _text(examples["train"][
      "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]["caption"])
  assert caption == ("Heart size is mildly enlarged. There is mild "
                     "pulmonary edema.")
  short = _text(examples["test"][
      "8959e402-2175d68d-edba5a6c-520b1bad-7ef5c0c1"]["caption"])
  assert short == CAPTIONS["50000005"]


def test_mimic_sections_config_picks_impression(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  config = mimic_cxr.MimicCxrConfig(name="impression",
                                    sections=("impression",))
  examples, _ = build(mimic_cxr.MimicCxr, tmp_path, source, config)
  train = examples["train"]
  assert _text(train["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"][
      "caption"]) == "Mild pulmonary edema."
  # "Findings and impression:" belongs to both sections.
  assert _text(examples["validation"][
      "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"]["caption"]) == (
          "Lungs are clear.")


def test_mimic_empty_views_keeps_lateral(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg", chexpert=False)
  config = mimic_cxr.MimicCxrConfig(name="all_views", views=())
  examples, _ = build(mimic_cxr.MimicCxr, tmp_path, source, config)
  lateral = examples["train"][LATERAL_ID]
  assert _text(lateral["view_position"]) == "LATERAL"
  assert len(examples["train"]) == 4
  assert all(np.isnan(example["chexpert"]).all()
             for rows in examples.values() for example in rows.values())


def test_mimic_invalid_label_skips_study(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  rows = [CHEXPERT_HEADER, CHEXPERT_ROWS[0].replace("1.0,0.0", "yes,0.0"),
          *CHEXPERT_ROWS[1:]]
  _write_gzip(source / mimic_cxr.CHEXPERT_FILE, rows)
  examples, report = build(mimic_cxr.MimicCxr, tmp_path, source, "default")
  assert "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014" not in (
      examples["train"])
  train = report["splits"]["train"]
  assert train["skipped_by_kind"] == {image_text.MALFORMED_ROW: 1}
  assert "Atelectasis='yes'" in train["records"][0]["detail"]


def test_mimic_reports_malformed_split_rows(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  split_rows = gzip.decompress(
      (source / mimic_cxr.SPLIT_FILE).read_bytes()).decode().splitlines()
  unknown_id = "0c4eb1e1-b801903c-bcebe8a4-3da9cd3c-3b94a27c"
  split_rows += ["ffffffff-ffffffff-ffffffff-ffffffff-ffffffff,50000009",
                 f"{unknown_id},50000001,10000032,train",
                 f"{unknown_id[:-1]}d,50000001,10000032,"]
  _write_gzip(source / mimic_cxr.SPLIT_FILE, split_rows)
  examples, report = build(mimic_cxr.MimicCxr, tmp_path, source, "default")
  train = report["splits"]["train"]
  assert train["skipped_by_kind"] == {image_text.MALFORMED_ROW: 3}
  details = sorted(record["detail"] for record in train["records"])
  assert details[0] == "2 fields where the header has 4"
  assert "not in mimic-cxr-2.0.0-metadata.csv.gz" in details[1]
  assert details[2] == "empty split"
  assert len(examples["train"]) == 3


def test_mimic_missing_report_skips_study(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  (source / _folder("10000032") / "s50000002.txt").unlink()
  examples, report = build(mimic_cxr.MimicCxr, tmp_path, source, "default")
  assert set(examples["train"]) == {
      "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"}
  train = report["splits"]["train"]
  assert train["skipped_by_kind"] == {image_text.EMPTY_CAPTION: 2}
  assert "s50000002.txt not found" in train["records"][0]["detail"]


def test_mimic_missing_reports_dir_raises(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  config = mimic_cxr.MimicCxrConfig(name="elsewhere",
                                    reports_dir="../mimic-cxr")
  with pytest.raises(FileNotFoundError, match="reports_dir"):
    build(mimic_cxr.MimicCxr, tmp_path, source, config)


def test_mimic_reports_dir_points_to_reports(tmp_path):
  source = write_mimic_jpg(tmp_path / "mimic-cxr-jpg")
  reports = tmp_path / "mimic-cxr"
  shutil.move(str(source / "files"), str(reports / "files"))
  # The JPEGs stay in the JPG tree; only the reports move.
  for jpeg in (reports / "files").rglob("*.jpg"):
    target = source / jpeg.relative_to(reports)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(jpeg), str(target))
  config = mimic_cxr.MimicCxrConfig(name="split_trees",
                                    reports_dir="../mimic-cxr")
  examples, _ = build(mimic_cxr.MimicCxr, tmp_path, source, config)
  assert _text(examples["test"][
      "8959e402-2175d68d-edba5a6c-520b1bad-7ef5c0c1"]["caption"]) == (
          CAPTIONS["50000005"])


# -- Report parsing ---------------------------------------------------------


def test_report_sections_splits_mimic_headers():
  sections = dict(mimic_cxr.report_sections(REPORTS["50000001"]))
  assert sections["indication"] == "___F with cough, eval for pneumonia."
  assert sections["comparison"] == "None."
  assert sections["impression"] == "No acute cardiopulmonary process."
  assert "FINAL REPORT" not in sections["preamble"]


def test_report_caption_orders_by_config():
  caption = mimic_cxr.report_caption(REPORTS["50000001"],
                                     ("impression", "indication"))
  assert caption == ("No acute cardiopulmonary process. ___F with cough, "
                     "eval for pneumonia.")


def test_report_caption_accepts_lowercase_headers():
  text = "Findings: Clear lungs.\nImpression: Normal.\nComparison: 2010."
  assert mimic_cxr.report_caption(text) == "Clear lungs. Normal."


def test_report_caption_keeps_mixed_case_lines():
  text = "FINDINGS:\nHeart size: normal.\nIMPRESSION: Normal chest."
  assert mimic_cxr.report_caption(text) == "Heart size: normal. Normal chest."


def test_report_caption_without_sections_is_empty():
  assert mimic_cxr.report_caption(REPORTS["50000003"]) == ""


@pytest.mark.parametrize("text, limit, expected", [
    ("One. Two three. Four.", 16, "One. Two three."),
    ("One. Two three. Four.", 100, "One. Two three. Four."),
    ("Alpha beta gamma delta", 13, "Alpha beta"),
    ("1. Small effusion. 2. Edema.", 22, "1. Small effusion."),
    ("1. Small effusion here", 10, "1. Small"),
    ("Pneumothorax", 5, "Pneum"),
    ("Any length.", 0, "Any length."),
])
def test_truncate_caption_cuts_at_sentence(text, limit, expected):
  assert mimic_cxr.truncate_caption(text, limit) == expected


# -- The pre-made CSV form --------------------------------------------------


def test_mimic_csv_layout_reads_premade_csvs(tmp_path):
  source = tmp_path / "mimic_csv"
  source.mkdir()
  first = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
  second = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"
  first_path = f"files/p10/p10000032/s50000001/{first}.jpg"
  second_path = f"files/p10/p10000032/s50000002/{second}.jpg"
  _write_gray_jpeg(source / first_path, 40)
  _write_gray_jpeg(source / second_path, 80)
  _write_gray_jpeg(source / "extra" / "scan.jpg", 120)
  (source / "mimic_cxr_single_image_train.csv").write_text(
      "image_path,caption\n"
      f"{first_path},\"No acute   process.\"\n"
      f"{second_path},Mild edema.\n"
      f"{second_path},\n")
  (source / "mimic_cxr_single_image_validate.csv").write_text(
      "image_path,caption\n"
      "extra/scan.jpg,Clear lungs.\n")
  examples, report = build(mimic_cxr.MimicCxr, tmp_path, source, "csv")

  assert set(examples) == {"train", "validation"}
  train = examples["train"]
  assert set(train) == {first, second}
  assert _text(train[first]["caption"]) == "No acute process."
  assert _text(train[first]["group"]) == "s50000001"
  assert _text(train[first]["study_id"]) == "50000001"
  assert _text(train[first]["subject_id"]) == "10000032"
  assert np.isnan(train[first]["chexpert"]).all()
  assert report["splits"]["train"]["skipped_by_kind"] == {
      image_text.EMPTY_CAPTION: 1}
  assert report["splits"]["train"]["records"][0]["id"] == f"{second}#1"
  other = examples["validation"]["extra/scan.jpg#0"]
  assert _text(other["study_id"]) == ""
  assert _text(other["group"]) == _text(other["image_hash"])


def test_mimic_csv_variant_without_files_raises(tmp_path):
  source = tmp_path / "mimic_csv"
  source.mkdir()
  (source / "mimic_cxr_single_image_train.csv").write_text(
      "image_path,caption\n")
  config = mimic_cxr.MimicCxrConfig(name="double", layout="csv",
                                    csv_variant="double_image")
  with pytest.raises(image_text.ManifestError, match="double_image"):
    build(mimic_cxr.MimicCxr, tmp_path, source, config)


# -- DICOM fixture ----------------------------------------------------------

STUDY_A = "1.2.826.0.1.3680043.8.498.10"
STUDY_B = "1.2.826.0.1.3680043.8.498.20"
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "JPEG2000.dcm")


def write_dicom(path: Path, *, study_uid: str, sop_uid: str,
                pixels: np.ndarray, **tags) -> None:
  """Write an 8-bit MONOCHROME2 Secondary Capture file with `tags`."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  dataset = Dataset()
  dataset.file_meta = meta
  dataset.SOPClassUID = SecondaryCaptureImageStorage
  dataset.SOPInstanceUID = sop_uid
  dataset.StudyInstanceUID = study_uid
  dataset.SeriesInstanceUID = study_uid + ".1"
  dataset.Modality = "CR"
  for keyword, value in tags.items():
    setattr(dataset, keyword, value)
  dataset.Rows, dataset.Columns = pixels.shape
  dataset.SamplesPerPixel = 1
  dataset.PhotometricInterpretation = "MONOCHROME2"
  dataset.BitsAllocated = 8
  dataset.BitsStored = 8
  dataset.HighBit = 7
  dataset.PixelRepresentation = 0
  dataset.PixelData = pixels.astype(np.uint8).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  dataset.save_as(path, enforce_file_format=True)


def _two_level_pixels(low: int, high: int) -> np.ndarray:
  pixels = np.full((8, 10), low, np.uint8)
  pixels[4:] = high
  return pixels


def _pydicom_test_file(name: str) -> Path:
  # The files that ship inside the pydicom package; nothing is downloaded.
  return Path(pydicom.__file__).parent / "data" / "test_files" / name


def write_dicom_tree(root: Path) -> Path:
  """Three own files (two in study A), a UID-named one, and bad input."""
  write_dicom(root / "patient1" / "a1.dcm", study_uid=STUDY_A,
              sop_uid=STUDY_A + ".1.1", pixels=_two_level_pixels(10, 200),
              BodyPartExamined="CHEST", StudyDescription="CHEST PA")
  (root / "patient1" / "a1.txt").write_text(
      "Lungs are clear.\nNo effusion.\n")
  write_dicom(root / "patient1" / "a2.dcm", study_uid=STUDY_A,
              sop_uid=STUDY_A + ".1.2", pixels=_two_level_pixels(0, 50),
              BodyPartExamined="CHEST", StudyDescription="CHEST PA",
              SeriesDescription="Lateral view")
  uid_name = STUDY_B + ".1.1"
  write_dicom(root / "patient2" / uid_name, study_uid=STUDY_B,
              sop_uid=uid_name, pixels=_two_level_pixels(5, 6),
              Modality="DX")
  (root / "patient2" / f"{uid_name}.txt").write_text("Healed rib fracture.")
  write_dicom(root / "patient2" / "untitled.dicom", study_uid=STUDY_B,
              sop_uid=STUDY_B + ".1.2", pixels=_two_level_pixels(1, 2))
  (root / "patient2" / "README").write_text("Not a DICOM file.\n")
  (root / "broken.dcm").write_text("This is a text file named .dcm.\n")
  shutil.copy(_pydicom_test_file("reportsi.dcm"), root / "report_sr.dcm")
  (root / "pydicom").mkdir()
  for name in PYDICOM_FILES:
    shutil.copy(_pydicom_test_file(name), root / "pydicom" / name)
  return root


@pytest.fixture(scope="module")
def dicom_build(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("dicom")
  source = write_dicom_tree(tmp_path / "studies")
  return build(dicom_studies.DicomStudies, tmp_path, source, "default")


def test_dicom_ids_are_sop_instance_uids(dicom_build):
  examples, report = dicom_build
  expected = {STUDY_A + ".1.1", STUDY_A + ".1.2", STUDY_B + ".1.1"}
  for name in PYDICOM_FILES:
    expected.add(pydicom.dcmread(_pydicom_test_file(name)).SOPInstanceUID)
  missing_decoder = {record["id"] for record in
                     report["splits"]["train"]["records"]
                     if record["kind"] == image_text.MISSING_DECODER}
  assert set(examples) == {"train"}
  assert set(examples["train"]) == expected - missing_decoder


def test_dicom_captions_prefer_sidecar(dicom_build):
  examples, _ = dicom_build
  train = examples["train"]
  assert _text(train[STUDY_A + ".1.1"]["caption"]) == (
      "Lungs are clear.\nNo effusion.")
  assert _text(train[STUDY_A + ".1.2"]["caption"]) == (
      "CHEST PA. Lateral view")
  assert _text(train[STUDY_B + ".1.1"]["caption"]) == "Healed rib fracture."


def test_dicom_groups_files_by_study(dicom_build):
  examples, _ = dicom_build
  train = examples["train"]
  assert _text(train[STUDY_A + ".1.1"]["group"]) == STUDY_A
  assert _text(train[STUDY_A + ".1.2"]["group"]) == STUDY_A
  assert _text(train[STUDY_A + ".1.2"]["study_uid"]) == STUDY_A
  assert _text(train[STUDY_A + ".1.2"]["body_part"]) == "CHEST"
  assert _text(train[STUDY_B + ".1.1"]["modality"]) == "DX"


def test_dicom_pixels_scale_to_full_range(dicom_build):
  examples, _ = dicom_build
  image = examples["train"][STUDY_A + ".1.1"]["image"]
  assert image.shape == (8, 10, 3)
  assert (image[:4] == 0).all()
  assert (image[4:] == 255).all()


def test_dicom_report_lists_bad_files(dicom_build):
  _, report = dicom_build
  records = report["splits"]["train"]["records"]
  by_origin = {Path(record["origin"]).name: record for record in records}
  assert by_origin["broken.dcm"]["kind"] == image_text.UNDECODABLE_IMAGE
  # No sidecar and no description tags: nothing to caption with.
  assert by_origin["untitled.dicom"]["kind"] == image_text.EMPTY_CAPTION
  assert "README" not in by_origin
  # A structured report has no image; it is left out, not reported.
  assert "report_sr.dcm" not in by_origin


def test_dicom_pydicom_samples_decode_or_count(dicom_build):
  examples, report = dicom_build
  skipped = {record["id"]: record["kind"]
             for record in report["splits"]["train"]["records"]}
  for name in PYDICOM_FILES:
    uid = pydicom.dcmread(_pydicom_test_file(name)).SOPInstanceUID
    if uid in examples["train"]:
      image = examples["train"][uid]["image"]
      assert image.ndim == 3 and image.shape[2] == 3, name
    else:
      assert skipped[uid] == image_text.MISSING_DECODER, name


def test_dicom_jpeg_sample_keeps_colours(dicom_build):
  examples, _ = dicom_build
  uid = pydicom.dcmread(
      _pydicom_test_file("SC_rgb_jpeg_dcmtk.dcm")).SOPInstanceUID
  image = examples["train"][uid]["image"].astype(int)
  assert image.shape == (100, 100, 3)
  # The first ten rows are (255, 0, 0), the next ten (255, 128, 128); JPEG
  # baseline changes them by a few levels.
  assert np.abs(image[2:8].mean(axis=(0, 1)) - (255, 0, 0)).max() < 8
  assert np.abs(image[12:18].mean(axis=(0, 1)) - (255, 128, 128)).max() < 8


def test_dicom_split_folders_become_splits(tmp_path):
  source = tmp_path / "studies"
  write_dicom(source / "train" / "a.dcm", study_uid=STUDY_A,
              sop_uid=STUDY_A + ".1", pixels=_two_level_pixels(0, 9),
              StudyDescription="CHEST PA")
  write_dicom(source / "test" / "b.dcm", study_uid=STUDY_B,
              sop_uid=STUDY_B + ".1", pixels=_two_level_pixels(0, 9),
              StudyDescription="KNEE")
  write_dicom(source / "other" / "c.dcm", study_uid=STUDY_B,
              sop_uid=STUDY_B + ".2", pixels=_two_level_pixels(0, 9),
              StudyDescription="HAND")
  examples, _ = build(dicom_studies.DicomStudies, tmp_path, source,
                      "default")
  assert {split: set(rows) for split, rows in examples.items()} == {
      "train": {STUDY_A + ".1"}, "test": {STUDY_B + ".1"}}


def test_dicom_split_file_maps_path_and_uid(tmp_path):
  source = tmp_path / "studies"
  for index in range(3):
    write_dicom(source / f"s{index}.dcm", study_uid=STUDY_A,
                sop_uid=f"{STUDY_A}.{index}",
                pixels=_two_level_pixels(0, 9), StudyDescription="CHEST")
  (source / "splits.csv").write_text(
      "path,SOPInstanceUID,split\n"
      "s0.dcm,,train\n"
      f",{STUDY_A}.1,validate\n"
      "gone.dcm,,train\n")
  config = dicom_studies.DicomStudiesConfig(name="by_file",
                                            split_file="splits.csv")
  examples, report = build(dicom_studies.DicomStudies, tmp_path, source,
                           config)
  # s2.dcm is not in the split file, so it is left out.
  assert {split: set(rows) for split, rows in examples.items()} == {
      "train": {f"{STUDY_A}.0"}, "validation": {f"{STUDY_A}.1"}}
  assert report["splits"]["train"]["skipped_by_kind"] == {
      image_text.MISSING_IMAGE: 1}
  assert report["splits"]["train"]["records"][0]["id"] == "gone.dcm"


def test_dicom_tags_source_ignores_sidecar(tmp_path):
  source = tmp_path / "studies"
  write_dicom(source / "a.dcm", study_uid=STUDY_A, sop_uid=STUDY_A + ".1",
              pixels=_two_level_pixels(0, 9), StudyDescription="CHEST PA",
              ImageComments="Portable")
  (source / "a.txt").write_text("Sidecar report.")
  config = dicom_studies.DicomStudiesConfig(name="tags",
                                            caption_source="tags")
  examples, _ = build(dicom_studies.DicomStudies, tmp_path, source, config)
  assert _text(examples["train"][STUDY_A + ".1"]["caption"]) == (
      "CHEST PA. Portable")


def test_dicom_extensionless_needs_dicm_magic(tmp_path):
  source = tmp_path / "studies"
  source.mkdir()
  dicom_file = source / "IM0001"
  write_dicom(dicom_file, study_uid=STUDY_A, sop_uid=STUDY_A + ".1",
              pixels=_two_level_pixels(0, 9), StudyDescription="CHEST PA")
  (source / "NOTES").write_bytes(b"\0" * 128 + b"NOTE and more text")
  examples, report = build(dicom_studies.DicomStudies, tmp_path, source,
                           "default")
  assert set(examples["train"]) == {STUDY_A + ".1"}
  assert report["splits"]["train"]["skipped"] == 0

"""TFDS builder for MIMIC-CXR chest radiographs with their report text.

Config "default" reads the PhysioNet release of MIMIC-CXR-JPG (2.0.0 and
2.1.0 share this layout), with the free-text reports of MIMIC-CXR (the
DICOM release, `mimic-cxr-reports.zip`) unpacked beside it:

    mimic-cxr-jpg/
      mimic-cxr-2.0.0-split.csv.gz      dicom_id,study_id,subject_id,split
                                        (split: train, validate or test)
      mimic-cxr-2.0.0-metadata.csv.gz   dicom_id,subject_id,study_id,
                                        PerformedProcedureStepDescription,
                                        ViewPosition,Rows,Columns,...
      mimic-cxr-2.0.0-chexpert.csv.gz   subject_id,study_id, then the 14
                                        CHEXPERT_LABELS (optional)
      files/p10/p10000032/s50414267/02aa804e-...-4e384014.jpg
      files/p10/p10000032/s50414267.txt     the study's report

The reports may live in another tree with the same `files/pXX/...` layout;
the config field `reports_dir` names the folder that contains its `files/`.
The caption is the report's FINDINGS and IMPRESSION sections (config field
`sections`), joined with whitespace normalised. A study whose report has
none of the chosen sections gets an empty caption, so its images are skipped
and counted as empty_caption in the build report. Some MIMIC-CXR reports
have neither FINDINGS nor IMPRESSION, and this is how they are left out.

Images whose ViewPosition (from the metadata file) is not in `views` (by
default the frontal views PA and AP) are left out on purpose. They are not
bad input, so the build report does not list them, but their number per
split is logged. The CheXpert labels become the feature `chexpert`: one
float32 per name in CHEXPERT_LABELS, 1 (positive), 0 (negative), -1
(uncertain) or NaN (not mentioned, a blank cell). Without the CheXpert file
every label is NaN.

Config "csv" reads the pre-made CSVs that some CLIP training code uses
(VectorInstitute/pmc-data-extraction's MIMIC-CXR loader):
`mimic_cxr_{single_image,double_image}_{train,validate,test}.csv`, with
the columns `image_path` (relative to the manual directory, or to
`image_dir`) and `caption`. These CSVs have no ViewPosition and no labels.
So `views` does not apply, `chexpert` is all NaN and `view_position` is
empty. The study and subject ids come from the `sXXXXXXXX` and `pXXXXXXXX`
folders of the image path, and are empty when it has none.
NOTE: both variants are read with the same columns. How the rows of
double_image differ from single_image was not checked against that code.

    tfds build mimic_cxr \\
        --imports shared_encoder_jax.data.builders.mimic_cxr \\
        --manual_dir /data/physionet.org/files/mimic-cxr-jpg/2.1.0 \\
        --config '{"name": "frontal", "reports_dir": "../../mimic-cxr/2.1.0"}'

Ids are the dicom_id. In the csv form they are the image file's stem when
it is a dicom_id (plus "#n" for its n-th repeat), else the image path plus
"#n". Every image of a study has the group `s<study_id>`, so evaluation
treats a study's images as one item.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from shared_encoder_jax.data.builders import image_text

SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
CSV_FILE = "mimic_cxr_{variant}_{split}.csv"
CSV_VARIANTS = ("single_image", "double_image")

# The 14 label columns of mimic-cxr-2.0.0-chexpert.csv.gz, in the order of
# the `chexpert` feature.
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
    "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices")
_CHEXPERT_VALUES = (1.0, 0.0, -1.0)

# Split names in the source files ("validate" in MIMIC-CXR) and the TFDS
# split each becomes; other names are kept as they are.
SPLIT_ALIASES = {"validate": "validation", "val": "validation",
                 "valid": "validation", "dev": "validation"}
SOURCE_SPLITS = ("train", "validate", "test")
# Rows that name no split (malformed rows of any of the files) are reported
# with this split.
_UNSPLIT = "train"

# Report headers, lower case, that start a section a caption can use; a
# combined header starts both sections.
_SECTION_NAMES = {
    "findings": ("findings",),
    "finding": ("findings",),
    "impression": ("impression",),
    "impressions": ("impression",),
    "conclusion": ("impression",),
    "conclusions": ("impression",),
    "findings and impression": ("findings", "impression"),
    "findings/impression": ("findings", "impression"),
    "impression and findings": ("findings", "impression"),
}
# Other headers that MIMIC-CXR reports use. Any other header written in
# capitals also ends a section, as in MIT-LCP/mimic-cxr txt/section_parser.py.
_OTHER_HEADERS = frozenset((
    "indication", "indications", "history", "clinical history",
    "clinical information", "comparison", "comparisons", "technique",
    "examination", "exam", "reason for exam", "reason for examination",
    "procedure", "recommendation", "recommendations", "recommendation(s)",
    "notification", "addendum", "wet read", "final report", "note"))
# "Header:" at the start of a line, the rest of the line being its text.
_HEADER = re.compile(r"^\s*([A-Za-z][A-Za-z /()&,-]{0,48}?)\s*:(.*)$")
# Headers written on a line of their own, without a colon.
_BARE_HEADER = re.compile(r"^\s*(final report|addendum)\s*$", re.IGNORECASE)
# The end of a sentence: [.!?] before whitespace.
_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_LIST_NUMBER = re.compile(r"(?:^|\s)\d+$")
_DICOM_ID = re.compile(r"^[0-9a-f]{8}(?:-[0-9a-f]{8}){4}$")
_STUDY_FOLDER = re.compile(r"(?:^|/)s(\d+)(?:/|$)")
_SUBJECT_FOLDER = re.compile(r"(?:^|/)p(\d{3,})(?:/|$)")


@dataclasses.dataclass
class MimicCxrConfig(image_text.ImageTextConfig):
  """Options: the MIMIC-CXR layout to read and how to make the captions.

  Attributes:
    layout: "jpg" (the MIMIC-CXR-JPG release with the reports) or "csv"
      (the pre-made image_path/caption CSVs).
    reports_dir: the folder that contains the reports' `files/` tree,
      relative to the manual directory or absolute; empty: the manual
      directory itself. Only for layout "jpg".
    sections: report sections that make the caption, in this order, by
      header name in any case: "findings", "impression" (CONCLUSION counts
      as impression), or another header such as "indication".
    max_caption_chars: captions longer than this are cut at the last
      sentence end that fits, or else at the last space; 0 keeps the whole
      text. The default keeps it because the tokenizer truncates to the
      model's text context anyway, and one build serves every context
      length.
    views: ViewPosition values to keep; empty keeps every image. Only for
      layout "jpg".
    csv_variant: "single_image" or "double_image". Only for layout "csv".
    image_dir: the folder the CSV image paths are relative to, itself
      relative to the manual directory. Only for layout "csv".
    image_key: the CSV's image path column. Only for layout "csv".
    caption_key: the CSV's caption column. Only for layout "csv".
  """
  layout: str = "jpg"
  reports_dir: str = ""
  sections: tuple[str, ...] = ("findings", "impression")
  max_caption_chars: int = 0
  views: tuple[str, ...] = ("PA", "AP")
  csv_variant: str = "single_image"
  image_dir: str = ""
  image_key: str = "image_path"
  caption_key: str = "caption"


class MimicCxr(image_text.ImageTextBuilder):
  """MIMIC-CXR chest radiographs captioned with their report sections."""

  BUILDER_CONFIGS = [MimicCxrConfig(name="default"),
                     MimicCxrConfig(name="csv", layout="csv")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "MIMIC-CXR needs credentialed PhysioNet access. For the default "
      "config, download MIMIC-CXR-JPG (https://physionet.org/content/"
      "mimic-cxr-jpg/) and unpack the reports of MIMIC-CXR "
      "(mimic-cxr-reports.zip from https://physionet.org/content/"
      "mimic-cxr/) into the same folder, or set reports_dir. For the csv "
      "config, put the mimic_cxr_<variant>_<split>.csv files in the "
      "manual directory.")

  def _extra_features(self):
    return {
        "chexpert": tfds.features.Tensor(
            shape=(len(CHEXPERT_LABELS),), dtype=np.float32,
            doc=("CheXpert labels in the order " + ", ".join(CHEXPERT_LABELS)
                 + ": 1 positive, 0 negative, -1 uncertain, NaN not "
                 "mentioned or no labels file.")),
        "study_id": tfds.features.Text(doc="MIMIC-CXR study id, digits."),
        "subject_id": tfds.features.Text(doc="MIMIC-CXR patient id, digits."),
        "view_position": tfds.features.Text(
            doc="The image's ViewPosition (PA, AP, LATERAL, ...)."),
    }

  def _split_records(self, root: epath.Path):
    config = self.builder_config
    if not config.sections or not all(
        isinstance(name, str) and name.strip() for name in config.sections):
      raise image_text.BuilderConfigError(
          f"sections={config.sections!r} in the builder config "
          "must name at least one report section, e.g. "
          "('findings', 'impression').")
    if config.max_caption_chars < 0:
      raise image_text.BuilderConfigError(
          f"max_caption_chars={config.max_caption_chars} in the "
          "builder config is negative; use 0 for no limit.")
    if config.layout == "jpg":
      return _JpgLayout(root, config).split_records()
    if config.layout == "csv":
      return self._csv_split_records(root)
    raise image_text.BuilderConfigError(
        f"layout={config.layout!r} in the builder config is "
        "invalid; use 'jpg' or 'csv'.")

  # -- The pre-made CSVs ----------------------------------------------------

  def _csv_split_records(self, root: epath.Path):
    config = self.builder_config
    if config.csv_variant not in CSV_VARIANTS:
      raise image_text.BuilderConfigError(
          f"csv_variant={config.csv_variant!r} in the builder "
          f"config is invalid; use one of {list(CSV_VARIANTS)}.")
    manifests = {}
    for source_split in SOURCE_SPLITS:
      path = root / CSV_FILE.format(variant=config.csv_variant,
                                    split=source_split)
      if path.exists():
        manifests[_split_name(source_split)] = path
    if not manifests:
      raise image_text.ManifestError(
          f"No {CSV_FILE.format(variant=config.csv_variant, split='<split>')}"
          f" found in {root} for the splits {list(SOURCE_SPLITS)}. Put the "
          "CSVs in the manual directory or pick another csv_variant.")
    return {split: self._csv_records(root, path)
            for split, path in manifests.items()}

  def _csv_records(self, root: epath.Path, manifest: epath.Path
                   ) -> Iterator[image_text.Record | image_text.Problem]:
    config = self.builder_config
    occurrences = collections.Counter()
    for row in image_text.read_manifest(
        manifest, (config.image_key, config.caption_key)):
      if isinstance(row, image_text.Problem):
        yield row
        continue
      origin, values = row
      image = str(values[config.image_key]).strip()
      occurrences[image] += 1
      repeat = occurrences[image] - 1
      stem = epath.Path(image).stem
      if _DICOM_ID.match(stem):
        record_id = f"{stem}#{repeat}" if repeat else stem
      else:
        record_id = f"{image}#{repeat}"
      study = _STUDY_FOLDER.search(image)
      subject = _SUBJECT_FOLDER.search(image)
      yield image_text.Record(
          id=record_id,
          caption=truncate_caption(" ".join(values[config.caption_key].split()),
                                   config.max_caption_chars),
          image=image_text.resolve_image(root, config.image_dir, image),
          origin=origin,
          group=f"s{study.group(1)}" if study else "",
          features=_features(
              study=study.group(1) if study else "",
              subject=subject.group(1) if subject else "",
              view="", labels=_no_labels()))


class _JpgLayout:
  """Records of the MIMIC-CXR-JPG release, read one split at a time."""

  def __init__(self, root: epath.Path, config: MimicCxrConfig):
    self.root = root
    self.config = config
    self.views = frozenset(view.strip().upper() for view in config.views)
    reports_root = epath.Path(config.reports_dir or ".")
    if not reports_root.is_absolute():
      reports_root = root / reports_root
    self.reports_root = reports_root
    # Problems of rows that belong to no split, reported with _UNSPLIT.
    self.unsplit: list[image_text.Problem] = []

  def split_records(self):
    split_file = self.root / SPLIT_FILE
    splits, has_unsplit_rows = self._split_names(split_file)
    if not (self.reports_root / "files").is_dir():
      raise FileNotFoundError(
          f"Report folder {self.reports_root / 'files'} not found. Unpack "
          "mimic-cxr-reports.zip there, or set reports_dir in the builder "
          "config to the folder that contains the reports' files/.")
    self.view_of = self._read_metadata(self.root / METADATA_FILE)
    self.labels_of = self._read_chexpert(self.root / CHEXPERT_FILE)
    self.cached_caption = functools.lru_cache(maxsize=4096)(
        self._report_caption)
    if has_unsplit_rows or self.unsplit:
      splits.add(_UNSPLIT)
    return {split: self._records(split_file, split)
            for split in sorted(splits)}

  def _split_names(self, split_file: epath.Path) -> tuple[set[str], bool]:
    """Return the split file's split names and whether a row has none."""
    names = set()
    has_unsplit_rows = False
    for row in image_text.read_manifest(
        split_file, ("dicom_id", "study_id", "subject_id", "split")):
      name = "" if isinstance(row, image_text.Problem) else _split_name(
          row[1]["split"])
      if name:
        names.add(name)
      else:
        has_unsplit_rows = True
    if not names:
      raise image_text.ManifestError(
          f"{split_file} assigns no image to a split.")
    return names, has_unsplit_rows

  def _read_metadata(self, path: epath.Path) -> dict[str, str]:
    """Map each dicom_id to its ViewPosition."""
    view_of = {}
    for row in image_text.read_manifest(path, ("dicom_id", "ViewPosition")):
      if isinstance(row, image_text.Problem):
        self.unsplit.append(row)
        continue
      _, values = row
      view_of[values["dicom_id"].strip()] = (
          values["ViewPosition"].strip().upper())
    return view_of

  def _read_chexpert(self, path: epath.Path
                     ) -> dict[str, np.ndarray | image_text.Problem]:
    """Map each study id to its labels, or to the Problem of its row."""
    if not path.exists():
      logging.info("No %s in %s: every chexpert label is NaN.",
                   CHEXPERT_FILE, self.root)
      return {}
    labels_of = {}
    origin_of = {}
    for row in image_text.read_manifest(
        path, ("subject_id", "study_id") + CHEXPERT_LABELS):
      if isinstance(row, image_text.Problem):
        self.unsplit.append(row)
        continue
      origin, values = row
      study = values["study_id"].strip()
      if study in origin_of:
        self.unsplit.append(image_text.Problem(
            image_text.MALFORMED_ROW, origin,
            f"study {study} already has labels at {origin_of[study]}; the "
            "first row is used"))
        continue
      origin_of[study] = origin
      labels_of[study] = _parse_labels(origin, values)
    return labels_of

  def _records(self, split_file: epath.Path, split: str
               ) -> Iterator[image_text.Record | image_text.Problem]:
    filtered = collections.Counter()
    if split == _UNSPLIT:
      yield from self.unsplit
    for row in image_text.read_manifest(
        split_file, ("dicom_id", "study_id", "subject_id", "split")):
      if isinstance(row, image_text.Problem):
        if split == _UNSPLIT:
          yield row
        continue
      origin, values = row
      row_split = _split_name(values["split"])
      if not row_split and split == _UNSPLIT:
        yield image_text.Problem(image_text.MALFORMED_ROW, origin,
                                 "empty split", values["dicom_id"].strip())
      if row_split != split:
        continue
      item = self._record(origin, values)
      if isinstance(item, str):
        filtered[item] += 1
      else:
        yield item
    if filtered:
      logging.info("mimic_cxr %s: left out %d image(s) whose ViewPosition "
                   "is not in views=%s: %s", split, sum(filtered.values()),
                   sorted(self.views), dict(sorted(filtered.items())))

  def _record(self, origin: str, values: dict
              ) -> image_text.Record | image_text.Problem | str:
    """Return the row's record or problem, or a left-out image's view."""
    dicom_id = values["dicom_id"].strip()
    study = values["study_id"].strip()
    subject = values["subject_id"].strip()
    if not (study.isdigit() and subject.isdigit() and len(subject) >= 2
            and dicom_id):
      return image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          f"invalid ids: dicom_id {dicom_id!r}, study_id {study!r}, "
          f"subject_id {subject!r}", dicom_id)

    view = self.view_of.get(dicom_id)
    if view is None and self.views:
      return image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          f"dicom_id not in {METADATA_FILE}, so its ViewPosition is "
          "unknown", dicom_id)
    if self.views and view not in self.views:
      return view or "(empty)"

    labels = self.labels_of.get(study, _no_labels())
    if isinstance(labels, image_text.Problem):
      return dataclasses.replace(labels, id=dicom_id)

    folder = epath.Path("files", f"p{subject[:2]}", f"p{subject}")
    caption, why_empty = self.cached_caption(
        str(self.reports_root / folder / f"s{study}.txt"))
    if why_empty:
      return image_text.Problem(image_text.EMPTY_CAPTION, origin, why_empty,
                                dicom_id)
    return image_text.Record(
        id=dicom_id,
        caption=caption,
        image=self.root / folder / f"s{study}" / f"{dicom_id}.jpg",
        origin=origin,
        group=f"s{study}",
        features=_features(study=study, subject=subject, view=view or "",
                           labels=labels))

  def _report_caption(self, report_path: str) -> tuple[str, str]:
    """Return the report's caption, and why it is empty when it is."""
    path = epath.Path(report_path)
    if not path.exists():
      return "", f"report {path} not found"
    # Invalid UTF-8 stays as lone surrogates, which the base class reports.
    text = image_text.read_text(path).decode("utf-8",
                                             errors="surrogateescape")
    caption = report_caption(text, self.config.sections)
    if not caption:
      return "", (f"report {path} has none of the sections "
                  f"{list(self.config.sections)}, or they are empty")
    return truncate_caption(caption, self.config.max_caption_chars), ""


# -- Report text ------------------------------------------------------------


def report_sections(text: str) -> list[tuple[str, str]]:
  """Split a report into (header, text) pairs in report order.

  A header is "Name:" at the start of a line, either one of the headers
  MIMIC-CXR reports use (any case) or any name in capitals, or a line
  "FINAL REPORT" or "ADDENDUM". The header is lower case; the text before
  the first header is "preamble". Whitespace in the text is normalised.
  """
  sections = [("preamble", [])]
  for line in text.splitlines():
    bare = _BARE_HEADER.match(line)
    if bare:
      sections.append((bare.group(1).lower(), []))
      continue
    header = _HEADER.match(line)
    if header and _is_header(header.group(1)):
      sections.append((" ".join(header.group(1).lower().split()),
                       [header.group(2)]))
      continue
    sections[-1][1].append(line)
  return [(name, " ".join(" ".join(lines).split()))
          for name, lines in sections]


def _is_header(name: str) -> bool:
  lower = " ".join(name.lower().split())
  return (lower in _SECTION_NAMES or lower in _OTHER_HEADERS
          or name.isupper())


def report_caption(text: str, sections=("findings", "impression")) -> str:
  """Join the report's chosen sections, in the order of `sections`.

  Returns "" when the report has none of them. A header such as "FINDINGS
  AND IMPRESSION" belongs to both sections but is used once.
  """
  parsed = report_sections(text)
  used = set()
  parts = []
  for requested in sections:
    requested = " ".join(requested.lower().split())
    for index, (name, body) in enumerate(parsed):
      if requested in _SECTION_NAMES.get(name, (name,)) and index not in used:
        used.add(index)
        if body:
          parts.append(body)
  return " ".join(parts)


def truncate_caption(text: str, max_chars: int) -> str:
  """Cut `text` to at most `max_chars` characters at a sentence end.

  The cut is after the last ".", "!" or "?" that is followed by whitespace
  and fits. A "1." that numbers a list item is no sentence end. Without a
  sentence end the cut is at the last space that fits. A first word longer
  than `max_chars` is cut mid-word. 0 means no limit.
  """
  if not max_chars or len(text) <= max_chars:
    return text
  head = text[:max_chars + 1]
  ends = [match.end() for match in _SENTENCE_END.finditer(head)
          if match.end() <= max_chars
          and not _LIST_NUMBER.search(head[:match.start()])]
  if ends:
    return text[:ends[-1]].rstrip()
  space = head.rfind(" ")
  if space > 0:
    return text[:space].rstrip()
  return text[:max_chars]


# -- Helpers ----------------------------------------------------------------


def _split_name(value) -> str:
  name = str(value or "").strip().lower()
  return SPLIT_ALIASES.get(name, name)


def _no_labels() -> np.ndarray:
  return np.full((len(CHEXPERT_LABELS),), np.nan, dtype=np.float32)


def _parse_labels(origin: str, values: dict
                  ) -> np.ndarray | image_text.Problem:
  labels = _no_labels()
  for index, name in enumerate(CHEXPERT_LABELS):
    cell = values[name].strip()
    if not cell:
      continue
    try:
      value = float(cell)
    except ValueError:
      value = None
    if value not in _CHEXPERT_VALUES:
      return image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          f"CheXpert label {name}={cell!r} is not 1.0, 0.0, -1.0 or blank")
    labels[index] = value
  return labels


def _features(*, study: str, subject: str, view: str,
              labels: np.ndarray) -> dict:
  return {"chexpert": labels, "study_id": study, "subject_id": subject,
          "view_position": view}


"""TFDS builder for a folder of DICOM files, each with its report text.

The manual directory contains DICOM Part 10 files at any depth, each with an
optional sidecar report of the same name with the suffix `.txt`:

    my_studies/
      patient1/study1/image1.dcm
      patient1/study1/image1.txt     the report of image1.dcm
      patient1/study1/image2.dcm     no sidecar: the report is made from
                                     the Study Description, Series
                                     Description and Image Comments tags
      patient2/1.2.840.113619.2.5.1  a DICOM file without an extension

The config field `extensions` lists the suffixes read (by default ".dcm",
".dicom" and "", which means no extension). A file without an extension is
read only when it has the DICOM Part 10 header ("DICM" after the 128-byte
preamble), so READMEs and other files in the tree are ignored. A name whose
last dot-separated part is all digits, as in files named by their
SOPInstanceUID, counts as having no extension, and its sidecar is that name
plus ".txt". Files with an extension in `extensions` that pydicom cannot
parse are listed in the build report as undecodable_image. DICOM objects
without an image (no Rows and Columns: structured reports, DICOMDIRs, RT
plans) are left out and counted in the log.

Splits: with `split_file` set, a CSV (or JSONL, see
`image_text.read_manifest`) relative to the manual directory maps each
image to a split by the columns `split` and either `path` (relative to the
manual directory) or `SOPInstanceUID`. Files it does not list are left out
and counted in the log, and rows that match no file are reported as
missing_image. Without `split_file`, the subfolders `train/`,
`validation/` and `test/` (also `val/`, `valid/`, `validate/`, `dev/` for
validation) are the splits when any of them exists, and only files inside
them are read. Otherwise every file goes to "train".

Pixels come from `dicom.read_dicom` (one frame of a multi-frame file, see
`frame`). The id is the SOPInstanceUID (the path relative to the manual
directory when the tag is empty) and the group is the StudyInstanceUID, so
evaluation treats a study's images as one item.

    tfds build dicom_studies \\
        --imports shared_encoder_jax.data.builders.dicom_studies \\
        --manual_dir /data/my_studies \\
        --config '{"name": "ct", "split_file": "splits.csv"}'
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import posixpath

import numpy as np
import pydicom
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from pydicom.errors import InvalidDicomError

from shared_encoder_jax.data import dicom
from shared_encoder_jax.data.builders import image_text

SPLIT_ALIASES = {"val": "validation", "valid": "validation",
                 "validate": "validation", "dev": "validation"}
SPLIT_FOLDERS = ("train", "validation", "test") + tuple(SPLIT_ALIASES)
CAPTION_SOURCES = ("sidecar_then_tags", "sidecar", "tags")
SIDECAR_SUFFIX = ".txt"
# Rows of the split file that name no split are reported with this split.
_UNSPLIT = "train"
# A DICOM Part 10 file starts with a 128-byte preamble and then "DICM".
_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"


@dataclasses.dataclass
class DicomStudiesConfig(image_text.ImageTextConfig):
  """Options: the files to read, their splits and their captions' source.

  Attributes:
    extensions: file suffixes to read, lower case with the dot; "" reads
      files without an extension that have the DICOM Part 10 header.
    frame: the frame of a multi-frame file to use: "middle", "first" or an
      index (see `dicom.read_dicom`).
    split_file: a manifest, relative to the manual directory, with a
      `split` column and a `path` or `SOPInstanceUID` column; empty: split
      folders, or everything in "train".
    caption_source: "sidecar_then_tags" (the sidecar .txt, else the
      description tags), "sidecar" (only the sidecar; without one the
      caption is empty) or "tags" (only the description tags).
  """
  extensions: tuple[str, ...] = (".dcm", ".dicom", "")
  frame: str | int = "middle"
  split_file: str = ""
  caption_source: str = "sidecar_then_tags"


class DicomStudies(image_text.ImageTextBuilder):
  """DICOM images with the report in a sidecar .txt or in their tags."""

  BUILDER_CONFIGS = [DicomStudiesConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the DICOM files, each with an optional report <name>.txt beside "
      "it, in the manual directory (subfolders are read too).")

  def _extra_features(self):
    return {
        "study_uid": tfds.features.Text(doc="StudyInstanceUID, may be empty."),
        "modality": tfds.features.Text(doc="Modality tag (CT, MR, CR, ...)."),
        "body_part": tfds.features.Text(doc="BodyPartExamined tag."),
    }

  def _split_records(self, root: epath.Path):
    self._check_config()
    config = self.builder_config
    by_split = collections.defaultdict(list)
    files = self._dicom_files(root)
    if config.split_file:
      split_file = _SplitFile(root / config.split_file)
      by_split[_UNSPLIT].extend(split_file.problems)
      split_of = split_file.split_of
    else:
      files, split_of = _split_folders(root, files)

    left_out = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      items = pool.map(functools.partial(self._list_file, root), files)
      for path, item in zip(files, items):
        if isinstance(item, str):
          left_out[item] += 1
          continue
        split = split_of(path.relative_to(root).as_posix(), item)
        if split:
          by_split[split].append(item)
        else:
          left_out["not in the split file"] += 1
    if config.split_file:
      for split, problem in split_file.unmatched_rows(root):
        by_split[split].append(problem)
    if left_out:
      logging.info("dicom_studies: left out %d file(s): %s",
                   sum(left_out.values()), dict(sorted(left_out.items())))
    if not by_split:
      raise FileNotFoundError(
          f"No DICOM file with an extension in {config.extensions} found "
          f"under {root}. Check the manual directory and the builder "
          "config's extensions and split_file.")
    return dict(by_split)

  def _check_config(self) -> None:
    config = self.builder_config
    if config.caption_source not in CAPTION_SOURCES:
      raise image_text.BuilderConfigError(
          f"caption_source={config.caption_source!r} in the "
          f"builder config is invalid; use one of "
          f"{list(CAPTION_SOURCES)}.")
    invalid = [extension for extension in config.extensions
               if extension and not extension.startswith(".")]
    if invalid:
      raise image_text.BuilderConfigError(
          f"extensions={config.extensions!r} in the builder "
          f"config has {invalid} without the leading dot; write "
          "them as '.dcm', or '' for files without one.")
    frame = config.frame
    if not (frame in ("middle", "first") or (
        isinstance(frame, int) and not isinstance(frame, bool))):
      raise image_text.BuilderConfigError(
          f"frame={frame!r} in the builder config is invalid; "
          "use 'middle', 'first' or a frame index.")

  # -- Listing --------------------------------------------------------------

  def _dicom_files(self, root: epath.Path) -> list[epath.Path]:
    """List the files under `root` whose extension is in `extensions`."""
    extensions = {extension.lower() for extension in
                  self.builder_config.extensions}
    found = []
    for folder, subfolders, names in root.walk():
      # Hidden folders (.git, .cache) contain no studies.
      subfolders[:] = [name for name in subfolders if not name.startswith(".")]
      for name in names:
        extension = _extension(name)
        if (name.startswith(".") or extension == SIDECAR_SUFFIX
            or extension not in extensions):
          continue
        path = folder / name
        if not extension and not _has_dicom_header(path):
          continue
        found.append(path)
    return sorted(found)

  def _list_file(self, root: epath.Path, path: epath.Path
                 ) -> image_text.Record | image_text.Problem | str:
    """Return the file's record or problem, or why it is left out.

    Only the header is read here; the pixels are read when the record is
    written.
    """
    relative = path.relative_to(root).as_posix()
    try:
      header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, OverflowError,
            KeyError, TypeError) as error:
      return image_text.Problem(
          image_text.UNDECODABLE_IMAGE, str(path),
          f"pydicom failed to read the DICOM header ({error}). Check that "
          "the file is a DICOM Part 10 file, or remove it.", relative)
    if "Rows" not in header or "Columns" not in header:
      return "no image (no Rows and Columns)"

    tags = _header_tags(header)
    config = self.builder_config
    caption = ""
    sidecar = path.parent / (_sidecar_stem(path.name) + SIDECAR_SUFFIX)
    if config.caption_source != "tags" and sidecar.exists():
      caption = image_text.read_text(sidecar)
    elif config.caption_source != "sidecar":
      caption = dicom.description_text(tags)

    return image_text.Record(
        id=tags["SOPInstanceUID"] or relative,
        caption=caption,
        image=functools.partial(_read_pixels, str(path), config.frame),
        origin=str(path),
        group=tags["StudyInstanceUID"],
        features={"study_uid": tags["StudyInstanceUID"],
                  "modality": tags["Modality"],
                  "body_part": tags["BodyPartExamined"]})


class _SplitFile:
  """The split file: each row maps a path or a SOPInstanceUID to a split."""

  def __init__(self, manifest: epath.Path):
    self.manifest = manifest
    self.problems: list[image_text.Problem] = []
    # Rows not yet matched to a file, by path or UID: (split, origin).
    self.by_path: dict[str, tuple[str, str]] = {}
    self.by_uid: dict[str, tuple[str, str]] = {}
    for row in image_text.read_manifest(manifest, ("split",)):
      if isinstance(row, image_text.Problem):
        self.problems.append(row)
      else:
        self._add_row(*row)
    if not self.by_path and not self.by_uid:
      raise image_text.ManifestError(
          f"Split file {manifest} maps no file to a split; it needs the "
          "columns split and path (relative to the manual directory) or "
          "SOPInstanceUID.")

  def _add_row(self, origin: str, values: dict) -> None:
    split = _split_name(values["split"])
    path = str(values.get("path") or "").strip()
    uid = str(values.get("SOPInstanceUID") or "").strip()
    if not split or not (path or uid):
      self.problems.append(image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          "the row needs a split and a path or SOPInstanceUID"))
      return
    if path:
      key, table = posixpath.normpath(path.replace("\\", "/")), self.by_path
    else:
      key, table = uid, self.by_uid
    if key in table:
      self.problems.append(image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          f"{key} is already listed at {table[key][1]}", key))
      return
    table[key] = (split, origin)

  def split_of(self, relative_path: str, item) -> str:
    """Return the split of a listed file, "" when the file is unlisted."""
    entry = self.by_path.pop(relative_path, None)
    if entry is None and isinstance(item, image_text.Record):
      entry = self.by_uid.pop(item.id, None)
    return entry[0] if entry else ""

  def unmatched_rows(self, root: epath.Path):
    """Yield (split, missing_image problem) for rows that matched no file."""
    for name, (split, origin) in (list(self.by_path.items()) +
                                  list(self.by_uid.items())):
      yield split, image_text.Problem(
          image_text.MISSING_IMAGE, origin,
          f"no DICOM file {name} under {root}", name)


def _split_folders(root: epath.Path, files: list[epath.Path]):
  """Return the files inside split folders and a function giving the split.

  Without split folders every file is kept and goes to "train".
  """
  folders = {name: SPLIT_ALIASES.get(name, name) for name in SPLIT_FOLDERS
             if (root / name).is_dir()}
  if not folders:
    return files, lambda relative_path, item: "train"
  inside = [path for path in files
            if path.relative_to(root).parts[0] in folders]
  if len(inside) < len(files):
    logging.warning(
        "dicom_studies: left out %d file(s) outside the split folders %s of "
        "%s.", len(files) - len(inside), sorted(folders), root)
  return inside, lambda relative_path, item: folders[
      relative_path.split("/", 1)[0]]


def _read_pixels(path: str, frame: str | int) -> np.ndarray:
  return dicom.read_dicom(path, frame=frame)[0]


def _header_tags(header: pydicom.Dataset) -> dict[str, str]:
  """Return the `dicom.TAG_KEYWORDS` of a header as str, "" when absent."""
  tags = {}
  for keyword in dicom.TAG_KEYWORDS:
    value = header.get(keyword)
    if value is None:
      tags[keyword] = ""
    elif isinstance(value, pydicom.multival.MultiValue):
      tags[keyword] = "\\".join(str(item) for item in value).strip()
    else:
      tags[keyword] = str(value).strip()
  return tags


def _extension(name: str) -> str:
  """Return the lower-case suffix, "" for none or an all-digit one."""
  suffix = epath.Path(name).suffix.lower()
  return "" if suffix[1:].isdigit() else suffix


def _sidecar_stem(name: str) -> str:
  extension = _extension(name)
  return name[:-len(extension)] if extension else name


def _has_dicom_header(path: epath.Path) -> bool:
  with path.open("rb") as file:
    start = file.read(_PREAMBLE_LENGTH + len(_MAGIC))
  return start[_PREAMBLE_LENGTH:] == _MAGIC


def _split_name(value) -> str:
  name = str(value or "").strip().lower()
  return SPLIT_ALIASES.get(name, name)

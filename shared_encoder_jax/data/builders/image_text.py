"""Common base of the TFDS builders that read a local image-caption dataset.

A dataset builder lists its records (id, caption, image file, origin) per
split; this base class validates, decodes and writes them. Every example has
the features

  id          the record's stable id from the dataset
  image       uint8 RGB, re-encoded (PNG by default) after decoding
  caption     UTF-8 text
  image_hash  SHA-1 of the decoded pixels (`image_decoding.content_hash`)
  group       the study id where the dataset has one, else `image_hash`, so
              evaluation can treat the images of one study, and duplicated
              images, as one item

plus the dataset's own features. Images are decoded with
`image_decoding.decode_image`, so every encoding ends up in one layout, and
images whose shorter side exceeds `max_image_side` are downscaled once here.

Bad input never stops a build and is never replaced by something else. A
record with a missing, undecodable or truncated image, an empty caption,
invalid UTF-8, a duplicate id or a malformed manifest row is skipped and
counted by kind. `build_report.json` beside the dataset files lists each one
with its file and line, and a one-line summary per split is logged. With
`strict=True` the first such record raises `BadInputError` instead and
nothing is written. A manifest that is missing, empty or lacks required
columns always raises `ManifestError`.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import csv
import dataclasses
import gzip
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from shared_encoder_jax.data import image_decoding

REPORT_FILE = "build_report.json"

# Kinds of bad input, as they appear in the build report.
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
TRUNCATED_IMAGE = "truncated_image"
MISSING_DECODER = "missing_decoder"
EMPTY_CAPTION = "empty_caption"
INVALID_UTF8 = "invalid_utf8"
DUPLICATE_ID = "duplicate_id"
MALFORMED_ROW = "malformed_row"
PROBLEM_KINDS = (MISSING_IMAGE, UNDECODABLE_IMAGE, TRUNCATED_IMAGE,
                 MISSING_DECODER, EMPTY_CAPTION, INVALID_UTF8, DUPLICATE_ID,
                 MALFORMED_ROW)

# Records are decoded this many at a time by the thread pool, in order.
_CHUNK = 64


class ManifestError(ValueError):
  """A manifest file is missing, empty or lacks required columns."""


class BadInputError(ValueError):
  """A bad record in a build with `strict=True`."""


class BuilderConfigError(ValueError):
  """A builder config field has an invalid value."""


def check_subsets(subsets, choices: Sequence[str]) -> tuple[str, ...]:
  """Return `subsets` as a tuple; raise if empty or not all in `choices`."""
  subsets = tuple(subsets)
  if not subsets or any(subset not in choices for subset in subsets):
    raise BuilderConfigError(
        f"subsets={subsets!r} in the builder config is invalid; choose one "
        f"or more of {tuple(choices)}.")
  return subsets


@dataclasses.dataclass(frozen=True)
class Problem:
  """One skipped record: its kind, where it is and what is wrong."""
  kind: str
  origin: str  # "file:line", or the file alone
  detail: str
  id: str = ""

  def describe(self) -> str:
    record = f" (id {self.id!r})" if self.id else ""
    return f"{self.origin}{record}: {self.kind}: {self.detail}"


# A loader returns the decoded uint8 RGB image itself, for images that are
# not plain image files (e.g. DICOM). It raises an exception with a `kind`
# attribute (one of PROBLEM_KINDS) for bad input.
ImageSource = Union[str, os.PathLike, Callable[[], np.ndarray]]


@dataclasses.dataclass
class Record:
  """One image-caption pair as a dataset lists it, before validation.

  `caption` may be bytes (decoded here as strict UTF-8) or str; a str that
  came from `read_manifest` carries undecodable bytes as lone surrogates,
  which are reported as invalid UTF-8.
  """
  id: str
  caption: str | bytes
  image: ImageSource
  origin: str
  group: str = ""  # a study id; empty: the image's content hash
  features: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ImageTextConfig(tfds.core.BuilderConfig):
  """Options common to the local image-caption builders.

  Attributes:
    max_image_side: images whose shorter side is longer are downscaled so
      that it is this long (aspect ratio kept); 0 keeps every image as is.
    image_format: "png" (lossless) or "jpeg" (quality 95, smaller).
    strict: raise `BadInputError` on the first bad record instead of
      skipping it.
  """
  max_image_side: int = 512
  image_format: str = "png"
  strict: bool = False


class ImageTextBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """Base of the builders that read a local copy from the manual directory.

  Subclasses define `_split_records`, and optionally `_extra_features`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ImageTextConfig(name="default")]

  # NOTE: tensorflow-datasets 4.9.10 computes the default `code_path` with the
  # `importlib_resources` backport, which it declares as a dependency only
  # for Python < 3.9, so without that package the default raises
  # ModuleNotFoundError. The subclass's own file is the same path.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    import sys  # pylint: disable=g-import-not-at-top
    return epath.Path(sys.modules[cls.__module__].__file__)

  def __init__(self, *, file_format: str | None = None,
               strict: bool | None = None, num_workers: int | None = None,
               **kwargs: Any):
    """Create the builder; see `tfds.core.GeneratorBasedBuilder`.

    Args:
      file_format: as for TFDS builders; defaults to ArrayRecord.
      strict: overrides the builder config's `strict` for this build only.
      num_workers: threads that decode images (default: the CPU count).
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder`.
    """
    super().__init__(file_format=file_format, **kwargs)
    # ArrayRecord gives `tfds.data_source` random access for Grain; TFDS
    # defaults to TFRecord.
    if file_format is None and not self.is_prepared():
      self.info.set_file_format("array_record", override=True)
    self._strict = self.builder_config.strict if strict is None else strict
    self._num_workers = num_workers or os.cpu_count() or 1
    self._final_data_dir = self.data_dir
    self._report: dict[str, dict] = {}
    self._seen_ids: dict[str, str] = {}

  # -- Subclass interface ---------------------------------------------------

  @abc.abstractmethod
  def _split_records(self, root: epath.Path
                     ) -> dict[str, Iterable[Record | Problem]]:
    """Map each split name to its records, read from the directory `root`.

    Rows that cannot be read at all are yielded as `Problem`s in their
    place, so they are counted in the report.
    """

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    """Features beyond id, image, caption, image_hash and group."""
    return {}

  def _description(self) -> str:
    return (self.__class__.__doc__ or "").strip()

  # -- TFDS interface -------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if config.image_format not in ("png", "jpeg"):
      raise BuilderConfigError(
          f"image_format={config.image_format!r} in the builder "
          "config is invalid; use 'png' or 'jpeg'.")
    features = {
        "id": tfds.features.Text(doc="The record's id in the source data."),
        "image": tfds.features.Image(
            shape=(None, None, 3), encoding_format=config.image_format),
        "caption": tfds.features.Text(),
        "image_hash": tfds.features.Text(
            doc="SHA-1 of the decoded RGB pixels and their shape."),
        "group": tfds.features.Text(
            doc="Study id where the dataset has one, else image_hash."),
    }
    features.update(self._extra_features())
    return tfds.core.DatasetInfo(
        builder=self, description=self._description(),
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dl_manager.manual_dir
    logging.info("Reading %s from %s.", self.name, root)
    report = os.path.join(self._final_data_dir, REPORT_FILE)
    generators = {}
    for split, records in self._split_records(root).items():
      examples = self._generate_examples(split, records)
      # TFDS 4.9.10 fails the whole build on a split without examples, so a
      # split whose every record was skipped is left out (and reported).
      first = next(examples, None)
      if first is None:
        logging.warning("%s %s: every record was skipped, so the split is "
                        "left out; see %s.", self.name, split, report)
        continue
      generators[split] = itertools.chain([first], examples)
    if not generators:
      skipped = {split: counts["skipped_by_kind"]
                 for split, counts in self._report.items()}
      raise BadInputError(
          f"No valid record in any split of {root} (skipped: {skipped}). "
          "Check the manual directory and the builder config's paths and "
          "column names.")
    return generators

  def _generate_examples(self, split: str,
                         records: Iterable[Record | Problem]):
    counts = collections.Counter()
    problems: list[Problem] = []
    written = 0
    with concurrent.futures.ThreadPoolExecutor(self._num_workers) as pool:
      for chunk in _chunks(records, _CHUNK):
        results = pool.map(self._prepare, chunk)
        for item, result in zip(chunk, results):
          if isinstance(result, Problem):
            self._skip(result, counts, problems)
            continue
          duplicate_of = self._seen_ids.get(item.id)
          if duplicate_of is not None:
            self._skip(Problem(DUPLICATE_ID, item.origin,
                               f"id already used at {duplicate_of}", item.id),
                       counts, problems)
            continue
          self._seen_ids[item.id] = item.origin
          written += 1
          yield item.id, result
    self._finish_split(split, written, counts, problems)

  # -- Validation and decoding ----------------------------------------------

  def _prepare(self, item: Record | Problem) -> dict | Problem:
    """Validate one record and decode its image; return the example."""
    if isinstance(item, Problem):
      return item
    caption = _caption_text(item)
    if isinstance(caption, Problem):
      return caption

    try:
      image = _load_image(item.image)
    except FileNotFoundError as error:
      return Problem(MISSING_IMAGE, item.origin,
                     f"image file {error.filename or item.image} not found",
                     item.id)
    except (image_decoding.ImageDecodeError, ValueError, OSError) as error:
      kind = getattr(error, "kind", UNDECODABLE_IMAGE)
      return Problem(kind, item.origin, str(error), item.id)

    image_hash = image_decoding.content_hash(image)
    image = image_decoding.downscale(image, self.builder_config.max_image_side)
    example = {
        "id": item.id,
        "image": image_decoding.encode_image(
            image, self.builder_config.image_format),
        "caption": caption,
        "image_hash": image_hash,
        "group": item.group or image_hash,
    }
    example.update(item.features)
    return example

  def _skip(self, problem: Problem, counts: collections.Counter,
            problems: list[Problem]) -> None:
    if self._strict:
      raise BadInputError(
          f"{problem.describe()}. Fix or remove this record, or build "
          "without strict to skip and count bad records.")
    counts[problem.kind] += 1
    problems.append(problem)
    logging.log_every_n(logging.WARNING, "Skipping %s", 100,
                        problem.describe())

  def _finish_split(self, split: str, written: int,
                    counts: collections.Counter,
                    problems: list[Problem]) -> None:
    """Log the split's summary and rewrite the report file."""
    self._report[split] = {
        "examples": written,
        "skipped": sum(counts.values()),
        "skipped_by_kind": dict(sorted(counts.items())),
        "records": [dataclasses.asdict(problem) for problem in problems],
    }
    # During the build, `self.data_dir` is TFDS's temporary folder, which
    # becomes `self._final_data_dir` when the build succeeds.
    (epath.Path(self.data_dir) / REPORT_FILE).write_text(
        json.dumps({"dataset": self.info.full_name, "splits": self._report},
                   indent=2))
    summary = ", ".join(f"{kind} {count}"
                        for kind, count in sorted(counts.items()))
    logging.info(
        "%s %s: %d examples written, %d records skipped%s; report: %s",
        self.name, split, written, sum(counts.values()),
        f" ({summary})" if summary else "",
        os.path.join(self._final_data_dir, REPORT_FILE))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _caption_text(record: Record) -> str | Problem:
  caption = record.caption
  if isinstance(caption, bytes):
    try:
      caption = caption.decode("utf-8")
    except UnicodeDecodeError as error:
      return Problem(INVALID_UTF8, record.origin,
                     f"caption is not valid UTF-8 ({error.reason} at byte "
                     f"{error.start})", record.id)
  elif _has_surrogates(caption):
    return Problem(INVALID_UTF8, record.origin,
                   "caption is not valid UTF-8", record.id)
  if not caption.strip():
    return Problem(EMPTY_CAPTION, record.origin,
                   "caption is empty or whitespace", record.id)
  return caption.strip()


def _has_surrogates(text: str) -> bool:
  return any("\udc80" <= character <= "\udcff" for character in text)


def _load_image(image: ImageSource) -> np.ndarray:
  if callable(image):
    return image()
  return image_decoding.read_image(image)


# -- Manifests --------------------------------------------------------------


def read_manifest(path: str | os.PathLike, columns: Sequence[str],
                  delimiter: str | None = None
                  ) -> Iterator[tuple[str, dict] | Problem]:
  """Yield (origin, row) for each row of a JSONL, JSON or CSV manifest.

  The format follows the suffix: `.jsonl` (one object per line), `.json` (a
  list of objects), `.csv` or `.tsv`, each optionally gzipped (`.gz`).
  `origin` is "path:line". A row that cannot be parsed, or lacks one of
  `columns`, is yielded as a `Problem` of kind malformed_row. Bytes that are
  not valid UTF-8 are kept as lone surrogates, which `Record` validation
  reports as invalid UTF-8.

  Raises:
    ManifestError: the file is missing or empty, or its header or first
      object lacks one of `columns`.
  """
  path = epath.Path(path)
  if not path.exists():
    raise ManifestError(f"Manifest {path} not found. Check the dataset "
                        "folder (the manual_dir) and its layout.")
  data = path.read_bytes()
  if path.suffix == ".gz":
    data = gzip.decompress(data)
  text = data.decode("utf-8", errors="surrogateescape")
  if not text.strip():
    raise ManifestError(f"Manifest {path} is empty.")
  suffix = path.suffixes[-2] if path.suffix == ".gz" else path.suffix
  if suffix == ".jsonl":
    yield from _jsonl_rows(path, text, columns)
  elif suffix == ".json":
    yield from _json_rows(path, text, columns)
  else:
    if delimiter is None:
      delimiter = "\t" if suffix in (".tsv", ".txt") else ","
    yield from _csv_rows(path, text, columns, delimiter)


def _missing_columns_error(path, columns, found) -> ManifestError:
  missing = [column for column in columns if column not in found]
  return ManifestError(
      f"Manifest {path} lacks the column(s) {missing}; its columns are "
      f"{sorted(found)}. Set the builder config's column names to match.")


def _check_row(origin: str, row, columns) -> tuple[str, dict] | Problem:
  if not isinstance(row, dict):
    return Problem(MALFORMED_ROW, origin,
                   f"expected an object, found {type(row).__name__}")
  missing = [column for column in columns
             if column not in row or row[column] is None]
  if missing:
    return Problem(MALFORMED_ROW, origin, f"missing field(s) {missing}")
  return origin, row


def _jsonl_rows(path, text: str, columns):
  checked_header = False
  # Only "\n" ends a line: JSON strings may hold U+2028 and U+0085, which
  # str.splitlines() would also split at.
  for number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    origin = f"{path}:{number}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as error:
      yield Problem(MALFORMED_ROW, origin, f"invalid JSON: {error.msg}")
      continue
    if not checked_header and isinstance(row, dict):
      # The first object serves as the header, so a wrong column name fails
      # the whole manifest instead of skipping every row.
      if any(column not in row for column in columns):
        raise _missing_columns_error(path, columns, row.keys())
      checked_header = True
    yield _check_row(origin, row, columns)


def _json_rows(path, text: str, columns):
  try:
    rows = json.loads(text)
  except json.JSONDecodeError as error:
    raise ManifestError(f"Manifest {path} is not valid JSON: {error}. "
                        "Expected a list of objects.") from None
  if not isinstance(rows, list):
    raise ManifestError(f"Manifest {path} contains a {type(rows).__name__}; "
                        "expected a list of objects.")
  if not rows:
    raise ManifestError(f"Manifest {path} is an empty list.")
  if isinstance(rows[0], dict) and any(c not in rows[0] for c in columns):
    raise _missing_columns_error(path, columns, rows[0].keys())
  for number, row in enumerate(rows):
    yield _check_row(f"{path}:item {number}", row, columns)


def _csv_rows(path, text: str, columns, delimiter: str):
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  try:
    header = next(reader)
  except StopIteration:
    raise ManifestError(f"Manifest {path} is empty.") from None
  header = [name.strip().lstrip("\ufeff") for name in header]
  if any(column not in header for column in columns):
    raise _missing_columns_error(path, columns, header)
  while True:
    try:
      values = next(reader)
    except StopIteration:
      return
    except csv.Error as error:
      yield Problem(MALFORMED_ROW, f"{path}:{reader.line_num}",
                    f"invalid CSV: {error}")
      continue
    origin = f"{path}:{reader.line_num}"
    if not values or not any(value.strip() for value in values):
      continue
    if len(values) != len(header):
      yield Problem(MALFORMED_ROW, origin,
                    f"{len(values)} fields where the header has "
                    f"{len(header)}")
      continue
    yield origin, dict(zip(header, values))


def read_text(path: str | os.PathLike) -> bytes:
  """Read a caption or report file as bytes, for `Record.caption`."""
  return epath.Path(path).read_bytes()


def resolve_image(root: epath.Path, folder: str, name: str) -> epath.Path:
  """Return the path of image `name`: absolute, or under `root/folder`."""
  path = epath.Path(name)
  if path.is_absolute():
    return path
  return root / folder / name if folder else root / name

"""Read one DICOM file as a uint8 RGB image plus the tags that describe it.

`read_dicom` decodes pixels with pydicom, which uses the installed pylibjpeg
plugins (or Pillow or GDCM) for compressed transfer syntaxes, and reduces
every image to the (height, width, 3) uint8 layout of
`image_decoding.decode_image`:

* Multi-frame files (NumberOfFrames > 1, such as CT or MR volumes stored as
  one file, cine loops and ultrasound clips) yield ONE frame. The default is
  the middle frame, index `num_frames // 2`, because the first frame of a
  volume is usually an edge slice or a blank lead-in. "first" or an integer
  index selects another, and only that frame is decoded.
* Grayscale (MONOCHROME1/2) goes through pydicom's Modality LUT (Rescale
  Slope/Intercept or Modality LUT Sequence) and then its VOI LUT (VOI LUT
  Sequence, else Window Center/Width, always the first of several). With a
  VOI LUT the window's output range maps to 0..255, so the image matches the
  file's default display settings. Without one, the minimum and maximum of the
  Modality LUT output map to 0..255. MONOCHROME1 is inverted after that, so
  high values are bright as in MONOCHROME2. Enhanced multi-frame files keep
  these values in functional groups, which are read for the chosen frame.
* Colour (RGB, YBR_FULL, YBR_FULL_422, and YBR_RCT/YBR_ICT from JPEG 2000)
  comes back as RGB from pydicom's `pixel_array`. PALETTE COLOR goes through
  `pydicom.pixels.apply_color_lut`. Samples wider than 8 bits are scaled from
  their nominal range (Bits Stored, or the LUT entry size for palettes).

The Presentation LUT Shape is not applied separately, because the DICOM
Digital X-Ray image module requires INVERSE for MONOCHROME1 and IDENTITY for
MONOCHROME2, so the Photometric Interpretation already carries the polarity.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import pydicom
from pydicom import pixels
from pydicom import uid as uid_lib
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

UNDECODABLE_IMAGE = "undecodable_image"
MISSING_DECODER = "missing_decoder"

# The tags `read_dicom` returns, as str ("" when absent).
TAG_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "BodyPartExamined",
    "Modality",
    "PhotometricInterpretation",
)

# The tags joined into a report text by `description_text`, in order.
DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription",
                        "ImageComments")

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Three-sample photometric interpretations that pydicom's `pixel_array`
# returns as RGB: it converts YBR_FULL and YBR_FULL_422, and JPEG 2000
# decoders undo the YBR_RCT and YBR_ICT component transforms themselves.
_RGB_OUTPUT_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT",
                               "YBR_ICT")

# pip packages that give pydicom a decoder for each compressed transfer
# syntax (python-gdcm is an alternative for all of them).
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES = {
    uid_lib.JPEGBaseline8Bit: _LIBJPEG,
    uid_lib.JPEGExtended12Bit: _LIBJPEG,
    uid_lib.JPEGLossless: _LIBJPEG,
    uid_lib.JPEGLosslessSV1: _LIBJPEG,
    uid_lib.JPEGLSLossless: _LIBJPEG,
    uid_lib.JPEGLSNearLossless: _LIBJPEG,
    uid_lib.JPEG2000Lossless: _OPENJPEG,
    uid_lib.JPEG2000: _OPENJPEG,
    uid_lib.HTJ2KLossless: _OPENJPEG,
    uid_lib.HTJ2KLosslessRPCL: _OPENJPEG,
    uid_lib.HTJ2K: _OPENJPEG,
}

# Enhanced multi-frame functional groups that hold the Modality LUT and VOI
# LUT attributes, and the attributes copied from them.
_FUNCTIONAL_GROUP_ATTRIBUTES = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept",
                                         "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}

# Top-level attributes pydicom's LUT functions read.
_LUT_ATTRIBUTES = ("PhotometricInterpretation", "BitsAllocated", "BitsStored",
                   "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
                   "RescaleType", "ModalityLUTSequence", "WindowCenter",
                   "WindowWidth", "VOILUTFunction", "VOILUTSequence")


class DicomError(ValueError):
  """A DICOM file cannot be read or decoded.

  Attributes:
    kind: "missing_decoder" when the pixel data uses a compressed transfer
      syntax that no installed decoder supports, else "undecodable_image"
      (not DICOM, no pixel data, or corrupt).
  """

  def __init__(self, message: str, kind: str):
    if kind not in (UNDECODABLE_IMAGE, MISSING_DECODER):
      raise ValueError(f"Unknown DicomError kind {kind!r}.")
    super().__init__(message)
    self.kind = kind


def read_dicom(
    path: str | os.PathLike,
    frame: str | int = "middle",
) -> tuple[np.ndarray, dict[str, Any]]:
  """Return (uint8 RGB image of shape (h, w, 3), tags) for one DICOM file.

  Args:
    path: a local path or any path `etils.epath` can read.
    frame: which frame of a multi-frame file to decode: "middle" (index
      num_frames // 2), "first", or an index (negative counts from the end).

  Returns:
    The image as a C-contiguous np.uint8 array, and a dict with a str value
    for each of TAG_KEYWORDS ("" when absent) plus "frame" (the int index
    decoded) and "num_frames" (int).

  Raises:
    FileNotFoundError: if `path` does not exist.
    DicomError: if the file is not DICOM, has no image, is corrupt, or needs
      a decoder that is not installed (kind "missing_decoder").
    ValueError: if `frame` is not "middle", "first" or an index in range.
  """
  source = str(path)
  dataset = _read_dataset(epath.Path(path), source)
  _check_has_image(dataset, source)
  num_frames = _number_of_frames(dataset, source)
  frame_index = _frame_index(frame, num_frames, source)
  _check_decoder(dataset, source)

  try:
    dataset.pixel_array_options(index=frame_index)
    stored = dataset.pixel_array
  except (RuntimeError, ValueError, NotImplementedError, AttributeError,
          KeyError, TypeError) as error:
    raise _pixel_data_error(dataset, source, error) from error

  image = _to_rgb(stored, dataset, frame_index, source)
  tags = _read_tags(dataset)
  tags["frame"] = frame_index
  tags["num_frames"] = num_frames
  return np.ascontiguousarray(image), tags


def description_text(tags: dict[str, Any]) -> str:
  """Join the study, series and image descriptions into one report text.

  Used as the report when a DICOM file has no sidecar .txt. Values are
  stripped, empty ones are skipped, and the rest are joined with ". ".
  """
  parts = [str(tags.get(keyword, "")).strip()
           for keyword in DESCRIPTION_KEYWORDS]
  return ". ".join(part for part in parts if part)


def _read_dataset(path: epath.Path, source: str) -> Dataset:
  with path.open("rb") as file:
    try:
      return pydicom.dcmread(file)
    except InvalidDicomError as error:
      raise DicomError(
          f"{source}: not a DICOM file ({error}). Check that the file is a "
          "DICOM Part 10 file with a 'DICM' header; files without one "
          "need conversion with a DICOM toolkit first.",
          kind=UNDECODABLE_IMAGE) from error
    except (EOFError, ValueError, OverflowError) as error:
      raise DicomError(
          f"{source}: the DICOM file is corrupt or truncated ({error}). "
          "Copy it again from its source, or drop it.",
          kind=UNDECODABLE_IMAGE) from error


def _check_has_image(dataset: Dataset, source: str) -> None:
  """Raise unless `dataset` has pixel data and an Image Pixel module."""
  has_pixel_data = any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS)
  if has_pixel_data and "Rows" in dataset and "Columns" in dataset:
    return
  sop_class = dataset.get("SOPClassUID")
  file_kind = f"a {sop_class.name}" if sop_class else "a DICOM file"
  raise DicomError(
      f"{source}: {file_kind} without an image (no pixel data or no Rows and "
      "Columns). Such files, for example structured reports or DICOMDIRs, "
      "have nothing to decode; leave them out of the image list.",
      kind=UNDECODABLE_IMAGE)


def _number_of_frames(dataset: Dataset, source: str) -> int:
  value = dataset.get("NumberOfFrames")
  if value in (None, ""):
    return 1
  try:
    num_frames = int(value)
  except (TypeError, ValueError):
    num_frames = 0
  if num_frames < 1:
    raise DicomError(
        f"{source}: Number of Frames (0028,0008) is {value!r}, not a "
        "positive integer, so the pixel data cannot be split into frames. "
        "Fix the tag with a DICOM editor, or drop the file.",
        kind=UNDECODABLE_IMAGE)
  return num_frames


def _frame_index(frame: str | int, num_frames: int, source: str) -> int:
  if frame == "middle":
    return num_frames // 2
  if frame == "first":
    return 0
  if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
    if -num_frames <= frame < num_frames:
      return int(frame) % num_frames
    raise ValueError(
        f"frame={frame} is out of range for {source}, which has "
        f"{num_frames} frame(s); pass an index from {-num_frames} to "
        f"{num_frames - 1}, 'first' or 'middle'.")
  raise ValueError(
      f"frame={frame!r} is not supported; pass 'middle', 'first' or an "
      "integer frame index.")


def _check_decoder(dataset: Dataset, source: str) -> None:
  """Raise "missing_decoder" unless pydicom can decode the pixel data."""
  transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
  if not transfer_syntax:
    raise DicomError(
        f"{source}: the file meta information has no Transfer Syntax UID "
        "(0002,0010), so the pixel data encoding is unknown. Rewrite the "
        "file with a DICOM toolkit that records it.",
        kind=UNDECODABLE_IMAGE)
  description = f"transfer syntax {transfer_syntax} ({transfer_syntax.name})"
  try:
    decoder = pixels.get_decoder(transfer_syntax)
  except NotImplementedError as error:
    raise DicomError(
        f"{source}: pydicom {pydicom.__version__} has no decoder for "
        f"{description}. Convert the file to an uncompressed or JPEG "
        "transfer syntax with a tool that decodes it.",
        kind=MISSING_DECODER) from error
  if decoder.is_available:
    return
  packages = _DECODER_PACKAGES.get(transfer_syntax, "python-gdcm")
  options = "; ".join(decoder.missing_dependencies)
  raise DicomError(
      f"{source}: no installed decoder for {description}. Install one, for "
      f"example `pip install {packages}` or `pip install python-gdcm` "
      f"(pydicom's plugins for it: {options}).",
      kind=MISSING_DECODER)


def _pixel_data_error(dataset: Dataset, source: str,
                      error: Exception) -> DicomError:
  transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
  message = str(error)
  if "missing dependencies" in message:
    # Raised when every plugin pydicom tried lacks a package.
    packages = _DECODER_PACKAGES.get(transfer_syntax, "python-gdcm")
    return DicomError(
        f"{source}: no installed decoder for transfer syntax "
        f"{transfer_syntax} ({transfer_syntax.name}): {message}. Install "
        f"one, for example `pip install {packages}`.",
        kind=MISSING_DECODER)
  return DicomError(
      f"{source}: pydicom could not decode the pixel data (transfer syntax "
      f"{transfer_syntax}, {getattr(transfer_syntax, 'name', 'unknown')}): "
      f"{message}. The file is probably corrupt; if other viewers show it, "
      "try `pip install python-gdcm` for another decoder.",
      kind=UNDECODABLE_IMAGE)


def _to_rgb(stored: np.ndarray, dataset: Dataset, frame_index: int,
            source: str) -> np.ndarray:
  """Convert one decoded frame of stored values to uint8 RGB."""
  interpretation = str(dataset.get("PhotometricInterpretation", "")).strip()
  samples_per_pixel = int(dataset.get("SamplesPerPixel", 1))

  if samples_per_pixel == 1 and interpretation in ("MONOCHROME1",
                                                   "MONOCHROME2", ""):
    gray = _grayscale_to_uint8(stored, dataset, frame_index, source)
    if interpretation == "MONOCHROME1":
      gray = 255 - gray
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)

  if samples_per_pixel == 1 and interpretation == "PALETTE COLOR":
    try:
      rgb = pixels.apply_color_lut(stored, dataset)[..., :3]
    except (ValueError, AttributeError, IndexError) as error:
      raise DicomError(
          f"{source}: the PALETTE COLOR lookup tables cannot be applied "
          f"({error}). Check the Palette Color Lookup Table tags (0028,1101) "
          "to (0028,1203).", kind=UNDECODABLE_IMAGE) from error
    return _scale_to_uint8(rgb, 0, np.iinfo(rgb.dtype).max)

  if samples_per_pixel == 3 and interpretation in _RGB_OUTPUT_INTERPRETATIONS:
    low, high = _nominal_range(dataset)
    return _scale_to_uint8(stored, low, high)

  raise DicomError(
      f"{source}: Photometric Interpretation {interpretation!r} with "
      f"{samples_per_pixel} samples per pixel is not supported; convert the "
      "file to MONOCHROME2, RGB or PALETTE COLOR.",
      kind=UNDECODABLE_IMAGE)


def _grayscale_to_uint8(stored: np.ndarray, dataset: Dataset,
                        frame_index: int, source: str) -> np.ndarray:
  """Apply the Modality and VOI LUTs and map their output to 0..255."""
  lut_dataset = _frame_lut_dataset(dataset, frame_index)
  values = pixels.apply_modality_lut(stored, lut_dataset)

  voi_kind = _voi_kind(lut_dataset)
  if voi_kind is not None:
    try:
      windowed, low, high = _apply_voi(values, lut_dataset, voi_kind)
    except (ValueError, NotImplementedError) as error:
      logging.warning(
          "%s: ignoring the invalid %s (%s); mapping the image's minimum and "
          "maximum to black and white instead.", source,
          "VOI LUT Sequence" if voi_kind == "lut" else "Window Center/Width",
          error)
    else:
      return _scale_to_uint8(windowed, low, high)

  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return np.zeros(values.shape, dtype=np.uint8)
  return _scale_to_uint8(values, finite.min(), finite.max())


def _voi_kind(dataset: Dataset) -> str | None:
  """Return which VOI transform `pydicom.pixels.apply_voi_lut` would apply.

  Mirrors its precedence with prefer_lut=True: a VOI LUT Sequence whose first
  item has LUT Descriptor and LUT Data ("lut"), else Window Center and Width
  ("window"), else none.
  """
  sequence = dataset.get("VOILUTSequence")
  if sequence:
    item = sequence[0]
    if (item.get("LUTDescriptor") is not None and
        item.get("LUTData") is not None):
      return "lut"
  if (dataset.get("WindowCenter") is not None and
      dataset.get("WindowWidth") is not None):
    return "window"
  return None


def _apply_voi(values: np.ndarray, dataset: Dataset,
               voi_kind: str) -> tuple[np.ndarray, float, float]:
  """Apply the first VOI LUT or window; return it with its output range.

  pydicom's window output spans the Modality LUT output range implied by
  Bits Stored and Pixel Representation (pydicom 3.0 `apply_windowing`).
  Rather than repeat that rule, the range is read back by windowing the
  lowest and highest float64 values. A VOI LUT's range is the minimum and
  maximum of its entries, because a file may declare 16-bit entries that
  only reach 4095.
  """
  if voi_kind == "lut":
    windowed = pixels.apply_voi(values, dataset, index=0)
    descriptor = dataset.VOILUTSequence[0].LUTDescriptor
    num_entries = int(descriptor[0]) or 2**16
    first_mapped = int(descriptor[1])
    entries = pixels.apply_voi(
        np.arange(first_mapped, first_mapped + num_entries, dtype=np.int64),
        dataset, index=0)
    return windowed, float(entries.min()), float(entries.max())

  windowed = pixels.apply_windowing(values, dataset, index=0)
  extremes = np.array([np.finfo(np.float64).min, np.finfo(np.float64).max])
  with np.errstate(over="ignore"):
    low, high = pixels.apply_windowing(extremes, dataset, index=0)
  return windowed, float(low), float(high)


def _frame_lut_dataset(dataset: Dataset, frame_index: int) -> Dataset:
  """Return `dataset`, or a copy of its LUT attributes for one frame.

  Enhanced multi-frame files (Enhanced CT, MR, XA and others) keep Rescale
  and Window values in the Shared and Per-Frame Functional Groups instead of
  the top level, where pydicom's LUT functions look. For those, the returned
  dataset contains the top-level LUT attributes overridden by the shared group
  and then by the chosen frame's group.
  """
  shared = dataset.get("SharedFunctionalGroupsSequence")
  per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
  if not shared and not per_frame:
    return dataset

  lut_dataset = Dataset()
  lut_dataset.file_meta = dataset.file_meta
  for keyword in _LUT_ATTRIBUTES:
    if keyword in dataset:
      setattr(lut_dataset, keyword, dataset[keyword].value)
  groups = []
  if shared:
    groups.append(shared[0])
  if per_frame and frame_index < len(per_frame):
    groups.append(per_frame[frame_index])
  for group in groups:
    for sequence_keyword, keywords in _FUNCTIONAL_GROUP_ATTRIBUTES.items():
      sequence = group.get(sequence_keyword)
      if not sequence:
        continue
      for keyword in keywords:
        if keyword in sequence[0]:
          setattr(lut_dataset, keyword, sequence[0][keyword].value)
  return lut_dataset


def _nominal_range(dataset: Dataset) -> tuple[int, int]:
  """Return the range of stored values that Bits Stored allows."""
  bits_stored = int(dataset.get("BitsStored") or dataset.BitsAllocated)
  if int(dataset.get("PixelRepresentation", 0)) == 1:
    return -(2**(bits_stored - 1)), 2**(bits_stored - 1) - 1
  return 0, 2**bits_stored - 1


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
  """Map `low`..`high` linearly to 0..255, clipping values outside it.

  `low` may exceed `high` (a window after a negative Rescale Slope), which
  maps `low` to 0 as well. An empty range gives a black image.
  """
  if low == high:
    return np.zeros(values.shape, dtype=np.uint8)
  scaled = (values.astype(np.float64) - low) / (high - low) * 255.0
  scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
  return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _read_tags(dataset: Dataset) -> dict[str, Any]:
  tags = {}
  for keyword in TAG_KEYWORDS:
    value = dataset.get(keyword)
    if value is None:
      tags[keyword] = ""
    elif isinstance(value, MultiValue):
      tags[keyword] = "\\".join(str(item) for item in value).strip()
    else:
      tags[keyword] = str(value).strip()
  return tags

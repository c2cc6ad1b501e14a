"""Tests for dicom.read_dicom on pydicom's bundled files and written files."""

from __future__ import annotations

import pathlib

import numpy as np
import pydicom
import pydicom.data
from pydicom import pixels
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
import pytest

from shared_encoder_jax.data import dicom

# The files pydicom ships inside its wheel. pydicom.data.get_testdata_files()
# would also download its larger external set, so list the folder instead.
BUNDLED_DIR = pathlib.Path(pydicom.data.__file__).parent / "test_files"

# Bundled files whose pixel data is broken on purpose, with the reason.
KNOWN_CORRUPT = {
    "JPEG-lossy.dcm": "JPEG scan header with invalid SOS parameters",
    "JPEG2000-embedded-sequence-delimiter.dcm":
        "JPEG 2000 bytes overwritten with a sequence delimiter",
    "MR_truncated.dcm": "pixel data shorter than Rows x Columns",
    "badVR.dcm": "Number of Frames is '1A'",
}


def _bundled(name: str) -> str:
  path = BUNDLED_DIR / name
  assert path.is_file(), f"pydicom {pydicom.__version__} lacks {name}"
  return str(path)


def _dicom_window(values: np.ndarray, center: float,
                  width: float) -> np.ndarray:
  """Return the DICOM LINEAR window (PS3.3 C.11.2.1.2.1) mapped to 0..255."""
  fraction = (values - (center - 0.5)) / (width - 1) + 0.5
  return np.round(np.clip(fraction, 0.0, 1.0) * 255).astype(np.uint8)


def _write_dicom(path: pathlib.Path, stored: np.ndarray,
                 photometric: str = "MONOCHROME2",
                 num_frames: int | None = None, **attributes) -> str:
  """Write `stored` as an Explicit VR Little Endian secondary capture.

  `stored` is (rows, columns), (rows, columns, 3) for RGB, or with a leading
  frame axis when `num_frames` is set. Extra keyword arguments become tags.
  """
  file_meta = FileMetaDataset()
  file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()

  dataset = Dataset()
  dataset.file_meta = file_meta
  dataset.SOPClassUID = file_meta.MediaStorageSOPClassUID
  dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
  dataset.StudyInstanceUID = uid.generate_uid()
  dataset.SeriesInstanceUID = uid.generate_uid()
  dataset.Modality = "OT"
  frame_shape = stored.shape[1:] if num_frames else stored.shape
  dataset.Rows, dataset.Columns = frame_shape[:2]
  dataset.SamplesPerPixel = 3 if photometric == "RGB" else 1
  if photometric == "RGB":
    dataset.PlanarConfiguration = 0
  dataset.PhotometricInterpretation = photometric
  bits = stored.dtype.itemsize * 8
  dataset.BitsAllocated = bits
  dataset.BitsStored = bits
  dataset.HighBit = bits - 1
  dataset.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
  if num_frames:
    dataset.NumberOfFrames = num_frames
  for keyword, value in attributes.items():
    setattr(dataset, keyword, value)
  dataset.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
  dataset.save_as(path, enforce_file_format=True)
  return str(path)


def test_bundled_files_decode_or_raise_dicom_error(record_property):
  decoded = []
  missing_decoder = []
  not_dicom = []
  without_image = []
  failures = []
  files = sorted(path for path in BUNDLED_DIR.rglob("*") if path.is_file())
  assert len(files) > 50

  for path in files:
    name = str(path.relative_to(BUNDLED_DIR))
    try:
      dataset = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
      not_dicom.append(name)
      with pytest.raises(dicom.DicomError, match="not a DICOM file"):
        dicom.read_dicom(path)
      continue
    if "PixelData" not in dataset or "Rows" not in dataset:
      without_image.append(name)
      with pytest.raises(dicom.DicomError, match="without an image"):
        dicom.read_dicom(path)
      continue

    try:
      image, tags = dicom.read_dicom(path)
    except dicom.DicomError as error:
      if error.kind == "missing_decoder":
        missing_decoder.append(name)
      elif name not in KNOWN_CORRUPT:
        failures.append(f"{name}: {error}")
      continue
    if name in KNOWN_CORRUPT:
      failures.append(f"{name} decoded but is listed as corrupt")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if image.shape != (rows, columns, 3) or image.dtype != np.uint8:
      failures.append(f"{name}: got {image.dtype} {image.shape}")
    if not 0 <= tags["frame"] < tags["num_frames"]:
      failures.append(f"{name}: frame {tags['frame']} of "
                      f"{tags['num_frames']}")
    decoded.append(name)

  summary = (f"pydicom {pydicom.__version__} bundled files: "
             f"{len(decoded)} decoded, {len(missing_decoder)} skipped for a "
             f"missing decoder, {len(KNOWN_CORRUPT)} known corrupt, "
             f"{len(without_image)} DICOM without an image, "
             f"{len(not_dicom)} not DICOM Part 10")
  print(summary)
  record_property("bundled_dicom_summary", summary)
  assert not failures, "\n".join(failures)
  assert len(decoded) >= 40, summary


def test_ct_small_uses_rescaled_min_max():
  path = _bundled("CT_small.dcm")
  dataset = pydicom.dcmread(path)
  assert "WindowCenter" not in dataset
  hounsfield = (dataset.pixel_array.astype(np.float64) *
                float(dataset.RescaleSlope) + float(dataset.RescaleIntercept))
  low, high = hounsfield.min(), hounsfield.max()
  expected = np.round((hounsfield - low) / (high - low) * 255)

  image, tags = dicom.read_dicom(path)

  assert np.abs(image[:, :, 0].astype(int) - expected).max() <= 1
  np.testing.assert_array_equal(image[:, :, 1], image[:, :, 0])
  np.testing.assert_array_equal(image[:, :, 2], image[:, :, 0])
  assert tags["Modality"] == "CT"
  assert tags["PhotometricInterpretation"] == "MONOCHROME2"


def test_mr_small_applies_file_window():
  path = _bundled("MR_small.dcm")
  dataset = pydicom.dcmread(path)
  center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
  expected = _dicom_window(dataset.pixel_array.astype(np.float64), center,
                           width)

  image, _ = dicom.read_dicom(path)

  assert np.abs(image[:, :, 0].astype(int) - expected).max() <= 1


def test_ybr_and_jpeg_colour_match_lossless_rgb():
  reference, _ = dicom.read_dicom(_bundled("SC_rgb_rle.dcm"))
  for name in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm",
               "SC_rgb_dcmtk_+eb+cy+s2.dcm"):
    image, tags = dicom.read_dicom(_bundled(name))
    difference = np.abs(image.astype(int) - reference)
    assert tags["PhotometricInterpretation"].startswith("YBR"), name
    assert difference.mean() < 2, name


def test_sixteen_bit_rgb_scales_to_eight_bit():
  eight_bit, _ = dicom.read_dicom(_bundled("SC_rgb_rle.dcm"))
  sixteen_bit, _ = dicom.read_dicom(_bundled("SC_rgb_rle_16bit.dcm"))

  assert np.abs(sixteen_bit.astype(int) - eight_bit).max() <= 1


def test_bundled_multiframe_defaults_to_middle_frame():
  path = _bundled("rtdose.dcm")
  dataset = pydicom.dcmread(path)
  stored = dataset.pixel_array[7].astype(np.float64)
  expected = np.round((stored - stored.min()) /
                      (stored.max() - stored.min()) * 255)

  image, tags = dicom.read_dicom(path)

  assert tags["num_frames"] == 15
  assert tags["frame"] == 7
  assert np.abs(image[:, :, 0].astype(int) - expected).max() <= 1


def test_monochrome1_ramp_is_inverted(tmp_path):
  ramp = np.linspace(100, 4000, 64).astype(np.uint16).reshape(8, 8)
  path = _write_dicom(tmp_path / "mono1.dcm", ramp, "MONOCHROME1")
  expected = 255 - np.round((ramp - 100.0) / 3900 * 255).astype(np.uint8)

  image, tags = dicom.read_dicom(path)

  assert image[0, 0, 0] == 255
  assert image[-1, -1, 0] == 0
  np.testing.assert_array_equal(image[:, :, 0], expected)
  assert tags["PhotometricInterpretation"] == "MONOCHROME1"


def test_rescale_and_window_follow_dicom_formula(tmp_path):
  stored = np.linspace(0, 1000, 100).astype(np.uint16).reshape(10, 10)
  stored[0, 0] = 532  # Rescales to 40 HU, the window centre.
  path = _write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2,
                      RescaleIntercept=-1024, WindowCenter=40,
                      WindowWidth=400)
  hounsfield = stored.astype(np.float64) * 2 - 1024

  image, _ = dicom.read_dicom(path)

  gray = image[:, :, 0]
  assert (gray[hounsfield <= -160] == 0).all()
  assert (gray[hounsfield > 239] == 255).all()
  assert abs(int(gray[0, 0]) - 128) <= 1
  np.testing.assert_array_equal(gray, _dicom_window(hounsfield, 40, 400))


def test_first_of_several_windows_is_used(tmp_path):
  stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
  path = _write_dicom(tmp_path / "two_windows.dcm", stored,
                      WindowCenter=[50, 200], WindowWidth=[100, 50])

  image, _ = dicom.read_dicom(path)

  np.testing.assert_array_equal(image[:, :, 0],
                                _dicom_window(stored.astype(float), 50, 100))


def test_voi_lut_sequence_maps_entry_range(tmp_path):
  stored = np.arange(16, dtype=np.uint16).reshape(4, 4)
  lut_item = Dataset()
  lut_item.LUTDescriptor = [16, 0, 16]
  # The descriptor declares 16-bit entries, but they only reach 4095.
  entries = np.linspace(0, 4095, 16).astype(np.uint16)
  lut_item.LUTData = entries.astype("<u2").tobytes()
  path = _write_dicom(tmp_path / "voi_lut.dcm", stored,
                      VOILUTSequence=[lut_item])

  image, _ = dicom.read_dicom(path)

  expected = np.round(entries / 4095 * 255).astype(np.uint8).reshape(4, 4)
  np.testing.assert_array_equal(image[:, :, 0], expected)


def test_multiframe_picks_middle_first_or_index(tmp_path):
  frames = np.stack([np.full((4, 6), index * 50, np.uint16)
                     for index in range(5)])
  # Window 128/256 maps stored values 0..255 to themselves.
  path = _write_dicom(tmp_path / "frames.dcm", frames, num_frames=5,
                      WindowCenter=128, WindowWidth=256)

  middle, tags = dicom.read_dicom(path)
  first, first_tags = dicom.read_dicom(path, frame="first")
  last, _ = dicom.read_dicom(path, frame=-1)
  fourth, _ = dicom.read_dicom(path, frame=3)

  assert tags["num_frames"] == 5
  assert tags["frame"] == 2
  assert (middle == 100).all()
  assert first_tags["frame"] == 0
  assert (first == 0).all()
  assert (last == 200).all()
  assert (fourth == 150).all()


@pytest.mark.parametrize("frame", [5, -6, "last", 1.5, True])
def test_invalid_frame_raises_value_error(tmp_path, frame):
  frames = np.zeros((5, 2, 2), np.uint8)
  path = _write_dicom(tmp_path / "frames.dcm", frames, num_frames=5)

  with pytest.raises(ValueError, match="frame="):
    dicom.read_dicom(path, frame=frame)


def test_enhanced_multiframe_uses_frame_functional_groups(tmp_path):
  frames = np.stack([np.arange(256, dtype=np.uint16).reshape(16, 16)] * 3)
  per_frame = []
  for center, width in ((128, 256), (100, 120), (300, 50)):
    window = Dataset()
    window.WindowCenter = center
    window.WindowWidth = width
    group = Dataset()
    group.FrameVOILUTSequence = [window]
    per_frame.append(group)
  rescale = Dataset()
  rescale.RescaleSlope = 2
  rescale.RescaleIntercept = 0
  rescale.RescaleType = "US"
  shared = Dataset()
  shared.PixelValueTransformationSequence = [rescale]
  path = _write_dicom(tmp_path / "enhanced.dcm", frames, num_frames=3,
                      SharedFunctionalGroupsSequence=[shared],
                      PerFrameFunctionalGroupsSequence=per_frame)

  image, tags = dicom.read_dicom(path, frame=1)

  assert tags["frame"] == 1
  expected = _dicom_window(frames[1].astype(np.float64) * 2, 100, 120)
  np.testing.assert_array_equal(image[:, :, 0], expected)


def test_rgb_eight_bit_is_unchanged(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
  path = _write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")

  image, tags = dicom.read_dicom(path)

  np.testing.assert_array_equal(image, rgb)
  assert image.flags.c_contiguous
  assert tags["PhotometricInterpretation"] == "RGB"


def test_palette_colour_scales_sixteen_bit_entries(tmp_path):
  indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
  red = np.array([0, 65535, 32768, 2570], dtype="<u2")
  green = np.array([65535, 0, 257, 0], dtype="<u2")
  blue = np.array([0, 0, 65535, 12850], dtype="<u2")
  path = _write_dicom(
      tmp_path / "palette.dcm", indices, "PALETTE COLOR",
      RedPaletteColorLookupTableDescriptor=[4, 0, 16],
      GreenPaletteColorLookupTableDescriptor=[4, 0, 16],
      BluePaletteColorLookupTableDescriptor=[4, 0, 16],
      RedPaletteColorLookupTableData=red.tobytes(),
      GreenPaletteColorLookupTableData=green.tobytes(),
      BluePaletteColorLookupTableData=blue.tobytes())

  image, _ = dicom.read_dicom(path)

  lut = np.stack([red, green, blue], axis=1).astype(np.float64)
  expected = np.round(lut / 65535 * 255).astype(np.uint8)[indices]
  np.testing.assert_array_equal(image, expected)


def test_tags_and_description_text(tmp_path):
  path = _write_dicom(tmp_path / "described.dcm",
                      np.zeros((2, 2), np.uint8),
                      StudyDescription="Chest PA ",
                      SeriesDescription=" Frontal view",
                      BodyPartExamined="CHEST", Modality="DX")

  _, tags = dicom.read_dicom(path)

  assert tags["StudyDescription"] == "Chest PA"
  assert tags["SeriesDescription"] == "Frontal view"
  assert tags["ImageComments"] == ""
  assert tags["BodyPartExamined"] == "CHEST"
  assert tags["Modality"] == "DX"
  assert tags["SOPInstanceUID"].startswith("1.2.826.0.1.3680043")
  assert set(dicom.TAG_KEYWORDS) <= set(tags)
  assert dicom.description_text(tags) == "Chest PA. Frontal view"


def test_description_text_keeps_order_and_skips_blanks():
  tags = {"StudyDescription": "", "SeriesDescription": "  ",
          "ImageComments": "Left lung nodule."}
  assert dicom.description_text(tags) == "Left lung nodule."

  tags = {"StudyDescription": "CT abdomen", "SeriesDescription": "Portal",
          "ImageComments": "Post contrast"}
  assert (dicom.description_text(tags) ==
          "CT abdomen. Portal. Post contrast")


def test_non_dicom_file_raises_naming_file(tmp_path):
  path = tmp_path / "notes.dcm"
  path.write_text("Patient report, not an image.\n")

  with pytest.raises(dicom.DicomError) as raised:
    dicom.read_dicom(path)

  assert raised.value.kind == "undecodable_image"
  assert str(path) in str(raised.value)


def test_dicom_without_pixel_data_raises(tmp_path):
  file_meta = FileMetaDataset()
  file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  file_meta.MediaStorageSOPClassUID = uid.BasicTextSRStorage
  file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  dataset = Dataset()
  dataset.file_meta = file_meta
  dataset.SOPClassUID = uid.BasicTextSRStorage
  dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
  path = tmp_path / "report.dcm"
  dataset.save_as(path, enforce_file_format=True)

  with pytest.raises(dicom.DicomError, match="without an image") as raised:
    dicom.read_dicom(path)

  assert raised.value.kind == "undecodable_image"
  assert "Basic Text SR" in str(raised.value)


def test_missing_file_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    dicom.read_dicom(tmp_path / "absent.dcm")


def test_transfer_syntax_without_decoder_is_missing_decoder(tmp_path):
  file_meta = FileMetaDataset()
  file_meta.TransferSyntaxUID = uid.MPEG2MPML
  file_meta.MediaStorageSOPClassUID = uid.VideoEndoscopicImageStorage
  file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  dataset = Dataset()
  dataset.file_meta = file_meta
  dataset.SOPClassUID = file_meta.MediaStorageSOPClassUID
  dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
  dataset.Rows, dataset.Columns = 16, 16
  dataset.SamplesPerPixel = 3
  dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
  dataset.BitsAllocated = dataset.BitsStored = 8
  dataset.HighBit = 7
  dataset.PixelRepresentation = 0
  dataset.PlanarConfiguration = 0
  dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(12)])
  dataset["PixelData"].VR = "OB"
  path = tmp_path / "clip.dcm"
  dataset.save_as(path, enforce_file_format=True)

  with pytest.raises(dicom.DicomError) as raised:
    dicom.read_dicom(path)

  assert raised.value.kind == "missing_decoder"
  assert str(path) in str(raised.value)
  assert "1.2.840.10008.1.2.4.100" in str(raised.value)


def test_uninstalled_plugin_is_missing_decoder(monkeypatch):
  # Simulates an environment without pylibjpeg and its libjpeg plugin.
  decoder = pixels.get_decoder(uid.JPEGLSLossless)
  monkeypatch.setattr(decoder, "_available", {})
  monkeypatch.setattr(decoder, "_unavailable",
                      {"pylibjpeg": ("pylibjpeg>=2.0",
                                     "pylibjpeg-libjpeg>=2.1")})
  path = _bundled("MR_small_jpeg_ls_lossless.dcm")

  with pytest.raises(dicom.DicomError) as raised:
    dicom.read_dicom(path)

  assert raised.value.kind == "missing_decoder"
  assert "JPEG-LS Lossless" in str(raised.value)
  assert "pip install pylibjpeg pylibjpeg-libjpeg" in str(raised.value)
  assert "MR_small_jpeg_ls_lossless.dcm" in str(raised.value)


@pytest.mark.parametrize("name", sorted(KNOWN_CORRUPT))
def test_known_corrupt_files_raise_undecodable_image(name):
  with pytest.raises(dicom.DicomError) as raised:
    dicom.read_dicom(_bundled(name))

  if raised.value.kind == "missing_decoder":
    pytest.skip(f"no decoder installed for {name}")
  assert raised.value.kind == "undecodable_image"
  assert name in str(raised.value)

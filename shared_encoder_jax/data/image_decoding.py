"""Decode image files of any common encoding to one uint8 RGB layout.

`decode_image` returns a C-contiguous `np.uint8` array of shape
(height, width, 3) for every input Pillow can read, so later steps never see
palettes, alpha, CMYK or 16-bit samples:

* EXIF orientation is applied, so the array is upright as viewers show it.
* Grayscale and 1-bit images repeat their one channel three times.
* 16-bit grayscale ("I;16", "I;16L", "I;16B", "I;16N") is scaled linearly
  from the full 0..65535 range, `round(value / 65535 * 255)`. Pillow's own
  `convert("L")` clips every value above 255 to white instead.
* 32-bit integer ("I") and float ("F") images are scaled by their own
  value range, except where the format stores at most 16-bit samples (see
  `_int32_value_range`).
* Transparency (alpha bands, palette or single-colour transparency) is
  composited onto `BACKGROUND`.
* CMYK converts with Pillow, which reads the inverted CMYK that Adobe
  applications write when the file carries an Adobe APP14 marker.
* Multi-frame files (GIF, TIFF, APNG, WebP) give their first frame.

Truncated files raise `ImageDecodeError` with kind "truncated_image", because
this module never relies on `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, which
would fill the missing rows with grey. Pillow's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`) is left as the caller configured it.
"""

from __future__ import annotations

import hashlib
import io
import os

from etils import epath
import numpy as np
import PIL
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps

UNDECODABLE_IMAGE = "undecodable_image"
TRUNCATED_IMAGE = "truncated_image"

# Figures taken from papers are drawn on white pages, so transparent areas
# are composited on white, as they appear in print.
BACKGROUND = (255, 255, 255)

IMAGE_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 95

# Pillow modes that contain 16-bit unsigned samples.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Formats whose mode "I" images contain 16-bit unsigned samples. Pillow 13.0
# opens 16-bit grayscale PNGs as "I;16", but older releases opened them as
# "I". Pillow opens 16-bit PGM/PPM as "I" and rescales their maxval to 65535.
_UINT16_FORMATS_AS_INT32 = ("PNG", "PPM")

# Pillow modes whose bands include alpha.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageDecodeError(ValueError):
  """An image file cannot be decoded.

  Attributes:
    kind: "undecodable_image" for data Pillow cannot read, or
      "truncated_image" for a file that ends before its image data does.
  """

  def __init__(self, message: str, kind: str):
    if kind not in (UNDECODABLE_IMAGE, TRUNCATED_IMAGE):
      raise ValueError(f"Unknown ImageDecodeError kind {kind!r}.")
    super().__init__(message)
    self.kind = kind


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
  """Decode encoded image bytes to a uint8 RGB array of shape (h, w, 3).

  Args:
    data: the encoded file contents, in any format Pillow can read.
    source: where `data` came from (usually its path), named in errors.

  Returns:
    A C-contiguous np.uint8 array of shape (height, width, 3), upright as
    EXIF orientation requests.

  Raises:
    ImageDecodeError: with kind "undecodable_image" when Pillow cannot
      identify or convert the data or when the image has more than twice
      `PIL.Image.MAX_IMAGE_PIXELS` pixels, and with kind "truncated_image"
      when the data ends early or is corrupt inside a recognised format.
    RuntimeError: if `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is set, because
      then truncated files would decode to partly grey images.
  """
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise RuntimeError(
        "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so Pillow would decode "
        "truncated image files to partly grey images instead of raising. Set "
        "it back to False before decoding images with "
        f"{__name__}.decode_image.")

  stream = io.BytesIO(data)
  try:
    image = Image.open(stream)
  except Image.DecompressionBombError as error:
    raise _too_many_pixels_error(source, error) from error
  except PIL.UnidentifiedImageError as error:
    # Pillow names the stream object here, so name the source instead.
    message = str(error).replace(repr(stream), source)
    raise ImageDecodeError(
        f"{source}: Pillow {PIL.__version__} cannot decode this file "
        f"({message}). Check that it is an image file and not, for example, "
        "an HTML error page, or convert it to PNG or JPEG.",
        kind=UNDECODABLE_IMAGE) from error
  except (OSError, SyntaxError, ValueError, EOFError) as error:
    raise _truncated_error(source, error) from error

  with image:
    try:
      image.load()
    except Image.DecompressionBombError as error:
      raise _too_many_pixels_error(source, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
      raise _truncated_error(source, error) from error
    ImageOps.exif_transpose(image, in_place=True)
    rgb = _to_rgb(image, image.format, source)

  return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Read an image file and decode it with `decode_image`.

  Args:
    path: a local path or any path `etils.epath` can read, such as gs://.

  Returns:
    The decoded uint8 RGB array of shape (height, width, 3).

  Raises:
    FileNotFoundError: if `path` does not exist.
    ImageDecodeError: if the file cannot be decoded.
  """
  path = epath.Path(path)
  return decode_image(path.read_bytes(), source=str(path))


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
  """Shrink `image` so that its shorter side is at most `max_side` pixels.

  The aspect ratio is kept, with the longer side rounded to whole pixels.
  Resampling uses Pillow's Lanczos filter, which keeps fine detail such as
  text in figures sharper than bilinear filtering.

  Args:
    image: a uint8 RGB array of shape (height, width, 3).
    max_side: the largest allowed shorter side in pixels; 0 disables it.

  Returns:
    `image` itself when its shorter side is at most `max_side` or when
    `max_side` is 0, otherwise a new array whose shorter side is `max_side`.

  Raises:
    ValueError: if `max_side` is negative or `image` is not uint8 RGB.
  """
  _check_rgb_array(image)
  if max_side < 0:
    raise ValueError(
        f"max_side={max_side} is negative; pass a side length in pixels, or "
        "0 to keep images at their size.")
  height, width = image.shape[:2]
  shorter = min(height, width)
  if max_side == 0 or shorter <= max_side:
    return image

  scale = max_side / shorter
  if height <= width:
    new_height, new_width = max_side, max(1, round(width * scale))
  else:
    new_height, new_width = max(1, round(height * scale)), max_side
  resized = Image.fromarray(np.ascontiguousarray(image)).resize(
      (new_width, new_height), Image.Resampling.LANCZOS)
  return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def encode_image(image: np.ndarray, image_format: str) -> bytes:
  """Encode a uint8 RGB array as PNG (lossless) or JPEG (quality 95).

  Raises:
    ValueError: if `image_format` is not "png" or "jpeg", or `image` is not
      a uint8 array of shape (height, width, 3).
  """
  if image_format not in IMAGE_FORMATS:
    raise ValueError(
        f"image_format={image_format!r} is not supported; use one of "
        f"{IMAGE_FORMATS}.")
  _check_rgb_array(image)
  buffer = io.BytesIO()
  pil_image = Image.fromarray(np.ascontiguousarray(image))
  if image_format == "png":
    pil_image.save(buffer, format="PNG")
  else:
    pil_image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


def content_hash(image: np.ndarray) -> str:
  """Return the SHA-1 hex digest of a decoded image's shape and pixels.

  The digest depends only on the decoded pixels, so one picture stored as
  PNG, as a lossless re-encode or in any other lossless format hashes the
  same. Lossy re-encodes (JPEG) change the pixels and so the digest.

  Raises:
    ValueError: if `image` is not a uint8 array of shape (height, width, 3).
  """
  _check_rgb_array(image)
  height, width, channels = image.shape
  digest = hashlib.sha1()
  digest.update(f"{height}x{width}x{channels}:".encode("ascii"))
  digest.update(np.ascontiguousarray(image).tobytes())
  return digest.hexdigest()


def _to_rgb(image: Image.Image, image_format: str | None,
            source: str) -> Image.Image:
  """Convert a loaded Pillow image of any mode to mode "RGB"."""
  mode = image.mode
  # NOTE: transparency of 16-bit and 32-bit grayscale images is dropped,
  # because Pillow cannot convert those modes to RGBA without clipping.
  if mode in _UINT16_MODES:
    return _gray_to_rgb(np.asarray(image), 0.0, 65535.0)
  if mode == "I":
    pixels = np.asarray(image)
    return _gray_to_rgb(pixels, *_int32_value_range(pixels, image_format))
  if mode == "F":
    pixels = np.asarray(image, dtype=np.float64)
    return _gray_to_rgb(pixels, *_finite_value_range(pixels))

  if mode in _ALPHA_MODES or "transparency" in image.info:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")

  try:
    return image.convert("RGB")
  except ValueError as error:
    raise ImageDecodeError(
        f"{source}: Pillow {PIL.__version__} cannot convert mode "
        f"{mode!r} images to RGB ({error}). Convert the file to an RGB PNG "
        "or JPEG.", kind=UNDECODABLE_IMAGE) from error


def _int32_value_range(pixels: np.ndarray,
                       image_format: str | None) -> tuple[float, float]:
  """Return the value range that maps to 0..255 for a mode "I" image.

  Mode "I" contains 16-bit samples for the formats in _UINT16_FORMATS_AS_INT32,
  which therefore use the full 0..65535 range like mode "I;16". Other formats
  (32-bit or signed 16-bit TIFF, for example) have no usable nominal range,
  so the image's own minimum and maximum map to 0 and 255.
  """
  if image_format in _UINT16_FORMATS_AS_INT32:
    return 0.0, 65535.0
  return _finite_value_range(pixels)


def _finite_value_range(pixels: np.ndarray) -> tuple[float, float]:
  """Return the minimum and maximum of the finite values in `pixels`."""
  finite = pixels[np.isfinite(pixels)]
  if finite.size == 0:
    return 0.0, 0.0
  return float(finite.min()), float(finite.max())


def _gray_to_rgb(pixels: np.ndarray, low: float, high: float) -> Image.Image:
  """Map `low`..`high` linearly to 0..255 and repeat it into three bands.

  Values outside the range are clipped, NaN becomes 0, and an image whose
  range is empty (a constant image) becomes black.
  """
  values = pixels.astype(np.float64)
  if high > low:
    values = (values - low) / (high - low) * 255.0
  else:
    values = np.zeros_like(values)
  values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
  gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
  return Image.fromarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))


def _check_rgb_array(image: np.ndarray) -> None:
  if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or
      image.ndim != 3 or image.shape[2] != 3):
    description = (f"dtype {image.dtype} and shape {image.shape}"
                   if isinstance(image, np.ndarray) else type(image).__name__)
    raise ValueError(
        f"Expected a uint8 RGB array of shape (height, width, 3), got "
        f"{description}; decode images with decode_image first.")


def _truncated_error(source: str, error: Exception) -> ImageDecodeError:
  return ImageDecodeError(
      f"{source}: image data is truncated or corrupt ({error}). Copy or "
      "download the file again; if it is damaged at its origin, drop it.",
      kind=TRUNCATED_IMAGE)


def _too_many_pixels_error(source: str,
                           error: Exception) -> ImageDecodeError:
  return ImageDecodeError(
      f"{source}: the image has too many pixels to decode safely ({error}). "
      "If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS (the "
      "limit is twice that value) or set it to None before decoding.",
      kind=UNDECODABLE_IMAGE)

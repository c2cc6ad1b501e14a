"""Tests for image_decoding: every encoding decodes to one uint8 RGB layout."""

from __future__ import annotations

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest

from shared_encoder_jax.data import image_decoding


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=image_format, **options)
  return buffer.getvalue()


def _png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(chunk_type + payload) & 0xFFFFFFFF
  return (struct.pack(">I", len(payload)) + chunk_type + payload +
          struct.pack(">I", crc))


def _png_bytes(width: int, height: int, bit_depth: int, colour_type: int,
               rows: bytes) -> bytes:
  """Return a PNG file with the given IHDR fields and raw filtered rows.

  Pillow cannot write 48-bit RGB PNGs, and writing a huge PNG only to test
  the pixel limit would need gigabytes, so these tests build the chunks.
  """
  header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0,
                       0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) +
          _png_chunk(b"IDAT", zlib.compress(rows)) +
          _png_chunk(b"IEND", b""))


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _expected_from_uint16(values: np.ndarray) -> np.ndarray:
  return np.round(values.astype(np.float64) / 65535 * 255).astype(np.uint8)


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_rgb_round_trips_exactly(image_format):
  pixels = _random_rgb(7, 11)
  options = {"lossless": True} if image_format == "WEBP" else {}
  data = _encode(Image.fromarray(pixels), image_format, **options)

  decoded = image_decoding.decode_image(data)

  assert decoded.dtype == np.uint8
  assert decoded.flags.c_contiguous
  np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_decodes_to_rgb_array():
  pixels = np.full((16, 24, 3), (10, 200, 30), dtype=np.uint8)
  decoded = image_decoding.decode_image(
      _encode(Image.fromarray(pixels), "JPEG", quality=95))

  assert decoded.shape == (16, 24, 3)
  assert decoded.dtype == np.uint8
  assert np.abs(decoded.astype(int) - pixels).max() <= 3


def test_grayscale_png_repeats_channel():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  decoded = image_decoding.decode_image(_encode(Image.fromarray(gray), "PNG"))

  assert decoded.shape == (3, 4, 3)
  for channel in range(3):
    np.testing.assert_array_equal(decoded[:, :, channel], gray)


def test_one_bit_png_is_black_and_white():
  image = Image.new("1", (3, 1), 0)
  image.putpixel((1, 0), 1)
  decoded = image_decoding.decode_image(_encode(image, "PNG"))

  np.testing.assert_array_equal(decoded[0, 0], (0, 0, 0))
  np.testing.assert_array_equal(decoded[0, 1], (255, 255, 255))


def test_sixteen_bit_png_is_scaled_not_clipped():
  values = np.array([[0, 1, 128, 129, 255, 256, 300, 4095],
                     [20000, 32767, 32768, 40000, 65000, 65279, 65534, 65535]],
                    dtype=np.uint16)
  data = _encode(Image.fromarray(values), "PNG")
  assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")

  decoded = image_decoding.decode_image(data, "ramp.png")

  np.testing.assert_array_equal(decoded[:, :, 0],
                                _expected_from_uint16(values))
  np.testing.assert_array_equal(decoded[:, :, 1], decoded[:, :, 0])
  np.testing.assert_array_equal(decoded[:, :, 2], decoded[:, :, 0])


def test_twelve_bit_data_in_png_stays_dark():
  values = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
  decoded = image_decoding.decode_image(_encode(Image.fromarray(values), "PNG"))

  np.testing.assert_array_equal(decoded[:, :, 0],
                                _expected_from_uint16(values))
  assert decoded.max() == 16


def test_sixteen_bit_big_endian_tiff_is_scaled():
  values = np.array([[0, 300, 32768, 65535]], dtype=">u2")
  data = _encode(Image.fromarray(values), "TIFF")
  assert Image.open(io.BytesIO(data)).mode == "I;16B"

  decoded = image_decoding.decode_image(data)

  np.testing.assert_array_equal(decoded[0, :, 0],
                                _expected_from_uint16(values[0]))


def test_sixteen_bit_pgm_uses_its_maxval():
  # Pillow opens 16-bit PGM as mode "I", rescaled from maxval to 0..65535.
  values = np.array([1000, 2000, 3000], dtype=">u2")
  data = b"P5 3 1 4095\n" + values.tobytes()
  assert Image.open(io.BytesIO(data)).mode == "I"

  decoded = image_decoding.decode_image(data)

  expected = values.astype(np.float64) / 4095 * 255
  assert np.abs(decoded[0, :, 0] - expected).max() <= 1


def test_int32_tiff_uses_image_min_max():
  values = np.array([[-70000, 0, 70000]], dtype=np.int32)
  data = _encode(Image.fromarray(values), "TIFF")
  assert Image.open(io.BytesIO(data)).mode == "I"

  decoded = image_decoding.decode_image(data)

  np.testing.assert_array_equal(decoded[0, :, 0], (0, 128, 255))


def test_float_tiff_uses_image_min_max():
  values = np.array([[-2.0, -1.0, 0.0, 2.0]], dtype=np.float32)
  data = _encode(Image.fromarray(values), "TIFF")
  assert Image.open(io.BytesIO(data)).mode == "F"

  decoded = image_decoding.decode_image(data)

  np.testing.assert_array_equal(decoded[0, :, 0], (0, 64, 128, 255))


def test_constant_float_tiff_is_black():
  values = np.full((2, 2), 7.5, dtype=np.float32)
  decoded = image_decoding.decode_image(
      _encode(Image.fromarray(values), "TIFF"))

  assert decoded.max() == 0


def test_forty_eight_bit_png_keeps_high_byte():
  # Pillow 13 opens 16-bit-per-channel RGB PNGs as 8-bit "RGB" itself.
  values = np.array([[[65535, 0, 32768], [256, 1000, 40000]]], dtype=">u2")
  rows = b"\x00" + values[0].tobytes()
  data = _png_bytes(2, 1, bit_depth=16, colour_type=2, rows=rows)
  assert Image.open(io.BytesIO(data)).mode == "RGB"

  decoded = image_decoding.decode_image(data)

  expected = values.astype(np.float64) / 65535 * 255
  assert decoded.shape == (1, 2, 3)
  assert np.abs(decoded - expected).max() <= 1


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "TIFF"])
def test_half_transparent_red_is_pink_on_white(image_format):
  image = Image.new("RGBA", (4, 3), (255, 0, 0, 128))
  options = {"lossless": True} if image_format == "WEBP" else {}
  decoded = image_decoding.decode_image(_encode(image, image_format,
                                                **options))

  assert decoded.shape == (3, 4, 3)
  assert np.abs(decoded.astype(int) - (255, 128, 128)).max() <= 2


def test_fully_transparent_rgba_is_background():
  image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
  decoded = image_decoding.decode_image(_encode(image, "PNG"))

  assert (decoded == image_decoding.BACKGROUND).all()


def _two_colour_palette_image() -> Image.Image:
  image = Image.new("P", (2, 1), 0)
  image.putpalette([255, 0, 0, 0, 0, 255])
  image.putpixel((1, 0), 1)
  return image


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(image_format):
  data = _encode(_two_colour_palette_image(), image_format, transparency=1)
  decoded = image_decoding.decode_image(data)

  np.testing.assert_array_equal(decoded[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(decoded[0, 1], (255, 255, 255))


def test_palette_without_transparency_keeps_colours():
  decoded = image_decoding.decode_image(
      _encode(_two_colour_palette_image(), "PNG"))

  np.testing.assert_array_equal(decoded[0, 1], (0, 0, 255))


def test_la_png_composites_onto_white():
  image = Image.new("LA", (3, 1))
  image.putpixel((0, 0), (0, 255))
  image.putpixel((1, 0), (0, 0))
  image.putpixel((2, 0), (0, 128))
  decoded = image_decoding.decode_image(_encode(image, "PNG"))

  np.testing.assert_array_equal(decoded[0, 0], (0, 0, 0))
  np.testing.assert_array_equal(decoded[0, 1], (255, 255, 255))
  assert np.abs(decoded[0, 2].astype(int) - 127).max() <= 1


def test_grayscale_png_transparent_value_becomes_white():
  image = Image.new("L", (2, 1), 0)
  image.putpixel((1, 0), 80)
  decoded = image_decoding.decode_image(_encode(image, "PNG",
                                                transparency=80))

  np.testing.assert_array_equal(decoded[0, 0], (0, 0, 0))
  np.testing.assert_array_equal(decoded[0, 1], (255, 255, 255))


def test_cmyk_jpeg_red_stays_red():
  red = Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK")
  data = _encode(red, "JPEG", quality=100)
  assert Image.open(io.BytesIO(data)).mode == "CMYK"

  decoded = image_decoding.decode_image(data)

  assert decoded[8, 8, 0] > 200
  assert decoded[8, 8, 1] < 60
  assert decoded[8, 8, 2] < 60


def test_cmyk_jpeg_grey_stays_grey():
  grey = Image.new("RGB", (16, 16), (128, 128, 128)).convert("CMYK")
  decoded = image_decoding.decode_image(_encode(grey, "JPEG", quality=100))

  assert np.abs(decoded[8, 8].astype(int) - 128).max() <= 10


def _jpeg_with_orientation(orientation: int) -> bytes:
  """Return a 40-wide, 24-tall JPEG with a red 8x8 block at the top left."""
  pixels = np.zeros((24, 40, 3), dtype=np.uint8)
  pixels[:8, :8] = (255, 0, 0)
  exif = Image.Exif()
  exif[0x0112] = orientation  # Orientation
  return _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def test_exif_orientation_6_rotates_clockwise():
  decoded = image_decoding.decode_image(_jpeg_with_orientation(6))

  assert decoded.shape == (40, 24, 3)
  # Rotating clockwise moves the stored top-left corner to the top right.
  assert decoded[3, 20, 0] > 200
  assert decoded[3, 3, 0] < 50


def test_exif_orientation_8_rotates_counterclockwise():
  decoded = image_decoding.decode_image(_jpeg_with_orientation(8))

  assert decoded.shape == (40, 24, 3)
  # Rotating counterclockwise moves the stored top-left to the bottom left.
  assert decoded[36, 3, 0] > 200
  assert decoded[3, 3, 0] < 50


def test_animated_gif_gives_first_frame():
  frames = [Image.new("RGB", (4, 4), colour)
            for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
  data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
  assert Image.open(io.BytesIO(data)).n_frames == 3

  decoded = image_decoding.decode_image(data)

  np.testing.assert_array_equal(decoded[0, 0], (255, 0, 0))


def test_multipage_tiff_gives_first_page():
  pages = [Image.new("RGB", (5, 3), (0, 0, 255)),
           Image.new("RGB", (2, 2), (255, 255, 0))]
  data = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])

  decoded = image_decoding.decode_image(data)

  assert decoded.shape == (3, 5, 3)
  np.testing.assert_array_equal(decoded[0, 0], (0, 0, 255))


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1)])
def test_tiny_images_decode(size):
  width, height = size
  pixels = _random_rgb(height, width)
  decoded = image_decoding.decode_image(_encode(Image.fromarray(pixels),
                                                "PNG"))

  np.testing.assert_array_equal(decoded, pixels)


def test_large_solid_png_decodes():
  data = _encode(Image.new("RGB", (5000, 3000), (12, 34, 56)), "PNG")
  decoded = image_decoding.decode_image(data)

  assert decoded.shape == (3000, 5000, 3)
  np.testing.assert_array_equal(decoded[0, 0], (12, 34, 56))
  np.testing.assert_array_equal(decoded[-1, -1], (12, 34, 56))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_file_raises_truncated_image(image_format):
  data = _encode(Image.fromarray(_random_rgb(64, 64)), image_format)

  with pytest.raises(image_decoding.ImageDecodeError) as raised:
    image_decoding.decode_image(data[:len(data) // 2], "cut." + image_format)

  assert raised.value.kind == "truncated_image"
  assert "cut." + image_format in str(raised.value)


def test_png_cut_inside_header_raises_truncated_image():
  data = _encode(Image.fromarray(_random_rgb(8, 8)), "PNG")

  with pytest.raises(image_decoding.ImageDecodeError) as raised:
    image_decoding.decode_image(data[:20], "header.png")

  assert raised.value.kind == "truncated_image"


def test_random_bytes_raise_undecodable_image():
  data = np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes()

  with pytest.raises(image_decoding.ImageDecodeError) as raised:
    image_decoding.decode_image(data, "noise.png")

  assert raised.value.kind == "undecodable_image"
  assert "noise.png" in str(raised.value)
  assert "cannot identify image file" in str(raised.value)


def test_empty_bytes_raise_undecodable_image():
  with pytest.raises(image_decoding.ImageDecodeError) as raised:
    image_decoding.decode_image(b"", "empty.jpg")

  assert raised.value.kind == "undecodable_image"


def test_too_many_pixels_raise_undecodable_image():
  limit = Image.MAX_IMAGE_PIXELS
  side = 20000
  assert side * side > 2 * limit
  data = _png_bytes(side, side, bit_depth=8, colour_type=0, rows=b"\x00")

  with pytest.raises(image_decoding.ImageDecodeError) as raised:
    image_decoding.decode_image(data, "huge.png")

  assert raised.value.kind == "undecodable_image"
  assert "huge.png" in str(raised.value)
  assert "MAX_IMAGE_PIXELS" in str(raised.value)
  assert Image.MAX_IMAGE_PIXELS == limit


def test_load_truncated_images_setting_is_rejected(monkeypatch):
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  data = _encode(Image.new("RGB", (2, 2)), "PNG")

  with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
    image_decoding.decode_image(data)


def test_read_image_accepts_str_and_path(tmp_path):
  pixels = _random_rgb(5, 6)
  path = tmp_path / "picture.png"
  path.write_bytes(_encode(Image.fromarray(pixels), "PNG"))

  np.testing.assert_array_equal(image_decoding.read_image(str(path)), pixels)
  np.testing.assert_array_equal(
      image_decoding.read_image(pathlib.Path(path)), pixels)


def test_read_image_names_file_in_errors(tmp_path):
  path = tmp_path / "notes.png"
  path.write_text("not an image")

  with pytest.raises(image_decoding.ImageDecodeError, match="notes.png"):
    image_decoding.read_image(path)


def test_read_image_missing_file_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    image_decoding.read_image(tmp_path / "absent.png")


def test_downscale_landscape_sets_shorter_side():
  image = _random_rgb(400, 1000)
  resized = image_decoding.downscale(image, 200)

  assert resized.shape == (200, 500, 3)
  assert resized.dtype == np.uint8


def test_downscale_portrait_keeps_aspect_ratio():
  image = _random_rgb(999, 333)
  resized = image_decoding.downscale(image, 100)

  assert resized.shape == (300, 100, 3)


def test_downscale_keeps_solid_colour():
  image = np.full((300, 300, 3), (40, 80, 120), dtype=np.uint8)
  resized = image_decoding.downscale(image, 64)

  assert resized.shape == (64, 64, 3)
  assert (resized == (40, 80, 120)).all()


@pytest.mark.parametrize("max_side", [0, 400, 500])
def test_downscale_returns_small_enough_image_unchanged(max_side):
  image = _random_rgb(400, 1000)

  assert image_decoding.downscale(image, max_side) is image


def test_downscale_negative_max_side_raises():
  with pytest.raises(ValueError, match="max_side=-1"):
    image_decoding.downscale(_random_rgb(4, 4), -1)


def test_encode_png_is_lossless():
  pixels = _random_rgb(9, 13)
  data = image_decoding.encode_image(pixels, "png")

  assert data.startswith(b"\x89PNG")
  np.testing.assert_array_equal(image_decoding.decode_image(data), pixels)


def test_encode_jpeg_is_close():
  pixels = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
  data = image_decoding.encode_image(pixels, "jpeg")

  assert data.startswith(b"\xff\xd8")
  decoded = image_decoding.decode_image(data)
  assert np.abs(decoded.astype(int) - pixels).max() <= 3


@pytest.mark.parametrize("image_format", ["gif", "JPEG", "jpg", ""])
def test_encode_unknown_format_raises(image_format):
  with pytest.raises(ValueError, match="image_format"):
    image_decoding.encode_image(_random_rgb(2, 2), image_format)


def test_encode_rejects_non_rgb_array():
  with pytest.raises(ValueError, match="uint8 RGB"):
    image_decoding.encode_image(np.zeros((2, 2), np.uint8), "png")


def test_content_hash_ignores_lossless_encoding():
  pixels = _random_rgb(10, 10)
  first = image_decoding.decode_image(
      _encode(Image.fromarray(pixels), "PNG", compress_level=1))
  reencoded = image_decoding.decode_image(
      image_decoding.encode_image(first, "png"))
  from_bmp = image_decoding.decode_image(_encode(Image.fromarray(pixels),
                                                 "BMP"))

  assert (image_decoding.content_hash(first) ==
          image_decoding.content_hash(reencoded))
  assert (image_decoding.content_hash(first) ==
          image_decoding.content_hash(from_bmp))


def test_content_hash_changes_with_one_pixel():
  pixels = _random_rgb(10, 10)
  changed = pixels.copy()
  changed[5, 5, 1] ^= 1

  assert (image_decoding.content_hash(pixels) !=
          image_decoding.content_hash(changed))


def test_content_hash_includes_shape():
  pixels = _random_rgb(2, 6)
  same_bytes = pixels.reshape(6, 2, 3)

  assert (image_decoding.content_hash(pixels) !=
          image_decoding.content_hash(same_bytes))


def test_content_hash_is_sha1_hex():
  digest = image_decoding.content_hash(_random_rgb(3, 3))

  assert len(digest) == 40
  assert int(digest, 16) >= 0


def test_content_hash_of_non_contiguous_view_matches_copy():
  pixels = _random_rgb(8, 8)
  view = pixels[::2, ::2]

  assert not view.flags.c_contiguous
  assert (image_decoding.content_hash(view) ==
          image_decoding.content_hash(view.copy()))

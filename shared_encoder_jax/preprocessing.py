"""Image preprocessing shared by training, evaluation and exported bundles.

Images become float32 arrays of shape (size, size, 3): RGB (a single gray
channel is repeated), the shorter side resized to `size` with bicubic
resampling, centre-cropped, scaled to [0, 1] and normalised by mean and std.
One function serves the input pipeline and the export loader, so an image
file embeds the same way in both.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from shared_encoder_jax.data import image_decoding


def load_image(path: str) -> np.ndarray:
  """Read an image file into a uint8 RGB array of shape (height, width, 3).

  Decodes exactly as the dataset builders do (`image_decoding.decode_image`:
  EXIF rotation, 16-bit scaling, transparency on white, CMYK), so a file
  embeds the same way in a bundle as in training.
  """
  return image_decoding.read_image(path)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """Return an (height, width, 3) uint8 view of a gray or RGB uint8 image."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 image, got dtype {image.dtype}.")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError("Expected an image of shape (height, width), "
                     f"(height, width, 1) or (height, width, 3); got "
                     f"{image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resize the shorter side to `size` (bicubic), then centre-crop a square."""
  height, width = image.shape[:2]
  if height == size and width == size:
    return image
  scale = size / min(height, width)
  new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
  resized = np.asarray(Image.fromarray(image).resize(new_size,
                                                     Image.Resampling.BICUBIC))
  top = (resized.shape[0] - size) // 2
  left = (resized.shape[1] - size) // 2
  return resized[top:top + size, left:left + size]


def random_resized_crop(image: np.ndarray, size: int,
                        rng: np.random.Generator,
                        scale: Sequence[float] = (0.9, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)
                        ) -> np.ndarray:
  """Crop a random box and resize it to `size` x `size` (bicubic).

  The box covers a fraction of the image area drawn uniformly from `scale`,
  with an aspect ratio (width / height) drawn log-uniformly from `ratio`.
  After 10 draws that do not fit in the image, it falls back to the
  centre crop of `resize_and_center_crop`.
  """
  height, width = image.shape[:2]
  area = height * width
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    crop_width = int(round(np.sqrt(target_area * aspect)))
    crop_height = int(round(np.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      box = (left, top, left + crop_width, top + crop_height)
      return np.asarray(Image.fromarray(image).resize(
          (size, size), Image.Resampling.BICUBIC, box=box))
  return resize_and_center_crop(image, size)


def normalization(mean: Sequence[float], std: Sequence[float]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(scale, offset) such that `pixels * scale + offset` normalises uint8.

  Equal to `(pixels / 255 - mean) / std`, in float32.
  """
  std = np.asarray(std, np.float64)
  scale = (1 / (255 * std)).astype(np.float32)
  offset = (-np.asarray(mean, np.float64) / std).astype(np.float32)
  return scale, offset


def normalize(image: np.ndarray, mean: Sequence[float],
              std: Sequence[float]) -> np.ndarray:
  """Scale uint8 pixels to [0, 1], then subtract `mean` and divide by `std`."""
  scale, offset = normalization(mean, std)
  output = image.astype(np.float32)
  output *= scale
  output += offset
  return output


def preprocess_image(image: np.ndarray, size: int, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
  """Turn a uint8 gray or RGB image into the model's normalised float input."""
  image = resize_and_center_crop(to_rgb_uint8(image), size)
  return normalize(image, mean, std)

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


def load_image(path: str) -> np.ndarray:
  """Read an image file into a uint8 RGB array of shape (height, width, 3)."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


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


def preprocess_image(image: np.ndarray, size: int, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
  """Turn a uint8 gray or RGB image into the model's normalised float input."""
  image = resize_and_center_crop(to_rgb_uint8(image), size)
  image = image.astype(np.float32) / 255.0
  return (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)

"""Synthetic radiology-style image-caption pairs, generated with numpy only.

The data is synthetic: no patient, scanner or real report is involved. Each
example is a 64x64 uint8 grayscale image that looks loosely like a frontal
chest radiograph (a bright body outline, two darker lung fields, spine,
heart shadow, faint ribs, smooth texture and Gaussian noise). One to three
findings are centred in the lung fields, and a short caption describes every
finding by type, size, intensity and lung zone.

Conventions
-----------
* Radiological orientation: the patient's right is on the image left. A
  finding in the "right upper zone" therefore lies in the upper third of the
  lung field on the left half of the image.
* Each lung field is split into upper, middle and lower thirds, which gives
  six zones. An image has at most one finding per zone, and the zones are far
  enough apart that the cores of two findings never overlap.
* Finding types: nodule (soft-edged disk), mass (larger lobulated blob),
  cavity (bright ring around a dark centre), calcification (cluster of tiny
  very bright dots), consolidation (hazy mottled patch with fuzzy edges) and
  linear opacity (thin line segment at a random angle). Sizes are small,
  medium or large, relative to the finding type. Intensity is faint or dense.
* Captions use synonyms for every attribute and shuffle the order of
  findings, so that no single word identifies an image. Three findings take
  at most 25 words.

Held-out combinations
---------------------
The finding-type pairs in `HELD_OUT_PAIRS` never occur together in one image
of the train or validation splits. The test split samples finding types
without that restriction, so about a quarter of its images contain a held-out
pair. Retrieval on the test split therefore includes combinations of findings
that a model never saw in training.

Determinism
-----------
Example `i` of a split is generated from its own random generator, seeded with
`(seed, split index, i)`. The same seed gives identical images and captions
regardless of how many examples are generated, the splits draw from different
seed streams, and a smaller training split is a prefix of a larger one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

IMAGE_SIZE = 64

FINDING_TYPES = (
    "nodule",
    "mass",
    "cavity",
    "calcification",
    "consolidation",
    "linear_opacity",
)
SIDES = ("right", "left")  # patient's side; "right" is the image left
LEVELS = ("upper", "middle", "lower")
ZONES = tuple(itertools.product(SIDES, LEVELS))
SIZES = ("small", "medium", "large")
INTENSITIES = ("faint", "dense")
MAX_FINDINGS = 3

HELD_OUT_PAIRS = (
    ("nodule", "cavity"),
    ("mass", "calcification"),
    ("consolidation", "linear_opacity"),
)

SPLITS = ("train", "validation", "test")
NUM_TRAIN_EXAMPLES = 20_000
NUM_VALIDATION_EXAMPLES = 1_000
NUM_TEST_EXAMPLES = 1_000
DEFAULT_SEED = 0

# Caption vocabulary. No phrase of one attribute value occurs as a word sequence
# inside a phrase of another value, so a caption can be parsed back.
TYPE_SYNONYMS = {
    "nodule": ("nodule", "nodular opacity", "rounded lesion"),
    "mass": ("mass", "lobulated mass", "mass lesion"),
    "cavity": ("cavity", "cavitary lesion", "cavitating lesion"),
    "calcification": ("calcifications", "calcified foci", "calcified cluster"),
    "consolidation": ("consolidation", "airspace opacity", "hazy opacity"),
    "linear_opacity": ("linear opacity", "linear atelectasis", "linear band"),
}
SIZE_SYNONYMS = {
    "small": ("small", "tiny"),
    "medium": ("medium", "moderate"),
    "large": ("large", "big"),
}
INTENSITY_SYNONYMS = {
    "faint": ("faint", "subtle"),
    "dense": ("dense", "bright"),
}
LEVEL_SYNONYMS = {
    "upper": ("upper", "superior"),
    "middle": ("middle", "mid"),
    "lower": ("lower", "basal"),
}
_ZONE_TEMPLATES = (
    "{side} {level} zone",
    "{level} {side} zone",
    "{side} {level} field",
    "{side} {level} lung",
)
_FINDING_TEMPLATES = (
    "{size} {intensity} {finding} in {zone}",
    "{size} {intensity} {finding} ({zone})",
)
_CAPTION_TEMPLATES = {
    1: ("{}.", "Finding: {}.", "Single finding: {}."),
    2: ("{}; {}.", "{} and {}.", "Findings: {}; {}."),
    3: ("{}; {}; {}.", "{}, {} and {}."),
}

# Peak added brightness of a finding, on the 0..1 image scale before the
# global contrast change. The gap keeps faint and dense clearly apart.
_INTENSITY_AMPLITUDE = {"faint": 0.2, "dense": 0.45}
# Core radius in pixels per type and size. For a linear opacity it is half the
# segment length, for a calcification the radius of the cluster.
_RADIUS = {
    "nodule": (1.8, 2.7, 3.8),
    "mass": (3.2, 4.0, 4.8),
    "cavity": (2.8, 3.8, 4.9),
    "calcification": (1.6, 2.6, 3.6),
    "consolidation": (2.8, 3.7, 4.6),
    "linear_opacity": (2.5, 3.8, 5.0),
}

_ROWS, _COLS = np.meshgrid(
    np.arange(IMAGE_SIZE, dtype=np.float32),
    np.arange(IMAGE_SIZE, dtype=np.float32),
    indexing="ij",
)


@dataclasses.dataclass(frozen=True)
class Finding:
  """One abnormality drawn into a scan.

  Attributes
  ----------
  finding_type : str
      One of `FINDING_TYPES`.
  side : str
      Patient's side, one of `SIDES`. The patient's right is the image left.
  level : str
      Lung third, one of `LEVELS`.
  size : str
      One of `SIZES`, relative to the finding type.
  intensity : str
      One of `INTENSITIES`.
  center : tuple of float
      (row, column) of the finding centre in pixels.
  """

  finding_type: str
  side: str
  level: str
  size: str
  intensity: str
  center: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Example:
  """A generated scan with its caption.

  Attributes
  ----------
  image : np.ndarray
      uint8 array of shape (IMAGE_SIZE, IMAGE_SIZE).
  caption : str
      Text that describes every finding.
  findings : tuple of Finding
      The findings in the order the caption lists them.
  masks : np.ndarray
      bool array of shape (len(findings), IMAGE_SIZE, IMAGE_SIZE), the core
      pixels of each finding. Cores of different findings never overlap.
  """

  image: np.ndarray
  caption: str
  findings: tuple[Finding, ...]
  masks: np.ndarray


@dataclasses.dataclass(frozen=True)
class ChestLayout:
  """Placement of the lung fields in one scan, in pixels.

  Attributes
  ----------
  midline : float
      Column of the spine.
  lung_top, lung_bottom : float
      Rows of the lung apices and bases.
  lung_offset : float
      Distance in columns from the midline to the centre of each lung.
  lung_half_width : float
      Half width of each lung at its base, where it is widest.
  """

  midline: float
  lung_top: float
  lung_bottom: float
  lung_offset: float
  lung_half_width: float


def contains_held_out_pair(finding_types: Sequence[str]) -> bool:
  """Return whether any pair in `HELD_OUT_PAIRS` occurs in `finding_types`."""
  present = set(finding_types)
  return any(a in present and b in present for a, b in HELD_OUT_PAIRS)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """Create the random generator of example `index` of `split`.

  Raises
  ------
  ValueError
      If `split` is not one of `SPLITS` or `index` is negative.
  """
  if split not in SPLITS:
    raise ValueError(f"Invalid split {split!r}. Expected one of {SPLITS}.")
  if index < 0:
    raise ValueError(f"Invalid example index {index}. It must be >= 0.")
  return np.random.default_rng([seed, SPLITS.index(split), index])


def sample_findings(
    rng: np.random.Generator,
    layout: ChestLayout,
    allow_held_out_pairs: bool,
) -> list[Finding]:
  """Sample one to three findings with distinct types and distinct zones.

  When `allow_held_out_pairs` is False, type combinations that contain a
  pair from `HELD_OUT_PAIRS` are rejected and sampled again.
  """
  num_findings = int(rng.integers(1, MAX_FINDINGS + 1))
  while True:
    type_indices = rng.choice(len(FINDING_TYPES), num_findings, replace=False)
    finding_types = [FINDING_TYPES[i] for i in type_indices]
    if allow_held_out_pairs or not contains_held_out_pair(finding_types):
      break
  zone_indices = rng.choice(len(ZONES), num_findings, replace=False)

  findings = []
  for finding_type, zone_index in zip(finding_types, zone_indices):
    side, level = ZONES[zone_index]
    findings.append(
        Finding(
            finding_type=finding_type,
            side=side,
            level=level,
            size=SIZES[rng.integers(len(SIZES))],
            intensity=INTENSITIES[rng.integers(len(INTENSITIES))],
            center=_sample_center(rng, layout, side, level),
        )
    )
  return findings


def _sample_center(
    rng: np.random.Generator, layout: ChestLayout, side: str, level: str
) -> tuple[float, float]:
  # Vertically adjacent zone centres are at least 13.8 rows apart, so with
  # the jitter below two centres stay over 12.2 rows apart. The largest core
  # extents are 5.9 (lobulated mass) and 5.8 (linear opacity with its
  # thickness), so the cores of two findings never overlap.
  level_index = LEVELS.index(level)
  zone_height = (layout.lung_bottom - layout.lung_top) / len(LEVELS)
  row = layout.lung_top + (level_index + 0.5) * zone_height
  # The patient's right lung is on the image left.
  direction = -1.0 if side == "right" else 1.0
  col = layout.midline + direction * layout.lung_offset
  if level == "upper":
    row += 1.0  # the apex is narrow, so stay clear of the chest wall
  elif level == "lower":
    col += direction * 2.0  # stay lateral to the heart shadow
  row += rng.uniform(-0.8, 0.8)
  col += rng.uniform(-1.5, 1.5)
  return float(row), float(col)


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
  """Smooth step from 0 (x << 0) to 1 (x >> 0), a logistic of x / width."""
  return 0.5 + 0.5 * np.tanh(x / (2.0 * width))


def _interpolation_matrix(low: int, high: int = IMAGE_SIZE) -> np.ndarray:
  """Linear interpolation weights of shape (high, low) that resample a grid."""
  positions = np.linspace(0.0, low - 1.0, high)
  lower = np.clip(np.floor(positions).astype(int), 0, low - 2)
  fraction = positions - lower
  matrix = np.zeros((high, low), dtype=np.float32)
  matrix[np.arange(high), lower] = 1.0 - fraction
  matrix[np.arange(high), lower + 1] = fraction
  return matrix


_UPSAMPLE = {low: _interpolation_matrix(low) for low in (6, 12, 20)}


def _smooth_noise(rng: np.random.Generator, low: int) -> np.ndarray:
  """Smooth zero-mean texture: a low x low normal grid upsampled bilinearly."""
  matrix = _UPSAMPLE[low]
  grid = rng.standard_normal((low, low)).astype(np.float32)
  return matrix @ grid @ matrix.T


def sample_chest_layout(rng: np.random.Generator) -> ChestLayout:
  """Sample the lung placement with small shifts and scaling."""
  scale = rng.uniform(0.97, 1.03)
  shift_row = rng.uniform(-1.0, 1.0)
  return ChestLayout(
      midline=IMAGE_SIZE / 2 + rng.uniform(-1.0, 1.0),
      lung_top=IMAGE_SIZE / 2 + shift_row - 23.0 * scale,
      lung_bottom=IMAGE_SIZE / 2 + shift_row + 23.0 * scale,
      lung_offset=14.5 * scale,
      lung_half_width=12.5 * scale,
  )


def _render_anatomy(
    rng: np.random.Generator, layout: ChestLayout
) -> np.ndarray:
  """Draw the body, lungs, heart, spine, ribs and texture on a 0..1 scale."""
  offset_cols = _COLS - layout.midline
  lung_center_row = (layout.lung_top + layout.lung_bottom) / 2
  lung_half_height = (layout.lung_bottom - layout.lung_top) / 2

  # A superellipse gives the squarer outline of shoulders and chest wall.
  body_level = (
      np.abs((_ROWS - 36.0) / 34.0) ** 3 + np.abs(offset_cols / 30.5) ** 3
  )
  body = _soft_step(1.0 - body_level, 0.06)

  # Each lung is a superellipse that narrows towards the apex.
  depth = np.clip((_ROWS - layout.lung_top) / (2 * lung_half_height), 0.0, 1.0)
  half_width = layout.lung_half_width * (0.78 + 0.22 * depth)
  lateral = np.abs(offset_cols) - layout.lung_offset
  exponent = 2.5
  lung_level = np.abs(lateral / half_width) ** exponent + np.abs(
      (_ROWS - lung_center_row) / lung_half_height
  ) ** exponent
  lungs = _soft_step(1.0 - lung_level, 0.12)

  # The heart sits low in the mediastinum and bulges into the left lung,
  # which is the image right, but stays medial to the left lower zone.
  heart_row = layout.lung_bottom - 9.0 + rng.uniform(-1.0, 1.0)
  heart_col = layout.midline + 2.0 + rng.uniform(-0.5, 0.5)
  heart_level = (
      ((_ROWS - heart_row) / 9.0) ** 2 + ((_COLS - heart_col) / 6.5) ** 2
  )
  heart = _soft_step(1.0 - heart_level, 0.1)
  lungs = lungs * (1.0 - heart)

  spine = _soft_step(3.0 - np.abs(offset_cols), 0.5) * body
  vertebra_phase = rng.uniform(0.0, 2 * np.pi)
  vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * _ROWS / 6.5 + vertebra_phase)

  # Ribs: thin bright arcs that rise from the spine and fall laterally,
  # repeated every `rib_spacing` rows on both sides of the spine.
  rib_spacing = 7.5 + rng.uniform(-0.5, 0.5)
  lateral_distance = np.abs(offset_cols)
  rib_rise = np.clip((lateral_distance - 3.0) / 26.0, 0.0, 1.0)
  rib_curve = 3.0 * np.sin(np.pi * rib_rise)
  rib_curve -= 0.25 * np.maximum(lateral_distance - 15.0, 0.0)
  right_phase, left_phase = rng.uniform(0.0, rib_spacing, size=2)
  rib_phase = np.where(offset_cols < 0, right_phase, left_phase)
  rib_distance = (
      np.mod(_ROWS + rib_curve - rib_phase, rib_spacing) - rib_spacing / 2
  )
  beside_spine = _soft_step(lateral_distance - 4.0, 1.0)
  ribs = np.exp(-((rib_distance / 0.9) ** 2)) * beside_spine

  image = 0.04 + 0.5 * body - 0.32 * lungs + 0.04 * heart
  image += 0.14 * spine * vertebrae
  image += 0.06 * ribs * body
  image += body * (0.03 * _smooth_noise(rng, 6) + 0.02 * _smooth_noise(rng, 12))
  image += 0.025 * lungs * _smooth_noise(rng, 20)
  return image


def _soft_disk(
    center: tuple[float, float], radius: float, edge: float
) -> np.ndarray:
  distance = np.hypot(_ROWS - center[0], _COLS - center[1])
  return _soft_step(radius - distance, edge)


def _render_finding(
    rng: np.random.Generator, finding: Finding
) -> tuple[np.ndarray, np.ndarray]:
  """Draw one finding.

  Returns
  -------
  added : np.ndarray
      float array to add to the image, on the 0..1 scale.
  mask : np.ndarray
      bool array of the finding's core pixels.
  """
  amplitude = _INTENSITY_AMPLITUDE[finding.intensity]
  radius = _RADIUS[finding.finding_type][SIZES.index(finding.size)]
  row, col = finding.center
  kind = finding.finding_type

  if kind == "nodule":
    profile = _soft_disk(finding.center, radius, 0.45)
    return amplitude * profile, profile > 0.5

  if kind == "mass":
    # The radius varies with the angle, which gives a lobulated outline.
    angle = np.arctan2(_ROWS - row, _COLS - col)
    phases = rng.uniform(0.0, 2 * np.pi, size=2)
    lobes = (
        0.15 * np.sin(3 * angle + phases[0])
        + 0.08 * np.sin(5 * angle + phases[1])
    )
    outline = radius * (1.0 + lobes)
    distance = np.hypot(_ROWS - row, _COLS - col)
    profile = _soft_step(outline - distance, 0.45)
    return amplitude * profile, profile > 0.5

  if kind == "cavity":
    wall_thickness = max(1.3, 0.35 * radius)
    outer = _soft_disk(finding.center, radius, 0.4)
    lumen = _soft_disk(finding.center, radius - wall_thickness, 0.4)
    wall = outer - lumen
    # The air-filled centre is darker than the surrounding lung.
    return amplitude * wall - 0.08 * lumen, wall > 0.5

  if kind == "calcification":
    num_dots = {"small": 3, "medium": 4, "large": 6}[finding.size]
    dots = _sample_separated_points(rng, finding.center, radius, num_dots, 1.6)
    profile = np.zeros_like(_ROWS)
    for dot in dots:
      profile = np.maximum(profile, _soft_disk(dot, 0.9, 0.3))
    return 1.5 * amplitude * profile, profile > 0.5

  if kind == "consolidation":
    angle = rng.uniform(0.0, np.pi)
    aspect = rng.uniform(0.85, 1.15)
    along = (_ROWS - row) * np.cos(angle) + (_COLS - col) * np.sin(angle)
    across = -(_ROWS - row) * np.sin(angle) + (_COLS - col) * np.cos(angle)
    distance = np.hypot(along * aspect, across / aspect)
    core = _soft_step(radius - distance, 0.7)
    mottling = 0.8 + 0.2 * np.clip(_smooth_noise(rng, 20), -1.0, 1.0)
    return amplitude * core * mottling, core > 0.5

  if kind == "linear_opacity":
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)], dtype=np.float32)
    along = (_ROWS - row) * direction[0] + (_COLS - col) * direction[1]
    along_clipped = np.clip(along, -radius, radius)
    distance = np.hypot(
        _ROWS - (row + along_clipped * direction[0]),
        _COLS - (col + along_clipped * direction[1]),
    )
    profile = _soft_step(0.8 - distance, 0.3)
    return 1.1 * amplitude * profile, profile > 0.5

  raise ValueError(
      f"Invalid finding type {kind!r}. Expected one of {FINDING_TYPES}."
  )


def _sample_separated_points(
    rng: np.random.Generator,
    center: tuple[float, float],
    radius: float,
    num_points: int,
    min_distance: float,
) -> list[tuple[float, float]]:
  """Sample points in a disk, rejecting those closer than `min_distance`.

  After a bounded number of rejections the distance check is dropped, so the
  result always has `num_points` points.
  """
  points: list[tuple[float, float]] = []
  for _ in range(50 * num_points):
    if len(points) == num_points:
      break
    distance = radius * np.sqrt(rng.uniform())
    angle = rng.uniform(0.0, 2 * np.pi)
    point = (
        center[0] + distance * np.sin(angle),
        center[1] + distance * np.cos(angle),
    )
    if all(
        np.hypot(point[0] - p[0], point[1] - p[1]) >= min_distance
        for p in points
    ):
      points.append(point)
  while len(points) < num_points:
    points.append(center)
  return points


def render_scan(
    rng: np.random.Generator, layout: ChestLayout, findings: Sequence[Finding]
) -> tuple[np.ndarray, np.ndarray]:
  """Render a scan with `findings`.

  Returns
  -------
  image : np.ndarray
      uint8 array of shape (IMAGE_SIZE, IMAGE_SIZE).
  masks : np.ndarray
      bool array of shape (len(findings), IMAGE_SIZE, IMAGE_SIZE).
  """
  image = _render_anatomy(rng, layout)
  masks = np.zeros((len(findings), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
  for i, finding in enumerate(findings):
    added, masks[i] = _render_finding(rng, finding)
    image += added

  contrast = rng.uniform(0.9, 1.1)
  brightness = rng.uniform(-0.04, 0.04)
  image = contrast * (image - 0.35) + 0.35 + brightness
  noise_level = rng.uniform(0.02, 0.035)
  noise = rng.standard_normal(image.shape).astype(np.float32)
  image += noise_level * noise
  image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
  return image, masks


def describe_finding(rng: np.random.Generator, finding: Finding) -> str:
  """Write one finding as a short phrase with randomly chosen synonyms."""

  def pick(options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]

  zone = pick(_ZONE_TEMPLATES).format(
      side=finding.side, level=pick(LEVEL_SYNONYMS[finding.level])
  )
  return pick(_FINDING_TEMPLATES).format(
      size=pick(SIZE_SYNONYMS[finding.size]),
      intensity=pick(INTENSITY_SYNONYMS[finding.intensity]),
      finding=pick(TYPE_SYNONYMS[finding.finding_type]),
      zone=zone,
  )


def write_caption(rng: np.random.Generator, findings: Sequence[Finding]) -> str:
  """Write a caption that lists `findings` in the given order."""
  if not 1 <= len(findings) <= MAX_FINDINGS:
    raise ValueError(
        f"Invalid number of findings {len(findings)}. A caption needs 1 to "
        f"{MAX_FINDINGS}."
    )
  phrases = [describe_finding(rng, finding) for finding in findings]
  templates = _CAPTION_TEMPLATES[len(findings)]
  caption = templates[rng.integers(len(templates))].format(*phrases)
  return caption[0].upper() + caption[1:]


def generate_example(
    rng: np.random.Generator, allow_held_out_pairs: bool = False
) -> Example:
  """Generate one scan, its findings and its caption from `rng`.

  Parameters
  ----------
  rng : np.random.Generator
      Source of all randomness. The same generator state gives the same
      example.
  allow_held_out_pairs : bool
      Whether finding types from one pair of `HELD_OUT_PAIRS` may occur in
      the same image. Only the test split allows them.
  """
  layout = sample_chest_layout(rng)
  findings = sample_findings(rng, layout, allow_held_out_pairs)
  image, masks = render_scan(rng, layout, findings)
  caption = write_caption(rng, findings)
  return Example(
      image=image, caption=caption, findings=tuple(findings), masks=masks
  )


def generate_split(
    split: str, num_examples: int, seed: int = DEFAULT_SEED
) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yield `(key, record)` for each example of `split`.

  Parameters
  ----------
  split : str
      One of `SPLITS`. Only "test" may contain the pairs in `HELD_OUT_PAIRS`.
  num_examples : int
      Number of examples to generate.
  seed : int
      Base seed shared by all splits.

  Yields
  ------
  key : str
      Stable example id such as "train-000123", also stored as record["id"].
  record : dict
      "id" (str), "image" (uint8 array of shape (IMAGE_SIZE, IMAGE_SIZE, 1)),
      "caption" (str), "findings" (list of finding type names in caption
      order) and "group" (SHA-1 hex digest of the image pixels, equal for
      identical images).
  """
  if split not in SPLITS:
    raise ValueError(f"Invalid split {split!r}. Expected one of {SPLITS}.")
  if num_examples < 0:
    raise ValueError(f"Invalid num_examples {num_examples}. It must be >= 0.")
  allow_held_out_pairs = split == "test"
  for index in range(num_examples):
    rng = example_rng(seed, split, index)
    example = generate_example(rng, allow_held_out_pairs)
    key = f"{split}-{index:06d}"
    record = {
        "id": key,
        "image": example.image[:, :, np.newaxis],
        "caption": example.caption,
        "findings": [finding.finding_type for finding in example.findings],
        "group": hashlib.sha1(
            example.image.tobytes(), usedforsecurity=False
        ).hexdigest(),
    }
    yield key, record

"""TFDS builder for DeepEyeNet, retinal images with keywords and descriptions.

DeepEyeNet (Huang et al., "DeepOpht", WACV 2021) is shared by its authors
on request; see the GitHub repository Jhhuangkay/DeepOpht-Medical-Report-
Generation-for-Retinal-Images-via-Deep-Models-and-Visual-Explanation. Its
layout:

    DeepEyeNet/
      DeepEyeNet_train.json   [{"eyenet0420/train_set/group41-177.jpg":
                                  {"keywords": "macular hole",
                                   "clinical-description":
                                       "43-year-old female, macular hole."}},
                               ...]
      DeepEyeNet_valid.json
      DeepEyeNet_test.json
      eyenet0420/train_set/group41-177.jpg
      eyenet0420/...     the images of the other splits, at their JSON paths

Each file is a JSON list of objects that map image paths, relative to the
manual directory, to annotations. An object usually contains one image.
One that contains several is read in order, and so is a file that is a
single object instead of a list. A record's id is its image path. The
caption is the clinical description, or the keywords with
caption_source="keywords". The `keywords` feature keeps the raw
comma-separated string, because that is lossless and the release documents
no escaping for a comma inside a keyword. DeepEyeNet_val.json is read where
DeepEyeNet_valid.json is absent.

    tfds build deepeyenet \\
        --imports shared_encoder_jax.data.builders.deepeyenet \\
        --manual_dir /data/DeepEyeNet
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from shared_encoder_jax.data.builders import image_text

CAPTION_SOURCES = ("clinical-description", "keywords")
# TFDS split -> the split names its file may have, in order of preference.
MANIFEST_SPLITS = {"train": ("train",), "validation": ("valid", "val"),
                   "test": ("test",)}


@dataclasses.dataclass
class DeepEyeNetConfig(image_text.ImageTextConfig):
  """Caption field and image folder of a DeepEyeNet copy.

  Attributes:
    caption_source: "clinical-description" or "keywords".
    image_dir: folder that the image paths are relative to, relative to the
      manual directory.
  """
  caption_source: str = "clinical-description"
  image_dir: str = ""


class DeepEyeNet(image_text.ImageTextBuilder):
  """DeepEyeNet: retinal images with expert keywords and descriptions."""

  # TFDS would derive "deep_eye_net" from the class name.
  name = "deepeyenet"
  BUILDER_CONFIGS = [
      DeepEyeNetConfig(name="default",
                       description="Captions are the clinical descriptions."),
      DeepEyeNetConfig(name="keywords", caption_source="keywords",
                       description="Captions are the keywords."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Request DeepEyeNet from its authors (deepeyenet.den@gmail.com), unzip "
      "it and pass the folder with DeepEyeNet_train.json, "
      "DeepEyeNet_valid.json, DeepEyeNet_test.json and eyenet0420/ as the "
      "manual directory.")

  def _extra_features(self):
    return {"keywords": tfds.features.Text(
        doc="The expert keywords, comma-separated, as in the release.")}

  def _split_records(self, root: epath.Path):
    config = self.builder_config
    if config.caption_source not in CAPTION_SOURCES:
      raise image_text.BuilderConfigError(
          f"caption_source={config.caption_source!r} in the builder config "
          f"is invalid; use one of {CAPTION_SOURCES}.")
    manifests = {}
    for split, names in MANIFEST_SPLITS.items():
      paths = [root / f"DeepEyeNet_{name}.json" for name in names]
      found = [path for path in paths if path.exists()]
      if not found:
        logging.warning("DeepEyeNet: %s not found; the %s split is left out.",
                        paths[0], split)
        continue
      manifests[split] = found[0]
    if not manifests:
      raise image_text.ManifestError(
          f"No DeepEyeNet manifest in {root}: expected DeepEyeNet_train.json, "
          "DeepEyeNet_valid.json and DeepEyeNet_test.json. Pass the folder "
          "that contains them as the manual directory.")
    return {split: self._records(root, manifest)
            for split, manifest in manifests.items()}

  def _records(self, root: epath.Path, manifest: epath.Path):
    config = self.builder_config
    for entry in _read_entries(manifest, config.caption_source):
      if isinstance(entry, image_text.Problem):
        yield entry
        continue
      origin, image, annotation = entry
      caption = annotation.get(config.caption_source)
      keywords = annotation.get("keywords", "")
      problem = None
      if not image.strip():
        problem = "empty image path"
      elif not isinstance(caption, str):
        problem = f"{config.caption_source!r} is missing or not a string"
      elif not isinstance(keywords, str):
        problem = "'keywords' is not a string"
      if problem:
        yield image_text.Problem(image_text.MALFORMED_ROW, origin, problem,
                                 image)
        continue
      yield image_text.Record(
          id=image, caption=caption,
          image=image_text.resolve_image(root, config.image_dir, image),
          origin=origin, features={"keywords": keywords.strip()})


def _read_entries(path: epath.Path, caption_source: str
                  ) -> Iterator[tuple[str, str, dict] | image_text.Problem]:
  """Yield (origin, image path, annotation) for each image in `path`.

  Raises:
    ManifestError: the file is empty or not JSON, or its first annotation
      lacks `caption_source`.
  """
  # Undecodable bytes become lone surrogates, which the base class reports
  # as invalid UTF-8 for the record that contains them.
  text = path.read_bytes().decode("utf-8", errors="surrogateescape")
  if not text.strip():
    raise image_text.ManifestError(f"Manifest {path} is empty.")
  try:
    items = json.loads(text)
  except json.JSONDecodeError as error:
    raise image_text.ManifestError(
        f"Manifest {path} is not valid JSON: {error}. Expected a list of "
        "objects that map image paths to annotations.") from None
  if isinstance(items, dict):
    items = [items]
  if not isinstance(items, list) or not items:
    raise image_text.ManifestError(
        f"Manifest {path} contains no images; expected a list of objects that "
        "map image paths to annotations.")

  checked_fields = False
  for number, item in enumerate(items):
    origin = f"{path}:item {number}"
    if not isinstance(item, dict) or not item:
      yield image_text.Problem(
          image_text.MALFORMED_ROW, origin,
          "expected an object that maps an image path to its annotation")
      continue
    for image, annotation in item.items():
      if not isinstance(annotation, dict):
        yield image_text.Problem(
            image_text.MALFORMED_ROW, origin,
            f"the annotation is a {type(annotation).__name__}, expected an "
            "object", image)
        continue
      if not checked_fields:
        # The first annotation is checked like a header, so a wrong field
        # name fails the whole manifest instead of skipping every record.
        if caption_source not in annotation:
          raise image_text.ManifestError(
              f"Manifest {path} lacks the field {caption_source!r}; the "
              f"fields of its first annotation are {sorted(annotation)}. "
              f"Set the builder config's caption_source to one of "
              f"{CAPTION_SOURCES}.")
        checked_fields = True
      yield origin, image, annotation

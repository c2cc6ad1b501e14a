"""TFDS builder for a user's own folder of images with a caption manifest.

The manual directory contains a manifest and the images:

    my_dataset/
      manifest.jsonl     {"image": "images/0001.png", "caption": "...",
                          "split": "train", "id": "0001", "label": "..."}
      images/0001.png

or a CSV with the same columns. Only `image` and `caption` are required
(the column names are builder config fields). Without a split column every
row goes to `default_split`; a manifest name with "{split}" in it, such as
"{split}.jsonl", reads one manifest per split instead. Split names "val",
"valid" and "dev" become "validation". Without an id column the id is the
image path plus "#n" for its n-th caption. Image paths are relative to
`image_dir`, which is relative to the manual directory.

    tfds build image_text_folder \\
        --imports shared_encoder_jax.data.builders.image_text_folder \\
        --manual_dir /data/my_dataset \\
        --config '{"name": "mine", "manifest": "captions.csv"}'
"""

from __future__ import annotations

import collections
import dataclasses

import tensorflow_datasets as tfds
from etils import epath

from shared_encoder_jax.data.builders import image_text

SPLIT_ALIASES = {"val": "validation", "valid": "validation",
                 "dev": "validation"}
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class ImageTextFolderConfig(image_text.ImageTextConfig):
  """Manifest location and column names of a folder dataset."""
  manifest: str = "manifest.jsonl"
  image_dir: str = ""
  image_key: str = "image"
  caption_key: str = "caption"
  id_key: str = "id"
  split_key: str = "split"
  label_key: str = "label"
  default_split: str = "train"


class ImageTextFolder(image_text.ImageTextBuilder):
  """Images with captions listed in a JSONL or CSV manifest."""

  BUILDER_CONFIGS = [ImageTextFolderConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the manifest (manifest.jsonl by default; see the builder config) "
      "and the images in the manual directory.")

  def _extra_features(self):
    return {"label": tfds.features.Text(
        doc="The row's label column, empty when absent.")}

  def _split_records(self, root: epath.Path):
    config = self.builder_config
    if "{split}" in config.manifest:
      manifests = {split: root / config.manifest.format(split=split)
                   for split in SPLITS}
      found = {split: path for split, path in manifests.items()
               if path.exists()}
      if not found:
        raise image_text.ManifestError(
            f"No manifest matches {root / config.manifest} for the splits "
            f"{list(SPLITS)}.")
      return {split: [item for _, item in self._records(root, path, split)]
              for split, path in found.items()}

    by_split = collections.defaultdict(list)
    for split, item in self._records(root, root / config.manifest, None):
      by_split[split].append(item)
    return dict(by_split)

  def _records(self, root, manifest, fixed_split):
    """Yield (split, record or problem) for each row of `manifest`."""
    config = self.builder_config
    required = (config.image_key, config.caption_key)
    occurrences = collections.Counter()
    for row in image_text.read_manifest(manifest, required):
      if isinstance(row, image_text.Problem):
        yield (fixed_split or config.default_split), row
        continue
      origin, values = row
      image = str(values[config.image_key])
      occurrences[image] += 1
      record_id = str(values.get(config.id_key) or "").strip()
      if not record_id:
        record_id = f"{image}#{occurrences[image] - 1}"
      split = fixed_split or _split_name(
          values.get(config.split_key), config.default_split)
      item = image_text.Record(
          id=record_id, caption=str(values[config.caption_key]),
          image=image_text.resolve_image(root, config.image_dir, image),
          origin=origin,
          features={"label": str(values.get(config.label_key) or "")})
      yield split, item


def _split_name(value, default: str) -> str:
  name = str(value or "").strip().lower() or default
  return SPLIT_ALIASES.get(name, name)

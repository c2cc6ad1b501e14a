"""TFDS builder for PMC-OA, subfigure-caption pairs from PubMed Central.

PMC-OA (Lin et al., "PMC-CLIP", MICCAI 2023) as released on the Hugging Face
Hub (axiong/pmc_oa): one manifest per split, and the images from images.zip,
which unpacks to caption_T060_filtered_top4_sep_v0_subfigures/.

    pmc_oa/
      train.jsonl      {"image": "PMC212319_Fig3_4.jpg",
                        "caption": "A. Real time image of ...",
                        "pmcid": "PMC212319",
                        "url_name": "1471-2121-4-13-3.jpg"}
      valid.jsonl
      test.jsonl
      caption_T060_filtered_top4_sep_v0_subfigures/PMC212319_Fig3_4.jpg

Splits train, validation (valid.*) and test. A split's manifest is
`<name>.jsonl`, or `<name>.csv` with the same columns when there is no JSONL
file. A split with neither is left out with a warning. Only `image` and
`caption` are read (the column names are config fields). The release has no
id column, so a record's id is its `image` value, the subfigure's file name;
a name that repeats is reported as a duplicate id. The config
`images_folder` reads copies that keep the images in images/.

    tfds build pmc_oa \\
        --imports shared_encoder_jax.data.builders.pmc_oa \\
        --manual_dir /data/pmc_oa --config images_folder
"""

from __future__ import annotations

import dataclasses

from absl import logging
from etils import epath

from shared_encoder_jax.data.builders import image_text

RELEASE_IMAGE_DIR = "caption_T060_filtered_top4_sep_v0_subfigures"
# TFDS split -> manifest name in the release.
MANIFEST_NAMES = {"train": "train", "validation": "valid", "test": "test"}
MANIFEST_SUFFIXES = (".jsonl", ".csv")


@dataclasses.dataclass
class PmcOaConfig(image_text.ImageTextConfig):
  """Image folder and manifest column names of a PMC-OA copy.

  Attributes:
    image_dir: folder of the images, relative to the manual directory.
    image_key: manifest column with the image file name.
    caption_key: manifest column with the caption.
    id_key: manifest column with the record id; empty: the `image_key`
      value.
  """
  image_dir: str = RELEASE_IMAGE_DIR
  image_key: str = "image"
  caption_key: str = "caption"
  id_key: str = ""


class PmcOa(image_text.ImageTextBuilder):
  """PMC-OA: subfigures from PubMed Central articles with their captions."""

  BUILDER_CONFIGS = [
      PmcOaConfig(name="default",
                  description=f"Images in {RELEASE_IMAGE_DIR}/."),
      PmcOaConfig(name="images_folder", image_dir="images",
                  description="Images in images/."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download train.jsonl, valid.jsonl, test.jsonl and images.zip from the "
      "Hugging Face dataset axiong/pmc_oa, unzip images.zip in the same "
      f"folder (it unpacks to {RELEASE_IMAGE_DIR}/) and pass that folder as "
      "the manual directory.")

  def _split_records(self, root: epath.Path):
    manifests = {}
    for split, name in MANIFEST_NAMES.items():
      manifest = _find_manifest(root, name)
      if manifest is None:
        logging.warning("PMC-OA: no %s.jsonl or %s.csv in %s; the %s split "
                        "is left out.", name, name, root, split)
        continue
      manifests[split] = manifest
    if not manifests:
      raise image_text.ManifestError(
          f"No PMC-OA manifest in {root}: expected train.jsonl, "
          "valid.jsonl and test.jsonl (or .csv). Pass the folder that "
          "contains them as the manual directory.")
    return {split: self._records(root, manifest)
            for split, manifest in manifests.items()}

  def _records(self, root: epath.Path, manifest: epath.Path):
    config = self.builder_config
    required = [config.image_key, config.caption_key]
    if config.id_key:
      required.append(config.id_key)
    for row in image_text.read_manifest(manifest, required):
      if isinstance(row, image_text.Problem):
        yield row
        continue
      origin, values = row
      image = str(values[config.image_key]).strip()
      if not image:
        yield image_text.Problem(image_text.MALFORMED_ROW, origin,
                                 f"empty {config.image_key!r} field")
        continue
      record_id = str(values[config.id_key]).strip() if config.id_key else ""
      yield image_text.Record(
          id=record_id or image,
          caption=str(values[config.caption_key]),
          image=image_text.resolve_image(root, config.image_dir, image),
          origin=origin)


def _find_manifest(root: epath.Path, name: str) -> epath.Path | None:
  for suffix in MANIFEST_SUFFIXES:
    path = root / f"{name}{suffix}"
    if path.exists():
      return path
  return None

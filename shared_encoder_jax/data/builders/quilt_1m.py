"""TFDS builder for Quilt-1M, histopathology images with captions.

Quilt-1M (Ikezogwo et al., NeurIPS 2023) joins four sources, named in its
`subset` column: quilt (frames of histopathology videos on YouTube with
their narration), openpath (Twitter), pubmed (research papers) and laion
(the web). The release (Zenodo record 8239942 with images resized to
512x512 px, or the full-size copy that the authors share on request) is one
CSV and a folder of images:

    quilt/
      quilt_1M_lookup.csv   ,caption,image_path,subset,split,pathology,
                            roi_text,noisy_text,corrected_text,
                            med_umls_ids,magnification,height,width
      quilt_1m/<image_path>

The unnamed first column is a row number that pandas wrote. `split` is
"train" or "val". The CSV has no test split, so the dataset has the splits
train and validation only. One image_path can appear in several rows with
different captions, so a record's id is its image_path plus "#n" for the
n-th row that names it. Rows are counted over the whole CSV in file order,
so ids do not change with `subsets`.

    tfds build quilt_1m \\
        --imports shared_encoder_jax.data.builders.quilt_1m \\
        --manual_dir /data/quilt \\
        --config '{"name": "no_laion",
                   "subsets": ["quilt", "openpath", "pubmed"]}'
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from shared_encoder_jax.data.builders import image_text

SUBSETS = ("quilt", "openpath", "pubmed", "laion")
# TFDS split -> value of the CSV's split column.
SPLIT_VALUES = {"train": "train", "validation": "val"}
COLUMNS = ("image_path", "caption", "split", "subset")


@dataclasses.dataclass
class Quilt1MConfig(image_text.ImageTextConfig):
  """CSV, image folder and sources of a Quilt-1M copy.

  Attributes:
    manifest: the CSV, relative to the manual directory.
    image_dir: folder that image_path is relative to, relative to the
      manual directory.
    subsets: values of the subset column to keep: any of "quilt",
      "openpath", "pubmed" and "laion".
  """
  manifest: str = "quilt_1M_lookup.csv"
  image_dir: str = "quilt_1m"
  subsets: Sequence[str] = SUBSETS


class Quilt1M(image_text.ImageTextBuilder):
  """Quilt-1M: histopathology images from videos, tweets, papers and the web."""

  # TFDS would derive "quilt1_m" from the class name.
  name = "quilt_1m"
  BUILDER_CONFIGS = [Quilt1MConfig(name="default",
                                   description="All four sources.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Request Quilt-1M (https://quilt1m.github.io), put quilt_1M_lookup.csv "
      "in a folder, unzip the image archives there so that the images are in "
      "quilt_1m/, and pass that folder as the manual directory.")

  def _extra_features(self):
    return {"subset": tfds.features.Text(
        doc='Source: "quilt", "openpath", "pubmed" or "laion".')}

  def _split_records(self, root: epath.Path):
    config = self.builder_config
    subsets = image_text.check_subsets(config.subsets, SUBSETS)
    manifest = root / config.manifest
    if not manifest.exists():
      raise image_text.ManifestError(
          f"Manifest {manifest} not found. Pass the folder that contains "
          "quilt_1M_lookup.csv as the manual directory, or set the builder "
          "config's manifest.")
    # Each split reads the CSV once, which keeps only one row in memory
    # beyond the file's text.
    return {split: self._records(root, manifest, split, subsets)
            for split in SPLIT_VALUES}

  def _records(self, root: epath.Path, manifest: epath.Path, split: str,
               subsets: tuple[str, ...]):
    """Yield the records of `split`.

    Rows that belong to no split (malformed, or with an unknown split
    value) are reported with the train split only, so each is counted
    once.
    """
    config = self.builder_config
    split_value = SPLIT_VALUES[split]
    report_unsplit = split == "train"
    occurrences = collections.Counter()
    unknown_subsets = collections.Counter()
    for row in image_text.read_manifest(manifest, COLUMNS):
      if isinstance(row, image_text.Problem):
        if report_unsplit:
          yield row
        continue
      origin, values = row
      image = values["image_path"].strip()
      occurrences[image] += 1
      row_split = values["split"].strip()
      if row_split not in SPLIT_VALUES.values():
        if report_unsplit:
          yield image_text.Problem(
              image_text.MALFORMED_ROW, origin,
              f"split {row_split!r} is neither 'train' nor 'val'")
        continue
      subset = values["subset"].strip()
      if subset not in SUBSETS:
        unknown_subsets[subset] += 1
      if row_split != split_value or subset not in subsets:
        continue
      if not image:
        yield image_text.Problem(image_text.MALFORMED_ROW, origin,
                                 "empty 'image_path' field")
        continue
      yield image_text.Record(
          id=f"{image}#{occurrences[image] - 1}",
          caption=values["caption"],
          image=image_text.resolve_image(root, config.image_dir, image),
          origin=origin, features={"subset": subset})
    if unknown_subsets and report_unsplit:
      logging.warning("Quilt-1M: %s left out rows whose subset is not one of "
                      "%s: %s", manifest, SUBSETS, dict(unknown_subsets))

"""TFDS builders for ROCO and ROCOv2, radiology figures from PubMed Central.

ROCO (Pelka et al., LABELS 2018) is the GitHub repository
razorx89/roco-dataset: captions and download links per split and subset,
and the images that its scripts/fetch.py downloads next to them.

    roco-dataset/data/
      train/radiology/
        captions.txt   ROCO_00020<TAB> Axial computed tomography scan of ...
        dlinks.txt     ROCO_00020<TAB>wget -r ftp://ftp.ncbi.nlm.nih.gov/pub/
                       pmc/oa_package/1e/ed/PMC3970251.tar.gz -P /path/to/Dir
                       <TAB>CRIONM2014-931546.003.jpg
        images/ROCO_00020.jpg
      train/non-radiology/...
      validation/..., test/...

Neither text file has a header, and a caption is the text after the first
tab. Since January 2022 fetch.py saves each image as images/<ROCO id>.jpg;
before, it used images/<PMCID>_<file name in the article's archive>. The
builder joins each caption to its dlinks.txt row and tries both names, the
id first. The manual directory is the repository clone or its data/
folder.

The repository's first commit named the files after split and subset, e.g.
captions_tp_train_revised.txt and dlinks_fp_val_revised.txt (tp:
radiology, fp: non-radiology); the next commit renamed them to captions.txt
and dlinks.txt without changing their contents. Either name is read, and
`prefer_revised` picks the *_revised.txt file in a folder that has both.

    tfds build roco \\
        --imports shared_encoder_jax.data.builders.roco \\
        --manual_dir /data/roco-dataset --config all

ROCOv2 (Rückert et al., Scientific Data 2024) is a separate release on
Zenodo with its own ids, files and image names, so it is a separate builder,
`roco_v2`, rather than a config of this one:

    rocov2/
      train_captions.csv  ID,Caption
                          ROCOv2_2023_train_000001,Head CT demonstrating ...
      valid_captions.csv
      test_captions.csv
      train/ROCOv2_2023_train_000001.jpg
      valid/...
      test/...

Copies that keep the unzipped archives in their own folders
(train_images/train/...) set `image_dir` to "{split}_images/{split}".

    tfds build roco_v2 \\
        --imports shared_encoder_jax.data.builders.roco \\
        --manual_dir /data/rocov2
"""

from __future__ import annotations

import dataclasses
import errno
import functools
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from shared_encoder_jax.data import image_decoding
from shared_encoder_jax.data.builders import image_text

SUBSETS = ("radiology", "non-radiology")
SPLITS = ("train", "validation", "test")
# Codes for subset and split in the file names of the repository's first
# commit, e.g. captions_tp_val_revised.txt.
_REVISED_SUBSET_CODES = {"radiology": "tp", "non-radiology": "fp"}
_REVISED_SPLIT_CODES = {"train": "train", "validation": "val", "test": "test"}
_ARCHIVE_SUFFIX = ".tar.gz"


@dataclasses.dataclass
class RocoConfig(image_text.ImageTextConfig):
  """Subsets, image folder and file names of a ROCO copy.

  Attributes:
    subsets: "radiology" and/or "non-radiology".
    image_subdir: image folder inside each split/subset folder (the
      --subdir option of fetch.py, "images" by default).
    prefer_revised: in a folder that has both, read
      captions_<tp|fp>_<split>_revised.txt and dlinks_..._revised.txt
      instead of captions.txt and dlinks.txt.
  """
  subsets: Sequence[str] = ("radiology",)
  image_subdir: str = "images"
  prefer_revised: bool = False


@dataclasses.dataclass(frozen=True)
class _Link:
  """The archive and file name of one image, from a dlinks.txt row."""
  pmcid: str
  file_name: str


class Roco(image_text.ImageTextBuilder):
  """ROCO: PubMed Central figures (radiology or not) with their captions."""

  BUILDER_CONFIGS = [
      RocoConfig(name="default", description="The radiology subset."),
      RocoConfig(name="all", subsets=SUBSETS,
                 description="The radiology and non-radiology subsets."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Clone https://github.com/razorx89/roco-dataset, run "
      "`python scripts/fetch.py` in it to download the images, and pass the "
      "clone (or its data/ folder) as the manual directory.")

  def _extra_features(self):
    return {"subset": tfds.features.Text(
        doc='"radiology" or "non-radiology".')}

  def _split_records(self, root: epath.Path):
    config = self.builder_config
    subsets = image_text.check_subsets(config.subsets, SUBSETS)
    data = root / "data" if (root / "data").is_dir() else root
    # Find every file now, so that a missing one fails before any split
    # is written.
    files = {}
    for split in SPLITS:
      for subset in subsets:
        folder = data / split / subset
        files[split, subset] = (
            self._find_text_file(folder, "captions", split, subset),
            self._find_text_file(folder, "dlinks", split, subset))
    return {split: self._records(data, split, subsets, files)
            for split in SPLITS}

  def _find_text_file(self, folder: epath.Path, kind: str, split: str,
                      subset: str) -> epath.Path:
    plain = folder / f"{kind}.txt"
    revised = folder / (f"{kind}_{_REVISED_SUBSET_CODES[subset]}_"
                        f"{_REVISED_SPLIT_CODES[split]}_revised.txt")
    order = ((revised, plain) if self.builder_config.prefer_revised
             else (plain, revised))
    for path in order:
      if path.exists():
        return path
    raise image_text.ManifestError(
        f"ROCO: neither {plain} nor {revised.name} exists. Pass the "
        "roco-dataset clone (or its data/ folder) as the manual directory, "
        "or change the builder config's subsets.")

  def _records(self, data: epath.Path, split: str, subsets: Sequence[str],
               files: dict) -> Iterator[image_text.Record | image_text.Problem]:
    config = self.builder_config
    for subset in subsets:
      captions, dlinks = files[split, subset]
      links = _read_dlinks(dlinks)
      image_folder = data / split / subset / config.image_subdir
      for origin, line in _text_lines(captions):
        record_id, tab, caption = line.partition("\t")
        record_id = record_id.strip()
        if not tab or not record_id:
          yield image_text.Problem(
              image_text.MALFORMED_ROW, origin,
              "expected '<ROCO id><TAB><caption>'")
          continue
        candidates = [image_folder / f"{record_id}.jpg"]
        link = links.get(record_id)
        if link is not None:
          candidates.append(image_folder / f"{link.pmcid}_{link.file_name}")
        yield image_text.Record(
            id=record_id, caption=caption,
            image=functools.partial(_read_first_image, tuple(candidates)),
            origin=origin, features={"subset": subset})


def _text_lines(path: epath.Path) -> Iterator[tuple[str, str]]:
  """Yield ("path:line", text) for each non-blank line of a ROCO text file.

  Lines end only at "\\n" (or "\\r\\n"): `str.splitlines` would also break
  captions at characters such as U+2028.
  """
  text = path.read_bytes().decode("utf-8", errors="surrogateescape")
  for number, line in enumerate(text.split("\n"), start=1):
    line = line.rstrip("\r")
    if line.strip():
      yield f"{path}:{number}", line


def _read_dlinks(path: epath.Path) -> dict[str, _Link]:
  """Map each ROCO id in dlinks.txt to its image's archive and file name.

  A row is "<id><TAB><download command naming PMC....tar.gz><TAB><file
  name>". Rows that do not parse are logged and left out; their records
  then only try images/<id>.jpg.
  """
  links = {}
  for origin, line in _text_lines(path):
    fields = line.split("\t")
    archive = ""
    if len(fields) >= 3:
      archive = next((word for word in fields[1].split()
                      if word.endswith(_ARCHIVE_SUFFIX)), "")
    record_id = fields[0].strip()
    file_name = fields[-1].strip()
    if not (archive and record_id and file_name):
      logging.log_first_n(
          logging.WARNING,
          "ROCO: ignoring %s, which is not '<id><TAB><download command>"
          "<TAB><file name>'.", 20, origin)
      continue
    pmcid = archive.rsplit("/", 1)[-1][:-len(_ARCHIVE_SUFFIX)]
    links[record_id] = _Link(pmcid, file_name)
  return links


def _read_first_image(candidates: Sequence[epath.Path]) -> np.ndarray:
  """Decode the first of `candidates` that exists."""
  for path in candidates:
    if path.exists():
      return image_decoding.read_image(path)
  names = " or ".join(str(path) for path in candidates)
  raise FileNotFoundError(errno.ENOENT, "image not found", names)


# -- ROCOv2 -----------------------------------------------------------------

# TFDS split -> split name in the ROCOv2 file and folder names.
ROCO_V2_SPLITS = {"train": "train", "validation": "valid", "test": "test"}


@dataclasses.dataclass
class RocoV2Config(image_text.ImageTextConfig):
  """Image folder and caption column names of a ROCOv2 copy.

  Attributes:
    image_dir: image folder of a split, relative to the manual directory;
      "{split}" becomes train, valid or test.
    id_key: caption CSV column with the image id, the image's file name
      without ".jpg".
    caption_key: caption CSV column with the caption.
  """
  image_dir: str = "{split}"
  id_key: str = "ID"
  caption_key: str = "Caption"


class RocoV2(image_text.ImageTextBuilder):
  """ROCOv2: radiology figures from PubMed Central with their captions."""

  BUILDER_CONFIGS = [RocoV2Config(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the ROCOv2 release from Zenodo: {train,valid,test}_"
      "captions.csv and {train,valid,test}_images.zip. Unzip the images "
      "next to the CSV files (into train/, valid/ and test/) and pass that "
      "folder as the manual directory.")

  def _split_records(self, root: epath.Path):
    manifests = {}
    for split, name in ROCO_V2_SPLITS.items():
      manifest = root / f"{name}_captions.csv"
      if not manifest.exists():
        logging.warning("ROCOv2: %s not found; the %s split is left out.",
                        manifest, split)
        continue
      manifests[split] = manifest
    if not manifests:
      raise image_text.ManifestError(
          f"No ROCOv2 caption file in {root}: expected train_captions.csv, "
          "valid_captions.csv and test_captions.csv. Pass the folder that "
          "contains them as the manual directory.")
    return {split: self._records(root, ROCO_V2_SPLITS[split], manifest)
            for split, manifest in manifests.items()}

  def _records(self, root: epath.Path, name: str, manifest: epath.Path):
    config = self.builder_config
    image_dir = config.image_dir.format(split=name)
    columns = (config.id_key, config.caption_key)
    for row in image_text.read_manifest(manifest, columns):
      if isinstance(row, image_text.Problem):
        yield row
        continue
      origin, values = row
      record_id = str(values[config.id_key]).strip()
      if not record_id:
        yield image_text.Problem(image_text.MALFORMED_ROW, origin,
                                 f"empty {config.id_key!r} field")
        continue
      yield image_text.Record(
          id=record_id, caption=str(values[config.caption_key]),
          image=image_text.resolve_image(root, image_dir, f"{record_id}.jpg"),
          origin=origin)

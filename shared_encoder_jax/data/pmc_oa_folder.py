"""Write the embedded synthetic dataset as a folder in PMC-OA's release layout.

    python -m shared_encoder_jax.data.pmc_oa_folder --output data/pmc_oa_synthetic

writes

    data/pmc_oa_synthetic/
      train.jsonl   {"image": "PMC100000_Fig1_1.jpg", "caption": "...",
                     "pmcid": "PMC100000", "url_name": "..."}
      valid.jsonl
      test.jsonl
      caption_T060_filtered_top4_sep_v0_subfigures/PMC100000_Fig1_1.jpg

so the `pmc_oa` builder, and a training run, can be tried end to end without
the real dataset (see the README). Images are JPEG (quality 95) in RGB as in
the release. The data is synthetic and describes no patient.
"""

from __future__ import annotations

import argparse
import json
import sys

from etils import epath
from PIL import Image

from shared_encoder_jax.data import synthetic_radiology
from shared_encoder_jax.data.builders import pmc_oa

# synthetic_radiology split -> manifest name in the PMC-OA release.
MANIFESTS = {"train": "train", "validation": "valid", "test": "test"}
SIZES = {"default": synthetic_radiology.NUM_TRAIN_EXAMPLES, "small": 1_000}


def subfigure_name(split: str, index: int) -> tuple[str, str]:
  """(pmcid, file name) of an example, unique across the splits."""
  offset = {"train": 100_000, "validation": 300_000, "test": 400_000}[split]
  article, figure = divmod(index, 4)
  pmcid = f"PMC{offset + article}"
  return pmcid, f"{pmcid}_Fig{figure // 2 + 1}_{figure % 2 + 1}.jpg"


def write_folder(output: str, num_train: int,
                 seed: int = synthetic_radiology.DEFAULT_SEED) -> dict:
  """Write the folder; return the number of examples per manifest."""
  root = epath.Path(output)
  images = root / pmc_oa.RELEASE_IMAGE_DIR
  images.mkdir(parents=True, exist_ok=True)
  sizes = {"train": num_train,
           "validation": synthetic_radiology.NUM_VALIDATION_EXAMPLES,
           "test": synthetic_radiology.NUM_TEST_EXAMPLES}
  counts = {}
  for split, manifest_name in MANIFESTS.items():
    lines = []
    records = synthetic_radiology.generate_split(split, sizes[split], seed)
    for index, (_, record) in enumerate(records):
      pmcid, name = subfigure_name(split, index)
      image = Image.fromarray(record["image"][:, :, 0]).convert("RGB")
      image.save(images / name, format="JPEG", quality=95)
      lines.append(json.dumps({"image": name, "caption": record["caption"],
                               "pmcid": pmcid,
                               "url_name": f"{pmcid.lower()}-{index}.jpg"}))
    # Written last, through a temporary file: an interrupted run leaves no
    # manifest that lists missing images.
    manifest = root / f"{manifest_name}.jsonl"
    temporary = root / f"{manifest_name}.jsonl.tmp"
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(manifest)
    counts[manifest.name] = len(lines)
  return counts


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True,
                      help="folder to write (created if missing)")
  parser.add_argument("--size", choices=sorted(SIZES), default="default",
                      help="training examples: default 20000, small 1000")
  args = parser.parse_args(argv)
  root = epath.Path(args.output)
  if any((root / f"{name}.jsonl").exists() for name in MANIFESTS.values()):
    sys.exit(f"{root} already holds PMC-OA manifests; choose another "
             "--output or delete it first.")
  counts = write_folder(args.output, SIZES[args.size])
  print(f"Wrote {counts} to {root}.")


if __name__ == "__main__":
  main()

"""Input pipeline: TFDS array_record data read with random access by grain.

Training batches are a pure function of (data seed, batch position): batch
`p` is `dataset[p]` of a shuffled, repeated, batched `grain.MapDataset`, with
a fresh shuffle every epoch. A checkpoint therefore only needs the position
(the number of batches consumed) to resume with exactly the examples an
uninterrupted run would have seen. Training drops the last partial batch of
each pass over the data; evaluation pads the last batch and masks the padding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from typing import Iterator

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from shared_encoder_jax import preprocessing
from shared_encoder_jax import tokenizer as tokenizer_lib

# Modules that define the TFDS builders this package ships, by dataset name.
# Importing a module registers its builder with TFDS.
BUILDER_MODULES = {
    "synthetic_radiology":
        "shared_encoder_jax.data.synthetic_radiology_builder",
}


class DatasetError(ValueError):
  """A dataset is missing, unknown or lacks a required feature."""


def load_builder(data_config) -> tfds.core.DatasetBuilder:
  """Return the dataset's builder, preparing the data once if needed."""
  name = data_config.name
  base_name = name.split("/")[0]  # "name/builder_config" selects a config
  if base_name in BUILDER_MODULES:
    importlib.import_module(BUILDER_MODULES[base_name])
  try:
    builder = tfds.builder(name, data_dir=data_config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(
        f"data.name={name!r} is not a known TFDS dataset; the builders this "
        f"package ships are {sorted(BUILDER_MODULES)}.") from None
  if not builder.is_prepared():
    logging.info("Preparing dataset %s in %s (once).", name,
                 data_config.data_dir)
    builder.download_and_prepare(
        file_format=tfds.core.FileFormat.ARRAY_RECORD)
  for key in (data_config.image_key, data_config.caption_key,
              data_config.id_key):
    if key not in builder.info.features:
      raise DatasetError(
          f"Dataset {name!r} has no feature {key!r} (set in data.*_key); "
          f"its features are {sorted(builder.info.features)}.")
  return builder


def split_size(builder, split: str) -> int:
  if split not in builder.info.splits:
    raise DatasetError(
        f"Dataset {builder.name!r} has no split {split!r}; its splits are "
        f"{sorted(builder.info.splits)}. Check data.*_split.")
  return builder.info.splits[split].num_examples


def data_source(builder, split: str, skip_image: bool = False):
  """Random-access source of decoded examples of one split."""
  split_size(builder, split)
  decoders = None
  if skip_image:
    decoders = {key: tfds.decode.SkipDecoding()
                for key, feature in builder.info.features.items()
                if isinstance(feature, tfds.features.Image)}
  return builder.as_data_source(split, decoders=decoders)


def read_captions(builder, split: str, caption_key: str, limit: int,
                  seed: int) -> list[str]:
  """Up to `limit` captions of a split, a seeded random subset if larger."""
  source = data_source(builder, split, skip_image=True)
  indices = np.arange(len(source))
  if len(indices) > limit:
    indices = np.sort(np.random.default_rng(seed).choice(
        indices, limit, replace=False))
  return [_text(source[int(i)][caption_key]) for i in indices]


def fingerprint(builder) -> dict:
  """Name, version, split sizes and a SHA-256 of the prepared data files."""
  digest = hashlib.sha256()
  data_dir = builder.data_dir
  for file_name in sorted(os.listdir(data_dir)):
    path = os.path.join(data_dir, file_name)
    if not os.path.isfile(path) or file_name.endswith(".json"):
      continue
    digest.update(file_name.encode())
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  return {"name": builder.name, "version": str(builder.version),
          "data_dir": data_dir,
          "splits": {name: info.num_examples
                     for name, info in builder.info.splits.items()},
          "sha256": digest.hexdigest()}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class ExampleTransform:
  """Turns one decoded TFDS example into model inputs."""
  tokenizer: tokenizer_lib.Tokenizer
  image_size: int
  mean: tuple
  std: tuple
  image_key: str
  caption_key: str

  def __call__(self, example):
    image = preprocessing.preprocess_image(
        example[self.image_key], self.image_size, self.mean, self.std)
    text = self.tokenizer.tokenize([_text(example[self.caption_key])])[0]
    return {"image": image, "text": text}


def example_transform(config, tokenizer) -> ExampleTransform:
  return ExampleTransform(
      tokenizer=tokenizer, image_size=config.model.image_size,
      mean=tuple(config.data.image_mean), std=tuple(config.data.image_std),
      image_key=config.data.image_key, caption_key=config.data.caption_key)


def training_dataset(source, transform: ExampleTransform, batch_size: int,
                     seed: int) -> grain.MapDataset:
  """Infinite dataset of training batches, indexable by batch position."""
  if len(source) < batch_size:
    raise DatasetError(
        f"The training split has {len(source)} examples, fewer than "
        f"batch_size={batch_size}; lower batch_size.")
  return (grain.MapDataset.source(source).seed(seed).shuffle().repeat()
          .map(transform).batch(batch_size, drop_remainder=True))


def training_batches(dataset: grain.MapDataset, position: int,
                     num_threads: int) -> Iterator[dict]:
  """Iterate batches from `position` on, decoding ahead in threads."""
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=4 * max(num_threads, 1))
  return iter(dataset[position:].to_iter_dataset(options))


def evaluation_batches(source, transform: ExampleTransform, batch_size: int,
                       num_threads: int) -> Iterator[dict]:
  """Batches of a whole split in order; the last one padded.

  Each batch has a boolean `mask` that is False on padding rows.
  """
  dataset = grain.MapDataset.source(source).map(transform).batch(
      batch_size, drop_remainder=False)
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=2 * max(num_threads, 1))
  for batch in dataset.to_iter_dataset(options):
    size = len(batch["text"])
    padding = batch_size - size
    batch = {key: np.concatenate(
        [value, np.zeros((padding,) + value.shape[1:], value.dtype)])
             for key, value in batch.items()}
    batch["mask"] = np.arange(batch_size) < size
    yield batch


def to_device(batch: dict, sharding) -> dict:
  """Place a global batch on the mesh, split along the batch dimension.

  Every process has the whole global batch in host memory and copies only
  the rows of its own devices.
  """
  # NOTE: with several processes each one decodes the whole global batch;
  # reading a disjoint shard per process would save that work.
  return {key: jax.make_array_from_callback(
      value.shape, sharding, lambda index, value=value: value[index])
          for key, value in batch.items() if key != "mask"}

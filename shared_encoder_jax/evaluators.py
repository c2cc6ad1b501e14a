"""Evaluators by name, run on an embedder and one split of a dataset.

  embedder = CheckpointEmbedder(workdir)      # or BundleEmbedder(directory)
  dataset = Dataset.load(data_config)         # a `config.data` group
  metrics = evaluate("zero_shot", embedder, dataset, "test", Options())

Evaluators (`EVALUATORS`):
  retrieval     image↔text recall@K, median rank and validation loss. When
                the dataset has a `group` feature, every pair of the
                query's group counts as a hit (`evaluation.py`).
  zero_shot     single-label accuracy on the examples of the split with
                exactly one finding of a `findings` Sequence(ClassLabel)
                feature, up to `zero_shot_per_class` per class, first in
                split order. Multi-label CheXpert AUROC for datasets with a
                `chexpert` feature (`zero_shot.py`).
  linear_probe  logistic regression on image embeddings of single-label
                examples: fit on the train split (at most `probe_max_train`
                examples, balanced per class), C chosen on the validation
                split, scored on the evaluated split (`linear_probe.py`).

An embedder has `embed_pairs(examples)`, `embed_images(examples)`,
`embed_texts(texts)`, `logit_scale`, `logit_bias` and `description`.
`examples` is a random-access sequence of dicts with "image" (encoded bytes
or a uint8 array) and "caption", as `Dataset.examples` returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from shared_encoder_jax import bundle as bundle_lib
from shared_encoder_jax import evaluation
from shared_encoder_jax import linear_probe as linear_probe_lib
from shared_encoder_jax import sharding as sharding_lib
from shared_encoder_jax import train as train_lib
from shared_encoder_jax import train_step as train_step_lib
from shared_encoder_jax import zero_shot as zero_shot_lib
from shared_encoder_jax.data import image_decoding
from shared_encoder_jax.data import input_pipeline
from shared_encoder_jax.data.builders import mimic_cxr


class EvaluationError(ValueError):
  """An evaluator cannot run on this dataset, split or option."""


@dataclasses.dataclass(frozen=True)
class Options:
  """Settings of the evaluators, with the documented defaults.

  `recall_ks` None means the checkpoint's `config.recall_ks`, or
  `DEFAULT_RECALL_KS` for a bundle. `probe_per_class` caps the linear
  probe's validation and evaluated examples per class. `probe_shots` None
  entries mean all training examples.
  """
  recall_ks: tuple[int, ...] | None = None
  group_key: str = "group"
  class_key: str = "findings"
  templates: tuple[str, ...] = zero_shot_lib.RADIOLOGY_TEMPLATES
  zero_shot_per_class: int = 200
  uncertain: str = "exclude"
  blank_as_negative: bool = False
  probe_max_train: int = 2000
  probe_per_class: int = 200
  probe_shots: tuple[int | None, ...] = (1, 4, 16, None)
  probe_seed: int = 0
  c_grid: tuple[float, ...] = linear_probe_lib.C_GRID


DEFAULT_RECALL_KS = (1, 5, 10, 50, 200)
# CheXpert's "No Finding" has no sensible negative prompt ("no no finding"),
# so the multi-label evaluator leaves it out.
MULTI_LABEL_EXCLUDED = ("No Finding",)


class ExampleView:
  """Random-access view of chosen examples of a split, with fixed keys.

  Item i is {"image", "caption", "id"} of source example `indices[i]`,
  read from the dataset's `image_key` and `caption_key`.
  """

  def __init__(self, source, indices: np.ndarray, image_key: str,
               caption_key: str):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.image_key = image_key
    self.caption_key = caption_key

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, position: int) -> dict:
    index = int(self.indices[position])
    example = self.source[index]
    return {"image": example[self.image_key],
            "caption": example[self.caption_key], "id": str(index)}


class Dataset:
  """A prepared TFDS dataset with its `config.data` settings."""

  def __init__(self, builder, data_config):
    self.builder = builder
    self.data_config = data_config
    self._sources = {}

  @classmethod
  def load(cls, data_config) -> "Dataset":
    return cls(input_pipeline.load_builder(data_config), data_config)

  @property
  def name(self) -> str:
    return self.data_config.name

  @property
  def features(self):
    return self.builder.info.features

  def source(self, split: str):
    """Random-access source of the split, images left encoded."""
    if split not in self._sources:
      self._sources[split] = input_pipeline.data_source(self.builder, split,
                                                        skip_image=True)
    return self._sources[split]

  def examples(self, split: str, indices: np.ndarray | None = None
               ) -> ExampleView:
    source = self.source(split)
    if indices is None:
      indices = np.arange(len(source))
    return ExampleView(source, indices, self.data_config.image_key,
                       self.data_config.caption_key)

  def read_feature(self, split: str, key: str) -> Iterator:
    """Yield the `key` feature of each example of the split, in order."""
    source = self.source(split)
    for index in range(len(source)):
      yield source[index][key]

  def class_names(self, key: str) -> tuple[str, ...] | None:
    """Names of a Sequence(ClassLabel) or ClassLabel feature, else None."""
    feature = self.features[key] if key in self.features else None
    if isinstance(feature, tfds.features.Sequence):
      feature = feature.feature
    if isinstance(feature, tfds.features.ClassLabel):
      return tuple(feature.names)
    return None


class CheckpointEmbedder:
  """Embeds with a training checkpoint on the device mesh.

  Images go through the input pipeline's evaluation transform and batches
  through `evaluation.embed_batches`, as in the evaluation during training.
  """

  def __init__(self, workdir: str, step: int | None = None):
    config, tokenizer, model, params, step = train_lib.load_trained(
        workdir, step)
    self.config = config
    self.params = params
    self.step = step
    mesh = sharding_lib.make_mesh(config.get("mesh"))
    self._sharding = sharding_lib.batch_sharding(mesh)
    self._embed_step = train_step_lib.make_embed_step(model, mesh)
    self._placement = input_pipeline.batch_placement(config, self._sharding)
    self._transform = dataclasses.replace(
        input_pipeline.example_transform(config, tokenizer),
        image_key="image", caption_key="caption", id_key="id")
    self.logit_scale = float(jax.device_get(model.apply(
        {"params": params}, method=model.clamped_logit_scale)))
    bias = params.get("logit_bias")
    self.logit_bias = None if bias is None else float(jax.device_get(bias))
    self.description = {"kind": "checkpoint", "workdir": str(workdir),
                        "step": step}

  def embed_pairs(self, examples) -> tuple[np.ndarray, np.ndarray]:
    """Return (image, text) embeddings, one row per example."""
    _check_not_empty(examples)
    batch_size = self.config.eval_batch_size
    batches = input_pipeline.evaluation_batches(
        examples, self._transform, batch_size, self.config.data.num_threads,
        input_pipeline.process_rows(self._sharding, batch_size))
    images, texts, _ = evaluation.embed_batches(
        self._embed_step, self.params, batches, self._placement)
    return images, texts

  def embed_images(self, examples) -> np.ndarray:
    # The embedding step also encodes the captions, and this discards them.
    return self.embed_pairs(examples)[0]

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    # NOTE: the embedding step encodes images too, so blank images go with
    # the texts, at the cost of one image batch per text batch.
    size = self.config.model.image_size
    blank = np.zeros((size, size, 3), np.uint8)
    examples = [{"image": blank, "caption": text, "id": ""}
                for text in texts]
    return self.embed_pairs(examples)[1]


class BundleEmbedder:
  """Embeds with an exported bundle (`bundle.Bundle`), on one device.

  Short last batches are padded with copies of their last item, so each
  jitted encoder compiles for one batch shape only.
  """

  def __init__(self, directory: str, batch_size: int = 64,
               text_batch_size: int = 256):
    self.bundle = bundle_lib.Bundle.load(directory)
    self.batch_size = batch_size
    self.text_batch_size = text_batch_size
    model = self.bundle.model
    self.logit_scale = float(model.apply({"params": self.bundle.params},
                                         method=model.clamped_logit_scale))
    bias = self.bundle.params.get("logit_bias")
    self.logit_bias = None if bias is None else float(np.asarray(bias))
    self.description = {"kind": "bundle", "directory": str(directory),
                        "source": self.bundle.config.get("source")}

  def embed_images(self, examples) -> np.ndarray:
    _check_not_empty(examples)
    outputs = []
    # Decodes one batch at a time, so a large split never sits in memory.
    for start in range(0, len(examples), self.batch_size):
      stop = min(start + self.batch_size, len(examples))
      images = [_decoded(examples[index]["image"])
                for index in range(start, stop)]
      images += [images[-1]] * (self.batch_size - len(images))
      embedded = self.bundle.embed_images(images, self.batch_size)
      outputs.append(embedded[:stop - start])
    return np.concatenate(outputs)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    _check_not_empty(texts)
    outputs = []
    for start in range(0, len(texts), self.text_batch_size):
      batch = list(texts[start:start + self.text_batch_size])
      count = len(batch)
      batch += [batch[-1]] * (self.text_batch_size - count)
      outputs.append(self.bundle.embed_texts(batch,
                                             self.text_batch_size)[:count])
    return np.concatenate(outputs)

  def embed_pairs(self, examples) -> tuple[np.ndarray, np.ndarray]:
    captions = [_text(examples[index]["caption"])
                for index in range(len(examples))]
    return self.embed_images(examples), self.embed_texts(captions)


def _decoded(image) -> np.ndarray:
  if isinstance(image, bytes):
    return image_decoding.decode_image(image)
  return np.asarray(image)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_not_empty(examples) -> None:
  if len(examples) == 0:
    raise EvaluationError("No examples to embed: the split or the chosen "
                          "subset is empty.")


Evaluator = Callable[[Any, Dataset, str, Options], dict]
EVALUATORS: dict[str, Evaluator] = {}


def register(name: str):
  """Register an evaluator function under `name`."""
  def decorator(function: Evaluator) -> Evaluator:
    EVALUATORS[name] = function
    return function
  return decorator


def evaluate(name: str, embedder, dataset: Dataset, split: str,
             options: Options | None = None) -> dict:
  """Run the evaluator `name` on `split` and return its metrics."""
  if name not in EVALUATORS:
    raise EvaluationError(f"Unknown evaluator {name!r}; the evaluators are "
                          f"{sorted(EVALUATORS)}.")
  input_pipeline.split_size(dataset.builder, split)
  return EVALUATORS[name](embedder, dataset, split, options or Options())


def _recall_ks(embedder, options: Options) -> tuple[int, ...]:
  if options.recall_ks is not None:
    return tuple(options.recall_ks)
  config = getattr(embedder, "config", None)
  if config is not None and "recall_ks" in config:
    return tuple(config.recall_ks)
  return DEFAULT_RECALL_KS


@register("retrieval")
def evaluate_retrieval(embedder, dataset: Dataset, split: str,
                       options: Options) -> dict:
  """Score recall@K both ways, with groups when the dataset has them."""
  images, texts = embedder.embed_pairs(dataset.examples(split))
  groups = None
  if options.group_key in dataset.features:
    groups = evaluation.read_groups(dataset.source(split), options.group_key)
  metrics = evaluation.retrieval_metrics(images, texts,
                                         _recall_ks(embedder, options), groups)
  metrics["group_key"] = options.group_key if groups is not None else None
  metrics["loss"] = evaluation.validation_loss(
      images, texts, embedder.logit_scale, embedder.logit_bias)
  return metrics


def _single_label_subset(dataset: Dataset, split: str, key: str,
                         per_class: int):
  names = dataset.class_names(key)
  findings = dataset.read_feature(split, key)
  indices, labels = zero_shot_lib.single_label_subset(findings, names,
                                                      per_class)
  if not len(indices):
    raise EvaluationError(
        f"Split {split!r} of {dataset.name!r} has no example with exactly "
        f"one {key!r} value.")
  return indices, labels


def _prompt_name(name: str) -> str:
  return name.replace("_", " ").lower()


@register("zero_shot")
def evaluate_zero_shot(embedder, dataset: Dataset, split: str,
                       options: Options) -> dict:
  """Score single-label accuracy or multi-label AUROC (or both) by prompts."""
  results = {}
  names = dataset.class_names(options.class_key)
  if names:
    indices, labels = _single_label_subset(dataset, split, options.class_key,
                                           options.zero_shot_per_class)
    images = embedder.embed_images(dataset.examples(split, indices))
    single = zero_shot_lib.single_label_zero_shot(
        embedder.embed_texts, images, labels,
        [_prompt_name(name) for name in names], options.templates)
    single.update(feature=options.class_key,
                  max_per_class=options.zero_shot_per_class)
    results["single_label"] = single
  if "chexpert" in dataset.features:
    results["multi_label"] = _chexpert_zero_shot(embedder, dataset, split,
                                                 options)
  if not results:
    raise EvaluationError(
        f"zero_shot needs a ClassLabel feature {options.class_key!r} or a "
        f"'chexpert' feature; dataset {dataset.name!r} has "
        f"{sorted(dataset.features)}.")
  return results


def _chexpert_zero_shot(embedder, dataset: Dataset, split: str,
                        options: Options) -> dict:
  values = np.stack([np.asarray(value, np.float64) for value in
                     dataset.read_feature(split, "chexpert")])
  columns = [index for index, name in enumerate(mimic_cxr.CHEXPERT_LABELS)
             if name not in MULTI_LABEL_EXCLUDED]
  names = [mimic_cxr.CHEXPERT_LABELS[index] for index in columns]
  images = embedder.embed_images(dataset.examples(split))
  results = zero_shot_lib.multi_label_zero_shot(
      embedder.embed_texts, images, values[:, columns],
      [_prompt_name(name) for name in names],
      uncertain=options.uncertain,
      blank_as_negative=options.blank_as_negative)
  # Report the dataset's label names, not the lower-case prompt names.
  results["per_label"] = dict(zip(names, results["per_label"].values()))
  results["skipped_labels"] = [
      name for name in names if np.isnan(results["per_label"][name]["auroc"])]
  results["excluded_labels"] = list(MULTI_LABEL_EXCLUDED)
  return results


@register("linear_probe")
def evaluate_linear_probe(embedder, dataset: Dataset, split: str,
                          options: Options) -> dict:
  """Run few-shot and full linear probes, with C chosen on validation."""
  names = dataset.class_names(options.class_key)
  if not names:
    raise EvaluationError(
        f"linear_probe needs a ClassLabel feature {options.class_key!r}; "
        f"dataset {dataset.name!r} has {sorted(dataset.features)}.")
  train_split = dataset.data_config.train_split
  validation_split = dataset.data_config.validation_split
  if split in (train_split, validation_split):
    logging.warning(
        "linear_probe on split %r: the probe is trained on %r and its C "
        "chosen on %r, so this score is not a held-out score.", split,
        train_split, validation_split)
  per_class = max(1, options.probe_max_train // len(names))
  features, labels = {}, {}
  for role, name, limit in (("train", train_split, per_class),
                            ("validation", validation_split,
                             options.probe_per_class),
                            ("test", split, options.probe_per_class)):
    indices, labels[role] = _single_label_subset(dataset, name,
                                                 options.class_key, limit)
    features[role] = embedder.embed_images(dataset.examples(name, indices))
  shots = linear_probe_lib.few_shot_probes(
      features["train"], labels["train"], features["validation"],
      labels["validation"], features["test"], labels["test"], len(names),
      shots=options.probe_shots, seed=options.probe_seed,
      c_grid=options.c_grid)
  return {"train_split": train_split, "validation_split": validation_split,
          "class_names": list(names),
          "num_train": int(len(labels["train"])),
          "num_validation": int(len(labels["validation"])),
          "num_test": int(len(labels["test"])),
          "seed": options.probe_seed, "probes": shots}

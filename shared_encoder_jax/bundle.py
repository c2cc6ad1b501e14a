"""Load an exported bundle and embed images and texts with it.

A bundle is a folder written by `shared-encoder-export`:

  model.safetensors   parameters, keys joined with "." (e.g.
                      "shared_blocks_0.mlp.fc1.kernel")
  config.json         model dimensions, image preprocessing, tokenizer
                      settings, and where the weights came from
  tokenizer.model     the SentencePiece model
  SHA256SUMS          checksums of the three files, `sha256sum -c` format

This module needs JAX, Flax, sentencepiece, safetensors and Pillow only; it
does not import the training code, TensorFlow or grain.

Example:
  bundle = Bundle.load("exports/shared_feature")
  image_embeddings = bundle.embed_images(["scan1.png", "scan2.png"])
  text_embeddings = bundle.embed_texts(["small nodule in the left upper zone"])
  similarity = image_embeddings @ text_embeddings.T  # cosine: rows are unit
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence, Union

import jax
import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from shared_encoder_jax import loss as loss_lib
from shared_encoder_jax import model as model_lib
from shared_encoder_jax import preprocessing
from shared_encoder_jax import tokenizer as tokenizer_lib

BUNDLE_FORMAT = "shared_encoder_jax.bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
CHECKSUMS_FILE = "SHA256SUMS"

ImageInput = Union[str, os.PathLike, np.ndarray]


class BundleError(ValueError):
  """A bundle folder is missing files, corrupted or of an unknown format."""


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_checksums(directory: str) -> None:
  """Raise BundleError unless every file listed in SHA256SUMS matches."""
  sums_path = os.path.join(directory, CHECKSUMS_FILE)
  if not os.path.exists(sums_path):
    raise BundleError(f"{sums_path} not found: {directory} is not a complete "
                      "bundle. Export it again with shared-encoder-export.")
  with open(sums_path) as f:
    for line in f:
      expected, name = line.strip().split(maxsplit=1)
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise BundleError(f"{path} is listed in {CHECKSUMS_FILE} but missing.")
      if sha256_file(path) != expected:
        raise BundleError(f"{path} does not match its SHA-256 in "
                          f"{CHECKSUMS_FILE}: the file is corrupted or was "
                          "changed after export. Export the bundle again.")


class Bundle:
  """An exported model that embeds images and texts into the joint space."""

  def __init__(self, directory: str, config: dict, params,
               tokenizer: tokenizer_lib.Tokenizer):
    self.directory = directory
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.model = model_lib.build_model(
        config["model"], config["model"]["vocab_size"],
        config["model"]["eot_id"])
    self._preprocessing = config["image_preprocessing"]
    self._encode_image = jax.jit(
        lambda p, x: self.model.apply({"params": p}, x,
                                      method=self.model.encode_image))
    self._encode_text = jax.jit(
        lambda p, x: self.model.apply({"params": p}, x,
                                      method=self.model.encode_text))

  @classmethod
  def load(cls, directory: str, verify: bool = True) -> "Bundle":
    """Load a bundle folder; with `verify`, check its SHA-256 sums first."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
      raise BundleError(f"Bundle folder {directory!r} not found.")
    if verify:
      verify_checksums(directory)
    with open(os.path.join(directory, CONFIG_FILE)) as f:
      config = json.load(f)
    if config.get("format") != BUNDLE_FORMAT or config.get(
        "version") != BUNDLE_VERSION:
      raise BundleError(
          f"{directory} has format {config.get('format')!r} version "
          f"{config.get('version')!r}; this loader reads {BUNDLE_FORMAT!r} "
          f"version {BUNDLE_VERSION}.")
    flat = safetensors_numpy.load_file(os.path.join(directory, WEIGHTS_FILE))
    params = traverse_util.unflatten_dict(flat, sep=".")
    tokenizer = tokenizer_lib.Tokenizer.from_file(
        os.path.join(directory, TOKENIZER_FILE),
        config["tokenizer"]["context_length"])
    return cls(directory, config, params, tokenizer)

  def preprocess_images(self, images: Sequence[ImageInput]) -> np.ndarray:
    """Load (for paths) and preprocess images into the model's input."""
    arrays = []
    for image in images:
      if isinstance(image, (str, os.PathLike)):
        image = preprocessing.load_image(os.fspath(image))
      arrays.append(preprocessing.preprocess_image(
          image, self._preprocessing["size"], self._preprocessing["mean"],
          self._preprocessing["std"]))
    return np.stack(arrays)

  def embed_images(self, images: Sequence[ImageInput], batch_size: int = 64,
                   normalize: bool = True) -> np.ndarray:
    """Embed image files or uint8 arrays (gray or RGB); returns (N, D)."""
    outputs = []
    for start in range(0, len(images), batch_size):
      batch = self.preprocess_images(images[start:start + batch_size])
      outputs.append(np.asarray(self._encode_image(self.params, batch)))
    return self._finish(outputs, normalize)

  def embed_texts(self, texts: Sequence[str], batch_size: int = 256,
                  normalize: bool = True) -> np.ndarray:
    """Embed captions or prompts; returns (N, D)."""
    outputs = []
    for start in range(0, len(texts), batch_size):
      tokens = self.tokenizer.tokenize(texts[start:start + batch_size])
      outputs.append(np.asarray(self._encode_text(self.params, tokens)))
    return self._finish(outputs, normalize)

  @staticmethod
  def _finish(outputs, normalize: bool) -> np.ndarray:
    embeddings = np.concatenate(outputs).astype(np.float32)
    if normalize:
      embeddings = np.asarray(loss_lib.l2_normalize(embeddings))
    return embeddings

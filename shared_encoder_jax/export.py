"""Write a self-contained bundle (see `bundle.py`) from a training checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from shared_encoder_jax import bundle as bundle_lib
from shared_encoder_jax import checkpointing
from shared_encoder_jax import config as config_lib
from shared_encoder_jax import model as model_lib
from shared_encoder_jax import provenance
from shared_encoder_jax import train as train_lib


def bundle_config(config, tokenizer, step: int, workdir: str) -> dict:
  """Return the bundle's config.json: model, preprocessing, tokenizer, source."""
  model = {name: config.model[name] for name in model_lib.CONFIG_FIELDS}
  model["shared_layer_indices"] = list(config_lib.parse_shared_layers(
      config.model.shared_layers, config.model.depth))
  model["vocab_size"] = tokenizer.vocab_size
  model["eot_id"] = tokenizer.eos_id
  return {
      "format": bundle_lib.BUNDLE_FORMAT,
      "version": bundle_lib.BUNDLE_VERSION,
      "model": model,
      "image_preprocessing": {
          "size": config.model.image_size,
          "channels": "RGB (gray repeated)",
          "resize": "shorter side to size, bicubic, then centre crop",
          "scale": "pixel / 255",
          "mean": list(config.data.image_mean),
          "std": list(config.data.image_std),
      },
      "tokenizer": {
          "file": bundle_lib.TOKENIZER_FILE,
          "context_length": tokenizer.context_length,
          "bos_id": tokenizer.bos_id,
          "eos_id": tokenizer.eos_id,
          "pad_id": tokenizer.pad_id,
      },
      "source": {"workdir": workdir, "step": step,
                 "git": provenance.git_commit()},
  }


def export_bundle(workdir: str, output: str, step: int | None = None,
                  overwrite: bool = False) -> str:
  """Export the checkpoint at `step` (default: latest) to the folder `output`.

  The bundle is written to a temporary folder beside `output` and renamed into
  place when complete, so an interrupted export leaves no half bundle. An
  existing `output` is replaced only with `overwrite`.
  """
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(
        f"{output} already exists; choose another --output or pass "
        "--overwrite to replace it.")
  config, tokenizer, _, params, step = train_lib.load_trained(workdir, step)

  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep=".")
    # np.ascontiguousarray would turn the 0-d logit scale into shape (1,).
    flat = {key: np.array(value, order="C") for key, value in flat.items()}
    safetensors_numpy.save_file(
        flat, os.path.join(staging, bundle_lib.WEIGHTS_FILE),
        metadata={"format": bundle_lib.BUNDLE_FORMAT, "step": str(step)})
    with open(os.path.join(staging, bundle_lib.CONFIG_FILE), "w") as f:
      json.dump(bundle_config(config, tokenizer, step,
                              checkpointing.workdir_path(workdir)), f,
                indent=2)
    tokenizer.save(os.path.join(staging, bundle_lib.TOKENIZER_FILE))
    with open(os.path.join(staging, bundle_lib.CHECKSUMS_FILE), "w") as f:
      for name in (bundle_lib.WEIGHTS_FILE, bundle_lib.CONFIG_FILE,
                   bundle_lib.TOKENIZER_FILE):
        f.write(f"{bundle_lib.sha256_file(os.path.join(staging, name))}  "
                f"{name}\n")
    os.chmod(staging, 0o755)
    if os.path.exists(output):
      previous = output + ".previous"
      shutil.rmtree(previous, ignore_errors=True)
      os.replace(output, previous)
      os.replace(staging, output)
      shutil.rmtree(previous)
    else:
      os.replace(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  logging.info("Exported step %d of %s to %s.", step, workdir, output)
  return output

"""Base configuration, named model sizes and config validation.

Every experiment config in `configs/` starts from `base_config()` and changes
fields. `validate()` checks the resolved config before anything is built or
compiled, so a mistake fails with one message that names the field.
"""

from __future__ import annotations

import ml_collections

from shared_encoder_jax.errors import ConfigError
from shared_encoder_jax.model_sizes import MODEL_SIZES

MODALITY_MODES = ("feature", "token", "none")

# CLIP's normalisation statistics (RGB, images scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# Groups whose fields are not known in advance: they are passed on as they
# are (here, to the dataset's builder config).
FREE_FORM_FIELDS = ("data.builder_config",)
# Builder config fields that several builders have, declared (unset) so that
# `--config.data.builder_config.FIELD=VALUE` works on the command line.
BUILDER_CONFIG_FIELDS = ("name", "manifest", "image_dir", "image_key",
                         "caption_key", "id_key", "reports_dir")


def base_config() -> ml_collections.ConfigDict:
  """Return the default config with every field a run can set."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic_radiology"  # a TFDS builder name
  config.data.data_dir = "data/tensorflow_datasets"
  config.data.train_split = "train"
  config.data.validation_split = "validation"
  config.data.test_split = "test"
  config.data.image_key = "image"
  config.data.caption_key = "caption"
  config.data.id_key = "id"
  config.data.image_mean = CLIP_MEAN
  config.data.image_std = CLIP_STD
  # Local-copy builders (pmc_oa, roco, mimic_cxr, ...) read the source
  # files from here; "" means TFDS's default, <data_dir>/downloads/manual.
  config.data.manual_dir = ""
  # Overrides of the builder config's fields, e.g. {"image_dir": "images"}
  # for pmc_oa; fields left None are not passed on. A "name" here names the
  # variant; without one it is named "custom-" plus a hash of the overrides.
  # See each builder's module for its fields. The fields declared here can
  # be set from the command line; a config file can add others.
  config.data.builder_config = ml_collections.ConfigDict()
  for field in BUILDER_CONFIG_FIELDS:
    config.data.builder_config[field] = ml_collections.config_dict.placeholder(
        str)
  # Stop a dataset build at the first bad record instead of skipping and
  # counting it in build_report.json.
  config.data.strict = False
  # The training subset: `data_fraction` of the training split, chosen by a
  # hash of each id and `fraction_seed`, so smaller fractions are subsets of
  # larger ones and the choice is independent of `seed`.
  config.data.data_fraction = 1.0
  config.data.fraction_seed = 0
  config.data.shuffle_seed = 0  # separate from `seed`, the init seed
  config.data.num_threads = 2   # host threads that decode and batch
  # Training augmentation; evaluation always resizes and centre-crops.
  config.data.augment = ml_collections.ConfigDict()
  # Crop a random area fraction in `crop_scale` with an aspect ratio in
  # `crop_ratio`, then resize it to the model's image size.
  config.data.augment.random_resized_crop = False
  config.data.augment.crop_scale = (0.9, 1.0)
  config.data.augment.crop_ratio = (3 / 4, 4 / 3)
  # Off by default: left and right carry meaning in medical images and in
  # their captions ("left lower lobe").
  config.data.augment.horizontal_flip = False

  config.model = ml_collections.ConfigDict()
  _set_size(config.model, "small")
  config.model.image_channels = 3
  config.model.modality = "feature"
  config.model.modality_dim = 20
  config.model.num_modality_tokens = 1
  # "all", "none", or indices and ranges such as "0-5" or "0,1,10-11".
  config.model.shared_layers = "all"
  config.model.dtype = "float32"  # compute dtype; parameters stay float32
  config.model.logit_scale_init = 1 / 0.07
  config.model.logit_scale_max = 100.0
  # A learnable logit bias, which SigLIP's sigmoid loss needs (see
  # `use_siglip`); the CLIP loss has none.
  config.model.use_logit_bias = False
  config.model.logit_bias_init = 0.0
  # Rematerialisation of each Transformer block: "none", "full" (recompute
  # the block in the backward pass) or "dots" (keep only matmul outputs).
  config.model.remat = "none"

  config.loss = ml_collections.ConfigDict()
  config.loss.kind = "clip"  # "clip" (InfoNCE) or "siglip" (sigmoid)
  # clip: "full" or "local"; siglip: "full" or "chunked". Every mode gives
  # the loss of the whole global batch; they differ in memory per device.
  config.loss.mode = "full"

  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.model_path = ""  # empty: train one on the training captions
  config.tokenizer.vocab_size = 49408
  # "bpe" or "unigram". On small caption vocabularies SentencePiece's unigram
  # model keeps few pieces and splits words into letters; BPE keeps words.
  config.tokenizer.model_type = "bpe"
  config.tokenizer.max_training_captions = 1_000_000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 5e-4
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-6
  config.optimizer.weight_decay = 0.2
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0  # 0 turns clipping off

  # Device mesh axis sizes; -1 takes the devices the others leave. The batch
  # is split over data x fsdp; fsdp also splits parameters and optimizer
  # state, tensor splits attention heads and MLP width.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1

  config.batch_size = 128  # global, over all devices
  # >1: process each batch in this many micro-batches with the same update
  # (GradCache), to fit a large contrastive batch in memory.
  config.num_micro_batches = 1
  # Run each shared layer once over both modalities' tokens (one matmul per
  # projection, attention still per modality) instead of once per modality.
  # Same results, up to float rounding. Off: on 2 CPU cores it is 0-2%
  # slower; docs/performance.md has the numbers.
  config.joint_shared_layers = False
  config.num_epochs = 10.0
  config.total_steps = -1  # -1: derive from num_epochs and the split size
  config.log_every_steps = 50
  config.eval_every_steps = -1  # -1: once per epoch
  config.checkpoint_every_steps = -1  # -1: at every evaluation
  config.keep_last_checkpoints = 2
  config.keep_best_checkpoints = 1
  config.async_checkpointing = True  # training continues while saving
  config.early_stopping_patience = 0  # evaluations without improvement; 0 = off
  config.eval_batch_size = 256
  config.recall_ks = (1, 5, 10, 50, 200)
  return config


def _set_size(model_config: ml_collections.ConfigDict, size: str) -> None:
  for key, value in MODEL_SIZES[size].items():
    model_config[key] = value


def set_model_size(config: ml_collections.ConfigDict, size: str) -> None:
  """Set the model's dimensions to the named size from `MODEL_SIZES`."""
  if size not in MODEL_SIZES:
    raise ConfigError(f"Model size {size!r} is unknown; "
                      f"choose one of {sorted(MODEL_SIZES)}.")
  _set_size(config.model, size)


def use_siglip(config: ml_collections.ConfigDict, mode: str = "full") -> None:
  """Switch to SigLIP's sigmoid loss with the SigLIP paper's initial values.

  Temperature 10 and bias -10 (Zhai et al. 2023, "Sigmoid Loss for Language
  Image Pre-Training").
  """
  config.loss.kind = "siglip"
  config.loss.mode = mode
  config.model.logit_scale_init = 10.0
  config.model.use_logit_bias = True
  config.model.logit_bias_init = -10.0


def parse_shared_layers(spec: str, depth: int) -> tuple[int, ...]:
  """Parse `model.shared_layers` into sorted layer indices.

  Accepts "all", "none", or comma-separated indices and inclusive ranges
  ("0-5,10"). Raises ConfigError naming the field on anything else.
  """
  spec = spec.strip().lower()
  if spec == "all":
    return tuple(range(depth))
  if spec in ("none", ""):
    return ()
  indices = set()
  for part in spec.split(","):
    part = part.strip()
    try:
      if "-" in part:
        first, last = (int(p) for p in part.split("-"))
        if first > last:
          raise ValueError
        indices.update(range(first, last + 1))
      else:
        indices.add(int(part))
    except ValueError:
      raise ConfigError(
          f"model.shared_layers={spec!r}: {part!r} is not an index or a "
          "range; use 'all', 'none' or e.g. '0-5,10'.") from None
  out_of_range = sorted(i for i in indices if not 0 <= i < depth)
  if out_of_range:
    raise ConfigError(
        f"model.shared_layers={spec!r} names layer(s) {out_of_range}, but "
        f"model.depth={depth} has layers 0 to {depth - 1}.")
  return tuple(sorted(indices))


def _check_unknown_fields(config, reference, prefix=""):
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      raise ConfigError(
          f"Unknown config field {name!r}; the known fields at this level "
          f"are {sorted(reference.keys())}.")
    value, expected = config[key], reference[key]
    if name in FREE_FORM_FIELDS:
      continue
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"Config field {name!r} must be a group of fields.")
      _check_unknown_fields(value, expected, prefix=name + ".")


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Check a resolved config; raise ConfigError naming the first bad field.

  Args:
    config: the config to check.
    num_devices: devices the batch is split over (the mesh's data x fsdp);
      the global batch must split evenly over them.
  """
  _check_unknown_fields(config, base_config())
  model = config.model

  if model.modality not in MODALITY_MODES:
    raise ConfigError(f"model.modality={model.modality!r} is unknown; "
                      f"choose one of {list(MODALITY_MODES)}.")
  for name in ("image_size", "patch_size", "width", "depth", "num_heads",
               "mlp_dim", "text_context", "embed_dim", "image_channels"):
    if model[name] <= 0:
      raise ConfigError(f"model.{name}={model[name]} must be positive.")
  if model.image_size % model.patch_size:
    raise ConfigError(
        f"model.image_size={model.image_size} is not divisible by "
        f"model.patch_size={model.patch_size}.")
  if model.width % model.num_heads:
    raise ConfigError(
        f"model.width={model.width} is not divisible by "
        f"model.num_heads={model.num_heads}.")
  if model.modality == "feature" and not 0 < model.modality_dim < model.width:
    raise ConfigError(
        f"model.modality_dim={model.modality_dim} must be between 1 and "
        f"model.width - 1 = {model.width - 1} with model.modality='feature', "
        "because the token embedding is width - modality_dim wide.")
  if model.modality == "token" and model.num_modality_tokens < 1:
    raise ConfigError(
        f"model.num_modality_tokens={model.num_modality_tokens} must be at "
        "least 1 with model.modality='token'.")
  if model.text_context < 3:
    raise ConfigError(f"model.text_context={model.text_context} must be at "
                      "least 3 (start, one token, end of text).")
  if model.dtype not in ("float32", "bfloat16", "float16"):
    raise ConfigError(f"model.dtype={model.dtype!r} must be 'float32', "
                      "'bfloat16' or 'float16'.")
  if not 0 < model.logit_scale_init <= model.logit_scale_max:
    raise ConfigError(
        f"model.logit_scale_init={model.logit_scale_init} must be positive "
        f"and at most model.logit_scale_max={model.logit_scale_max}.")
  parse_shared_layers(model.shared_layers, model.depth)
  if model.remat not in ("none", "full", "dots"):
    raise ConfigError(f"model.remat={model.remat!r} must be 'none', 'full' "
                      "or 'dots'.")
  valid_losses = {"clip": ("full", "local"), "siglip": ("full", "chunked")}
  if config.loss.kind not in valid_losses:
    raise ConfigError(f"loss.kind={config.loss.kind!r} must be 'clip' or "
                      "'siglip'.")
  if config.loss.mode not in valid_losses[config.loss.kind]:
    raise ConfigError(
        f"loss.mode={config.loss.mode!r} is not a mode of "
        f"loss.kind={config.loss.kind!r}; choose one of "
        f"{list(valid_losses[config.loss.kind])}.")
  if (config.loss.kind == "siglip") != model.use_logit_bias:
    raise ConfigError(
        f"model.use_logit_bias={model.use_logit_bias} does not fit "
        f"loss.kind={config.loss.kind!r}: SigLIP needs the bias and CLIP "
        "has none. Call config.use_siglip(config) in the config file to set "
        "the loss and its initial values together.")

  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ConfigError(
        f"batch_size={config.batch_size} must be a positive multiple of the "
        f"{num_devices} device(s) on the mesh's data axis.")
  if config.eval_batch_size <= 0 or config.eval_batch_size % num_devices:
    raise ConfigError(
        f"eval_batch_size={config.eval_batch_size} must be a positive "
        f"multiple of the {num_devices} device(s) on the mesh's data axis.")
  if config.num_micro_batches < 1 or config.batch_size % (
      config.num_micro_batches * num_devices):
    raise ConfigError(
        f"num_micro_batches={config.num_micro_batches} must be positive and "
        f"batch_size={config.batch_size} must split into that many "
        f"micro-batches, each divisible by the {num_devices} device(s).")
  if config.batch_size < 2:
    raise ConfigError("batch_size must be at least 2: a contrastive loss "
                      "needs negatives.")
  if config.total_steps == 0 or config.total_steps < -1:
    raise ConfigError(f"total_steps={config.total_steps} must be positive, "
                      "or -1 to derive it from num_epochs.")
  if config.total_steps == -1 and config.num_epochs <= 0:
    raise ConfigError(f"num_epochs={config.num_epochs} must be positive "
                      "when total_steps=-1.")
  if config.log_every_steps <= 0:
    raise ConfigError(
        f"log_every_steps={config.log_every_steps} must be positive.")
  for name in ("eval_every_steps", "checkpoint_every_steps"):
    if config[name] == 0 or config[name] < -1:
      raise ConfigError(f"{name}={config[name]} must be positive, or -1.")
  if config.keep_last_checkpoints < 1:
    raise ConfigError("keep_last_checkpoints must be at least 1, so a run "
                      "can always resume from its latest checkpoint.")
  if config.keep_best_checkpoints < 0 or config.early_stopping_patience < 0:
    raise ConfigError("keep_best_checkpoints and early_stopping_patience "
                      "must be zero or positive.")
  if not config.recall_ks or min(config.recall_ks) < 1:
    raise ConfigError(f"recall_ks={config.recall_ks} must list positive K.")

  opt = config.optimizer
  if opt.learning_rate <= 0:
    raise ConfigError(
        f"optimizer.learning_rate={opt.learning_rate} must be positive.")
  if opt.warmup_steps < 0 or opt.grad_clip_norm < 0 or opt.weight_decay < 0:
    raise ConfigError("optimizer.warmup_steps, optimizer.grad_clip_norm and "
                      "optimizer.weight_decay must be zero or positive.")
  if not (0 <= opt.b1 < 1 and 0 <= opt.b2 < 1):
    raise ConfigError(f"optimizer.b1={opt.b1} and optimizer.b2={opt.b2} "
                      "must be in [0, 1).")

  if config.tokenizer.model_type not in ("bpe", "unigram"):
    raise ConfigError(f"tokenizer.model_type={config.tokenizer.model_type!r} "
                      "must be 'bpe' or 'unigram'.")
  if config.tokenizer.vocab_size < 8 and not config.tokenizer.model_path:
    raise ConfigError(
        f"tokenizer.vocab_size={config.tokenizer.vocab_size} is too small.")
  data = config.data
  if len(data.image_mean) != model.image_channels or len(
      data.image_std) != model.image_channels:
    raise ConfigError(
        "data.image_mean and data.image_std need one value per channel "
        f"(model.image_channels={model.image_channels}).")
  if min(data.image_std) <= 0:
    raise ConfigError(f"data.image_std={data.image_std} must be positive.")
  if not 0 < data.data_fraction <= 1:
    raise ConfigError(f"data.data_fraction={data.data_fraction} must be in "
                      "(0, 1].")
  augment = data.augment
  low, high = augment.crop_scale
  if not 0 < low <= high <= 1:
    raise ConfigError(f"data.augment.crop_scale={augment.crop_scale} must "
                      "be (min, max) with 0 < min <= max <= 1.")
  low, high = augment.crop_ratio
  if not 0 < low <= high:
    raise ConfigError(f"data.augment.crop_ratio={augment.crop_ratio} must "
                      "be (min, max) with 0 < min <= max.")


def pmc_oa_experiment(arg: str = "") -> ml_collections.ConfigDict:
  """Shared settings of the PMC-OA experiments; `arg` picks the scale.

  "" or "paper": ViT-B/16-sized towers on PMC-OA, AdamW at 5e-4, early
  stopping after 10 epochs without a better validation loss.
  "small": a CPU-sized model trained for a few minutes on the embedded
  synthetic radiology dataset.
  """
  config = base_config()
  if arg in ("", "paper"):
    set_model_size(config, "paper")
    config.data.name = "pmc_oa"
    config.tokenizer.vocab_size = 49408
    config.batch_size = 256
    config.num_epochs = 100
    config.early_stopping_patience = 10
  elif arg == "small":
    set_model_size(config, "small")
    config.data.name = "synthetic_radiology"
    config.tokenizer.vocab_size = 1000
    config.batch_size = 128
    # About 3 minutes of training on 2 CPU cores.
    config.total_steps = 600
    # At this size AdamW at 5e-4 collapses every embedding to one point
    # within ~10 steps without a warm-up.
    config.optimizer.warmup_steps = 50
    config.eval_every_steps = 150
    config.log_every_steps = 50
  else:
    raise ConfigError(f"Config argument {arg!r} is unknown; use 'paper' "
                      "(or nothing) or 'small', e.g. "
                      "--config=configs/pmc_oa_shared_feature.py:small.")
  return config

"""A tiny sweep: separate vs shared encoder x 2 data fractions x 2 seeds.

  .venv/bin/python launch/sweep.py run configs/sweeps/example.py
  .venv/bin/python launch/sweep.py report configs/sweeps/example.py

The runs train the "tiny" model size (width 32, 2 layers) for 600 steps
on the embedded synthetic dataset. The 8 runs took 3 min 27 s with
--parallel=2 on a 2-core machine. Their test Recall@10, averaged over both
directions, was 10% to 22% (chance 1%). With two seeds and this little
training, the spread between seeds is as large as the differences between
the variants.

With the argument "layers" (configs/sweeps/example.py:layers) the encoder
axis also has a shared encoder whose first or last layer is
modality-specific, and a modality axis (feature, token or none) is added;
the separate encoder runs only without modality information.
"""

from shared_encoder_jax import config as config_lib
from shared_encoder_jax import sweep as sweep_lib

_SIZE = "tiny"


def get_sweep(arg: str = ""):
  sweep = sweep_lib.new_sweep()
  sweep.name = "example" + (f"-{arg}" if arg else "")
  sweep.base_config = "configs/pmc_oa_shared_feature.py:small"

  depth = config_lib.MODEL_SIZES[_SIZE]["depth"]
  fixed = {f"model.{field}": value
           for field, value in config_lib.MODEL_SIZES[_SIZE].items()}
  fixed.update({
      "model.modality_dim": 8,  # must stay below the tiny width of 32
      "tokenizer.vocab_size": 300,
      "batch_size": 64,
      "total_steps": 600,
      "optimizer.learning_rate": 2e-3,
      "optimizer.warmup_steps": 30,
      "eval_every_steps": 100,
      "log_every_steps": 50,
  })
  sweep.fixed = fixed

  if arg == "":
    encoders = {
        "separate": {"model.shared_layers": "none", "model.modality": "none"},
        "shared_feature": {"model.shared_layers": "all",
                           "model.modality": "feature"},
    }
    axes = {"encoder": encoders}
  elif arg == "layers":
    encoders = {
        "separate": {"model.shared_layers": "none"},
        "shared": {"model.shared_layers": "all"},
        "early1": {"model.shared_layers":
                   sweep_lib.early_specific_layers(1, depth)},
        "late1": {"model.shared_layers":
                  sweep_lib.late_specific_layers(1, depth)},
    }
    modalities = {mode: {"model.modality": mode}
                  for mode in config_lib.MODALITY_MODES}
    axes = {"encoder": encoders, "modality": modalities}
    # Two towers encode one modality each, so they need no modality signal.
    sweep.exclude = [{"encoder": "separate", "modality": ["feature", "token"]}]
  else:
    raise ValueError(f"Sweep argument {arg!r} is unknown; use nothing or "
                     "'layers'.")

  axes["fraction"] = {"f0.25": {"data.data_fraction": 0.25},
                      "f1": {"data.data_fraction": 1.0}}
  axes["seed"] = {"s0": {"seed": 0}, "s1": {"seed": 1}}
  sweep.axes = axes
  sweep.fraction_axis = "fraction"
  sweep.seed_axis = "seed"
  return sweep

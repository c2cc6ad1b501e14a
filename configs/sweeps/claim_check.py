"""The claim check: separate vs shared encoders as the paired data shrink.

  .venv/bin/python launch/sweep.py run configs/sweeps/claim_check.py --parallel=2
  .venv/bin/python launch/sweep.py report configs/sweeps/claim_check.py \\
      --output=docs/claim_check

The grid is three variants x four data fractions of the embedded dataset's
20,000 training pairs x three init seeds, 36 runs in all. The variants are
separate encoders, a shared encoder with a modality feature and a shared
encoder with a modality token, all of the "small" model size (image 64,
patch 16, width 128, 4 layers). Every run has the same
budget of 1,200 steps of batch 64 and stops early after 3 validations (300
steps) without a lower validation loss. `data.fraction_seed` and
`data.shuffle_seed` are left at 0, so every variant and seed at a fraction
trains on the same examples in the same order; only `seed` (the model's
init) varies. The metric and the decision rule are in docs/claim_check.md.
"""

from shared_encoder_jax import sweep as sweep_lib

FRACTIONS = (0.05, 0.1, 0.25, 1.0)
SEEDS = (0, 1, 2)


def get_sweep(arg: str = ""):
  if arg:
    raise ValueError(f"Sweep argument {arg!r} is unknown; this sweep takes "
                     "none.")
  sweep = sweep_lib.new_sweep()
  sweep.name = "claim_check"
  sweep.base_config = "configs/pmc_oa_shared_feature.py:small"
  sweep.fixed = {
      "batch_size": 64,
      "total_steps": 1200,
      "optimizer.warmup_steps": 50,
      "eval_every_steps": 100,
      "log_every_steps": 100,
      "early_stopping_patience": 3,
      "keep_last_checkpoints": 1,
      "keep_best_checkpoints": 1,
  }
  sweep.axes = {
      "encoder": {
          "separate": {"model.shared_layers": "none",
                       "model.modality": "none"},
          "shared_feature": {"model.shared_layers": "all",
                             "model.modality": "feature"},
          "shared_token": {"model.shared_layers": "all",
                           "model.modality": "token"},
      },
      "fraction": {f"f{fraction:g}": {"data.data_fraction": fraction}
                   for fraction in FRACTIONS},
      "seed": {f"s{seed}": {"seed": seed} for seed in SEEDS},
  }
  sweep.fraction_axis = "fraction"
  sweep.seed_axis = "seed"
  return sweep

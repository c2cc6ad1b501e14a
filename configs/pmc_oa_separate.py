"""PMC-OA baseline: separate image and text encoders (two towers).

  --config=configs/pmc_oa_separate.py         paper scale, PMC-OA
  --config=configs/pmc_oa_separate.py:small   CPU scale, embedded dataset
"""

from shared_encoder_jax import config as config_lib


def get_config(arg: str = ""):
  config = config_lib.pmc_oa_experiment(arg)
  config.model.shared_layers = "none"
  config.model.modality = "none"  # each tower encodes one modality only
  return config

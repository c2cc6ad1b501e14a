"""PMC-OA: one shared encoder; one learnable modality token per modality is
inserted into the sequence (after the class token for images, after the start
token for text).

  --config=configs/pmc_oa_shared_token.py         paper scale, PMC-OA
  --config=configs/pmc_oa_shared_token.py:small   CPU scale, embedded dataset
"""

from shared_encoder_jax import config as config_lib


def get_config(arg: str = ""):
  config = config_lib.pmc_oa_experiment(arg)
  config.model.shared_layers = "all"
  config.model.modality = "token"
  config.model.num_modality_tokens = 1
  return config

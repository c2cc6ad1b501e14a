"""PMC-OA: one shared encoder with one learnable modality token per modality.

The token goes after the class token for images and after the start token for
text.

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

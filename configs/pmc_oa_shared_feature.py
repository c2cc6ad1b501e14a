"""PMC-OA: one shared encoder; a learnable 20-dim modality feature is
concatenated to every image patch and text token.

  --config=configs/pmc_oa_shared_feature.py         paper scale, PMC-OA
  --config=configs/pmc_oa_shared_feature.py:small   CPU scale, embedded dataset
"""

from shared_encoder_jax import config as config_lib


def get_config(arg: str = ""):
  config = config_lib.pmc_oa_experiment(arg)
  config.model.shared_layers = "all"
  config.model.modality = "feature"
  config.model.modality_dim = 20
  return config

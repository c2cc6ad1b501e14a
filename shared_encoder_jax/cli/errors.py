"""Turn expected user errors into one clear line and exit status 1."""

import contextlib
import sys

from absl import logging

from shared_encoder_jax import bundle
from shared_encoder_jax import checkpointing
from shared_encoder_jax import config
from shared_encoder_jax import tokenizer
from shared_encoder_jax.data import input_pipeline

USER_ERRORS = (config.ConfigError, checkpointing.NonFiniteError,
               bundle.BundleError, tokenizer.TokenizerError,
               input_pipeline.DatasetError, FileNotFoundError,
               FileExistsError)


@contextlib.contextmanager
def exit_on_user_error():
  """Log a user error (bad config, missing file, ...) and exit with 1."""
  try:
    yield
  except USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

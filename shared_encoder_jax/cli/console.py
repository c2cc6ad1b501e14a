"""Console output of the commands: one line per user error, fewer library logs."""

import contextlib
import logging as python_logging
import os
import sys

from absl import logging

from shared_encoder_jax import bundle
from shared_encoder_jax import checkpointing
from shared_encoder_jax import config
from shared_encoder_jax import distributed
from shared_encoder_jax import evaluators
from shared_encoder_jax import tokenizer
from shared_encoder_jax.data import input_pipeline
from shared_encoder_jax.data.builders import image_text

USER_ERRORS = (config.ConfigError, checkpointing.NonFiniteError,
               bundle.BundleError, tokenizer.TokenizerError,
               input_pipeline.DatasetError, image_text.ManifestError,
               image_text.BadInputError, image_text.BuilderConfigError,
               evaluators.EvaluationError,
               distributed.DistributedSettingsError, FileNotFoundError,
               FileExistsError)

# Libraries whose INFO lines describe their internals (Orbax logs about 30
# per checkpoint); their warnings and errors still show.
_QUIET_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")


class _LibraryInfoFilter(python_logging.Filter):

  def filter(self, record):
    if record.levelno >= python_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _QUIET_LIBRARIES)


def quiet_library_logs() -> None:
  """Drop INFO lines of Orbax and TFDS from the console log."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def use_compilation_cache(path: str) -> None:
  """Keep compiled XLA programs in `path`, so a rerun skips compilation.

  A restarted or resumed run with the same model, batch and mesh loads its
  train step from here instead of compiling it again. "" turns it off; the
  JAX_COMPILATION_CACHE_DIR environment variable, if set, takes precedence.
  """
  import jax  # Not at the top: --help stays fast.

  if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


@contextlib.contextmanager
def exit_on_user_error():
  """Log a user error (bad config, missing file, ...) and exit with 1."""
  try:
    yield
  except USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

"""Export a training checkpoint as a self-contained bundle.

  shared-encoder-export --workdir=runs/shared_feature \
      --output=exports/shared_feature [--step=N] [--overwrite]

Load it with `shared_encoder_jax.bundle.Bundle.load(output)`.
"""

import sys

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Bundle folder to create.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to export; default: the latest.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace --output if it exists.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from shared_encoder_jax import export as export_lib
  from shared_encoder_jax.cli import console

  console.quiet_library_logs()
  with console.exit_on_user_error():
    path = export_lib.export_bundle(_WORKDIR.value, _OUTPUT.value,
                                    _STEP.value, _OVERWRITE.value)
  print(f"Exported bundle: {path}")


def run():
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())

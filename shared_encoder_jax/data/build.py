"""Build a dataset with TFDS's `tfds build` command, without apache-beam.

    shared-encoder-build-dataset pmc_oa --manual_dir /data/pmc_oa \\
        --data_dir data/tensorflow_datasets --config images_folder

takes exactly the arguments of `tfds build` (see `--help`) and imports
this package's builders first, so no `--imports` is needed. It exists because the
`tfds` command of tensorflow-datasets 4.9.10 imports apache-beam at start-up
for its convert_format subcommand and fails without it. The build
subcommand itself does not need apache-beam. With apache-beam installed,
`tfds build NAME --imports shared_encoder_jax.data.builders.NAME ...` does
the same.

A builder config's fields can be set with a JSON `--config`, e.g.
`--config '{"name": "strict", "strict": true}'`.
"""

from __future__ import annotations

import sys

import simple_parsing
from absl import logging
from tensorflow_datasets.scripts.cli import build as tfds_build

from shared_encoder_jax.data.builders import BUILDER_MODULES


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not any(arg.startswith("--imports") for arg in argv):
    modules = sorted(set(BUILDER_MODULES.values()))
    argv += ["--imports", ",".join(modules)]
  args = simple_parsing.parse(
      tfds_build.Args, args=argv, prog="shared-encoder-build-dataset",
      description=__doc__.splitlines()[0])
  logging.set_verbosity(logging.INFO)
  args.execute()


if __name__ == "__main__":
  main()

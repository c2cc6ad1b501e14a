"""Command-line handling shared by the launchers (standard library only)."""

import argparse


def split_config_overrides(parser: argparse.ArgumentParser,
                           extra: list[str]) -> list[str]:
  """Return the --config.FIELD=VALUE arguments, rejecting any other."""
  for argument in extra:
    if not argument.startswith(("--config.", "--noconfig.")):
      parser.error(
          f"unrecognized argument {argument!r}. Config overrides must have "
          "the form --config.FIELD=VALUE.")
  return extra

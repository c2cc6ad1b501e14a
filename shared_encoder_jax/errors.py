"""Error types that modules without the config machinery also raise."""


class ConfigError(ValueError):
  """A config field has an invalid value or an impossible combination."""

"""Errors raised for bad input: each carries a one-line message naming the file, row or key at fault."""


class InputError(ValueError):
    """Input that cannot be used at all (unreadable file, unknown dataset, bad configuration value)."""


class ConfigError(InputError):
    """A configuration key that does not exist or holds a value of the wrong type."""

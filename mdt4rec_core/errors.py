"""Errors raised for bad input: each carries a one-line message naming the file, row or key at fault."""

import os


class InputError(ValueError):
    """Input that cannot be used at all (unreadable file, unknown dataset, bad configuration value)."""


class ConfigError(InputError):
    """A configuration key that does not exist or holds a value of the wrong type."""


class StoreError(InputError):
    """A stored file that cannot be read or written (damaged, missing, no permission, disk full), or a path that
    would lead outside the store; the message names the file and what to do."""


def describe_os_error(exc: OSError) -> str:
    """What went wrong in a failed file operation, in a few words: ``no space left on device``, ``permission
    denied``; the first line of the message when the error carries no errno."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (str(exc).splitlines() or [type(exc).__name__])[0]

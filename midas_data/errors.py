"""Errors raised by midas_data for bad input."""

from __future__ import annotations

__all__ = ["MidasDataError", "MidasDataWarning"]


class MidasDataError(ValueError):
    """A sample, key, shard or argument is not what MIDAS expects.

    The message names the sample id, key or shard and what was expected. It takes a
    single message argument so that DataLoader workers can re-raise it unchanged in the
    main process.
    """


class MidasDataWarning(UserWarning):
    """The data is valid but MIDAS cannot do its work on (part of) it, e.g. batches whose
    samples all share one class have no misaligned rows."""

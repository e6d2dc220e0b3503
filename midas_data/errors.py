"""Errors raised by midas_data for bad input."""

from __future__ import annotations

__all__ = ["MidasDataError"]


class MidasDataError(ValueError):
    """A sample, key, shard or argument is not what MIDAS expects.

    The message names the sample id, key or shard and what was expected. It takes a
    single message argument so that DataLoader workers can re-raise it unchanged in the
    main process.
    """

"""Safe decoding of shard members: numbers and arrays, never pickles by default.

A member's last extension says how its bytes are read:

==========================  ====================================================
extension                   decoded as
==========================  ====================================================
``npy``                     ``torch.Tensor`` via ``numpy.load(allow_pickle=False)``
``cls``, ``cls2``, ``id``   ``int`` (ASCII decimal)
``txt``, ``text``           ``str`` (UTF-8)
``json``                    ``json.loads``
``pyd``, ``pickle``, ``pkl``  refused, unless the caller passes ``allow_pickle=True``
==========================  ====================================================

Values that are not ``bytes`` (already decoded by an earlier stage) pass through untouched.
Unpickling runs arbitrary code from the data file: never do it for shards you did not
write yourself.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from ..errors import MidasDataError

__all__ = ["decode_member", "PICKLE_EXTENSIONS"]

PICKLE_EXTENSIONS = ("pyd", "pickle", "pkl")


def decode_member(name: str, value: Any, *, allow_pickle: bool = False) -> Any:
    """Decode the member ``name`` (``"image.npy"``) from its bytes; raise ``MidasDataError``
    saying what was expected when it cannot be decoded."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    extension = name.rsplit(".", 1)[-1].lower()
    data = bytes(value)
    if extension == "npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise MidasDataError(f"member {name!r}: is not a readable .npy array ({err})") from None
        return torch.from_numpy(np.ascontiguousarray(array))
    if extension in ("cls", "cls2", "id", "index"):
        try:
            return int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise MidasDataError(f"member {name!r}: expected a decimal integer, got {data[:20]!r}") from None
    if extension in ("txt", "text"):
        return data.decode("utf-8")
    if extension == "json":
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as err:
            raise MidasDataError(f"member {name!r}: is not valid JSON ({err})") from None
    if extension in PICKLE_EXTENSIONS:
        if not allow_pickle:
            raise MidasDataError(
                f"member {name!r}: is a pickle; unpickling runs code from the data file and is refused. "
                "Write arrays as .npy, or pass allow_pickle=True if you wrote these shards yourself"
            )
        import pickle

        return pickle.loads(data)  # the caller opted in explicitly
    raise MidasDataError(
        f"member {name!r}: no safe decoder for extension {extension!r}; expected one of npy, cls, id, txt, json "
        "(or decode it in a .map() before this stage)"
    )

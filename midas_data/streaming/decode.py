"""Reading a stream's samples: safe decoding of shard members (numbers and arrays, never
pickles by default) and :class:`SampleReader`, which gives each sample its id and its
checked fields.

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

Other formats (images, audio) decode with your own functions, passed as ``decoders``: a
mapping from a field name (``"image"``, applied to whatever value the field has) or a
member extension (``"png"``, applied to bytes) to a function of the value. They run inside
the stage, so a member they cannot decode is a :class:`MidasDataError` naming the shard,
key and member, which the stage's ``handler`` may skip and count.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.collate import as_label
from ..data.labels import is_label_set
from ..errors import MidasDataError
from .ids import ShardIndex

if TYPE_CHECKING:
    from .stage import WorkerPlace

__all__ = ["decode_member", "read_field", "location", "SampleReader", "Decoder", "PICKLE_EXTENSIONS"]

PICKLE_EXTENSIONS = ("pyd", "pickle", "pkl")


Decoder = Callable[[Any], Any]


def _run_decoder(decoder: Decoder, which: str, name: str, value: Any) -> Any:
    try:
        return decoder(value)
    except Exception as err:  # a user's decoder may raise anything (PIL.UnidentifiedImageError...)
        raise MidasDataError(
            f"member {name!r}: decoders[{which!r}] could not decode it ({type(err).__name__}: {err})"
        ) from err


def decode_member(
    name: str, value: Any, *, allow_pickle: bool = False, decoders: Mapping[str, Decoder] | None = None
) -> Any:
    """Decode the member ``name`` (``"image.npy"``) from its bytes; raise ``MidasDataError``
    saying what was expected when it cannot be decoded. ``decoders`` (field name or
    extension -> function) come before the built-in ones."""
    field = name.split(".", 1)[0]
    if decoders and field in decoders:
        return _run_decoder(decoders[field], field, name, value)
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    extension = name.rsplit(".", 1)[-1].lower()
    if decoders and extension in decoders:
        return _run_decoder(decoders[extension], extension, name, value)
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
        f"member {name!r}: no safe decoder for extension {extension!r}; expected one of npy, cls, id, txt, json, "
        f"or pass MidasBatches(decoders={{{extension!r}: fn}})"
    )


def read_field(
    sample: Mapping[str, Any], name: str, *, allow_pickle: bool = False, decoders: Mapping[str, Decoder] | None = None
) -> Any:
    """Field ``name`` of a sample, decoded: its member ``name`` or ``name.<ext>``."""
    if name in sample:
        return decode_member(name, sample[name], allow_pickle=allow_pickle, decoders=decoders)
    found = [k for k in sample if isinstance(k, str) and k.startswith(name + ".")]
    if len(found) != 1:
        have = sorted(k for k in sample if not str(k).startswith("__"))
        what = "no member" if not found else f"several members {found} for"
        raise MidasDataError(f"has {what} field {name!r} (expected {name!r} or {name}.<ext>); it has {have}")
    return decode_member(found[0], sample[found[0]], allow_pickle=allow_pickle, decoders=decoders)


def location(sample: Any) -> str:
    """``shard '...', key '...'`` of a webdataset sample, else ``sample``."""
    if isinstance(sample, Mapping):
        url, key = sample.get("__url__"), sample.get("__key__")
        if url is not None or key is not None:
            return f"shard {url!r}, key {key!r}"
    return "sample"


@dataclass
class SampleReader:
    """Gives a sample its int id and its decoded, checked fields, or raises a
    :class:`MidasDataError` naming the shard and key (else the id) and what is wrong: a
    member that does not decode, a missing field or a missing (``None``) value, a label
    that is not an integer class id, an id outside the stats table or seen twice in one
    epoch, a shard this worker should not read."""

    names: Sequence[str]
    label_key: str
    id_field: str | None
    index: ShardIndex | None
    num_ids: int | None  # rows of the stats table
    resampled: bool
    allow_pickle: bool
    decoders: Mapping[str, Decoder]

    def read(
        self, sample: Any, place: WorkerPlace, shards: list[int] | None, position: int | None, seen: set[int]
    ) -> tuple[int, dict[str, Any], str]:
        """``(id, fields, where)``; the error message is built only on error (this runs
        once per sample)."""
        where = location(sample)
        known: list[int] = []
        try:
            sample_id, item = self._read(sample, place, shards, position, seen, known)
        except MidasDataError as err:
            text = str(err)
            if where == "sample" and known:
                where = f"sample id {known[0]}"
            raise MidasDataError(text if text.startswith("shard ") else f"{where}: {text}") from None
        return sample_id, item, where if where != "sample" else f"sample id {sample_id}"

    def _field(self, sample: Mapping[str, Any], name: str) -> Any:
        return read_field(sample, name, allow_pickle=self.allow_pickle, decoders=self.decoders)

    def _read(
        self,
        sample: Any,
        place: WorkerPlace,
        shards: list[int] | None,
        position: int | None,
        seen: set[int],
        known: list[int],
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(sample, Mapping):
            raise MidasDataError(f"expected a dict sample, got {type(sample).__name__}")
        url, key = sample.get("__url__"), sample.get("__key__")
        if shards is not None and url is not None and self.index is not None:
            if position is None:
                self.index.shard_position(str(url))  # raises, naming the shard
            if position not in shards:
                names = [self.index.shards[s].name for s in shards]
                raise MidasDataError(
                    f"rank {place.rank} worker {place.worker} should read shards {names} (the node split, then the "
                    "worker split, of the index's shard list). Build the pipeline with the index's urls in order and "
                    "nodesplitter=stage.split_by_node (wds.split_by_node sees no process group inside workers unless "
                    "RANK and WORLD_SIZE are set, as torchrun does)"
                )
        if self.id_field is not None:
            sample_id = self._field(sample, self.id_field)
            if isinstance(sample_id, torch.Tensor) and sample_id.numel() == 1 and not sample_id.is_floating_point():
                sample_id = sample_id.item()
            if isinstance(sample_id, np.integer):
                sample_id = int(sample_id)
            if isinstance(sample_id, bool) or not isinstance(sample_id, int):
                raise MidasDataError(f"id field {self.id_field!r} is {sample_id!r}; expected an int")
        elif self.index is not None and key is not None and url is not None:
            sample_id = self.index.slot(str(key), str(url))
        else:
            raise MidasDataError("has no __key__/__url__ to look up in the shard index; pass id_field=")
        known.append(sample_id)
        item = {name: self._field(sample, name) for name in (*self.names, self.label_key)}
        for name in self.names:
            if item[name] is None:
                raise MidasDataError(f"modality {name!r} is None (a missing value); every sample needs every modality")
        if item[self.label_key] is None:
            raise MidasDataError(f"label {self.label_key!r} is None (a missing value)")
        if is_label_set(item[self.label_key]) is False:  # label sets are checked as the batch is built
            item[self.label_key] = as_label(item[self.label_key], sample_id, self.label_key)
        if self.num_ids is not None and not 0 <= sample_id < self.num_ids:
            raise MidasDataError(f"sample id {sample_id} is outside the stats table [0, {self.num_ids})")
        if not self.resampled:
            if sample_id in seen:
                raise MidasDataError(
                    f"sample id {sample_id} came twice in one epoch (a duplicate key, or a shard listed twice); "
                    "every sample must be unique unless resampled=True"
                )
            seen.add(sample_id)
        return int(sample_id), item

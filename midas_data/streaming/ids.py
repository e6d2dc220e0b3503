"""Stable sample ids on streams: the shard index and the key -> slot lookup.

The stats table is indexed by int64 ids in ``[0, N)``. A stream gets them in one of two
ways:

* an id field in every sample (a ``.id`` member of the shards, a column of a Hugging Face
  dataset): used as it is;
* the shard index (``index.json``, written with the shards by :func:`write_shards` or built
  for existing shards by :meth:`ShardIndex.scan`): it lists every shard with its number of
  samples, and maps each sample's ``__key__`` to a slot. Shards made by
  :func:`write_shards` name each sample by its slot (``__key__ = "%09d" % slot``), so the
  index stores only the first slot of each shard; scanned shards store their keys.

The index also gives the shard sizes that equal work per rank needs (``balance.py``), and
this module checks a tar shard's structure (:func:`tar_damage`): webdataset stops silently
at a truncated or corrupt tar, so a damaged shard shows up only as samples that never come.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import MidasDataError

__all__ = ["ShardIndex", "ShardEntry", "INDEX_NAME", "slot_key", "tar_damage", "local_path"]

INDEX_NAME = "index.json"
_FORMAT = "midas_data.ShardIndex/1"
SOURCES = ("tar", "hf")
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
# Tar member types without data blocks: hard and symbolic links, devices, directories, fifos.
_NO_DATA_TYPES = frozenset(b"123456")
# Headers that describe the member after them (pax, GNU long names), not members themselves.
_EXTENSION_TYPES = frozenset(b"xgLK")


def local_path(url: str | os.PathLike[str]) -> str | None:
    """The local file a shard url names (a plain path or ``file:``), ``None`` for remote
    urls (``pipe:``, ``http://``, ``s3://``...) that cannot be inspected cheaply."""
    text = os.fspath(url)
    if text.startswith("file://"):
        return text[len("file://") :]
    if text.startswith("file:"):
        return text[len("file:") :]
    if "://" in text or text.startswith("pipe:"):
        return None
    return text


def _open_stream(path: str) -> tuple[IO[bytes], bool]:
    """The file, decompressed when it is gzip, bzip2 or xz; and whether it can seek."""
    with open(path, "rb") as raw:
        magic = raw.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb"), False
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb"), False
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb"), False
    return open(path, "rb"), True


def _member_size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256 (GNU) for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    text = header[148:156].replace(b"\0", b" ").strip()
    try:
        stored = int(text, 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = sum(b - 256 if b > 127 else b for b in header[:148]) + 8 * 32
    signed += sum(b - 256 if b > 127 else b for b in header[156:])
    return stored in (unsigned, signed)


def tar_damage(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the tar file ``path`` (plain, or gzip/bzip2/xz compressed), or
    ``None`` when it reads to its end.

    Walks the member headers without reading member data: every header's checksum must
    hold, every member's declared data must lie inside the file, and the archive must end
    with its end-of-archive marker (two zero blocks). A copy cut short fails one of these;
    ``tarfile`` and webdataset stop at such a point without an error.
    """
    path = os.fspath(path)
    try:
        stream, seekable = _open_stream(path)
    except FileNotFoundError:
        return "the file does not exist"
    except OSError as err:
        return f"the file cannot be opened ({err.strerror or err})"
    size = os.path.getsize(path) if seekable else None
    offset = members = 0
    try:
        with stream:
            while True:
                header = stream.read(_BLOCK)
                if len(header) < _BLOCK:
                    if not header and offset == 0:
                        return "the file is empty"
                    where = f"after {members} members, at byte {offset}"
                    if header:
                        return f"truncated: the file ends inside a member header, {where}"
                    return f"truncated: the file ends {where} without the end-of-archive marker (two zero blocks)"
                if header == _ZERO_BLOCK:
                    if stream.read(_BLOCK) != _ZERO_BLOCK:
                        return f"truncated: the end-of-archive marker at byte {offset} is cut short"
                    return None
                if not _checksum_ok(header):
                    what = "is not a tar file" if offset == 0 else "corrupt"
                    return f"{what}: the member header at byte {offset} (after {members} members) fails its checksum"
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                data = 0 if header[156] in _NO_DATA_TYPES else _member_size(header)
                padded = -(-data // _BLOCK) * _BLOCK
                end = offset + _BLOCK + padded
                if seekable:
                    assert size is not None
                    if end > size:
                        inside = max(size - offset - _BLOCK, 0)
                        return (
                            f"truncated: the file ends inside member {name!r}, {inside} bytes into its {padded} bytes "
                            "of data and padding"
                        )
                    stream.seek(end)
                else:
                    left = padded
                    while left:
                        chunk = stream.read(min(left, 1 << 20))
                        if not chunk:
                            return f"truncated: the file ends inside member {name!r}, in its data or padding"
                        left -= len(chunk)
                offset = end
                members += header[156] not in _EXTENSION_TYPES
    except (EOFError, OSError, lzma.LZMAError, ValueError) as err:
        return f"truncated or corrupt compressed data after {members} members ({type(err).__name__}: {err})"


def slot_key(slot: int) -> str:
    """The ``__key__`` :func:`write_shards` gives the sample in table slot ``slot``."""
    return f"{slot:09d}"


@dataclass
class ShardEntry:
    """One shard: its file name, its number of samples, and how its keys map to slots."""

    name: str
    count: int
    first_slot: int
    keys: list[str] | None = None  # None: keys are slot numbers (shards from write_shards)
    path: str | None = None  # where the shard is, relative to the index's root; None: ``name``


@dataclass
class ShardIndex:
    """Every shard of a dataset with its size and the key -> slot map.

    Attributes:
        shards: the shards in order (the order the node and worker splits deal them in).
        fields: member name per field, e.g. ``{"image": "image.npy", "label": "label.cls"}``.
        root: the folder the shard names are relative to (where ``index.json`` was read).
        source: ``"tar"``: tar shards dealt to ranks and workers by position (webdataset);
            ``"hf"``: the shards of a Hugging Face ``IterableDataset`` (:meth:`for_hf`), which
            ``datasets`` deals after shuffling their order, so only how many shards each
            worker reads is known, not which (``balance.py``).
    """

    shards: list[ShardEntry]
    fields: dict[str, str] = field(default_factory=dict)
    root: str = ""
    source: str = "tar"

    def __post_init__(self) -> None:
        self._by_name = {entry.name: i for i, entry in enumerate(self.shards)}
        if len(self._by_name) != len(self.shards):
            raise MidasDataError("shard index: lists a shard name twice")
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES}, got {self.source!r}")
        self._slots: dict[str, int] | None = None

    @property
    def num_samples(self) -> int:
        return sum(entry.count for entry in self.shards)

    @property
    def counts(self) -> list[int]:
        return [entry.count for entry in self.shards]

    @property
    def urls(self) -> list[str]:
        """Shard paths to hand to ``webdataset.WebDataset``, in index order: the paths given
        to :meth:`scan`, or the names relative to the folder ``index.json`` was read from."""
        located = [entry.path or entry.name for entry in self.shards]
        return [os.path.join(self.root, where) if self.root else where for where in located]

    def url_of(self, position: int) -> str:
        """The url of the shard at index position ``position``."""
        entry = self.shards[position]
        where = entry.path or entry.name
        return os.path.join(self.root, where) if self.root else where

    def shard_position(self, url: str) -> int:
        """The index position of shard ``url`` (matched by file name)."""
        name = os.path.basename(str(url))
        if name not in self._by_name:
            raise MidasDataError(f"shard {url!r}: is not in the shard index (which lists {len(self.shards)} shards)")
        return self._by_name[name]

    def slot(self, key: str, url: str) -> int:
        """The table slot of the sample ``key`` of shard ``url``."""
        entry = self.shards[self.shard_position(url)]
        if entry.keys is None:
            try:
                slot = int(key)
            except ValueError:
                slot = -1
            if not entry.first_slot <= slot < entry.first_slot + entry.count:
                raise MidasDataError(
                    f"shard {entry.name!r}, key {key!r}: expected a slot number in "
                    f"[{entry.first_slot}, {entry.first_slot + entry.count}) as the index says"
                )
            return slot
        if self._slots is None:
            self._slots = {}
            for shard in self.shards:
                for i, k in enumerate(shard.keys or ()):
                    self._slots[f"{shard.name}\0{k}"] = shard.first_slot + i
        found = self._slots.get(f"{entry.name}\0{key}")
        if found is None:
            raise MidasDataError(f"shard {entry.name!r}, key {key!r}: is not in the shard index")
        return found

    # -- files ---------------------------------------------------------------------------
    def to_json(self, folder: str | None = None) -> dict[str, Any]:
        """The index as JSON; shard locations relative to ``folder`` (where it is saved)."""
        shards = []
        for position, e in enumerate(self.shards):
            entry: dict[str, Any] = {"name": e.name, "count": e.count, "first_slot": e.first_slot}
            if e.keys:
                entry["keys"] = e.keys
            if folder is not None and e.path is not None:
                where = os.path.relpath(os.path.abspath(self.url_of(position)), os.path.abspath(folder))
                if where != e.name:
                    entry["path"] = where
            shards.append(entry)
        data = {"format": _FORMAT, "num_samples": self.num_samples, "fields": self.fields, "shards": shards}
        if self.source != "tar":
            data["source"] = self.source
        return data

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index as JSON. Shards are located relative to the file's folder, so
        :meth:`load` finds them from wherever the folder is mounted."""
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        Path(path).write_text(json.dumps(self.to_json(folder)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShardIndex:
        """Read ``index.json`` (or the ``index.json`` inside folder ``path``)."""
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MidasDataError(f"shard index {str(path)!r}: cannot be read ({err})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise MidasDataError(f"shard index {str(path)!r}: expected format {_FORMAT!r}")
        shards = [
            ShardEntry(s["name"], int(s["count"]), int(s["first_slot"]), s.get("keys"), s.get("path"))
            for s in data["shards"]
        ]
        return cls(shards, dict(data.get("fields", {})), str(path.parent), str(data.get("source", "tar")))

    @classmethod
    def scan(cls, urls: Sequence[str | os.PathLike[str]], root: str = "") -> ShardIndex:
        """Build the index of existing tar shards by reading their member names (not their
        contents). The index keeps the paths as given (``index.urls``). A key found in two
        shards (or twice in one) is an error naming both; so is a shard that cannot be read
        to its end (cut short, corrupt: :func:`tar_damage`), whose count would be wrong."""
        shards: list[ShardEntry] = []
        seen: dict[str, str] = {}
        slot = 0
        for url in urls:
            text = os.fspath(url)
            name = os.path.basename(text)
            where = local_path(text)
            damage = tar_damage(where) if where is not None else None
            if damage is not None:
                raise MidasDataError(
                    f"shard {text!r}: is damaged ({damage}); it cannot be read to its end, so its sample count "
                    "would be wrong. Copy or write it again, or leave it out of the index"
                )
            try:
                with tarfile.open(where if where is not None else text) as tar:
                    members = [m.name for m in tar.getmembers() if m.isfile()]
            except (OSError, tarfile.TarError) as err:
                raise MidasDataError(f"shard {text!r}: cannot be read as a tar file ({err})") from None
            keys: list[str] = []
            for member in members:
                directory, base = os.path.split(member)
                key = os.path.join(directory, base.split(".", 1)[0]) if "." in base else member
                if keys and keys[-1] == key:
                    continue
                if key in seen:
                    raise MidasDataError(f"key {key!r}: appears in shard {seen[key]!r} and again in shard {name!r}")
                seen[key] = name
                keys.append(key)
            path = None if root and os.path.join(root, name) == text else text
            shards.append(ShardEntry(name, len(keys), slot, keys, path))
            slot += len(keys)
        return cls(shards, {}, root)

    @classmethod
    def for_hf(cls, num_examples: int, num_shards: int) -> ShardIndex:
        """The shard sizes of ``Dataset.to_iterable_dataset(num_shards)`` over ``num_examples``
        rows (contiguous shards, the first ``num_examples % num_shards`` one longer).

        Only the sizes matter: ``datasets`` shuffles the shard order before it deals shards
        to ranks and workers (every epoch after the first, and the first too after
        ``.shuffle()``), so the stage plans every worker's batches from how many shards it
        reads and the smallest and largest sizes they can have (``balance.py``)."""
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards: expected an int >= 1, got {num_shards!r}")
        if not isinstance(num_examples, int) or num_examples < 0:
            raise ValueError(f"num_examples: expected an int >= 0, got {num_examples!r}")
        base, extra = divmod(num_examples, num_shards)
        shards, slot = [], 0
        for i in range(num_shards):
            count = base + (1 if i < extra else 0)
            shards.append(ShardEntry(str(i), count, slot))
            slot += count
        return cls(shards, source="hf")

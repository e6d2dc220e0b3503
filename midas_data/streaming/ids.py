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

The index also gives the shard sizes that equal work per rank needs (``balance.py``).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MidasDataError

__all__ = ["ShardIndex", "ShardEntry", "INDEX_NAME", "slot_key"]

INDEX_NAME = "index.json"
_FORMAT = "midas_data.ShardIndex/1"


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


@dataclass
class ShardIndex:
    """Every shard of a dataset with its size and the key -> slot map.

    Attributes:
        shards: the shards in order (the order the node and worker splits deal them in).
        fields: member name per field, e.g. ``{"image": "image.npy", "label": "label.cls"}``.
        root: the folder the shard names are relative to (where ``index.json`` was read).
    """

    shards: list[ShardEntry]
    fields: dict[str, str] = field(default_factory=dict)
    root: str = ""

    def __post_init__(self) -> None:
        self._by_name = {entry.name: i for i, entry in enumerate(self.shards)}
        if len(self._by_name) != len(self.shards):
            raise MidasDataError("shard index: lists a shard name twice")
        self._slots: dict[str, int] | None = None

    @property
    def num_samples(self) -> int:
        return sum(entry.count for entry in self.shards)

    @property
    def counts(self) -> list[int]:
        return [entry.count for entry in self.shards]

    @property
    def urls(self) -> list[str]:
        """Shard paths to hand to ``webdataset.WebDataset``, in index order."""
        return [os.path.join(self.root, entry.name) if self.root else entry.name for entry in self.shards]

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
    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "num_samples": self.num_samples,
            "fields": self.fields,
            "shards": [
                {"name": e.name, "count": e.count, "first_slot": e.first_slot, **({"keys": e.keys} if e.keys else {})}
                for e in self.shards
            ],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

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
        shards = [ShardEntry(s["name"], int(s["count"]), int(s["first_slot"]), s.get("keys")) for s in data["shards"]]
        return cls(shards, dict(data.get("fields", {})), str(path.parent))

    @classmethod
    def scan(cls, urls: Sequence[str | os.PathLike[str]], root: str = "") -> ShardIndex:
        """Build the index of existing tar shards by reading their member names (not their
        contents). A key found in two shards (or twice in one) is an error naming both."""
        shards: list[ShardEntry] = []
        seen: dict[str, str] = {}
        slot = 0
        for url in urls:
            name = os.path.basename(str(url))
            try:
                with tarfile.open(url) as tar:
                    members = [m.name for m in tar.getmembers() if m.isfile()]
            except (OSError, tarfile.TarError) as err:
                raise MidasDataError(f"shard {str(url)!r}: cannot be read as a tar file ({err})") from None
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
            shards.append(ShardEntry(name, len(keys), slot, keys))
            slot += len(keys)
        return cls(shards, {}, root)

    @classmethod
    def for_hf(cls, num_examples: int, num_shards: int) -> ShardIndex:
        """The shard sizes of ``Dataset.to_iterable_dataset(num_shards)`` over ``num_examples``
        rows (contiguous shards, the first ``num_examples % num_shards`` one longer)."""
        base, extra = divmod(num_examples, num_shards)
        shards, slot = [], 0
        for i in range(num_shards):
            count = base + (1 if i < extra else 0)
            shards.append(ShardEntry(str(i), count, slot))
            slot += count
        return cls(shards)

"""One stats table per node: the local ranks of a node map one block of shared memory.

With per-rank tables every process of a node holds its own copy of the same bytes (the
all-gather in :func:`~midas_data.feedback.sync.sync_stats` keeps them identical), so a node
with eight local ranks holds eight copies. A :class:`NodeBuffer` is one block per node
instead, which every local rank (and its DataLoader workers) maps.

Linux only (``/dev/shm``, ``/proc``); elsewhere ``sharing="auto"`` keeps per-rank tables.
Making it (collective over the process group, every rank constructs the table):

1. every rank gathers every rank's ``(host, GROUP_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE)``
   and all decide the same thing: share per node, fall back to per-rank tables, or fail;
2. local rank 0 of each node creates a file in ``/dev/shm`` (or the file-backed table's
   directory) with ``O_EXCL`` and a random name (``midas_stats_node_<pid>_<uuid>``) and
   publishes its name and a random token through the gather;
3. the other local ranks open it, check the token and map it;
4. once every local rank holds it, the creator unlinks the name. The memory lives while a
   process maps it and is freed when the last one exits, whatever way it ends (a crash or
   ``SIGKILL`` included). Only a process killed between steps 2 and 4 leaves a file behind.

Two jobs on one node never collide: the name is random and is created exclusively, and
nothing looks a table up by a name that another job could guess. Two "nodes" on one host
(two ``torchrun`` launches side by side) are told apart by ``GROUP_RANK``, which torchrun
exports.

Writes (the write scheme): every local rank applies the same operations in the same order
(``sync_stats`` gives every rank the same rows). Operation ``k`` is written once, by the
first local rank that reaches it: under an exclusive ``flock`` on the block it compares its
own count with the block's sequence number, writes and advances the number if it is first,
and skips otherwise. So a rank that has applied or skipped its own operation ``k`` reads a
table with ``k`` operations applied, whichever rank wrote them, and a rank that reaches an
operation late never writes an older value over a newer one. A rank that dies while writing
releases the lock, and the next rank writes that operation again in full (updates overwrite,
so that is safe). Each operation's fingerprint is kept in a small ring in the block: a
rank whose operation differs from the one another rank wrote as ``k`` (``table.update`` on
one rank only) gets a ``RuntimeError``. Operations that no collective separates (``reset``,
``load_state_dict``, the same on every rank) may be seen by a rank a little before it makes
them; ``sync_stats`` updates cannot run ahead, as each needs every rank in its all-gather.

DataLoader workers map the block too: forked ones inherit the mapping, spawned ones reopen it
through ``/proc/<parent>/fd/<n>`` (the name is gone by then).
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import tempfile
import uuid
import warnings
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..distributed import is_distributed
from .storage import StatsStorageWarning

__all__ = ["SHARINGS", "NodeBuffer", "node_buffer", "HEADER_BYTES", "PREFIX"]

SHARINGS = ("auto", "node", "rank")
PREFIX = "midas_stats_node_"
_RING = 8
# token (16 bytes), sequence number, creator pid, then _RING fingerprints (int64 each).
HEADER_BYTES = 16 + 8 + 8 + 8 * _RING
_SHM = "/dev/shm"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _identity() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "group_rank": os.environ.get("GROUP_RANK", ""),
        "local_rank": _env_int("LOCAL_RANK"),
        "local_world_size": _env_int("LOCAL_WORLD_SIZE"),
    }


def _gather(obj: Any, group: Any, what: str) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size(group)
    try:
        dist.all_gather_object(out, obj, group=group)
    except RuntimeError as err:
        raise RuntimeError(
            f"StatsTable(sharing='node'): {what} failed ({err}). Every rank of the process group must construct "
            "the table, in the same order; a rank that died or skipped it leaves the others here"
        ) from err
    return out


def _plan(infos: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]] | str:
    """Ranks per node, or the reason the ranks cannot share per node."""
    missing = [r for r, i in enumerate(infos) if i["local_rank"] is None or i["local_world_size"] is None]
    if missing:
        return (
            f"ranks {missing} have no valid LOCAL_RANK and LOCAL_WORLD_SIZE in their environment (torchrun sets "
            "both); without them the local ranks of a node are unknown"
        )
    nodes: dict[tuple[str, str], list[int]] = {}
    for rank, info in enumerate(infos):
        nodes.setdefault((info["host"], info["group_rank"]), []).append(rank)
    for (host, group_rank), ranks in nodes.items():
        local = sorted(infos[r]["local_rank"] for r in ranks)
        sizes = {infos[r]["local_world_size"] for r in ranks}
        if local != list(range(len(ranks))) or sizes != {len(ranks)}:
            where = f"host {host!r}" + (f", GROUP_RANK {group_rank}" if group_rank else "")
            return (
                f"on {where} ranks {ranks} claim LOCAL_RANK {local} and LOCAL_WORLD_SIZE {sorted(sizes)}; expected "
                f"local ranks 0..{len(ranks) - 1} once each (two launches on one host need distinct GROUP_RANK)"
            )
    return nodes


class NodeBuffer:
    """``nbytes`` bytes shared by the local ranks of a node, plus a small header.

    Duck-types :class:`~midas_data.feedback.storage.SharedBuffer` (``nbytes``, ``tensor``,
    ``storage``, ``path``); made by :func:`node_buffer`, never directly.
    """

    sharing = "node"

    def __init__(self, nbytes: int, fd: int, storage: str, local_rank: int, token: bytes) -> None:
        self.nbytes, self.fd, self.local_rank, self.token = nbytes, fd, local_rank, token
        self._storage = storage
        self.path: str | None = None  # the name is gone once every local rank has it
        self.writes = 0  # operations this process wrote (the others were written by another local rank)
        self._map(fd)
        weakref.finalize(self, _close_quietly, fd)

    def _map(self, fd: int) -> None:
        self._mmap = mmap.mmap(fd, self.nbytes + HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole = torch.frombuffer(self._mmap, dtype=torch.uint8)
        self.tensor = whole[: self.nbytes]
        header = whole[self.nbytes :]
        self._token = header[:16]
        self._words = header[16:].view(torch.int64)  # [seq, creator pid, ring...]

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def inode(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the block: equal on the local ranks of one node."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    @property
    def links(self) -> int:
        """Names the block still has in the file system (0 once every local rank mapped it)."""
        return os.fstat(self.fd).st_nlink

    @property
    def sequence(self) -> int:
        """Operations applied to the block so far, by whichever local rank."""
        return int(self._words[0])

    @contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl  # POSIX only, like the rest of node sharing

        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def commit(self, number: int, fingerprint: int, write: Any) -> bool:
        """Run ``write()`` as operation ``number`` (1, 2, ...) unless another local rank did;
        whether this rank wrote it."""
        with self.locked():
            seq = int(self._words[0])
            slot = 2 + number % _RING
            if seq >= number:
                if seq - number < _RING and int(self._words[slot]) != fingerprint:
                    raise RuntimeError(
                        f"StatsTable (node-shared): operation {number} of local rank {self.local_rank} differs "
                        "from the one another local rank applied as that operation. Every rank of a node must "
                        "make the same updates in the same order: use sync_stats (not table.update on some ranks), "
                        "and reset or load the table on every rank"
                    )
                return False
            if seq != number - 1:
                raise RuntimeError(
                    f"StatsTable (node-shared): local rank {self.local_rank} reached operation {number} but the "
                    f"node's table has applied {seq}; the ranks of this node made different numbers of updates"
                )
            write()
            self._words[slot] = fingerprint
            self._words[0] = number
            self.writes += 1
            return True

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader worker (fork or spawn) reopens the block through this process's descriptor.
        return {
            "nbytes": self.nbytes,
            "storage": self._storage,
            "local_rank": self.local_rank,
            "token": self.token,
            "via": f"/proc/{os.getpid()}/fd/{self.fd}",
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        try:
            fd = os.open(state["via"], os.O_RDWR)
        except OSError as err:
            raise RuntimeError(
                f"StatsTable (node-shared): could not reopen the node's table through {state['via']} ({err}); "
                "a node-shared table travels to a process of the same node whose sender is alive (a DataLoader "
                "worker), not to another machine or a later run: save table.state_dict() instead"
            ) from err
        self.__init__(state["nbytes"], fd, state["storage"], state["local_rank"], state["token"])  # type: ignore[misc]
        if bytes(self._token.tolist()) != self.token:
            raise RuntimeError(f"StatsTable (node-shared): {state['via']} is not this table's block")


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _create(nbytes: int, directory: str, token: bytes) -> tuple[int, str]:
    path = os.path.join(directory, f"{PREFIX}{os.getpid()}_{uuid.uuid4().hex}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, nbytes + HEADER_BYTES)
        os.pwrite(fd, token, nbytes)
        os.pwrite(fd, os.getpid().to_bytes(8, "little"), nbytes + 24)
    except OSError:
        os.close(fd)
        _unlink(path)
        raise
    return fd, path


def node_buffer(
    nbytes: int,
    sharing: str,
    storage: str,
    directory: str | os.PathLike[str] | None,
    group: Any = None,
) -> NodeBuffer | None:
    """A :class:`NodeBuffer` of ``nbytes`` for this rank's node, or ``None`` where the table
    is per rank (``sharing="rank"``; no process group; one local rank per node; ``"auto"``
    where the node is unknown or the block cannot be made). Collective over ``group``."""
    if sharing not in SHARINGS:
        raise ValueError(f"sharing: expected one of {SHARINGS}, got {sharing!r}")
    if sharing == "rank" or not is_distributed(group):
        return None
    if not sys.platform.startswith("linux"):
        if sharing == "node":
            raise RuntimeError(f"StatsTable(sharing='node'): needs Linux (/dev/shm, /proc), not {sys.platform}")
        return None
    import torch.distributed as dist

    infos = _gather(_identity(), group, "exchanging LOCAL_RANK and host names")
    nodes = _plan(infos)
    if isinstance(nodes, str):
        if sharing == "node":
            raise ValueError(f"StatsTable(sharing='node'): {nodes}. Set them, or pass sharing='rank'")
        if "claim" in nodes:  # known but inconsistent: say so; unknown is the quiet, safe default
            warnings.warn(f"StatsTable: {nodes}; using per-rank tables", StatsStorageWarning, stacklevel=4)
        return None
    if all(len(ranks) == 1 for ranks in nodes.values()):
        return None  # one process per node: a per-rank table is the node's table
    me = dist.get_rank(group)
    info = infos[me]
    base = os.fspath(directory) if directory is not None else tempfile.gettempdir()
    if storage != "file":
        base = _SHM
    fd, path, error = -1, "", ""
    token = uuid.uuid4().bytes
    finalizer = None
    if info["local_rank"] == 0:
        try:
            fd, path = _create(nbytes, base, token)
            finalizer = weakref.finalize(_create, _unlink, path)  # until every local rank has it
        except OSError as err:
            error = f"local rank 0 could not create {nbytes + HEADER_BYTES} bytes in {base} ({err})"
    published = _gather((path, token, error), group, "publishing the node's table")
    node = next(ranks for ranks in nodes.values() if me in ranks)
    leader = next(r for r in node if infos[r]["local_rank"] == 0)
    path, token, error = published[leader]
    if not error and info["local_rank"] != 0:
        try:
            fd = os.open(path, os.O_RDWR)
            if os.pread(fd, 16, nbytes) != token:
                raise OSError(f"{path} does not hold the token local rank 0 wrote")
        except OSError as err:
            error = (
                f"local rank {info['local_rank']} could not open {path}, which local rank 0 created ({err}); do "
                "the local ranks share /dev/shm (one container, one host)?"
            )
    errors = [e for e in _gather(error, group, "attaching to the node's table") if e]
    if info["local_rank"] == 0 and path:
        _unlink(path)  # every local rank holds it (or gave up): the memory now lives while it is mapped
        if finalizer is not None:
            finalizer.detach()
    if errors:
        if fd >= 0:
            os.close(fd)
        message = f"could not share one table per node: {errors[0]}"
        if sharing == "node":
            raise RuntimeError(f"StatsTable(sharing='node'): {message}. Pass sharing='rank' for per-rank tables")
        warnings.warn(f"StatsTable: {message}; using per-rank tables", StatsStorageWarning, stacklevel=4)
        return None
    return NodeBuffer(nbytes, fd, "file" if storage == "file" else "shm", info["local_rank"], token)


def fingerprint(*tensors: torch.Tensor | None, kind: int = 0) -> int:
    """A CRC-32 of an operation's kind and inputs (host tensors)."""
    crc = zlib.crc32(kind.to_bytes(4, "little"))
    for t in tensors:
        if t is None:
            crc = zlib.crc32(b"-", crc)
            continue
        flat = t.detach().contiguous().reshape(-1)
        crc = zlib.crc32(memoryview(flat.view(torch.uint8).numpy()), crc) if flat.numel() else zlib.crc32(b"0", crc)
    return crc

"""``SharedBuffer``: one flat block of bytes that every DataLoader worker maps.

Workers see main-process updates only through shared memory, and only for memory created
before they start. A ``SharedBuffer`` is that memory: a ``uint8`` tensor in shared memory
(``share_memory_()``, i.e. ``/dev/shm``) or, where shared memory is unusable, a file
mapped with ``MAP_SHARED``. Pickled into a worker (fork or spawn, persistent or not) it
maps the same bytes. It knows nothing about what the bytes mean: the stats table lays
its columns over it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
import weakref
from typing import Any

import torch

__all__ = ["SharedBuffer", "StatsStorageWarning", "STORAGES"]

STORAGES = ("auto", "shm", "file")


class StatsStorageWarning(UserWarning):
    """Shared memory was unusable and the table fell back to a file-backed mapping."""


def _unlink_quietly(path: str, owner_pid: int) -> None:
    # A forked worker inherits the finalizer; only the creating process deletes the file.
    if os.getpid() != owner_pid:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


class SharedBuffer:
    """``nbytes`` zero-initialised bytes shared with every process the object is pickled to.

    Args:
        nbytes: size of the block.
        storage: ``"auto"`` (shared memory, else a file-backed mapping with a
            :class:`StatsStorageWarning`), ``"shm"`` (shared memory or a clear error) or
            ``"file"`` (a file-backed mapping in ``directory``).
        directory: where a file-backed buffer puts its file; the system temp directory by
            default. The file is deleted when the buffer that created it is collected.
        owner: the name that error messages and warnings use for the holder.
    """

    def __init__(
        self,
        nbytes: int,
        storage: str = "auto",
        directory: str | os.PathLike[str] | None = None,
        *,
        owner: str = "SharedBuffer",
    ) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        self.nbytes = int(nbytes)
        self.path: str | None = None
        self.tensor = self._allocate(storage, directory, owner)

    @property
    def storage(self) -> str:
        """``"shm"`` (shared memory) or ``"file"`` (file-backed mapping)."""
        return "shm" if self.path is None else "file"

    def _allocate(self, storage: str, directory: str | os.PathLike[str] | None, owner: str) -> torch.Tensor:
        nbytes = self.nbytes
        if storage in ("auto", "shm"):
            try:
                return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
            except (RuntimeError, OSError) as err:
                if storage == "shm":
                    raise RuntimeError(
                        f"{owner}: could not allocate {nbytes} bytes of shared memory ({err}). Make /dev/shm "
                        "writable and large enough (docker: --shm-size or --ipc=host), or pass storage='file' "
                        "(optionally directory=...) for a file-backed table"
                    ) from err
                failure = err
        base = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        path = os.path.join(base, f"midas_stats_{os.getpid()}_{uuid.uuid4().hex}.bin")
        try:
            buffer = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        except (RuntimeError, OSError) as err:
            raise RuntimeError(
                f"{owner}: could not create a file-backed table of {nbytes} bytes at {path} ({err}); pass "
                "directory= a writable local directory with enough space"
            ) from err
        if storage == "auto":
            warnings.warn(
                f"{owner}: shared memory is unusable ({failure}); using a file-backed table at {path}. "
                "Workers still share it, through the page cache. To use shared memory, make /dev/shm writable "
                "and large enough (docker: --shm-size or --ipc=host); pass storage='file' to silence this.",
                StatsStorageWarning,
                stacklevel=5,  # the user's call: StatsTable(...) -> SharedBuffer -> _allocate
            )
        self.path = path
        weakref.finalize(self, _unlink_quietly, path, os.getpid())
        return buffer

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"nbytes": self.nbytes, "path": self.path}
        if self.path is None:
            # Pickled by a DataLoader (multiprocessing's pickler), the tensor travels as a
            # handle to the same shared memory; pickled elsewhere, as a copy.
            state["tensor"] = self.tensor
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.nbytes, self.path = state["nbytes"], state["path"]
        if self.path is None:
            self.tensor = state["tensor"]
            return
        if not os.path.exists(self.path):
            raise RuntimeError(
                f"StatsTable: the file-backed table {self.path} no longer exists: its creating table was "
                "collected, or something removed the file (a temp-directory cleaner?). Keep that StatsTable alive "
                "while workers run, and give it directory= a place nothing cleans"
            )
        # Not the owner: the creating process deletes the file.
        self.tensor = torch.from_file(self.path, shared=True, size=self.nbytes, dtype=torch.uint8)

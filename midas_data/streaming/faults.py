"""Bad input on a stream: what the stage checks per sample, and what it says when input is
missing or broken.

* :class:`ValueAgreement`: every sample's modalities must share a type, dtype and shape
  (checked as samples come, where a handler can still skip the odd one, instead of in the
  collate step where the whole batch would fail);
* :func:`inspect_shortfall` and :func:`shortfall_error`: a worker's stream ended short of
  the index; each short shard is read (:func:`~midas_data.streaming.ids.tar_damage`) to
  tell a damaged file from samples dropped upstream;
* :func:`upstream_failure`: an error raised before the stage got the sample (the source,
  your ``.map()``) keeps its type and gets a note naming the shard and key, read from the
  failing sample in the frames the error passed through; a damaged shard is named as such;
* :func:`excess_error`: a worker received more than the index allows (a shard grew, or a
  dataset not split by rank);
* :func:`epoch_report`: the one warning per worker and epoch of what was skipped;
* :class:`SkipHandler`: the webdataset handler that counts errors of webdataset's stages.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..data.diagnose import describe
from ..errors import MidasDataError
from .decode import location
from .ids import ShardIndex, local_path, tar_damage

if TYPE_CHECKING:
    from .stage import WorkerPlace

__all__ = [
    "MAX_WORKERS",
    "SkipHandler",
    "ValueAgreement",
    "epoch_report",
    "excess_error",
    "inspect_shortfall",
    "shortfall_error",
    "upstream_failure",
]

# Rows of the stage's shared counters: one per DataLoader worker (workers never write the
# same row, so no increment is lost).
MAX_WORKERS = 256


class SkipHandler:
    """A webdataset ``handler`` that warns, counts the error in shared memory and goes on.

    Pass ``stage.source_handler`` as ``wds.WebDataset(urls, handler=...)`` so that errors
    inside webdataset's own stages (a shard that cannot be opened, a tar member that cannot
    be read) are counted with the stage's other skips instead of vanishing.
    """

    def __init__(self, counts: torch.Tensor, column: int) -> None:
        self.counts = counts
        self.column = column

    def __call__(self, error: Exception) -> bool:
        info = get_worker_info()
        row = 0 if info is None else info.id % MAX_WORKERS
        self.counts[row, self.column] += 1
        warnings.warn(f"skipped: {error!r}", stacklevel=2)
        return True


def _signature(value: Any) -> tuple[Any, ...]:
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, len(value))
    return (type(value).__name__,)


class ValueAgreement:
    """The type, dtype and shape that every sample's modalities share, per worker and pass.

    The collate step would fail on a sample whose modality differs from the others (after
    the samples before it in its batch were already used), so the stage checks each sample
    as it comes, where a handler can still skip it. The first two samples that agree set
    the reference (an odd first sample cannot set it for everyone): until then samples
    wait here. Modalities with their own ``modality_collate`` (padding) are not checked.
    Entries are ``(sample_id, item, where)``.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.reference: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.waiting: list[tuple[tuple[Any, ...], Any]] = []

    def offer(self, entry: tuple[int, dict[str, Any], str]) -> tuple[list[Any], list[MidasDataError]]:
        """The entries now accepted, and the errors of those rejected."""
        if not self.names:
            return [entry], []
        signature = tuple(_signature(entry[1][name]) for name in self.names)
        if self.reference is None:
            agrees = any(other == signature for other, _ in self.waiting)
            self.waiting.append((signature, entry))
            if not agrees:
                if len(self.waiting) >= 3:
                    raise MidasDataError(self._all_differ())
                return [], []
            self.reference = (signature, entry[1])
            waiting, self.waiting = self.waiting, []
            return self._judge(waiting)
        return self._judge([(signature, entry)])

    def finish(self) -> tuple[list[Any], list[MidasDataError]]:
        """At the end of the stream: samples still waiting (no two agreed) are judged
        against the first of them."""
        if not self.waiting:
            return [], []
        self.reference = (self.waiting[0][0], self.waiting[0][1][1])
        waiting, self.waiting = self.waiting, []
        return self._judge(waiting)

    def _judge(self, pairs: list[tuple[tuple[Any, ...], Any]]) -> tuple[list[Any], list[MidasDataError]]:
        assert self.reference is not None
        accepted, rejected = [], []
        for signature, entry in pairs:
            if signature == self.reference[0]:
                accepted.append(entry)
            else:
                rejected.append(MidasDataError(self._mismatch(signature, entry)))
        return accepted, rejected

    def _mismatch(self, signature: tuple[Any, ...], entry: Any) -> str:
        assert self.reference is not None
        reference, example = self.reference
        position = next(i for i, (a, b) in enumerate(zip(signature, reference)) if a != b)
        name = self.names[position]
        return (
            f"{entry[2]}: modality {name!r} is {describe(entry[1][name])} but the other samples give "
            f"{describe(example[name])}; every sample of a modality needs the same type, dtype and shape: resize "
            f"or pad it upstream, or pass modality_collate={{{name!r}: fn}} that pads"
        )

    def _all_differ(self) -> str:
        where = ", ".join(entry[2] for _, entry in self.waiting)
        kinds = "; ".join(", ".join(f"{n} {describe(entry[1][n])}" for n in self.names) for _, entry in self.waiting)
        return (
            f"the first samples ({where}) all differ in their modalities' type, dtype or shape ({kinds}); a batch "
            "stacks them, so they must agree: resize or pad upstream, or pass modality_collate={name: fn} for "
            "modalities of variable shape"
        )


# -- a stream that ended short of the index ------------------------------------------------
def _unreadable(damage: str) -> bool:
    """Whether :func:`tar_damage` found no file to read rather than a damaged one."""
    return damage.startswith(("the file does not exist", "the file cannot be opened"))


def inspect_shortfall(
    index: ShardIndex | None, shards: list[int] | None, arrivals: dict[int, int]
) -> tuple[list[str], list[str]]:
    """``(damaged, short)``: descriptions of this worker's shards that gave fewer samples
    than the index lists, split into those whose file is damaged or unreadable and those
    that read whole (their samples were dropped upstream, or they are remote)."""
    damaged: list[str] = []
    short: list[str] = []
    if index is None or shards is None:
        return damaged, short
    for position in shards:
        entry = index.shards[position]
        got = arrivals.get(position, 0)
        if got >= entry.count:
            continue
        url = index.url_of(position)
        where = local_path(url)
        damage = tar_damage(where) if where is not None else None
        if damage is None:
            inspected = "" if where is not None else " (a remote shard: not inspected)"
            absent = " (was it left out of the urls given to the source?)" if got == 0 else ""
            short.append(f"shard {url!r} gave {got} of its {entry.count} samples{inspected}{absent}")
        elif got == 0 and _unreadable(damage):
            damaged.append(
                f"shard {url!r}: cannot be read ({damage}); none of its {entry.count} samples came (the source's "
                "handler went on without it)"
            )
        else:
            damaged.append(
                f"shard {url!r}: the tar file is damaged ({damage}); {got} of its {entry.count} samples came before "
                "the stream stopped in it (webdataset stops at a cut or corrupt tar without an error)"
            )
    return damaged, short


def excess_error(
    sample: Any,
    place: WorkerPlace,
    index: ShardIndex | None,
    high: int,
    num_shards: int,
    position: int | None,
    shards: list[int] | None = None,
) -> MidasDataError:
    """The error of a worker that received more than the index allows: from the shard at
    ``position``, or (``position=None``) from all of its shards together."""
    at = location(sample)
    assert index is not None
    if position is not None:
        entry = index.shards[position]
        return MidasDataError(
            f"{at}: shard {entry.name!r} holds more than the {entry.count} samples the shard index lists for it; the "
            "shards changed after the index was built: rebuild it (ShardIndex.scan(urls).save(...))"
        )
    if shards is not None:
        names = [index.shards[s].name for s in shards]
        return MidasDataError(
            f"{at}: rank {place.rank}, worker {place.worker} got more than the {high} samples the shard index lists "
            f"for its shards {names}; rebuild the index (ShardIndex.scan(urls).save(...)) if the shards changed"
        )
    return MidasDataError(
        f"{at}: rank {place.rank}, worker {place.worker} got more than the {high} samples that its {num_shards} of "
        f"the index's {len(index.shards)} shards can hold: the dataset gives this worker more than its share. On "
        "several ranks, split it by rank first: datasets.distributed.split_dataset_by_node(ds, rank=rank, "
        "world_size=world_size); and give ShardIndex.for_hf the dataset's length and the num_shards of "
        "to_iterable_dataset"
    )


def _also(more: list[str]) -> str:
    return f" Also: {'; '.join(more)}" if more else ""


def shortfall_error(
    place: WorkerPlace,
    damaged: list[str],
    short: list[str],
    missing: int,
    arrived: int,
    low: int,
    num_shards: int,
) -> MidasDataError:
    """The error of a worker that received ``missing`` fewer samples than its shards hold
    (without a handler)."""
    if damaged:
        return MidasDataError(
            f"{damaged[0]}. Copy or write the shard again; to go on without its lost samples, pass "
            "handler=wds.warn_and_continue to the stage: they are then counted in skip_counts()['damaged_shards'] "
            f"and ['missing'].{_also(damaged[1:] + short)}"
        )
    if short:
        return MidasDataError(
            f"rank {place.rank}, worker {place.worker}: received {missing} fewer samples than the shard index lists: "
            f"{short[0]}, yet the file reads to its end: they were dropped before this stage (a webdataset handler "
            "such as warn_and_continue, or a filtering stage). Pass handler= to this stage as well to skip and count "
            f"bad input.{_also(short[1:])}"
        )
    return MidasDataError(
        f"rank {place.rank}, worker {place.worker}: received {arrived} samples, fewer than the {low} that its "
        f"{num_shards} shards hold at the least: examples were dropped before this stage (a .filter()?) or the index "
        "does not describe the dataset (ShardIndex.for_hf(len(ds), num_shards) with the num_shards of "
        "to_iterable_dataset). Pass handler= to the stage to go on and count them"
    )


def epoch_report(delta: dict[str, int], place: WorkerPlace, epoch: int, damaged: list[str]) -> str | None:
    """The text of a worker's warning for one epoch (``None``: nothing was skipped)."""
    if not any(delta.values()):
        return None
    parts = [f"{n} {name.replace('_', ' ')}" for name, n in delta.items() if n]
    text = (
        f"MidasBatches, epoch {epoch}, rank {place.rank}, worker {place.worker}: {', '.join(parts)} (totals of all "
        "workers: stage.skip_counts())"
    )
    return text + (". " + "; ".join(damaged) if damaged else "")


# -- an error raised upstream of the stage -------------------------------------------------
def _add_note(error: BaseException, text: str) -> None:
    """Attach ``text`` to ``error`` keeping its type (a note, shown with the traceback and
    in a DataLoader worker's report)."""
    if hasattr(error, "add_note"):
        error.add_note(text)
    elif error.args and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}\n{text}", *error.args[1:])


def _failed_sample(error: BaseException) -> Mapping[str, Any] | None:
    """The webdataset sample being handled where ``error`` was raised upstream of the stage:
    among the locals of the frames it passed through, from the innermost out, the first
    sample (a mapping with a ``__key__``): the one your ``.map()`` function or webdataset's
    ``_map`` was working on. The first frame is the stage's own, whose sample is the
    previous one, and is left out; outer generators may hold a stale sample, so the
    innermost one wins, and the caller prefers a url the error itself names."""
    frames = []
    trace = error.__traceback__.tb_next if error.__traceback__ is not None else None
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, Mapping) and value.get("__key__") is not None:
                return value
    return None


_TAR_NAME = re.compile(r"\.(tar|tgz)(\.[A-Za-z0-9]+)?$")


def _url_in(error: BaseException) -> str | None:
    """A shard url webdataset appended to ``error.args`` (it adds the url it was reading)."""
    for arg in (*reversed(error.args), getattr(error, "filename", None)):
        if isinstance(arg, str) and not any(c.isspace() for c in arg) and _TAR_NAME.search(arg):
            return arg
    return None


def _describe(sample: Any, id_field: str | None) -> str:
    if isinstance(sample, Mapping) and id_field is not None and id_field in sample:
        value = sample[id_field]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        return f"with id {value!r}"
    return f"of type {type(sample).__name__}"


def upstream_failure(error: Exception, last: Any, place: WorkerPlace, id_field: str | None) -> Exception:
    """An error raised before the stage received a sample (the source, a ``.map()``): a
    damaged shard is named as such (a new :class:`MidasDataError`); anything else is
    ``error`` itself, its type kept, with a note naming the shard and key it was raised for
    (or, when that cannot be found, the last sample the stage received)."""
    failed = _failed_sample(error)
    url = _url_in(error)
    if url is not None and failed is not None and str(failed.get("__url__")) != url:
        failed = None  # a sample of another shard, left in an outer generator's locals
    url = url if url is not None or failed is None else failed.get("__url__")
    if url is not None:
        where = local_path(str(url))
        damage = tar_damage(where) if where is not None else None
        if damage is not None:
            what = "cannot be read" if _unreadable(damage) else "the tar file is damaged"
            raised = f"{type(error).__name__}: {error}"
            return MidasDataError(f"shard {str(url)!r}: {what} ({damage}); reading it raised {raised}")
    if failed is not None:
        at = f"shard {failed.get('__url__')!r}, key {failed.get('__key__')!r}"
    elif isinstance(last, Mapping) and ("__key__" in last or "__url__" in last):
        at = f"after shard {last.get('__url__')!r}, key {last.get('__key__')!r} (the last sample received)"
    elif last is not None:
        at = f"after the sample {_describe(last, id_field)} (the last one received)"
    else:
        at = "before the first sample"
    _add_note(
        error,
        f"MidasBatches (rank {place.rank}, worker {place.worker}): raised upstream of the stage, {at}, by the source "
        "or a stage before MidasBatches (your .map()?). Decode in the stage instead, "
        "MidasBatches(decoders={'png': fn, ...}), to have such samples named and, with handler=, skipped and counted",
    )
    return error

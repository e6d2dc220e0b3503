"""Finding host synchronisations: the operations that make the host wait for the device.

On CUDA the host queues kernels and runs ahead of the device; a training step is fast
while it never stops to wait. Some operations cannot be queued that way because the host
needs their *result* to go on: a Python number (``.item()``, ``int(t)``, ``bool(t)``, an
``if`` on a tensor), or the size of a tensor whose length depends on its values
(``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``). Each of those waits
for every kernel queued before it. :func:`count_host_syncs` lists them::

    from midas_data.debug import count_host_syncs

    with count_host_syncs() as syncs:
        loss, info = objective(model(batch.inputs), batch)
    assert syncs.count == 0, syncs.ops

It watches the operators PyTorch dispatches (a ``TorchDispatchMode``) and treats every
tensor as if it were on a device, so a CPU-only test catches what would stall a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_host_syncs", "HostSyncCounter", "SYNCING_OPS"]

# Operators (``aten`` names, any overload) whose result the host must read from the device.
SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), int(t), float(t), bool(t), `if t:`
        "item",
        "nonzero",  # also torch.where(mask), argwhere
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "masked_select",
        "equal",  # returns a Python bool
        "allclose",
        "bincount",  # its length depends on the largest value
    }
)
# Operators that synchronise only with a boolean (mask) index: its count of True is the size.
_MASK_INDEXED = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
# repeat_interleave with tensor repeats and no ``output_size`` sums the repeats on the host.
_REPEATS = frozenset({"repeat_interleave"})


def _has_mask(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")


def _syncs(func: Any, args: tuple, kwargs: dict) -> bool:
    if getattr(func, "namespace", None) != "aten":
        return False
    name = func.overloadpacket.__name__
    if name in SYNCING_OPS:
        return True
    if name in _MASK_INDEXED:
        return len(args) > 1 and _has_mask(args[1])
    if name in _REPEATS:
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    # A blocking copy from a real device to the host (not "as if": CPU-to-CPU copies are everywhere).
    if name == "_to_copy":
        to_host = kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
        return to_host and _on_device(args[0]) and not kwargs.get("non_blocking", False)
    if name == "copy_":
        blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        return blocking and args[0].device.type == "cpu" and _on_device(args[1])
    return False


class HostSyncCounter(TorchDispatchMode):
    """What :func:`count_host_syncs` returns: ``ops`` lists the name of every operator that
    would make the host wait for the device (``"aten.nonzero.default"``, ...), in call
    order; ``count`` is their number."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    @property
    def count(self) -> int:
        return len(self.ops)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.ops.append(str(func))
        return func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"HostSyncCounter(count={self.count}, ops={self.ops})"


def count_host_syncs() -> HostSyncCounter:
    """A context manager that records every operation run inside it that forces a host
    synchronisation on a device: ``with count_host_syncs() as syncs: ...``, then
    ``syncs.count`` and ``syncs.ops`` (operator names, in call order).

    Flagged, on any device (CPU tensors count as if they were on a GPU):

    * reading a value on the host: ``aten._local_scalar_dense`` / ``aten.item`` (``.item()``,
      ``int(t)``, ``float(t)``, ``bool(t)``, ``if t:``), ``aten.equal``, ``aten.allclose``;
    * a result whose size depends on the values: ``aten.nonzero`` (``torch.where(mask)``),
      ``aten.unique*`` / ``aten._unique2``, ``aten.masked_select``, ``aten.bincount``,
      ``aten.repeat_interleave`` with tensor repeats and no ``output_size``, and
      ``aten.index.Tensor`` / ``aten.index_put_`` with a boolean index (``t[mask]``,
      ``t[mask] = v``).

    Flagged only for tensors really on a device: a blocking copy to the host
    (``t.cpu()``, ``t.to("cpu")``); ``non_blocking=True`` copies are not flagged.

    Not seen: ``t.tolist()`` and ``t.numpy()`` on a CPU tensor read memory without an
    operator, and waits outside PyTorch's operators (``torch.cuda.synchronize()``, events).
    Cheap operations that keep sizes fixed (``sum``, ``index_select``, ``where(c, a, b)``,
    ``masked_fill``) are not host synchronisations and are not counted.
    """
    return HostSyncCounter()

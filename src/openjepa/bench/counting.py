"""What a step asks of the host, counted rather than timed: the operators it dispatches, the ones
that would launch a kernel on a GPU, and the calls that would read a device value back (a host
sync). Both counters work on the CPU, where no kernel is launched and no sync is paid, so they
measure on a laptop what a GPU step would cost its host.

``DispatchCount`` sits below autograd (a ``TorchDispatchMode``): it sees every aten operator the
forward, the backward and the optimiser run, after composite operators are decomposed; views and
allocations are counted apart from the kernel-like rest. ``HostReads`` sits above it (a
``TorchFunctionMode``) and sees the Python-level reads (``.item()``, ``.tolist()``, ``bool(t)``,
``.cpu()``, ``.numpy()``) that the dispatcher cannot tell from host work when the device is the CPU.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC2701 (torch documents it there)

aten = torch.ops.aten

# Operators whose result the host must wait for: a value read back, or an output whose size
# depends on the data (on a GPU the host cannot allocate it before the kernel has run).
SYNC_OPS = {
    aten._local_scalar_dense,  # .item(), float(t), int(t), bool(t)
    aten.is_nonzero,
    aten.equal,
    aten.nonzero,
    aten.masked_select,
    aten.unique_dim,
    aten._unique2,
    aten._unique,
    aten.unique_consecutive,
    aten.masked_scatter,
}
# Tensor methods (as ``TorchFunctionMode`` sees them) that read values onto the host without an aten
# operator when the tensor is on the CPU already (``.item()``, ``bool(t)`` ... reach the dispatcher).
HOST_READS = {"tolist", "numpy", "cpu"}
# Operators that launch no kernel: allocations and bookkeeping (views are found by their schema).
NO_KERNEL = {aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided, aten.lift_fresh}


def _data_dependent(func, args, kwargs) -> bool:
    packet = func._overloadpacket
    if packet in SYNC_OPS:
        return True
    if packet is aten.repeat_interleave:  # repeats given as a tensor: the output size is read from it
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    if packet in (aten.index, aten.index_put, aten.index_put_):  # boolean masks as indices
        indices = args[1] if len(args) > 1 else []
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])
    return False


class DispatchCount(TorchDispatchMode):
    """Counts aten operators while active: ``ops`` (all), ``kernels`` (not a view or an
    allocation: what would launch a kernel on a GPU) and ``syncs`` (data-dependent: see
    ``SYNC_OPS``), each a Counter by operator name; reads of the tensors of ``host`` (values that
    live on the host whatever the device, e.g. a CPU step counter) are not syncs."""

    def __init__(self, host: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.ops, self.kernels, self.syncs = Counter(), Counter(), Counter()
        self._host = {id(t) for t in host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func._overloadpacket).removeprefix("aten.")
        self.ops[name] += 1
        on_host = bool(args) and id(args[0]) in self._host  # work on a host value: no kernel, no sync
        if not func.is_view and func._overloadpacket not in NO_KERNEL and not on_host:
            self.kernels[name] += 1
        kwargs = kwargs or {}
        if _data_dependent(func, args, kwargs) and not on_host:
            self.syncs[name] += 1
        return func(*args, **kwargs)


class HostReads(TorchFunctionMode):
    """Counts the tensor methods of ``HOST_READS`` called while active (``reads``, by name), except
    on the tensors of ``host``."""

    def __init__(self, host: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.reads: Counter = Counter()
        self._host = {id(t) for t in host}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor) and id(args[0]) not in self._host:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


class StepCount:
    """Both counters over a block: ``with StepCount() as count: step()``; then ``count.summary(n)``
    is the per-step figures over ``n`` steps."""

    def __init__(self, host: tuple[torch.Tensor, ...] = ()):
        self.dispatch, self.reads = DispatchCount(host), HostReads(host)

    def __enter__(self):
        self.reads.__enter__()
        self.dispatch.__enter__()
        return self

    def __exit__(self, *exc):
        self.dispatch.__exit__(*exc)
        self.reads.__exit__(*exc)

    @property
    def syncs(self) -> Counter:
        return self.dispatch.syncs + self.reads.reads

    def summary(self, steps: int = 1, top: int = 8) -> dict:
        d = self.dispatch
        return {
            "ops_per_step": round(sum(d.ops.values()) / steps, 1),
            "kernels_per_step": round(sum(d.kernels.values()) / steps, 1),
            "syncs_per_step": round(sum(self.syncs.values()) / steps, 2),
            "syncs": {k: round(v / steps, 2) for k, v in self.syncs.items()},
            "top_kernels": {k: round(v / steps, 1) for k, v in d.kernels.most_common(top)},
        }

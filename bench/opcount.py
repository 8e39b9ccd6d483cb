"""Count what a piece of code asks of torch, with the torch profiler: kernel-launching ops, and ops that sync.

Used by ``bench/bench_overhead.py`` and by the tests that pin the per-step cost (``tests/unit/test_step_cost.py``).
On CPU the profiler sees aten ops, not kernels: an op is counted as *kernel-launching* when it is top-level (not
called from inside another aten op) and it, or an op it calls, computes something (views, reshapes, allocations,
dtype queries and no-op ``to`` calls do not). That is the number of kernels the same code launches on a GPU when
every op there is one kernel (true for the elementwise ops and the std reduction used per step). On CUDA,
:func:`cuda_kernel_launches` counts the kernels (and memcpy/memset) the profiler saw on the device.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

#: Ops that only make views or allocate, or only look at metadata: no kernel of their own.
NON_COMPUTE: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        "empty",
        "empty_like",
        "empty_strided",
        "view",
        "reshape",
        "_reshape_alias",
        "_unsafe_view",
        "select",
        "slice",
        "unsqueeze",
        "squeeze",
        "expand",
        "expand_as",
        "as_strided",
        "narrow",
        "alias",
        "detach",
        "t",
        "transpose",
        "permute",
        "unbind",
        "split",
        "chunk",
        "flatten",
        "lift_fresh",
        "promote_types",
        "result_type",
        "resize_",
        "to",
        "_to_copy",
        "contiguous",
        "_has_compatible_shallow_copy_type",
        "size",
        "stride",
        "dim",
        "is_floating_point",
    )
)

#: Ops that read a tensor's value on the host: a device synchronisation when the tensor is on a GPU (counted when
#: called from Python, i.e. top-level).
SYNC_OPS: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        "item",
        "_local_scalar_dense",
        "is_nonzero",
        "nonzero",
        "nonzero_static",
        "equal",
        "allclose",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "bincount",
        "repeat_interleave",
    )
)


@dataclass(frozen=True)
class OpCount:
    """One profiled call: top-level aten ops, the kernel-launching ones by name, and the host-reading (sync) ones."""

    top_level: int
    kernels: collections.Counter[str]
    syncs: collections.Counter[str]

    @property
    def kernel_total(self) -> int:
        return sum(self.kernels.values())

    def table(self) -> str:
        """``sub 4, mul 3, ...`` (most frequent first), for printing."""
        return ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in self.kernels.most_common())


def _subtree_computes(event: object) -> bool:
    stack = [event]
    while stack:
        e = stack.pop()
        if e.name.startswith("aten::") and e.name not in NON_COMPUTE:
            return True
        stack.extend(e.cpu_children)
    return False


def _aten_ancestor(event: object) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def classify(events: Iterable[object]) -> OpCount:
    """:class:`OpCount` of a profiler's ``events()`` (``torch.autograd.profiler_util.FunctionEvent`` list)."""
    events = list(events)
    top = [e for e in events if e.name.startswith("aten::") and not _aten_ancestor(e)]
    kernels = collections.Counter(e.name for e in top if _subtree_computes(e))
    # top-level only: inside an op it is that op's own (CPU) implementation, e.g. CPU std of one value calls item()
    syncs = collections.Counter(e.name for e in top if e.name in SYNC_OPS)
    return OpCount(top_level=len(top), kernels=kernels, syncs=syncs)


def count_ops(fn: Callable[[], object], warmup: int = 2) -> OpCount:
    """Profile one call of ``fn`` (after ``warmup`` unprofiled calls) on the CPU profiler."""
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return classify(prof.events())


def cuda_kernel_launches(fn: Callable[[], object], calls: int = 10, warmup: int = 3) -> float:
    """Device kernels (and memcpy/memset) per call of ``fn``, from the CUDA profiler over ``calls`` calls."""
    from torch.autograd import DeviceType

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = list(prof.events())
    device_events = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    if not device_events:  # profiler versions that attach the kernels to the CPU ops instead
        return sum(len(getattr(e, "kernels", ())) for e in events) / calls
    return len(device_events) / calls

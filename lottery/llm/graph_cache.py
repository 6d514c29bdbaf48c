"""Replay an in-place function of a few CUDA tensors from a CUDA graph captured once per shape.

SparseGPT's column loop launches ~8 small kernels per column; on a GPU the per-launch CPU cost dominates.
Capturing the loop once per (shapes, constants) and replaying it for every block removes that cost. The
replayed kernels are the ones the eager call launches, so the results are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

__all__ = ["GraphCache"]


class _Captured:
    """``fn(*static, *consts)`` captured once; ``static`` are contiguous copies of the first call's tensors."""

    def __init__(self, fn: Callable[..., None], tensors: tuple[Tensor, ...], consts: tuple):
        device = tensors[0].device
        self.static = tuple(t.clone(memory_format=torch.contiguous_format) for t in tensors)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the capture (cuBLAS handles, workspaces)
            fn(*self.static, *consts)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn(*self.static, *consts)

    def __call__(self, tensors: tuple[Tensor, ...]) -> None:
        for buffer, t in zip(self.static, tensors, strict=True):
            buffer.copy_(t)
        self.graph.replay()
        for buffer, t in zip(self.static, tensors, strict=True):
            t.copy_(buffer)


class GraphCache:
    """Runs ``fn(*tensors, *consts)``, which updates ``tensors`` in place, from a cached CUDA graph.

    ``fn`` must be free of host synchronisation (no boolean indexing, no ``.item()``) and depend on
    nothing but its arguments: the graph is keyed by ``fn``, the device, ``consts`` and the tensors' shapes
    and dtypes, and every tensor is copied in before and back out after the replay. On the CPU, or while
    the current stream is itself being captured, ``fn`` simply runs eagerly.
    """

    def __init__(self, max_graphs: int = 16):
        self.max_graphs = max_graphs  # a handful of layer shapes per model; bound the static buffers anyway
        self._graphs: dict[Hashable, _Captured] = {}

    def __call__(self, fn: Callable[..., None], tensors: tuple[Tensor, ...], consts: tuple = ()) -> None:
        if not tensors[0].is_cuda or torch.cuda.is_current_stream_capturing():
            fn(*tensors, *consts)
            return
        key = (fn, tensors[0].device, consts, tuple((t.shape, t.dtype) for t in tensors))
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.clear()
            self._graphs[key] = _Captured(fn, tensors, consts)
        self._graphs[key](tensors)

    def clear(self) -> None:
        """Drop every captured graph and its static buffers."""
        self._graphs.clear()

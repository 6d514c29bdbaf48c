"""2:4-pruned `nn.Linear` layers as semi-structured sparse GPU layers.

Backends:
- ``"cslt"`` (default): the weight compressed once for `torch._cslt_sparse_mm` (`lottery.export.cslt.CsltWeight`:
  the kernel config searched on the real operands per (token count, layout) and kept with the weight). It
  computes Yᵀ = W·Xᵀ; an input that is already a transposed view (the Yᵀ of an earlier such layer, e.g.
  SiLU(gate)·up) goes in without a copy. Y is made token-major again by ``transpose``: ``"auto"`` (a tiled
  Triton transpose on CUDA when Triton is installed, `lottery.export.fused.transpose`), ``"triton"`` or
  ``"copy"`` (torch's ``.contiguous()``, ~0.6 TB/s on an H200: it ate the whole 2:4 gain end to end), unless
  ``keep_transposed``. With ``dispatch`` (a measured `DispatchTable`) each call runs dense `F.linear` instead
  where that was measured faster (decode shapes, bf16), so the layer is never slower than dense.
  torch rebuilds the cuSPARSELt plan on every call (~0.5 ms of host time), so run it inside a CUDA graph
  (`torch.cuda.graph`, or `torch.compile(mode="reduce-overhead")`); eagerly it loses to dense below ~8k tokens.
- ``"torch"``: `torch.sparse.to_sparse_semi_structured` through `F.linear` (same library, default algorithm,
  plus transposes; the CUTLASS variant refuses compute capability 9.x).
- ``"ctypes"``: EXPERIMENTAL, our own cuSPARSELt binding with cached plans (`lottery.export.cusparselt`). On the
  H200 with cuSPARSELt 0.8 its search failed and the process then crashed (illegal instruction / segfault);
  the cause is not found. Kept for that follow-up, never chosen by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lottery.errors import LotteryError
from lottery.export.cslt import CsltWeight
from lottery.export.fused import transpose as fused_transpose
from lottery.pruning.nm import check_nm

__all__ = ["BACKENDS", "SemiStructuredLinear", "SemiStructuredUnavailable", "require_semi_structured_gpu",
           "to_semi_structured"]

BACKENDS = ("cslt", "torch", "ctypes")
TRANSPOSES = ("auto", "triton", "copy")
_PAD = {torch.float16: 8, torch.bfloat16: 8, torch.int8: 16}


class SemiStructuredUnavailable(LotteryError, RuntimeError):
    """This machine cannot run 2:4 semi-structured kernels."""


def require_semi_structured_gpu(device: torch.device | str | None = None) -> torch.device:
    """Return the CUDA device to use, or raise a one-line error if it cannot run 2:4 sparse kernels."""
    if not torch.cuda.is_available():
        raise SemiStructuredUnavailable(
            "2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0; no CUDA device is available")
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        raise SemiStructuredUnavailable(
            f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0; got device {dev}")
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        raise SemiStructuredUnavailable(
            f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0; "
            f"{torch.cuda.get_device_name(dev)} is {major}.{minor}")
    return dev


class SemiStructuredLinear(nn.Module):
    """`F.linear` with a 2:4 sparse weight held compressed; same outputs as the masked dense layer."""

    def __init__(self, weight: Tensor | None, bias: Tensor | None = None, backend: str = "cslt",
                 search: bool = True, layout: str = "A_rowD", keep_transposed: bool = False, transpose: str = "auto",
                 dispatch=None, compressed: CsltWeight | None = None) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if transpose not in TRANSPOSES:
            raise ValueError(f"transpose must be one of {TRANSPOSES}, got {transpose!r}")
        if compressed is not None:
            # Already compressed (so the machine can run it): share it, e.g. between benchmark variants.
            if backend != "cslt":
                raise ValueError("a precompressed CsltWeight needs backend='cslt'")
            dev, dtype = compressed.device, compressed.dtype
            self.out_features, self.in_features = compressed.out_features, compressed.in_features
        else:
            if weight is None:
                raise ValueError("SemiStructuredLinear needs a weight or a compressed CsltWeight")
            dev = require_semi_structured_gpu(weight.device if weight.is_cuda else None)
            if weight.dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(f"SemiStructuredLinear takes float16 or bfloat16 weights, got {weight.dtype}")
            if not check_nm(weight, 2, 4):
                raise ValueError("SemiStructuredLinear: weight is not 2:4 sparse along in_features")
            weight = weight.detach().to(dev)
            dtype = weight.dtype
            self.out_features, self.in_features = weight.shape
        # cslt computes Yᵀ; Y is returned token-major unless keep_transposed (worth it only when the consumer is
        # elementwise and then another cslt layer, e.g. gate/up -> SiLU·up -> down; attention kernels need
        # unit-stride heads and fall back to a slow path on the transposed view).
        self.backend, self.search, self.keep_transposed, self.transpose = backend, search, keep_transposed, transpose
        self.bias = nn.Parameter(bias.detach().to(dev, dtype), requires_grad=False) if bias is not None else None
        self._lt = self._torch_w = self._cw = self._dense = None
        self.dispatch = dispatch
        if dispatch is not None:
            if weight is None:
                raise ValueError("dispatch needs the dense weight too")
            self._dense = weight
        if backend == "ctypes":
            from lottery.export.cusparselt import LtSparseWeight

            self._lt = LtSparseWeight(weight, layout=layout)
            self._rows: dict[int, int] = {}
        elif backend == "cslt":
            self._cw = compressed if compressed is not None else CsltWeight(weight, search=search)
        else:
            from torch.sparse import to_sparse_semi_structured

            self._torch_w = to_sparse_semi_structured(weight)

    def _plan(self, tokens: int, x_t: bool = False):
        """Plan for `tokens` rows, padding to the kernel's row multiple only if the exact size is refused."""
        from lottery.export.cusparselt import LtError

        assert self._lt is not None
        rows = self._rows.get(tokens)
        if rows is None:
            try:
                self._lt.plan(tokens, search=self.search, x_transposed=x_t)
                rows = tokens
            except LtError:
                pad_to = _PAD[self._lt.fmt.io]
                rows = -(-tokens // pad_to) * pad_to
                if rows == tokens:
                    raise
            self._rows[tokens] = rows
        return self._lt.plan(rows, search=self.search, x_transposed=x_t and rows == tokens), rows

    def _cslt(self, x2: Tensor) -> Tensor:
        """Yᵀ (N, T) for token-major x2 (T, K), or for the transposed view of a contiguous (K, T)."""
        tokens = x2.shape[0]
        if tokens > 1 and x2.stride() == (1, tokens):
            b = x2.t()  # contiguous (K, T): cuSPARSELt reads it untransposed
        else:
            b = x2.contiguous().t()  # a view: cuSPARSELt reads it as op T, no copy
        return self._cw.mm_t(b)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self._cw is not None:
            if self.dispatch is not None and self.dispatch.choose(
                    self.out_features, self.in_features, x2.shape[0], self._cw.dtype,
                    "contig" if x2.shape[0] > 1 and x2.stride() == (1, x2.shape[0]) else "view") == "dense":
                return F.linear(x2, self._dense, self.bias).reshape(*lead, self.out_features)
            yt = self._cslt(x2)
            if self.keep_transposed:
                y = yt.t()
            elif self.transpose == "auto":
                try:
                    y = fused_transpose(yt)
                except Exception as e:  # noqa: BLE001 - e.g. Triton cannot compile here: fall back, say so once
                    import warnings

                    warnings.warn(f"SemiStructuredLinear: Triton transpose failed ({type(e).__name__}: {e}); "
                                  "using torch's copy from now on", stacklevel=2)
                    self.transpose = "copy"
                    y = yt.t().contiguous()
            else:
                y = fused_transpose(yt, impl="torch" if self.transpose == "copy" else "triton")
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*lead, self.out_features)
        if self._torch_w is not None:
            y = F.linear(x2, self._torch_w, self.bias)
            return y.reshape(*lead, self.out_features)
        tokens = x2.shape[0]
        # An input that is the transposed view of a contiguous (K, T) tensor (the Yᵀ output of an "A_rowD"
        # layer, e.g. after SiLU·up) goes in as is: no transpose copy.
        x_t = self._lt.layout != "B" and tokens > 1 and x2.stride() == (1, tokens)
        plan, rows = self._plan(tokens, x_t)
        if plan.x_transposed:
            y = plan.run(x2.t())
        else:
            x2 = x2.contiguous()
            if rows != tokens:
                x2 = F.pad(x2, (0, 0, 0, rows - tokens))
            y = plan.run(x2)
        if self._lt is not None and self._lt.layout == "A_rowD":
            y = y.t()  # (N, T) -> (T, N) view; the reshape below makes it contiguous when it must
        if rows != tokens:
            y = y[:tokens]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}"


def to_semi_structured(model: nn.Module, backend: str = "cslt", search: bool = True,
                       include: tuple[str, ...] | None = None, layout: str = "A_rowD") -> list[str]:
    """Replace, in place, every `nn.Linear` whose weight is 2:4 sparse (and whose name contains one of
    `include`, if given) by a `SemiStructuredLinear`. Returns the replaced names."""
    require_semi_structured_gpu()
    targets = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (include is None or any(s in name for s in include)):
            if mod.weight.shape[1] % 16 == 0 and mod.weight.shape[0] % 16 == 0 and check_nm(mod.weight, 2, 4):
                targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        setattr(parent, child, SemiStructuredLinear(lin.weight, lin.bias, backend=backend, search=search,
                                                    layout=layout))
    return targets

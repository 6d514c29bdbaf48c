"""A 2:4 weight compressed once for `torch._cslt_sparse_mm`, with its tuned kernel configs cached beside it.

What torch's binding accepts (aten/src/ATen/native/sparse/cuda/cuSPARSELtOps.cpp, read for issue 16): the
sparse operand is always A, row-major (N, K); the result D = A·B is row-major (N, T), i.e. Yᵀ for B = Xᵀ, unless
``transpose_result=True`` asks for a column-major D (fails on cuSPARSELt 0.8 on an H200). B is read without a
copy in two layouts, told apart by ``B.is_contiguous()`` alone:

- contiguous (K, T): row-major B, op N (activations kept feature-major, e.g. the Yᵀ of an earlier layer);
- anything else: taken to be the transpose of a contiguous (T, K), op T (``X.t()`` of a token-major X).

Any other strides (a slice, a permuted view) would be misread, so `mm_t` copies such inputs first.
Fewer than 8 columns (16 for int8) are refused by the library: `mm_t` zero-pads T to that multiple.

`torch._cslt_sparse_mm_search` returns only the algorithm id; `torch._C._cusparselt.mm_search` (torch >= 2.6)
also returns the split-K setting the search chose, which `_cslt_sparse_mm` then needs to reproduce it. Configs
are searched on the real operands the first time a (tokens, layout) is seen, checked against the default
config's result, shared by all weights of one shape (`_SHARED`) and kept in `CsltWeight.configs`.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CsltConfig", "CsltWeight", "TransposedLinear", "b_layout", "pad_multiple"]


@dataclass(frozen=True)
class CsltConfig:
    """One cuSPARSELt kernel choice: algorithm id and split-K (split_k_mode −1: the library's default)."""

    alg_id: int = 0
    split_k: int = 1
    split_k_mode: int = -1
    searched: bool = False
    note: str = ""


# (N, K, T, B transposed, dtype, out dtype) -> config, shared by every weight of that shape.
_SHARED: dict[tuple, CsltConfig] = {}


def pad_multiple(dtype: torch.dtype) -> int:
    """The column multiple cuSPARSELt needs for B of this dtype (fewer columns are refused)."""
    return 16 if dtype == torch.int8 else 8


def b_layout(b: Tensor) -> str:
    """"contig" for a contiguous (K, T) operand, "view" for the transpose of a contiguous (T, K), else "other"."""
    if b.is_contiguous():
        return "contig"
    if b.dim() == 2 and b.t().is_contiguous():
        return "view"
    return "other"


@functools.cache
def _mm_arg_names() -> tuple[str, ...]:
    try:
        (schema,) = torch._C._jit_get_schemas_for_operator("aten::_cslt_sparse_mm")
        return tuple(a.name for a in schema.arguments)
    except (RuntimeError, ValueError, AttributeError):  # pragma: no cover - old torch
        return ()


def _mm_kwargs(cfg: CsltConfig) -> dict:
    """Keyword arguments for `_cslt_sparse_mm` that reproduce `cfg` on this torch (names changed across
    versions: ``split_k_one_kernel`` (bool) before ``split_k_mode`` (int))."""
    kw: dict = {"alg_id": cfg.alg_id}
    names = _mm_arg_names()
    if cfg.split_k != 1 and "split_k" in names:
        kw["split_k"] = cfg.split_k
        if "split_k_mode" in names:
            kw["split_k_mode"] = cfg.split_k_mode
        elif "split_k_one_kernel" in names:
            kw["split_k_one_kernel"] = bool(cfg.split_k_mode)
    return kw


def _search(packed: Tensor, b: Tensor, out_dtype: torch.dtype | None) -> CsltConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.11+ flags `_cslt_sparse_mm_search` as deprecated
        lt = getattr(torch._C, "_cusparselt", None)
        if lt is not None and hasattr(lt, "mm_search"):
            try:
                r = lt.mm_search(packed, b, None, None, out_dtype, False)
                return CsltConfig(int(r[0]), int(r[1]), int(r[2]), True)
            except (RuntimeError, TypeError, IndexError) as e:
                note = f"mm_search failed: {str(e).splitlines()[0][:100]}"
        else:
            note = ""
        try:
            return CsltConfig(int(torch._cslt_sparse_mm_search(packed, b, out_dtype=out_dtype)), searched=True,
                              note=note)
        except RuntimeError as e:
            return CsltConfig(note=(note + "; " if note else "") + f"search failed: {str(e).splitlines()[0][:100]}")


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class CsltWeight:
    """A 2-D 2:4 weight (N, K), compressed once; `mm_t(B)` returns W·B as a row-major (N, T) tensor.

    Not an `nn.Module`: several modules may share one (the benchmark builds variants over the same weights).
    """

    def __init__(self, weight: Tensor, search: bool = True) -> None:
        if weight.dim() != 2:
            raise ValueError(f"CsltWeight takes a 2-D weight, got {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.device = weight.device
        self.packed = torch._cslt_compress(weight.detach().contiguous())
        self.search = search
        self.configs: dict[tuple, CsltConfig] = {}

    def config(self, b: Tensor, out_dtype: torch.dtype | None = None) -> CsltConfig:
        """The config for this operand's (tokens, layout), searched (and verified) on first sight."""
        key = (b.shape[1], b_layout(b) == "view", out_dtype)
        cfg = self.configs.get(key)
        if cfg is None:
            skey = (self.out_features, self.in_features, *key[:2], self.dtype, out_dtype)
            cfg = _SHARED.get(skey)
            if cfg is None:
                cfg = _search(self.packed, b, out_dtype) if self.search else CsltConfig()
                if cfg.alg_id != 0 or cfg.split_k != 1:
                    # A config whose result differs from the default's is not used (cheap insurance: one call).
                    ref = torch._cslt_sparse_mm(self.packed, b, out_dtype=out_dtype)
                    got = torch._cslt_sparse_mm(self.packed, b, out_dtype=out_dtype, **_mm_kwargs(cfg))
                    err = _rel(got, ref)
                    if not err <= 1e-2:
                        cfg = CsltConfig(note=f"searched {cfg} rejected: rel err {err:.1e} vs default")
                _SHARED[skey] = cfg
            self.configs[key] = cfg
        return cfg

    def mm_t(self, b: Tensor, out_dtype: torch.dtype | None = None, alpha: Tensor | None = None) -> Tensor:
        """W·B for B (K, T), contiguous or the transpose of a contiguous (T, K); other strides are copied.

        Returns (N, T); it is contiguous unless T had to be padded (then a column slice of the padded result).
        ``alpha`` (N,) scales output rows (per output channel, e.g. an int8 weight's dequantisation scale).
        """
        if b.dim() != 2 or b.shape[0] != self.in_features:
            raise ValueError(f"mm_t: B must be ({self.in_features}, T), got {tuple(b.shape)}")
        layout = b_layout(b)
        if layout == "other":
            b = b.contiguous()
            layout = "contig"
        t = b.shape[1]
        mult = pad_multiple(b.dtype)
        tp = -(-t // mult) * mult
        if tp != t:
            b = F.pad(b, (0, tp - t)) if layout == "contig" else F.pad(b.t(), (0, 0, 0, tp - t)).t()
        cfg = self.config(b, out_dtype)
        y = torch._cslt_sparse_mm(self.packed, b, alpha=alpha, out_dtype=out_dtype, **_mm_kwargs(cfg))
        return y if tp == t else y[:, :t]

    def state(self) -> dict:
        """The cached configs as plain data (saved beside the compressed weight by an exporter)."""
        return {f"{t}:{'view' if v else 'contig'}:{od}": vars(c) for (t, v, od), c in self.configs.items()}


class TransposedLinear(nn.Module):
    """Yᵀ = W·B for a (K, T) operand B (feature-major activations or Xᵀ of token-major ones), dense or 2:4.

    With ``dispatch`` (a `lottery.export.dispatch.DispatchTable`) each call picks whichever of dense and 2:4
    was measured faster for its (shape, tokens bucket, dtype, layout); then both weights are kept. Without a
    compressed weight (a CPU, or a layer 2:4 never wins) it is the dense `torch.mm(W, B)`.
    """

    def __init__(self, dense: Tensor | None, sparse: CsltWeight | None = None, dispatch=None) -> None:
        super().__init__()
        if dense is None and sparse is None:
            raise ValueError("TransposedLinear needs a dense weight, a compressed one, or both")
        self.dense = dense
        self.sparse = sparse
        self.dispatch = dispatch
        if sparse is not None:
            self.out_features, self.in_features, self.dtype = sparse.out_features, sparse.in_features, sparse.dtype
        else:
            (self.out_features, self.in_features), self.dtype = dense.shape, dense.dtype
        self.choices: dict[tuple, str] = {}  # (tokens, layout) -> "dense" / "sparse", what each call used

    def _choose(self, b: Tensor) -> str:
        if self.sparse is None:
            return "dense"
        if self.dense is None or self.dispatch is None:
            return "sparse"
        key = (b.shape[1], b_layout(b))
        c = self.choices.get(key)
        if c is None:
            c = self.dispatch.choose(self.out_features, self.in_features, b.shape[1], self.dtype, key[1])
            self.choices[key] = c
        return c

    def forward(self, b: Tensor) -> Tensor:
        if self._choose(b) == "dense":
            return torch.mm(self.dense, b)
        return self.sparse.mm_t(b)

    def extra_repr(self) -> str:
        kind = "dense+2:4" if self.dense is not None and self.sparse is not None else (
            "2:4" if self.sparse is not None else "dense")
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"

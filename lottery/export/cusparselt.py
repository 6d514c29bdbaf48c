"""cuSPARSELt through ctypes, with the compressed weight made once per layer and one plan per token count.

EXPERIMENTAL, NOT WORKING YET: on the H200 (cuSPARSELt 0.8.0, torch 2.11) `cusparseLtMatmulSearch` returned
"internal error" and the next kernel raised an illegal instruction (or the process segfaulted) for every layout;
the cause is not found (see experiments/sparse_speed/RESULTS.md). Use `SemiStructuredLinear(backend="cslt")`.

`torch._cslt_sparse_mm` builds descriptors, an algorithm selection and a plan on every call and destroys them
afterwards; on an H200 with cuSPARSELt 0.8 that costs about 0.55 ms of host time per call, more than the
matmul itself for most LLM shapes. Here the plan lives as long as the layer, so a call is one library launch.

Shapes follow `F.linear`: weight W is (N, K) with 2:4 groups along K, input X is (T, K), output Y is (T, N).
Three operand layouts are offered (`LAYOUTS`):

- ``"A"``: sparse first operand, D = W·Xᵀ written column-major, i.e. Y row-major (the transpose is fused).
  On an H200 with cuSPARSELt 0.8 this layout's search failed and then faulted (illegal instruction).
- ``"A_rowD"``: D = W·Xᵀ written row-major, i.e. Yᵀ (N, T); callers must accept the transposed output.
- ``"B"``: sparse second operand, D = X·Wᵀ row-major (Y directly).

The library is the one torch already loaded (same version as `torch.backends.cusparselt.version()`).
Enum values and struct sizes are those of cusparseLt.h 0.8 and cusparse.h (CUDA 13).
"""

from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass

import torch

__all__ = ["LAYOUTS", "LtError", "LtPlan", "LtSparseWeight", "lt_library"]

LAYOUTS = ("A", "A_rowD", "B")

# cusparse.h / cusparseLt.h / library_types.h
_ORDER_COL, _ORDER_ROW = 1, 2
_OP_N, _OP_T = 0, 1
_COMPUTE_32I, _COMPUTE_32F = 0, 2
_SPARSITY_50 = 0
_ALG_DEFAULT = 0
_ALG_CONFIG_ID, _ALG_CONFIG_MAX_ID, _SEARCH_ITERATIONS, _SPLIT_K, _SPLIT_K_MODE = 0, 1, 2, 3, 4
_CUDA_R = {torch.float16: 2, torch.bfloat16: 14, torch.float32: 0, torch.int8: 3, torch.int32: 10}
_OPAQUE_BYTES = 1024  # the 0.8 header declares 512; spare room costs nothing if a patch release grows them
_ALIGN = 16


class LtError(RuntimeError):
    """A cuSPARSELt call returned an error status."""


class _Opaque:
    """A 16-byte aligned opaque cuSPARSELt struct kept alive as long as this object."""

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(_OPAQUE_BYTES + _ALIGN)
        self.ptr = (ctypes.addressof(self._buf) + _ALIGN - 1) & ~(_ALIGN - 1)


def _find_library() -> str:
    # Prefer the copy torch already mapped, so both speak to the same library version.
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libcusparseLt" in line:
                    return line.split()[-1]
    except OSError:
        pass
    try:
        import nvidia.cusparselt as pkg  # type: ignore[import-not-found]

        hits = glob.glob(os.path.join(os.path.dirname(pkg.__file__ or list(pkg.__path__)[0]), "lib", "libcusparseLt.so*"))
        if hits:
            return sorted(hits)[0]
    except ImportError:
        pass
    return "libcusparseLt.so.0"


class _Lib:
    """Function table and one handle, bound once per process."""

    def __init__(self) -> None:
        self.path = _find_library()
        lib = ctypes.CDLL(self.path)
        P, I64, U32, INT, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int, ctypes.c_size_t

        def fn(name: str, *argtypes: object):
            f = getattr(lib, name)
            f.restype = ctypes.c_int
            f.argtypes = list(argtypes)
            return f

        self.init = fn("cusparseLtInit", P)
        self.get_version = fn("cusparseLtGetVersion", P, P)
        self.dense_init = fn("cusparseLtDenseDescriptorInit", P, P, I64, I64, I64, U32, INT, INT)
        self.struct_init = fn("cusparseLtStructuredDescriptorInit", P, P, I64, I64, I64, U32, INT, INT, INT)
        self.desc_destroy = fn("cusparseLtMatDescriptorDestroy", P)
        self.mm_init = fn("cusparseLtMatmulDescriptorInit", P, P, INT, INT, P, P, P, P, INT)
        self.alg_init = fn("cusparseLtMatmulAlgSelectionInit", P, P, P, INT)
        self.alg_destroy = fn("cusparseLtMatmulAlgSelectionDestroy", P)
        self.alg_set = fn("cusparseLtMatmulAlgSetAttribute", P, P, INT, P, SZ)
        self.alg_get = fn("cusparseLtMatmulAlgGetAttribute", P, P, INT, P, SZ)
        self.workspace = fn("cusparseLtMatmulGetWorkspace", P, P, P)
        self.plan_init = fn("cusparseLtMatmulPlanInit", P, P, P, P)
        self.plan_destroy = fn("cusparseLtMatmulPlanDestroy", P)
        self.matmul = fn("cusparseLtMatmul", P, P, P, P, P, P, P, P, P, P, ctypes.c_int32)
        self.search = fn("cusparseLtMatmulSearch", P, P, P, P, P, P, P, P, P, P, ctypes.c_int32)
        self.compressed_size = fn("cusparseLtSpMMACompressedSize2", P, P, P, P)
        self.compress = fn("cusparseLtSpMMACompress2", P, P, INT, INT, P, P, P, P)
        self.prune_check = fn("cusparseLtSpMMAPruneCheck2", P, P, INT, INT, P, P, P)
        self._err = lib.cusparseLtGetErrorString
        self._err.restype, self._err.argtypes = ctypes.c_char_p, [INT]
        self.handle = _Opaque()
        self.check(self.init(self.handle.ptr), "cusparseLtInit")
        ver = ctypes.c_int(0)
        self.check(self.get_version(self.handle.ptr, ctypes.addressof(ver)), "cusparseLtGetVersion")
        self.version = ver.value
        self.alpha = ctypes.c_float(1.0)
        self.beta = ctypes.c_float(0.0)

    def check(self, status: int, what: str) -> None:
        if status != 0:
            msg = (self._err(status) or b"?").decode(errors="replace")
            raise LtError(f"{what} failed: cuSPARSELt status {status} ({msg})")


_LIB: _Lib | None = None
# (layout, N, K, T, in dtype, out dtype) -> (alg id, split-k, split-k mode) found by a search; layers of one
# shape share it, so a 32-layer model searches once per distinct shape and token count.
_TUNED: dict[tuple, tuple[int, int, int]] = {}


def lt_library() -> _Lib:
    """The process-wide cuSPARSELt binding (loaded on first use; needs a CUDA build of torch)."""
    global _LIB
    if _LIB is None:
        torch.cuda.init()
        _LIB = _Lib()
    return _LIB


def _stream_ptr() -> int:
    return torch.cuda.current_stream().cuda_stream


@dataclass(frozen=True)
class _Formats:
    """Value types of one problem: inputs, output and the accumulator."""

    io: torch.dtype
    out: torch.dtype
    compute: int


def _formats(dtype: torch.dtype, out_dtype: torch.dtype | None) -> _Formats:
    if dtype in (torch.float16, torch.bfloat16):
        return _Formats(dtype, out_dtype or dtype, _COMPUTE_32F)
    if dtype == torch.int8:
        return _Formats(dtype, out_dtype or torch.int32, _COMPUTE_32I)
    raise ValueError(f"cuSPARSELt 2:4 here takes float16, bfloat16 or int8 weights, got {dtype}")


class LtSparseWeight:
    """A 2:4 weight (N, K) compressed once for one operand layout; plans for each token count hang off it."""

    def __init__(self, weight: torch.Tensor, layout: str = "A", out_dtype: torch.dtype | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if weight.dim() != 2 or not weight.is_cuda:
            raise ValueError("LtSparseWeight needs a 2-D CUDA weight (out_features, in_features)")
        self.lib = lib = lt_library()
        self.layout = layout
        self.fmt = _formats(weight.dtype, out_dtype)
        self.n, self.k = weight.shape
        w = weight.contiguous()
        self.sparse_desc = _Opaque()
        # W is row-major (N, K) in every layout; in "B" it is the second operand used transposed.
        lib.check(lib.struct_init(lib.handle.ptr, self.sparse_desc.ptr, self.n, self.k, self.k, _ALIGN,
                                  _CUDA_R[w.dtype], _ORDER_ROW, _SPARSITY_50), "StructuredDescriptorInit")
        self.is_sparse_a = 0 if layout == "B" else 1
        self.sparse_op = _OP_T if layout == "B" else _OP_N
        size, buf_size = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.check(lib.compressed_size(lib.handle.ptr, self.sparse_desc.ptr, ctypes.addressof(size),
                                      ctypes.addressof(buf_size)), "SpMMACompressedSize2")
        self.compressed = torch.empty(size.value, dtype=torch.uint8, device=w.device)
        buf = torch.empty(max(buf_size.value, 1), dtype=torch.uint8, device=w.device)
        lib.check(lib.compress(lib.handle.ptr, self.sparse_desc.ptr, self.is_sparse_a, self.sparse_op,
                               w.data_ptr(), self.compressed.data_ptr(), buf.data_ptr(), _stream_ptr()),
                  "SpMMACompress2")
        torch.cuda.current_stream().synchronize()
        self.plans: dict[tuple[int, bool], LtPlan] = {}

    def prune_ok(self, weight: torch.Tensor) -> bool:
        """cuSPARSELt's own check that `weight` has the 2:4 pattern this layout needs."""
        valid = torch.ones(1, dtype=torch.int32, device=weight.device)
        self.lib.check(self.lib.prune_check(self.lib.handle.ptr, self.sparse_desc.ptr, self.is_sparse_a,
                                            self.sparse_op, weight.contiguous().data_ptr(), valid.data_ptr(),
                                            _stream_ptr()), "SpMMAPruneCheck2")
        return int(valid.item()) == 0

    def plan(self, tokens: int, search: bool = True, alg_id: int | None = None, split_k: int | None = None,
             x_transposed: bool = False) -> LtPlan:
        """The cached plan for `tokens` rows of input (built, and tuned if `search`, on first use).

        `x_transposed`: the input arrives as Xᵀ stored contiguous (K, T), as the Yᵀ output of "A_rowD" is.
        """
        p = self.plans.get((tokens, x_transposed))
        if p is None:
            key = (self.layout, self.n, self.k, tokens, x_transposed, self.fmt.io, self.fmt.out)
            split_k_mode = None
            if search and alg_id is None and key in _TUNED:
                alg_id, split_k, split_k_mode = _TUNED[key]
                search = False
            p = LtPlan(self, tokens, search=search, alg_id=alg_id, split_k=split_k, split_k_mode=split_k_mode,
                       x_transposed=x_transposed)
            if p.searched:
                _TUNED[key] = (p.alg_id, p.split_k, p.split_k_mode)
            self.plans[(tokens, x_transposed)] = p
        return p

    def out_shape(self, tokens: int) -> tuple[int, int]:
        return (self.n, tokens) if self.layout == "A_rowD" else (tokens, self.n)


class LtPlan:
    """Descriptors, algorithm selection, plan and workspace for W (N, K) times T tokens, built once."""

    def __init__(self, weight: LtSparseWeight, tokens: int, search: bool = True, alg_id: int | None = None,
                 split_k: int | None = None, split_k_mode: int | None = None, x_transposed: bool = False) -> None:
        lib = self.lib = weight.lib
        self.weight, self.tokens = weight, tokens
        n, k, t = weight.n, weight.k, tokens
        io, out = _CUDA_R[weight.fmt.io], _CUDA_R[weight.fmt.out]
        self.dense_desc, self.out_desc = _Opaque(), _Opaque()
        self.matmul_desc, self.alg_sel, self.plan = _Opaque(), _Opaque(), _Opaque()
        h = lib.handle.ptr
        # X is stored row-major (T, K), or as Xᵀ row-major (K, T) when x_transposed; the op flips accordingly.
        self.x_transposed = x_transposed
        if x_transposed:
            lib.check(lib.dense_init(h, self.dense_desc.ptr, k, t, t, _ALIGN, io, _ORDER_ROW), "DenseDescriptorInit(X)")
        else:
            lib.check(lib.dense_init(h, self.dense_desc.ptr, t, k, k, _ALIGN, io, _ORDER_ROW), "DenseDescriptorInit(X)")
        op_x = _OP_N if x_transposed else _OP_T
        if weight.layout == "A":
            lib.check(lib.dense_init(h, self.out_desc.ptr, n, t, n, _ALIGN, out, _ORDER_COL), "DenseDescriptorInit(D)")
            op_a, op_b, a, b = _OP_N, op_x, weight.sparse_desc, self.dense_desc
        elif weight.layout == "A_rowD":
            lib.check(lib.dense_init(h, self.out_desc.ptr, n, t, t, _ALIGN, out, _ORDER_ROW), "DenseDescriptorInit(D)")
            op_a, op_b, a, b = _OP_N, op_x, weight.sparse_desc, self.dense_desc
        else:
            if x_transposed:
                raise LtError("layout 'B' takes X row-major only")
            lib.check(lib.dense_init(h, self.out_desc.ptr, t, n, n, _ALIGN, out, _ORDER_ROW), "DenseDescriptorInit(D)")
            op_a, op_b, a, b = _OP_N, _OP_T, self.dense_desc, weight.sparse_desc
        lib.check(lib.mm_init(h, self.matmul_desc.ptr, op_a, op_b, a.ptr, b.ptr, self.out_desc.ptr,
                              self.out_desc.ptr, weight.fmt.compute), "MatmulDescriptorInit")
        lib.check(lib.alg_init(h, self.alg_sel.ptr, self.matmul_desc.ptr, _ALG_DEFAULT), "AlgSelectionInit")
        if alg_id is not None:
            self._set(_ALG_CONFIG_ID, alg_id)
        if split_k is not None:
            self._set(_SPLIT_K, split_k)
        if split_k_mode is not None and split_k is not None and split_k > 1:
            self._set(_SPLIT_K_MODE, split_k_mode)
        self._build_plan()
        self.searched = False
        self.search_error = ""
        if search:
            try:
                self._search()
            except LtError as e:
                # Seen with cuSPARSELt 0.8 on an H200: the search fails for some layouts; the default
                # heuristic still runs, so keep that plan and say so.
                torch.cuda.synchronize()  # surfaces a sticky CUDA error instead of carrying on
                self.search_error = str(e)
                self.lib.plan_destroy(self.plan.ptr)
                self._build_plan()
        self.alg_id = self._get(_ALG_CONFIG_ID)
        self.max_alg_id = self._get(_ALG_CONFIG_MAX_ID)
        self.split_k = self._get(_SPLIT_K)
        self.split_k_mode = self._get(_SPLIT_K_MODE)
        self.a_is_weight = weight.layout != "B"
        self.streams = (ctypes.c_void_p * 1)()

    def _set(self, attr: int, value: int) -> None:
        v = ctypes.c_int(value)
        self.lib.check(self.lib.alg_set(self.lib.handle.ptr, self.alg_sel.ptr, attr, ctypes.addressof(v), 4),
                       "AlgSetAttribute")

    def _get(self, attr: int) -> int:
        v = ctypes.c_int(-1)
        self.lib.check(self.lib.alg_get(self.lib.handle.ptr, self.alg_sel.ptr, attr, ctypes.addressof(v), 4),
                       "AlgGetAttribute")
        return v.value

    def _build_plan(self) -> None:
        lib = self.lib
        lib.check(lib.plan_init(lib.handle.ptr, self.plan.ptr, self.matmul_desc.ptr, self.alg_sel.ptr), "PlanInit")
        size = ctypes.c_size_t(0)
        lib.check(lib.workspace(lib.handle.ptr, self.plan.ptr, ctypes.addressof(size)), "GetWorkspace")
        dev = self.weight.compressed.device
        self.workspace = torch.empty(max(size.value, 1), dtype=torch.uint8, device=dev)

    def _search(self) -> None:
        # The search times every kernel config on real buffers (never zeros) and writes the winner into the
        # algorithm selection; the plan is then rebuilt so that its workspace fits the chosen config.
        w = self.weight
        g = torch.Generator(device=w.compressed.device).manual_seed(0)
        shape = (w.k, self.tokens) if self.x_transposed else (self.tokens, w.k)
        if w.fmt.io == torch.int8:
            x = torch.randint(-8, 8, shape, dtype=torch.int8, device=w.compressed.device, generator=g)
        else:
            x = torch.randn(shape, dtype=w.fmt.io, device=w.compressed.device, generator=g)
        out = torch.empty(w.out_shape(self.tokens), dtype=w.fmt.out, device=x.device)
        big = torch.empty(max(self.workspace.numel(), 64 << 20), dtype=torch.uint8, device=x.device)
        streams = (ctypes.c_void_p * 1)(_stream_ptr())
        a, b = (w.compressed, x) if w.layout != "B" else (x, w.compressed)
        self.lib.check(self.lib.search(self.lib.handle.ptr, self.plan.ptr, ctypes.addressof(self.lib.alpha),
                                       a.data_ptr(), b.data_ptr(), ctypes.addressof(self.lib.beta),
                                       out.data_ptr(), out.data_ptr(), big.data_ptr(),
                                       ctypes.addressof(streams), 1), "MatmulSearch")
        torch.cuda.current_stream().synchronize()
        self.lib.check(self.lib.plan_destroy(self.plan.ptr), "PlanDestroy")
        self._build_plan()
        self.searched = True

    def run(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Y = X·Wᵀ for a contiguous X (T, K) (or contiguous Xᵀ (K, T) if the plan says x_transposed);
        layout "A_rowD" returns Yᵀ (N, T) instead of Y."""
        w = self.weight
        if out is None:
            out = torch.empty(w.out_shape(self.tokens), dtype=w.fmt.out, device=x.device)
        self.streams[0] = torch.cuda.current_stream().cuda_stream
        a, b = (w.compressed.data_ptr(), x.data_ptr()) if self.a_is_weight else (x.data_ptr(), w.compressed.data_ptr())
        lib = self.lib
        status = lib.matmul(lib.handle.ptr, self.plan.ptr, ctypes.addressof(lib.alpha), a, b,
                            ctypes.addressof(lib.beta), out.data_ptr(), out.data_ptr(), self.workspace.data_ptr(),
                            ctypes.addressof(self.streams), 1)
        if status != 0:
            lib.check(status, "Matmul")
        return out

    def __del__(self) -> None:
        try:
            self.lib.plan_destroy(self.plan.ptr)
            self.lib.alg_destroy(self.alg_sel.ptr)
            self.lib.desc_destroy(self.dense_desc.ptr)
            self.lib.desc_destroy(self.out_desc.ptr)
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn the library down already
            pass

"""A portable 2:4 compressed format: the kept values plus 2-bit position indices, packed on any device.

This is the logical content of NVIDIA's semi-structured format (two values and two 2-bit indices per group
of four along the input dim); the hardware formats (CUTLASS, cuSPARSELt) reorder the same bits for their
kernels and exist only on CUDA. Keeping a device-free version lets a pruned checkpoint be stored at ~56% of
its dense size and lets the CPU tests check the round trip that the GPU path relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lottery.pruning.nm import check_nm, nm_mask

__all__ = ["Packed24", "pack_24", "unpack_24"]


@dataclass(frozen=True)
class Packed24:
    """Kept values (rows, K/2) in order of position, and metadata (rows, K/8) uint8: two groups per byte."""

    values: Tensor
    meta: Tensor
    shape: tuple[int, int]

    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.meta.numel()


def pack_24(weight: Tensor) -> Packed24:
    """Pack a 2-D weight that already satisfies 2:4 along its last dim; raise ValueError otherwise.

    Each group stores its two kept positions i0 < i1 as i0 | i1 << 2 (4 bits); groups with fewer than two
    non-zeros keep a zero at the lowest free position, so packing is a bijection on 2:4 matrices.
    """
    if weight.dim() != 2 or weight.shape[1] % 8 != 0:
        raise ValueError(f"pack_24 needs a 2-D weight whose last dim is a multiple of 8, got {tuple(weight.shape)}")
    if not check_nm(weight, 2, 4):
        raise ValueError("pack_24: weight is not 2:4 sparse along its last dim (more than 2 non-zeros in a group of 4)")
    rows, k = weight.shape
    # Non-zeros score 2, zeros score 1 - position/8, so top-2 takes every non-zero, then the lowest free slots.
    pos = torch.arange(4, device=weight.device).repeat(k // 4).expand(rows, k)
    score = torch.where(weight != 0, 2.0, 1.0 - pos / 8.0)
    keep = nm_mask(score, 2, 4).reshape(rows, k // 4, 4)
    idx = keep.nonzero(as_tuple=False)[:, 2].reshape(rows, k // 4, 2)  # row-major order: ascending in group
    values = weight.reshape(rows, k // 4, 4).gather(2, idx).reshape(rows, k // 2)
    nibble = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)  # (rows, k/4)
    meta = nibble[:, 0::2] | (nibble[:, 1::2] << 4)
    return Packed24(values.contiguous(), meta.contiguous(), (rows, k))


def unpack_24(packed: Packed24) -> Tensor:
    """The dense weight that `pack_24` packed (exact)."""
    rows, k = packed.shape
    meta = packed.meta.to(torch.int64)
    nibble = torch.stack([meta & 0xF, meta >> 4], dim=2).reshape(rows, k // 4)
    idx = torch.stack([nibble & 0x3, (nibble >> 2) & 0x3], dim=2)  # (rows, k/4, 2)
    out = torch.zeros(rows, k // 4, 4, dtype=packed.values.dtype, device=packed.values.device)
    out.scatter_(2, idx, packed.values.reshape(rows, k // 4, 2))
    return out.reshape(rows, k)

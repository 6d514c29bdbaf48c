"""Batch-level CIFAR augmentation (random crop with padding, horizontal flip), seeded per iteration.

Augmenting whole batches with tensor ops keeps the data on the device; drawing the randomness from a
generator seeded by (seed, iteration) keeps a resumed run bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import torch


def crop_flip_params(batch: int, generator: torch.Generator, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The randomness of one `crop_flip` call: crop offsets [2, B] (rows, cols) and flip flags [B]."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return offsets, flip


def apply_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor, padding: int = 4,
                    fill: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image of `x` [B, C, H, W] at `offsets` [2, B] of a `padding`-padded copy, flipping where `flip`.

    Tensor ops only (no host synchronisation), so it can run inside a CUDA graph with `offsets`/`flip` in
    fixed buffers. `fill` [C] is the per-channel value of the padding (the normalised value of a black pixel).
    """
    b, c, h, w = x.shape
    padded = torch.empty(b, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype, device=x.device)
    padded[:] = (fill if fill is not None else torch.zeros(c, dtype=x.dtype)).to(x.device).view(1, c, 1, 1)
    padded[:, :, padding:padding + h, padding:padding + w] = x
    offsets, flip = offsets.to(x.device), flip.to(x.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
              fill: torch.Tensor | None = None) -> torch.Tensor:
    """Randomly crop each image of `x` [B, C, H, W] from a `padding`-padded copy and flip half of them.

    `fill` [C] is the per-channel value of the padding (the normalised value of a black pixel).
    """
    offsets, flip = crop_flip_params(len(x), generator, padding)
    return apply_crop_flip(x, offsets, flip, padding, fill)

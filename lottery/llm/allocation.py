"""Per-block sparsity allocation for one-shot pruning: uniform, OWL, or a linear ramp with depth.

Pure Python (no torch, no transformers): config validation and the job both read it.

Every allocation keeps the *parameter-weighted* mean sparsity equal to the target ``s``:

    sum_b n_b * s_b / sum_b n_b = s          (n_b: number of pruned weights of block b)

so the whole model loses exactly the share ``s`` of its pruned weights (up to each solver's per-row rounding).
For a homogeneous model (every block the same shape) this is the plain mean, as in the papers.

- ``uniform``: s_b = s.
- ``owl`` (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): the outlier ratios D_b are min-max normalised
  to q_b in [0, 2*lambda] and the *density* 1 - s_b is set to q_b - mean_w(q) + (1 - s), as in the reference code:
  a block with more outliers keeps more weights. Equal ratios give uniform; lambda = 0 gives uniform exactly.
- ``linear``: s_b = s + lambda * (2 t_b - 1) - shift, t_b = b / (B - 1): a ramp from s - lambda at the first block
  to s + lambda at the last (earlier blocks pruned less); ``shift`` (zero for a homogeneous model) restores the
  weighted mean.

Nothing is clipped. The linear ramp stays in [s - lambda, s + lambda], so the config check
0 <= lambda <= s, lambda < 1 - s keeps it in [0, 1). OWL's mean-centred [0, 2*lambda] spread can reach up to 2*lambda
from s when the ratios are skewed (the paper states [s - lambda, s + lambda]; its code does not enforce it), so
``check_range`` rejects an allocation that leaves [0, 1) instead of clipping it.
"""

from __future__ import annotations

from collections.abc import Sequence

ALLOCATIONS: tuple[str, ...] = ("uniform", "owl", "linear")


def weighted_mean(values: Sequence[float], sizes: Sequence[int]) -> float:
    """sum(n_b * v_b) / sum(n_b)."""
    if len(values) != len(sizes) or not sizes:
        raise ValueError(f"need one size per value, got {len(values)} values and {len(sizes)} sizes")
    total = sum(sizes)
    if total <= 0:
        raise ValueError("the blocks have no pruned weights")
    return sum(n * v for n, v in zip(sizes, values, strict=True)) / total


def uniform_sparsities(sparsity: float, sizes: Sequence[int]) -> list[float]:
    """The target in every block."""
    return [float(sparsity)] * len(sizes)


def _centred(sparsity: float, spread: Sequence[float], sizes: Sequence[int]) -> list[float]:
    """s_b = s + d_b - mean_w(d): the weighted mean is s. A zero spread returns s itself in every block."""
    if not any(spread):
        return uniform_sparsities(sparsity, sizes)
    shift = weighted_mean(spread, sizes)
    return [float(sparsity) + d - shift for d in spread]


def linear_sparsities(sparsity: float, lam: float, sizes: Sequence[int]) -> list[float]:
    """A ramp from s - lambda (first block) to s + lambda (last), shifted so the weighted mean is s."""
    count = len(sizes)
    if count == 1:
        return uniform_sparsities(sparsity, sizes)
    return _centred(sparsity, [lam * (2 * b / (count - 1) - 1) for b in range(count)], sizes)


def owl_sparsities(sparsity: float, lam: float, ratios: Sequence[float], sizes: Sequence[int]) -> list[float]:
    """OWL: more outliers -> lower sparsity. Ratios min-max normalised to [0, 2*lambda], density mean-shifted."""
    if len(ratios) != len(sizes):
        raise ValueError(f"need one outlier ratio per block: {len(ratios)} ratios, {len(sizes)} blocks")
    low, high = min(ratios), max(ratios)
    if high == low:  # no block stands out: the normalisation is undefined, and OWL has nothing to shift
        return uniform_sparsities(sparsity, sizes)
    q = [(r - low) / (high - low) * 2 * lam for r in ratios]
    return _centred(sparsity, [-x for x in q], sizes)  # sparsity moves opposite to density


def allocate(allocation: str, sparsity: float, lam: float, sizes: Sequence[int],
             ratios: Sequence[float] | None = None) -> list[float]:
    """Per-block sparsities of ``allocation`` (uniform, owl, linear); ``ratios`` are needed for owl."""
    if allocation == "uniform":
        return uniform_sparsities(sparsity, sizes)
    if allocation == "linear":
        return linear_sparsities(sparsity, lam, sizes)
    if allocation == "owl":
        if ratios is None:
            raise ValueError("the owl allocation needs the blocks' outlier ratios")
        return owl_sparsities(sparsity, lam, ratios, sizes)
    raise ValueError(f"unknown allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}")


def check_range(sparsities: Sequence[float], allocation: str, lam: float) -> None:
    """ValueError (one line) if a block's sparsity leaves [0, 1): it is never clipped."""
    bad = [(b, s) for b, s in enumerate(sparsities) if not 0.0 <= s < 1.0]
    if bad:
        b, s = bad[0]
        raise ValueError(f"prune.allocation={allocation} with prune.owl_lambda={lam} gives block {b} sparsity {s:.4f}, "
                         f"outside [0, 1) ({len(bad)} block(s)); lower prune.owl_lambda")

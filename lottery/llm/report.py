"""What a pruning run did: per-layer sparsity, reconstruction error, N:M validity, and the masks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]  # [d_out, d_in]
    pruned: int
    numel: int
    rel_error: float | None  # ||WX - W'X|| / ||WX|| on the calibration inputs the layer saw
    nm_valid: bool | None  # None when the run was unstructured
    fallback: str | None = None  # why the method's own rule was not used (e.g. an expert no token reached)

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel


@dataclass
class PruneReport:
    method: str
    sparsity: float
    n: int = 0
    m: int = 0
    layers: list[LayerReport] = field(default_factory=list)
    block_sparsity: list[float] = field(default_factory=list)  # the sparsity asked of each block
    masks: dict[str, Tensor] = field(default_factory=dict)  # "<layer>.weight" -> keep-mask, weight layout

    @property
    def total_sparsity(self) -> float:
        """Pruned fraction over all pruned layers together (embeddings and heads not counted)."""
        numel = sum(layer.numel for layer in self.layers)
        return sum(layer.pruned for layer in self.layers) / numel if numel else 0.0

    @property
    def nm_valid(self) -> bool | None:
        checks = [layer.nm_valid for layer in self.layers if layer.nm_valid is not None]
        return all(checks) if checks else None

    def to_dict(self) -> dict:
        """JSON-ready summary (masks left out)."""
        return {
            "method": self.method, "sparsity": self.sparsity, "n": self.n, "m": self.m,
            "total_sparsity": self.total_sparsity, "nm_valid": self.nm_valid, "block_sparsity": self.block_sparsity,
            "layers": [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers],
        }

"""Vision models: `create_model(name, seed)` builds a registered model with a seeded init."""

from lottery.models import conv, lenet, resnet, vgg  # noqa: F401  (registers their models)
from lottery.models.compact import CompactSummary, compact, compact_summary
from lottery.models.registry import MODELS, create_model, output_layer_name, prunable_names, register

__all__ = ["MODELS", "CompactSummary", "compact", "compact_summary", "create_model", "output_layer_name",
           "prunable_names", "register"]

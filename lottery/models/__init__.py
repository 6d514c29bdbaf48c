"""Vision models: `create_model(name, seed)` builds a registered model with a seeded init."""

from lottery.models import lenet  # noqa: F401  (registers its models)
from lottery.models.registry import MODELS, create_model, output_layer_name, prunable_names, register

__all__ = ["MODELS", "create_model", "output_layer_name", "prunable_names", "register"]

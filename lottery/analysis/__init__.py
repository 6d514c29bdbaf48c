"""Analyses of trained networks: linear mode connectivity and error barriers (Frankle et al. 2020)."""

from lottery.analysis.connectivity import (
    InterpolationPath,
    error_barrier,
    evaluate,
    has_batchnorm,
    interpolate,
    linear_path,
    recompute_batchnorm,
)

__all__ = ["InterpolationPath", "error_barrier", "evaluate", "has_batchnorm", "interpolate", "linear_path",
           "recompute_batchnorm"]

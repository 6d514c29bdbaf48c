"""Paper figures and tables (experiments/figures, `python -m experiments.regenerate`) and benchmarks."""

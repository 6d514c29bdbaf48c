"""lottery: lottery tickets and neural-network pruning.

Jobs run through `python -m lottery.run`; the library parts (models, data, pruning, training,
tracking) take plain arguments and can be used without Hydra.
"""

__version__ = "0.1.0"

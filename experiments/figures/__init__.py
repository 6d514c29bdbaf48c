"""Paper figures and tables, each regenerated from the run store by `python -m experiments.regenerate NAME`."""

from experiments.figures.common import Figure, MissingRuns, Options, RunSpec
from experiments.figures.finetune import FINETUNE
from experiments.figures.instability import INSTABILITY
from experiments.figures.llm_structured import LLM_STRUCTURED
from experiments.figures.llm_table import LLM_TABLE
from experiments.figures.lth import LTH_CONV, LTH_LENET
from experiments.figures.owl import OWL
from experiments.figures.pai import PAI
from experiments.figures.rewind import REWIND

FIGURES: dict[str, Figure] = {
    f.name: f for f in (LTH_LENET, LTH_CONV, REWIND, LLM_TABLE, OWL, LLM_STRUCTURED, PAI, INSTABILITY, FINETUNE)
}

__all__ = ["FIGURES", "Figure", "MissingRuns", "Options", "RunSpec"]

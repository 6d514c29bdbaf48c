"""Perplexity in the papers' protocol: non-overlapping seqlen chunks of the concatenated test text."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(
    model: nn.Module, input_ids: Tensor, seqlen: int, device: torch.device | str | None = None,
    progress: bool = True,
) -> float:
    """exp(mean nll) over the ``L // seqlen`` full chunks of ``input_ids`` ([L] or [1, L]).

    As in the SparseGPT/Wanda evaluation code, each chunk contributes mean-token-loss * seqlen and the sum is
    divided by nchunks * seqlen; the trailing partial chunk is dropped. ``model`` must be a causal LM.
    """
    if hasattr(model, "can_generate") and not model.can_generate():
        raise ValueError(f"perplexity needs a causal language model, got {type(model).__name__}")
    ids = input_ids.reshape(1, -1)
    nchunks = ids.shape[1] // seqlen
    if seqlen <= 1 or nchunks == 0:
        raise ValueError(f"need seqlen > 1 and at least one full chunk: {ids.shape[1]} tokens, seqlen={seqlen}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    nlls = []
    try:
        for i in tqdm(range(nchunks), desc="perplexity", unit="chunk", disable=not progress):
            batch = ids[:, i * seqlen : (i + 1) * seqlen].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            loss = nn.functional.cross_entropy(
                logits[:, :-1, :].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            nlls.append(loss.item() * seqlen)
    finally:
        model.train(was_training)
    return math.exp(sum(nlls) / (nchunks * seqlen))

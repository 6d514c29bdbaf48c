"""A small Llama-architecture byte-level language model, trained under Lightning's Trainer, for pruning studies.

The tokenizer is the identity on UTF-8 bytes (vocabulary 256), so nothing is downloaded. Training samples
random windows of the training split, seeded; the last `val_fraction` of the text is held out.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import transformers
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

VOCAB = 256


def encode(text: str) -> Tensor:
    """UTF-8 bytes as token ids, [L]."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def split_ids(path: str | Path, val_fraction: float) -> tuple[Tensor, Tensor]:
    """(train, validation) token ids: the validation split is the last `val_fraction` of the file."""
    ids = encode(Path(path).read_text(encoding="utf-8"))
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def build_model(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, seqlen: int,
                seed: int) -> transformers.LlamaForCausalLM:
    """A LlamaForCausalLM over the 256 byte ids, seeded init."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=seqlen, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


class RandomWindows(Dataset):
    """`count` windows of `seqlen` ids at seeded uniformly random starts: a pure function of (ids, seed)."""

    def __init__(self, ids: Tensor, seqlen: int, count: int, seed: int):
        self.ids, self.seqlen = ids, seqlen
        generator = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, len(ids) - seqlen, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Tensor:
        s = int(self.starts[i])
        return self.ids[s : s + self.seqlen]


class CharLMModule(L.LightningModule):
    """Next-byte cross-entropy with AdamW, 5% linear warm-up then cosine decay to 10% of `lr`."""

    def __init__(self, model: transformers.PreTrainedModel, lr: float, weight_decay: float, steps: int):
        super().__init__()
        self.model, self.lr, self.weight_decay, self.steps = model, lr, weight_decay, steps

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.model(input_ids=batch, labels=batch, use_cache=False).loss
        self.log("loss", loss, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                betas=(0.9, 0.95))
        warmup = max(1, self.steps // 20)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, self.steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_charlm(model: transformers.PreTrainedModel, train_ids: Tensor, seqlen: int, batch_size: int, steps: int,
                 lr: float, weight_decay: float, seed: int, device: str = "cpu",
                 progress_bar: bool = True) -> float:
    """Train `model` in place for `steps` steps; return the mean loss of the last 10% of steps."""
    L.seed_everything(seed, workers=True, verbose=False)
    data = RandomWindows(train_ids, seqlen, steps * batch_size, seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    module = CharLMModule(model, lr, weight_decay, steps)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict, *args: object
                               ) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=steps, max_epochs=1, accelerator="gpu" if device.startswith("cuda") else "cpu",
                        devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress_bar, callbacks=[Record()],
                        num_sanity_val_steps=0)
    trainer.fit(module, loader)
    model.cpu().eval()
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)

"""Pruned weights stay exactly zero through every optimizer step (Adam moments, momentum, weight decay)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lottery.data import BatchStream, EvalBatches
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune
from lottery.training import MaskedClassifier


class CheckZeros(L.Callback):
    """After every optimizer step: pruned weights are exactly zero, and so are their optimizer states."""

    def __init__(self, mask: Mask):
        self.mask, self.checked = mask, 0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        params = dict(pl_module.model.named_parameters())
        opt = trainer.optimizers[0]
        for name, keep in self.mask.items():
            p = params[name]
            assert torch.equal(p.detach()[~keep], torch.zeros(int((~keep).sum()))), name
            for value in opt.state[p].values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    assert torch.equal(value[~keep], torch.zeros(int((~keep).sum()))), name
        self.checked += 1


class Loaders(L.LightningDataModule):
    def __init__(self, steps: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(240, 1, 28, 28, generator=g), torch.randint(0, 10, (240,), generator=g)
        self.steps = steps

    def train_dataloader(self):
        return BatchStream(self.x, self.y, 60, seed=0, end=self.steps)

    def val_dataloader(self):
        return [EvalBatches(self.x, self.y, 120)]


@pytest.mark.parametrize("optimizer,momentum,weight_decay", [("adam", 0.0, 0.0), ("adam", 0.0, 1e-2),
                                                             ("sgd", 0.9, 1e-2)])
def test_pruned_weights_stay_zero(optimizer: str, momentum: float, weight_decay: float) -> None:
    model = create_model("lenet_300_100", seed=0)
    names = prunable_names(model)
    dense = Mask.ones(model, names)
    mask = magnitude_prune(dict(model.named_parameters()), dense, 3, {n: 0.5 for n in names}, 0.5)
    module = MaskedClassifier(model, mask, optimizer, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    check = CheckZeros(mask)
    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        val_check_interval=6, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        callbacks=[check], enable_model_summary=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(module, datamodule=Loaders(12))
    assert check.checked == 12
    # Training really happened: the kept weights moved.
    for name, keep in mask.items():
        assert not torch.equal(model.get_parameter(name).detach()[keep], before[name][keep])
    assert [h["iteration"] for h in module.history] == [6, 12]

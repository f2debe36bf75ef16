"""Label noise: how well a trained network fits the noisy-labelled and the clean training examples, apart.

A run with `data.label_noise` trains on labels permuted among a random subset of the training examples (its
`noisy_index`). At a stage end, accuracy against the labels it trained on, on that subset, is memorization; on the
rest it is fit. The permutation can leave an example's label unchanged; `relabelled_fraction` says how many of the
noisy subset really carry a wrong label, and `noisy_true_label_acc` scores the same examples against their true ones."""

from __future__ import annotations

from pathlib import Path

import torch

from lotterylab.analysis import lmc, loading
from lotterylab.core import data


def fit_by_label(run: str | Path, stage: int = -1, device: str | None = "cpu"):
    """Accuracy at a stage end on the noisy-labelled training examples (against their noisy labels: memorization and
    against their true labels), on the clean ones, and on the test set; scalar variables of one Dataset."""
    import xarray as xr

    loaded = loading.load_run(run, device)
    index = loaded.stage_index(stage)
    state = loaded.state(index)
    loaded.model.load_state_dict(state["model"])
    train, noisy = loaded.data.train, loaded.data.noisy_indices.to(loaded.data.train.y.device)
    if len(noisy) == 0:
        raise loading.AnalysisError(f"{run}: trained without label noise; nothing to split")
    is_noisy = torch.zeros(len(train), dtype=torch.bool, device=train.y.device)
    is_noisy[noisy] = True
    clean_data = data.load(loaded.cfg.data.model_copy(update={"label_noise": 0.0}), loaded.cfg.seed, loaded.device)
    true_labels = clean_data.train.y.to(train.y.device)
    values = {
        "noisy_train_acc": lmc.evaluate(loaded.model, train.subset(is_noisy.nonzero().ravel()))[1],
        "noisy_true_label_acc": lmc.evaluate(
            loaded.model, type(train)(train.x[is_noisy], true_labels[is_noisy], train.mean, train.std))[1],
        "clean_train_acc": lmc.evaluate(loaded.model, train.subset((~is_noisy).nonzero().ravel()))[1],
        "relabelled_fraction": float((train.y[is_noisy] != true_labels[is_noisy]).float().mean()),
    }
    return xr.Dataset({name: ((), value) for name, value in values.items()}, coords={"stage": index},
                      attrs={**loaded.attrs(), "noisy_examples": int(is_noisy.sum())})

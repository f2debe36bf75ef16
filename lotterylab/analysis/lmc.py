"""Linear mode connectivity: loss and accuracy along the segment between two weight vectors, and the loss barrier.

theta(alpha) = (1 - alpha) theta_a + alpha theta_b for every floating-point parameter and buffer. Integer buffers
(BatchNorm's `num_batches_tracked`) are taken from `a`. With masks, theta(alpha) is multiplied by the *union* of the
two masks: a weight pruned in both endpoints stays exactly zero, while theta(0) = theta_a and theta(1) = theta_b are
kept exactly (the intersection would move the endpoints whenever the masks differ, e.g. across IMP levels).

BatchNorm running statistics of theta(alpha) are not the interpolation of the endpoints' statistics, so by default
they are recomputed at every alpha: reset, then a cumulative average (momentum=None) over `bn_batches` fixed training
batches (seeded order, no augmentation), in train mode without gradients. `bn_batches=0` keeps interpolated stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from lotterylab.analysis import loading
from lotterylab.core.data import Data
from lotterylab.pruning import masks
from lotterylab.training import step

ALPHAS = tuple(np.linspace(0.0, 1.0, 11).tolist())
BN_BATCHES = 10
BN_SEED = 0
EVAL_BATCH_SIZE = 1000
SPLITS = ("train", "test")


def interpolated_state(a: dict[str, Tensor], b: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) a + alpha b for floating-point entries; other entries (step counters) come from `a`."""
    return {key: torch.lerp(a[key], b[key].to(a[key].device), alpha) if a[key].is_floating_point() else a[key]
            for key in a}


def union_mask(mask_a: masks.Mask | None, mask_b: masks.Mask | None) -> masks.Mask:
    """Elementwise max of two masks; a layer missing from either one is dense there and so stays unmasked."""
    mask_a, mask_b = mask_a or {}, mask_b or {}
    if not mask_a or not mask_b:
        return {}
    return {name: torch.maximum(mask_a[name], mask_b[name]) for name in mask_a.keys() & mask_b.keys()}


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, data: Data, batches: int, batch_size: int) -> None:
    """Replace running stats with their exact average over `batches` fixed training batches; momenta are restored."""
    norms = _batchnorms(model)
    if not norms or batches == 0:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    generator = torch.Generator().manual_seed(BN_SEED)  # the same batches at every alpha
    for index, (x, _) in enumerate(data.train.batches(batch_size, generator)):
        if index == batches:
            break
        model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` (eval mode) over a whole split."""
    model.eval()
    loss_sum, correct = step.evaluate(model, split.batches(batch_size))
    return float(loss_sum) / len(split), int(correct) / len(split)


def barrier(losses: ArrayLike, alphas: ArrayLike) -> np.ndarray:
    """max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)), reducing the last axis; alphas must span [0, 1]."""
    losses, alphas = np.asarray(losses, dtype=np.float64), np.asarray(alphas, dtype=np.float64)
    if alphas[0] != 0.0 or alphas[-1] != 1.0 or np.any(np.diff(alphas) <= 0):
        raise ValueError(f"alphas: need increasing values from 0 to 1, got {alphas.tolist()}")
    chord = (1 - alphas) * losses[..., :1] + alphas * losses[..., -1:]
    return (losses - chord).max(axis=-1)


def interpolate(
    model: nn.Module,
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    data: Data,
    alphas: Sequence[float] = ALPHAS,
    bn_batches: int = BN_BATCHES,
    mask_a: masks.Mask | None = None,
    mask_b: masks.Mask | None = None,
    batch_size: int = 128,
):
    """Loss and accuracy on the train and test splits at each alpha (dim `alpha`), plus `train_barrier`, `test_barrier`.

    `model` is only a container: its weights and buffers are overwritten. `batch_size` is that of the BN batches.
    """
    import xarray as xr

    if bn_batches < 0:
        raise ValueError(f"bn_batches: must be >= 0, got {bn_batches}")
    barrier(np.zeros(len(alphas)), alphas)  # check the alphas before any evaluation
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(a.keys() ^ b.keys())[:3]}")
    mask = union_mask(mask_a, mask_b)
    recompute = bn_batches > 0 and bool(_batchnorms(model))
    metrics = {f"{split}_{kind}": [] for split in SPLITS for kind in ("loss", "acc")}
    for alpha in alphas:
        state = interpolated_state(a, b, float(alpha))
        model.load_state_dict({key: value * mask[key].to(value) if key in mask else value
                               for key, value in state.items()})
        if recompute:
            recompute_batchnorm(model, data, bn_batches, batch_size)
        for split in SPLITS:
            loss, acc = evaluate(model, getattr(data, split))
            metrics[f"{split}_loss"].append(loss)
            metrics[f"{split}_acc"].append(acc)
    variables = {name: ("alpha", np.asarray(values)) for name, values in metrics.items()}
    for split in SPLITS:
        variables[f"{split}_barrier"] = ((), barrier(metrics[f"{split}_loss"], alphas))
    attrs = {"bn_recompute": int(recompute), "bn_batches": bn_batches if recompute else 0,
             "bn_batch_size": batch_size, "bn_seed": BN_SEED, "mask_rule": "union"}
    return xr.Dataset(variables, coords={"alpha": np.asarray(alphas, dtype=np.float64)}, attrs=attrs)


def between_stages(
    run_dir: str | Path,
    pairs: Sequence[tuple[int, int]] | None = None,
    alphas: Sequence[float] = ALPHAS,
    bn_batches: int = BN_BATCHES,
    device: str | None = None,
):
    """LMC between stage-end checkpoints of a finished run: consecutive stages by default; dims (`pair`, `alpha`)."""
    loaded = loading.load_run(run_dir, device)
    pairs = loaded.stage_pairs(pairs, "LMC")
    per_pair = []
    for stage_a, stage_b in pairs:
        state_a, state_b = loaded.state(stage_a), loaded.state(stage_b)
        per_pair.append(interpolate(loaded.model, state_a["model"], state_b["model"], loaded.data, alphas, bn_batches,
                                    state_a["mask"], state_b["mask"], loaded.cfg.data.batch_size))
    return loaded.stack_pairs(per_pair, pairs)

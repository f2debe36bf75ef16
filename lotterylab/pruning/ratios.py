"""Layerwise density ratios (ERK, balanced) and the mask allocations built on them."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lotterylab.core.registry import ALLOCATIONS
from lotterylab.pruning.masks import Mask, MaskError, check_not_empty, top_k_mask


def _capped_proportional(sizes: dict[str, int], weights: dict[str, float], density: float) -> dict[str, float]:
    """Densities whose kept counts are proportional to `weights`, capped at dense, summing to density * N.

    A layer whose share exceeds its size is kept dense and its surplus is shared among the rest; capping only
    raises the others' shares, so every layer over its size can be capped at once until none is.
    """
    if not sizes:
        raise MaskError("no layers to allocate a density over")
    if not 0.0 < density <= 1.0:
        raise MaskError(f"density must lie in (0, 1], got {density}")
    dense: set[str] = set()
    while True:
        sparse = [name for name in sizes if name not in dense]
        left = density * sum(sizes.values()) - sum(sizes[name] for name in dense)
        scale = left / sum(weights[name] for name in sparse)
        over = {name for name in sparse if scale * weights[name] >= sizes[name]}
        if not over or len(over) == len(sparse):
            break
        dense |= over
    return {name: 1.0 if name in dense else min(1.0, scale * weights[name] / sizes[name]) for name in sizes}


def erk(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel (Evci et al. 2020): density ∝ sum(shape) / prod(shape), over-dense layers kept dense."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    # Kept count = density * size ∝ sum(shape), so the proportional weight is the sum of the dimensions.
    return _capped_proportional(sizes, {name: float(sum(shape)) for name, shape in shapes.items()}, density)


def balanced(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Balanced (Gadhikar et al. 2023): every layer keeps the same number of weights; small layers stay dense."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    return _capped_proportional(sizes, {name: 1.0 for name in shapes}, density)


def _allocate(ratios: dict[str, float], scores: dict[str, Tensor]) -> Mask:
    """Keep round(d_l * n_l) top scores in each layer."""
    mask = {}
    for name, layer_scores in scores.items():
        keep = round(ratios[name] * layer_scores.numel())
        check_not_empty(name, keep)
        mask[name] = top_k_mask(layer_scores, keep)
    return mask


def erk_allocation(scores: dict[str, Tensor], target_density: float) -> Mask:
    """ERK densities per layer, the top scores within each layer."""
    return _allocate(erk({name: s.shape for name, s in scores.items()}, target_density), scores)


def balanced_allocation(scores: dict[str, Tensor], target_density: float) -> Mask:
    """Balanced densities per layer, the top scores within each layer."""
    return _allocate(balanced({name: s.shape for name, s in scores.items()}, target_density), scores)


ALLOCATIONS.update(erk=erk_allocation, balanced=balanced_allocation)

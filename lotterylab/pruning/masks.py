"""Prunable parameters, masks from scores (global or layerwise), density, and the fused mask step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lotterylab.core.models import PRUNABLE_TYPES  # noqa: F401 (re-exported: the layers a mask can cover)
from lotterylab.core.registry import ALLOCATIONS

Mask = dict[str, Tensor]
"""Parameter name -> 0/1 tensor of the parameter's shape and dtype (1 keeps the weight)."""

class MaskError(ValueError):
    """A sparsity target that cannot be met, e.g. because it would empty a layer."""


def prunable(model: nn.Module, prune_first: bool = True, prune_last: bool = True) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers in module order; BatchNorm and biases are never prunable."""
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
    if not prune_first:
        layers = layers[1:]
    if not prune_last:
        layers = layers[:-1]
    return {f"{name}.weight" if name else "weight": module.weight for name, module in layers}


def density(mask: Mask) -> float:
    """Fraction of weights kept, over all masked parameters."""
    kept = sum(int(m.count_nonzero()) for m in mask.values())
    return kept / max(1, sum(m.numel() for m in mask.values()))


def layer_density(mask: Mask) -> dict[str, float]:
    return {name: int(m.count_nonzero()) / m.numel() for name, m in mask.items()}


def top_k_mask(scores: Tensor, keep: int) -> Tensor:
    """0/1 mask of the `keep` highest scores; ties go to the lower flat index, so the result is deterministic."""
    flat = scores.detach().flatten().float()
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat)
    mask[order[:keep]] = 1.0
    return mask.view_as(scores)


def check_not_empty(name: str, keep: int) -> None:
    if keep == 0:
        raise MaskError(f"mask would prune every weight of layer {name}; lower the sparsity or change the allocation")


def global_allocation(scores: dict[str, Tensor], target_density: float) -> Mask:
    """One threshold across all layers: exactly round(density * N) weights survive."""
    names = list(scores)
    sizes = [scores[name].numel() for name in names]
    keep = round(target_density * sum(sizes))
    flat = top_k_mask(torch.cat([scores[name].detach().flatten().float() for name in names]), keep)
    mask = {name: part.view_as(scores[name]) for name, part in zip(names, flat.split(sizes))}
    for name, layer in mask.items():
        check_not_empty(name, int(layer.count_nonzero()))
    return mask


def uniform_allocation(scores: dict[str, Tensor], target_density: float) -> Mask:
    """The same density in every layer: round(density * n_layer) weights survive per layer."""
    mask = {}
    for name, layer_scores in scores.items():
        keep = round(target_density * layer_scores.numel())
        check_not_empty(name, keep)
        mask[name] = top_k_mask(layer_scores, keep)
    return mask


ALLOCATIONS.update({"global": global_allocation, "uniform": uniform_allocation})  # erk, balanced: ratios.py


def from_scores(scores: dict[str, Tensor], target_density: float, allocation: str) -> Mask:
    """Turn criterion scores into a mask with the named allocation; masks match each parameter's dtype later."""
    return ALLOCATIONS.get_checked(allocation)(scores, target_density)


class MaskStep:
    """Keeps pruned weights and their momentum exactly zero with one fused multiply after every optimizer step."""

    def __init__(self, params: dict[str, nn.Parameter], mask: Mask, optimizer: torch.optim.Optimizer | None = None):
        self.names = list(mask)
        self.weights = [params[name] for name in self.names]
        self.masks = [mask[name].to(device=p.device, dtype=p.dtype) for name, p in zip(self.names, self.weights)]
        self.optimizer = optimizer
        self._tensors: list[Tensor] | None = None

    def _targets(self) -> tuple[list[Tensor], list[Tensor]]:
        # Momentum buffers appear only after the optimizer's first step; cache once all exist.
        if self._tensors is not None:
            return self._tensors, self._factors
        tensors, factors = [w.data for w in self.weights], list(self.masks)
        state = {} if self.optimizer is None else self.optimizer.state
        momenta = [state.get(w, {}).get("momentum_buffer") for w in self.weights] if state else []
        if momenta and all(buffer is not None for buffer in momenta):
            tensors, factors = tensors + momenta, factors + self.masks
            self._tensors, self._factors = tensors, factors
        return tensors, factors

    @torch.no_grad()
    def __call__(self) -> None:
        if self.masks:
            tensors, factors = self._targets()
            torch._foreach_mul_(tensors, factors)

    def reset(self) -> None:
        """Forget cached momentum buffers (after the optimizer state is replaced)."""
        self._tensors = None


"""Training cost: dense multiply-accumulates per conv/linear layer, scaled by each layer's density per stage."""

from __future__ import annotations

import torch
from torch import nn

from lotterylab.pruning.masks import PRUNABLE_TYPES

TRAIN_FACTOR = 3
"""A training step costs about three forward passes: the forward, and a backward for inputs and for weights."""


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates of one example's forward pass in each conv/linear layer, keyed by `<layer>.weight`.

    A layer's MACs are its weight count times the positions it is applied at (output elements per output channel).
    BatchNorm, activations, pooling and biases are left out: they are a small, density-independent share.
    """
    found: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            key = f"{name}.weight" if name else "weight"

            def hook(module: nn.Module, inputs: object, output: torch.Tensor, key: str = key) -> None:
                channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
                found[key] = found.get(key, 0) + module.weight.numel() * (output.numel() // channels)

            hooks.append(module.register_forward_hook(hook))
    training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()  # BatchNorm must not update its running statistics on this probe
        model(torch.zeros((1, *input_shape), device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(training)
        for handle in hooks:
            handle.remove()
    return found


def forward_flops(macs: dict[str, int], density: dict[str, float]) -> float:
    """FLOPs (2 per MAC) of one example's sparse forward pass; layers without a density count as dense."""
    return 2.0 * sum(count * density.get(name, 1.0) for name, count in macs.items())


def training_flops(macs: dict[str, int], density: dict[str, float], examples: int, epochs: int) -> float:
    """Estimated FLOPs of `epochs` epochs over `examples` training examples at the given layer densities."""
    return TRAIN_FACTOR * forward_flops(macs, density) * examples * epochs


def cost_to_reach(dataset, stage: int) -> tuple[int, float]:
    """(epochs, FLOPs) a run spent to produce the network of `stage`. A SCULPT target stage counts the shared
    cycles before it and itself, not the other targets' retraining; any other stage counts every stage up to it."""
    kinds = [str(kind) for kind in dataset.stage_kind.values]
    if kinds[stage] == "target":
        chosen = [s for s, kind in enumerate(kinds) if kind != "target"] + [stage]
    else:
        chosen = list(range(stage + 1))
    epochs = int(dataset.stage_epochs.values[chosen].sum())
    return epochs, float(dataset.train_flops.values[chosen].sum())

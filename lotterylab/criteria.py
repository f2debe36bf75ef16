"""Pruning criteria: each returns a score per prunable weight; higher scores survive."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lotterylab.data import Data

Criterion = Callable[[nn.Module, dict[str, nn.Parameter], Data, torch.Generator], dict[str, Tensor]]
"""(model, prunable params, data for data-driven criteria, seeded CPU generator) -> scores per parameter name."""


def random_scores(
    model: nn.Module, params: dict[str, nn.Parameter], data: Data, generator: torch.Generator
) -> dict[str, Tensor]:
    """Independent uniform scores, drawn on the CPU so a seed gives the same mask on every device."""
    return {name: torch.rand(p.shape, generator=generator) for name, p in params.items()}


def magnitude_scores(
    model: nn.Module, params: dict[str, nn.Parameter], data: Data, generator: torch.Generator
) -> dict[str, Tensor]:
    return {name: p.detach().abs().cpu() for name, p in params.items()}


CRITERIA: dict[str, Criterion] = {
    "random": random_scores,
    "magnitude": magnitude_scores,
}

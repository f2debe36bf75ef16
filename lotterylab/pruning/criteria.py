"""Pruning criteria: each returns a score per prunable weight; higher scores survive."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lotterylab.core.criterion_options import CriterionOptions, Grasp
from lotterylab.core.data import Data
from lotterylab.core.registry import CRITERIA
from lotterylab.pruning import masks

Criterion = Callable[[nn.Module, dict[str, nn.Parameter], Data, torch.Generator], dict[str, Tensor]]
"""(model, prunable params, data for data-driven criteria, seeded CPU generator) -> scores per parameter name."""

GRASP_TEMPERATURE = Grasp.model_fields["temperature"].default  # defined once, with GraSP's options
"""Logits are divided by this before the GraSP loss, as in the authors' code (`T=200`), to soften the softmax."""


def random_scores(
    model: nn.Module, params: dict[str, nn.Parameter], data: Data, generator: torch.Generator
) -> dict[str, Tensor]:
    """Independent uniform scores, drawn on the CPU so a seed gives the same mask on every device."""
    return {name: torch.rand(p.shape, generator=generator) for name, p in params.items()}


def magnitude_scores(
    model: nn.Module, params: dict[str, nn.Parameter], data: Data, generator: torch.Generator
) -> dict[str, Tensor]:
    return {name: p.detach().abs().cpu() for name, p in params.items()}


@contextmanager
def _untouched(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the body in train or eval mode, then restore every parameter and buffer (BatchNorm statistics) and mode.

    Gradients are taken with `torch.autograd.grad`, which never writes `.grad`, so those need no restoring.
    """
    state = copy.deepcopy(model.state_dict())
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        model.load_state_dict(state)
        for module, mode in modes.items():
            module.training = mode


def _loss_batches(
    data: Data, generator: torch.Generator, batches: int, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """The first `batches` shuffled, unaugmented training batches (fewer if the split is smaller)."""
    if data is None:
        raise ValueError("this criterion scores weights on training batches; it needs data")
    for _, batch in zip(range(batches), data.train.batches(batch_size, generator, augment=False)):
        yield batch


def snip_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Data,
    generator: torch.Generator,
    batches: int = 1,
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """SNIP (Lee et al. 2019): |w * dL/dw|, L the sum over `batches` batches of their mean cross-entropy."""
    names, weights = list(params), list(params.values())
    grads = [torch.zeros_like(w) for w in weights]
    with _untouched(model, training=True):
        for x, y in _loss_batches(data, generator, batches, batch_size):
            batch_grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
            grads = [g + b for g, b in zip(grads, batch_grads)]
    return {name: (w.detach() * g).abs().float().cpu() for name, w, g in zip(names, weights, grads)}


def grasp_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Data,
    generator: torch.Generator,
    batches: int = 1,
    batch_size: int = 512,
    temperature: float = GRASP_TEMPERATURE,
) -> dict[str, Tensor]:
    """GraSP (Wang et al. 2020): w * Hg, with g = dL/dw and H the Hessian of L over the same batches.

    The paper scores S = -w * Hg and removes the weights with the *highest* S (its Algorithm 1; the authors' code
    keeps `score <= threshold`). Removing those reduces the gradient norm least, or even increases it. Here higher
    scores survive, so this returns -S = w * Hg.
    """
    names, weights = list(params), list(params.values())
    drawn = list(_loss_batches(data, generator, batches, batch_size))
    with _untouched(model, training=True):

        def batch_gradient(x: Tensor, y: Tensor, create_graph: bool) -> tuple[Tensor, ...]:
            loss = F.cross_entropy(model(x) / temperature, y)
            return torch.autograd.grad(loss, weights, create_graph=create_graph)

        # First pass: g over all batches, held constant; second pass: d(g_b . g)/dw = H_b g, summed over batches.
        gradient = [torch.zeros_like(w) for w in weights]
        for x, y in drawn:
            gradient = [g + b for g, b in zip(gradient, batch_gradient(x, y, create_graph=False))]
        hessian_gradient = [torch.zeros_like(w) for w in weights]
        for x, y in drawn:
            flow = sum((b * g).sum() for b, g in zip(batch_gradient(x, y, create_graph=True), gradient))
            hessian_gradient = [h + b for h, b in zip(hessian_gradient, torch.autograd.grad(flow, weights))]
    return {name: (w.detach() * h).float().cpu() for name, w, h in zip(names, weights, hessian_gradient)}


def _synflow_round(
    model: nn.Module, params: dict[str, nn.Parameter], mask: dict[str, Tensor], input_shape: tuple[int, ...]
) -> dict[str, Tensor]:
    """One SynFlow score |w * dR/dw|, R = sum of the outputs of the net with |weights| * mask on an all-ones input.

    The forward runs in float64 on substituted tensors: products of |weights| over a deep net overflow float32,
    and `functional_call` leaves the model's own (signed) parameters and buffers alone.
    """
    parameter_names = {id(p): name for name, p in model.named_parameters()}
    substitutes = {
        name: t.detach().abs().double() if t.is_floating_point() else t
        for name, t in model.state_dict(keep_vars=True).items()
    }
    weights = []
    for name, p in params.items():
        full_name = parameter_names[id(p)]
        substitutes[full_name] = (substitutes[full_name] * mask[name].to(p.device).double()).requires_grad_(True)
        weights.append(substitutes[full_name])
    device = weights[0].device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    flow = functional_call(model, substitutes, (ones,)).sum()
    grads = torch.autograd.grad(flow, weights)
    return {name: (w.detach() * g).abs().cpu() for name, w, g in zip(params, weights, grads)}


def synflow_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Data | None,
    generator: torch.Generator,
    density: float = 0.1,
    rounds: int = 100,
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Tensor]:
    """Iterative SynFlow (Tanaka et al. 2020), data-free: only `data.input_shape` (or `input_shape`) is read.

    Round k of `rounds` keeps the global top density**(k / rounds) of the scores, taken with the current mask.
    A weight's returned score is the number of rounds it survived plus its score in the last round it was scored,
    scaled into [0, 0.5]: finite, non-negative and nested, so a global top-k at `density` gives exactly the iterative
    mask, and a lower density prunes the weights the iteration would have pruned last. Needs the target density:
    the caller must pass `density`.
    """
    if input_shape is None and data is None:
        raise ValueError("synflow needs the input shape: pass data or input_shape")
    shape = tuple(input_shape if input_shape is not None else data.input_shape)
    mask = {name: torch.ones(p.shape) for name, p in params.items()}
    ranks = {name: torch.zeros(p.shape, dtype=torch.float64) for name, p in params.items()}
    with _untouched(model, training=False):  # eval: BatchNorm uses its running statistics, as in the paper's code
        for k in range(1, rounds + 1):
            scores = _synflow_round(model, params, mask, shape)
            largest = max(float(s.max()) for s in scores.values())
            scaled = {name: s / (2 * largest) if largest > 0 else s for name, s in scores.items()}
            # -1 keeps pruned weights out: their zero score could otherwise tie with, and displace, a live weight.
            live = {name: torch.where(mask[name] > 0, s, -1.0) for name, s in scaled.items()}
            kept = masks.global_allocation(live, density ** (k / rounds))
            for name in ranks:
                pruned_now = (mask[name] > 0) & (kept[name] == 0)
                ranks[name] = torch.where(pruned_now, k - 1 + scaled[name], ranks[name])
            mask = kept
    return {name: torch.where(mask[name] > 0, rounds + scaled[name], ranks[name]).float() for name in ranks}


CRITERIA.update({
    "random": random_scores,
    "magnitude": magnitude_scores,
    "snip": snip_scores,
    "grasp": grasp_scores,
    "synflow": synflow_scores,
})


def score(
    criterion: CriterionOptions,
    model: nn.Module,
    params: dict[str, nn.Parameter],
    data: Data | None,
    generator: torch.Generator,
    density: float,
) -> dict[str, Tensor]:
    """Scores of `criterion`, with its own options (lotterylab.core.criterion_options); `density` is the target, for
    a criterion that iterates toward it (SynFlow)."""
    function = CRITERIA.get_checked(criterion.name)
    extra = criterion.options()
    if "density" in inspect.signature(function).parameters:
        extra["density"] = density
    return function(model, params, data, generator, **extra)

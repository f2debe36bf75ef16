"""Sharpness: top Hessian eigenvalue (power iteration) and Hutchinson trace of the training loss on unpruned weights.

The Hessian is that of the mean cross-entropy over a fixed, seeded subset of training batches, with BatchNorm in eval
mode (running statistics, so the loss is a deterministic function of the weights). It is taken over every trainable
parameter (weights, biases, BatchNorm affine) restricted to the unpruned coordinates: each vector is multiplied by the
mask before and after every Hessian-vector product, so the iteration lives in the unpruned subspace.

Hessian-vector products are double backward passes with `torch.autograd.grad`, one code path on CPU and GPU. PyHessian
0.1 (PyPI) is not used: it has no notion of a mask (its vectors span every parameter), it calls `.cuda()` instead of
following the model's device, its `density()` calls the removed `torch.eig`, and the parts that do work (power
iteration and Hutchinson over HVPs) are a few lines here.

Power iteration converges to the eigenvalue of largest magnitude. When that one is negative, a second run on the
shifted operator H - lambda_dominant I (whose spectrum is non-negative) yields the largest algebraic eigenvalue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lotterylab.analysis import loading
from lotterylab.core.data import Data
from lotterylab.pruning import masks

Vector = list[Tensor]
Batches = list[tuple[Tensor, Tensor]]


def _dot(u: Vector, v: Vector) -> float:
    return float(sum((a * b).sum() for a, b in zip(u, v)))


def _norm(v: Vector) -> float:
    return _dot(v, v) ** 0.5


def fixed_batches(data: Data, batches: int, batch_size: int, seed: int = 0) -> Batches:
    """The first `batches` training batches of a seeded shuffle, without augmentation."""
    generator = torch.Generator().manual_seed(seed)
    return [batch for _, batch in zip(range(batches), data.train.batches(batch_size, generator))]


def _factors(model: nn.Module, mask: masks.Mask | None) -> list[Tensor | None]:
    """Per trainable parameter: its mask on its device, or None where it is not masked."""
    mask = mask or {}
    return [mask[name].to(p) if name in mask else None
            for name, p in model.named_parameters() if p.requires_grad]


def _project(v: Vector, factors: list[Tensor | None]) -> Vector:
    return [x if m is None else x * m for x, m in zip(v, factors)]


def hessian_operator(model: nn.Module, batches: Batches, mask: masks.Mask | None = None) -> Callable[[Vector], Vector]:
    """v -> P H P v, H the Hessian of the mean loss over `batches` (eval mode), P the projection on unpruned weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    factors = _factors(model, mask)
    total = sum(len(y) for _, y in batches)
    model.eval()

    def apply(vector: Vector) -> Vector:
        vector = _project(vector, factors)
        out = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            loss = F.cross_entropy(model(x).float(), y) * (len(y) / total)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            products = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params)
            torch._foreach_add_(out, products)
        return _project(out, factors)

    return apply


@dataclass
class PowerResult:
    eigenvalue: float
    iterations: int
    converged: bool


def power_iteration(apply: Callable[[Vector], Vector], start: Vector, tol: float, max_iter: int) -> PowerResult:
    """Largest-magnitude eigenvalue of a symmetric operator; stops when the Rayleigh quotient moves <= tol relative."""
    scale = _norm(start)
    vector = [x / scale for x in start]
    eigenvalue = None
    for iteration in range(1, max_iter + 1):
        image = apply(vector)
        estimate, size = _dot(vector, image), _norm(image)
        if size == 0.0:
            return PowerResult(0.0, iteration, True)
        vector = [x / size for x in image]
        if eigenvalue is not None and abs(estimate - eigenvalue) <= tol * abs(estimate):
            return PowerResult(estimate, iteration, True)
        eigenvalue = estimate
    return PowerResult(eigenvalue, max_iter, False)


def _draw(model: nn.Module, generator: torch.Generator, rademacher: bool) -> Vector:
    params = [p for p in model.parameters() if p.requires_grad]
    if rademacher:
        return [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
    return [torch.randn(p.shape, generator=generator).to(p) for p in params]


def largest_eigenvalue(apply: Callable[[Vector], Vector], start: Vector, tol: float, max_iter: int
                       ) -> tuple[PowerResult, float]:
    """(largest algebraic eigenvalue, largest-magnitude eigenvalue), shifting when the dominant one is negative."""
    dominant = power_iteration(apply, start, tol, max_iter)
    if dominant.eigenvalue >= 0:
        return dominant, dominant.eigenvalue
    shift = dominant.eigenvalue
    shifted = power_iteration(lambda v: [h - shift * x for h, x in zip(apply(v), v)], start, tol, max_iter)
    top = PowerResult(shifted.eigenvalue + shift, dominant.iterations + shifted.iterations, shifted.converged)
    return top, dominant.eigenvalue


def hutchinson_trace(apply: Callable[[Vector], Vector], model: nn.Module, samples: int, seed: int = 0,
                     mask: masks.Mask | None = None) -> tuple[float, float]:
    """Mean and standard error of v^T P H P v over Rademacher v: the trace of H over the unpruned coordinates."""
    generator = torch.Generator().manual_seed(seed)
    factors = _factors(model, mask)
    values = []
    for _ in range(samples):
        vector = _project(_draw(model, generator, rademacher=True), factors)
        values.append(_dot(vector, apply(vector)))
    estimates = torch.tensor(values, dtype=torch.float64)
    stderr = float(estimates.std() / samples**0.5) if samples > 1 else float("nan")
    return float(estimates.mean()), stderr


def top_eigenvalue(
    run_dir: str | Path,
    stage: int = -1,
    batches: int = 8,
    batch_size: int = 256,
    tol: float = 1e-4,
    max_iter: int = 100,
    trace_samples: int = 0,
    seed: int = 0,
    device: str | None = None,
):
    """Top Hessian eigenvalue (and optional Hutchinson trace) at a stage-end checkpoint; scalar variables."""
    import xarray as xr

    loaded = loading.load_run(run_dir, device)
    stage = loaded.stage_index(stage)
    state = loaded.state(stage)
    loaded.model.load_state_dict(state["model"])
    subset = fixed_batches(loaded.data, batches, batch_size, seed)
    apply = hessian_operator(loaded.model, subset, state["mask"])
    start = _draw(loaded.model, torch.Generator().manual_seed(seed), rademacher=False)
    began = time.perf_counter()
    top, dominant = largest_eigenvalue(apply, start, tol, max_iter)
    seconds = time.perf_counter() - began
    variables = {"eigenvalue": top.eigenvalue, "dominant_eigenvalue": dominant, "iterations": top.iterations,
                 "converged": int(top.converged), "eigenvalue_seconds": seconds}
    if trace_samples > 0:
        variables["trace"], variables["trace_stderr"] = hutchinson_trace(apply, loaded.model, trace_samples, seed,
                                                                         state["mask"])
    attrs = {**loaded.attrs(), "batchnorm": "eval", "batches": len(subset), "batch_size": batch_size,
             "examples": sum(len(y) for _, y in subset), "batch_seed": seed, "tol": tol, "max_iter": max_iter,
             "parameters": "all trainable, pruned weights excluded", "trace_samples": trace_samples}
    return xr.Dataset({name: ((), value) for name, value in variables.items()}, coords={"stage": stage}, attrs=attrs)

"""Hessian top eigenvalue and trace against an explicit Hessian on a tiny model, with and without a mask."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lotterylab.analysis import sharpness


def tiny_model_and_batches() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    return model, batches


def explicit_hessian(model: nn.Module, batches) -> torch.Tensor:
    """The full Hessian of the mean loss over all batches, in float64, parameters flattened in model order."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    x = torch.cat([x for x, _ in batches]).double()
    y = torch.cat([y for _, y in batches])
    model = model.double()

    def loss(vector: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (part.view(shape) for part, shape in zip(vector.split([s.numel() for s in shapes]),
                                                                           shapes))))
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return hessian


def test_power_iteration_finds_the_dominant_and_the_largest_eigenvalue_of_a_matrix():
    matrix = torch.diag(torch.tensor([-5.0, 1.0, 2.0, 0.5]))
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    matrix = rotation @ matrix @ rotation.T
    start = [torch.ones(4)]
    top, dominant = sharpness.largest_eigenvalue(lambda v: [matrix @ v[0]], start, tol=1e-8, max_iter=2000)
    assert dominant == pytest.approx(-5.0, rel=1e-4)
    assert top.eigenvalue == pytest.approx(2.0, rel=1e-3)
    assert top.converged


def test_top_eigenvalue_matches_the_explicit_hessian():
    model, batches = tiny_model_and_batches()
    expected = float(torch.linalg.eigvalsh(explicit_hessian(model, batches)).max())
    apply = sharpness.hessian_operator(model, batches)
    start = [torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) for p in model.parameters()]
    top, _ = sharpness.largest_eigenvalue(apply, start, tol=1e-7, max_iter=2000)
    assert top.converged
    assert top.eigenvalue == pytest.approx(expected, rel=1e-3)


def test_masked_eigenvalue_and_trace_match_the_hessian_restricted_to_unpruned_weights():
    model, batches = tiny_model_and_batches()
    generator = torch.Generator().manual_seed(2)
    mask = {"0.weight": (torch.rand(5, 4, generator=generator) > 0.5).float(),
            "2.weight": (torch.rand(3, 5, generator=generator) > 0.5).float()}
    # Biases are not masked; they keep all their coordinates.
    kept = torch.cat([mask.get(name, torch.ones_like(p)).flatten() for name, p in model.named_parameters()]).bool()
    restricted = explicit_hessian(model, batches)[kept][:, kept]
    full_top = float(torch.linalg.eigvalsh(explicit_hessian(model, batches)).max())
    expected = float(torch.linalg.eigvalsh(restricted).max())
    assert abs(expected - full_top) > 1e-3 * abs(full_top)  # the mask changes the answer, so the test can fail

    apply = sharpness.hessian_operator(model, batches, mask)
    start = [torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) for p in model.parameters()]
    top, _ = sharpness.largest_eigenvalue(apply, start, tol=1e-7, max_iter=2000)
    assert top.eigenvalue == pytest.approx(expected, rel=1e-3)

    trace, stderr = sharpness.hutchinson_trace(apply, model, samples=400, seed=0, mask=mask)
    exact_trace = float(restricted.trace())
    assert abs(trace - exact_trace) < 4 * stderr
    assert stderr < 0.2 * abs(exact_trace)


def test_hessian_operator_leaves_pruned_coordinates_zero():
    model, batches = tiny_model_and_batches()
    mask = {"0.weight": torch.zeros(5, 4).index_fill_(1, torch.tensor([0]), 1.0)}
    apply = sharpness.hessian_operator(model, batches, mask)
    image = apply([torch.ones_like(p) for p in model.parameters()])
    assert torch.all(image[0][:, 1:] == 0)
    assert image[0][:, 0].abs().sum() > 0


def test_top_eigenvalue_matches_pyhessian_on_an_unmasked_mlp_on_mnist1d():
    """PyHessian (a dev dependency) as the reference: it cannot restrict to a mask, so the net is unmasked."""
    from pyhessian import hessian

    from lotterylab.core import config, data, models

    cfg = config.from_dict({"data": {"name": "mnist1d", "train_size": 512, "test_size": 128},
                            "model": {"name": "mlp", "width": 32, "depth": 1}})
    dataset = data.load(cfg.data, 0)
    torch.manual_seed(0)
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes).double()
    (x, y), = sharpness.fixed_batches(dataset, 1, 256, 0)
    x = x.double()
    start = sharpness._draw(model, torch.Generator().manual_seed(0), rademacher=False)
    ours, _ = sharpness.largest_eigenvalue(sharpness.hessian_operator(model, [(x, y)]), start, 1e-8, 500)
    with warnings.catch_warnings():  # PyHessian's backward(create_graph=True) warns of a reference cycle
        warnings.simplefilter("ignore", UserWarning)
        (reference,), _ = hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(maxIter=500,
                                                                                                    tol=1e-8)
    assert ours.converged and ours.eigenvalue > 0.1
    assert ours.eigenvalue == pytest.approx(reference, rel=1e-4)

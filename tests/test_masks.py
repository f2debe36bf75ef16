"""Masks: prunable selection, global and layerwise thresholds against torch's pruning, and the fused mask step."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lotterylab.core import models
from lotterylab.core.config import DataConfig, MaskConfig, ModelConfig
from lotterylab.core.data import load
from lotterylab.pruning import masks
from lotterylab.pruning.criteria import CRITERIA, score
from lotterylab.pruning.masks import ALLOCATIONS, MaskError


@pytest.fixture(scope="module")
def images():
    return load(DataConfig(name="synthetic", shape=[3, 8, 8], train_size=64, test_size=16), seed=0)


def criterion_scores(criterion, net, params, data, density):
    options = MaskConfig(criterion=criterion, score_batch_size=32, synflow_rounds=20).criterion
    return score(options, net, params, data, torch.Generator().manual_seed(1), density)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
        nn.Linear(16, 10),
    )


def test_prunable_is_conv_and_linear_weights_in_order():
    net = small_net()
    assert list(masks.prunable(net)) == ["0.weight", "4.weight", "6.weight"]
    assert list(masks.prunable(net, prune_first=False)) == ["4.weight", "6.weight"]
    assert list(masks.prunable(net, prune_last=False)) == ["0.weight", "4.weight"]


def test_global_magnitude_matches_torch_global_unstructured():
    net = small_net()
    params = masks.prunable(net)
    scores = {name: p.detach().abs() for name, p in params.items()}
    ours = masks.global_allocation(scores, 0.3)

    reference = small_net()
    modules = [reference[0], reference[4], reference[6]]
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=0.7)
    for name, module in zip(params, modules):
        assert torch.equal(ours[name], module.weight_mask), name


def test_uniform_matches_torch_l1_per_layer():
    net = small_net()
    params = masks.prunable(net)
    ours = masks.uniform_allocation({name: p.detach().abs() for name, p in params.items()}, 0.25)
    reference = small_net()
    for name, module in zip(params, [reference[0], reference[4], reference[6]]):
        prune.l1_unstructured(module, "weight", amount=round(0.75 * module.weight.numel()))
        assert torch.equal(ours[name], module.weight_mask), name


def test_ties_are_broken_by_position_and_count_is_exact():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 1.0]), "b": torch.tensor([2.0, 1.0, 1.0])}
    mask = masks.global_allocation(scores, 0.5)  # keep round(3.5) = 4: 3, 2, then the first two tied 1s
    assert mask["a"].tolist() == [1, 1, 1, 0]
    assert mask["b"].tolist() == [1, 0, 0]
    uniform = masks.uniform_allocation({"c": torch.ones(6)}, 0.5)
    assert uniform["c"].tolist() == [1, 1, 1, 0, 0, 0]


def test_emptying_a_layer_is_an_error_naming_it():
    scores = {"big": torch.arange(100.0) + 10, "small": torch.tensor([0.5, 0.1])}
    with pytest.raises(MaskError, match="small"):
        masks.global_allocation(scores, 0.05)
    with pytest.raises(MaskError, match="small"):
        masks.uniform_allocation(scores, 0.1)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("allocation", sorted(ALLOCATIONS))
@pytest.mark.parametrize("target", [0.5, 0.2, 0.1])
def test_registry_contract(images, criterion, allocation, target):
    """Every criterion x allocation: right shapes, the requested density within one weight, no empty layer."""
    net = small_net()
    params = masks.prunable(net)
    scores = criterion_scores(criterion, net, params, images, target)
    mask = masks.from_scores(scores, target, allocation)
    total = sum(p.numel() for p in params.values())
    assert {name: m.shape for name, m in mask.items()} == {name: p.shape for name, p in params.items()}
    assert abs(sum(int(m.sum()) for m in mask.values()) - target * total) <= len(params)
    assert masks.density(mask) == pytest.approx(target, abs=len(params) / total)
    assert all(m.sum() > 0 for m in mask.values())
    # Iterating: pruning again from scores restricted to the survivors never regains a weight. Survivors' scores are
    # shifted above every pruned weight's (GraSP scores can be negative).
    low = min(float(s.min()) for s in scores.values())
    survivors = {name: torch.where(mask[name] > 0, s - low + 1.0, torch.zeros_like(s)) for name, s in scores.items()}
    again = masks.from_scores(survivors, target * 0.8, allocation)
    assert all(torch.all(again[name] <= mask[name]) for name in mask)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return models.build(ModelConfig(name="resnet20", width_mult=0.5), (3, 8, 8), 10)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("allocation", sorted(ALLOCATIONS))
def test_resnet20_at_99_percent_keeps_every_layer_or_says_which_would_empty(images, resnet20, criterion, allocation):
    params = masks.prunable(resnet20)
    scores = criterion_scores(criterion, resnet20, params, images, 0.01)
    try:
        mask = masks.from_scores(scores, 0.01, allocation)
    except MaskError as error:
        assert any(name in str(error) for name in params)
        return
    assert all(m.sum() > 0 for m in mask.values())
    assert masks.density(mask) == pytest.approx(0.01, abs=len(params) / sum(p.numel() for p in params.values()))


def test_unknown_allocation_lists_valid_names():
    with pytest.raises(ValueError, match="balanced, erk, global, uniform"):
        masks.from_scores({"w": torch.ones(3)}, 0.5, "lamp")


def test_mask_step_keeps_weights_and_momentum_zero_through_training():
    net = small_net()
    params = masks.prunable(net)
    mask = masks.from_scores(CRITERIA["random"](net, params, None, torch.Generator().manual_seed(0)), 0.2, "uniform")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    step = masks.MaskStep(params, mask, optimizer)
    step()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        step()
    for name, p in params.items():
        pruned = mask[name] == 0
        assert torch.all(p[pruned] == 0), name
        assert torch.all(optimizer.state[p]["momentum_buffer"][pruned] == 0), name
        assert torch.any(p[~pruned] != 0), name
    assert masks.density(mask) == pytest.approx(0.2, abs=3 / sum(p.numel() for p in params.values()))

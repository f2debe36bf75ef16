"""Layerwise ratios: ERK and balanced densities worked by hand, capping, and their mask allocations."""

import math

import pytest
import torch

from lotterylab.pruning import masks, ratios
from lotterylab.pruning.masks import MaskError

SHAPES = {"a": torch.Size([10, 10]), "b": torch.Size([10, 1000])}  # n = 100 and 10_000, N = 10_100


def weighted_mean(densities: dict[str, float], shapes: dict[str, torch.Size]) -> float:
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    return sum(densities[name] * sizes[name] for name in sizes) / sum(sizes.values())


def test_erk_by_hand_without_capping():
    # Kept counts ∝ sum of dims: a 20, b 1010. K = 0.1 * 10_100 = 1010, so the scale is 1010 / 1030 = 101 / 103.
    # d_a = 20 * 101/103 / 100 = 20.2/103 ≈ 0.196; d_b = 1010 * 101/103 / 10_000 = 10.201/103 ≈ 0.0990.
    densities = ratios.erk(SHAPES, 0.1)
    assert densities == {"a": pytest.approx(20.2 / 103), "b": pytest.approx(10.201 / 103)}
    assert weighted_mean(densities, SHAPES) == pytest.approx(0.1, abs=1 / 10_100)


def test_erk_counts_kernel_dims_of_a_conv():
    # conv (4, 2, 3, 3): n 72, sum 12; linear (8, 36): n 288, sum 44. K = 0.2 * 360 = 72, scale 72 / 56 = 9/7.
    # d_conv = 12 * 9/7 / 72 = 3/14; d_linear = 44 * 9/7 / 288 = 11/56.
    shapes = {"conv": torch.Size([4, 2, 3, 3]), "linear": torch.Size([8, 36])}
    assert ratios.erk(shapes, 0.2) == {"conv": pytest.approx(3 / 14), "linear": pytest.approx(11 / 56)}


def test_erk_caps_a_tiny_layer_and_still_hits_the_target():
    # tiny (2, 2): n 4, sum 4; b: n 10_000, sum 1010. K = 0.5 * 10_004 = 5002; scale 5002 / 1014 gives tiny
    # ≈ 19.7 > 4 kept, so tiny is dense and b keeps the other 4998: d_b = 0.4998.
    shapes = {"tiny": torch.Size([2, 2]), "b": SHAPES["b"]}
    densities = ratios.erk(shapes, 0.5)
    assert densities["tiny"] == 1.0
    assert densities["b"] == pytest.approx(0.4998)
    assert weighted_mean(densities, shapes) == pytest.approx(0.5, abs=1 / 10_004)


def test_balanced_by_hand_without_capping():
    # K = 0.01 * 10_100 = 101, 50.5 weights per layer: d_a = 50.5 / 100, d_b = 50.5 / 10_000.
    assert ratios.balanced(SHAPES, 0.01) == {"a": pytest.approx(0.505), "b": pytest.approx(0.00505)}


def test_balanced_caps_small_layers_and_redistributes_repeatedly():
    # SHAPES at 0.1: K = 1010, share 505 > 100, so a is dense and b keeps 910: d_b = 0.091.
    assert ratios.balanced(SHAPES, 0.1) == {"a": 1.0, "b": pytest.approx(0.091)}
    # n = 10, 100, 1000; K = 222. Share 74 caps a; then (222 - 10) / 2 = 106 caps b; c keeps 112 of 1000.
    shapes = {"a": torch.Size([2, 5]), "b": torch.Size([10, 10]), "c": torch.Size([10, 100])}
    densities = ratios.balanced(shapes, 0.2)
    assert densities == {"a": 1.0, "b": 1.0, "c": pytest.approx(0.112)}
    assert weighted_mean(densities, shapes) == pytest.approx(0.2, abs=1 / 1110)


@pytest.mark.parametrize("ratio", [ratios.erk, ratios.balanced])
@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 0.9, 1.0])
def test_densities_meet_the_target_and_lie_in_range(ratio, density):
    shapes = {"conv": torch.Size([16, 3, 3, 3]), "fc1": torch.Size([64, 256]), "fc2": torch.Size([10, 64])}
    densities = ratio(shapes, density)
    assert weighted_mean(densities, shapes) == pytest.approx(density, abs=1 / (432 + 16_384 + 640))
    assert all(0.0 < d <= 1.0 for d in densities.values())


@pytest.mark.parametrize("ratio", [ratios.erk, ratios.balanced])
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_impossible_density_is_an_error(ratio, density):
    with pytest.raises(MaskError, match="density"):
        ratio(SHAPES, density)


def test_balanced_allocation_keeps_the_top_scores_per_layer():
    # N = 16, K = 4, share 2 each: a keeps 3 and 2, b keeps 11 and 10.
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.0]), "b": torch.arange(12.0)}
    mask = ratios.balanced_allocation(scores, 0.25)
    assert mask["a"].tolist() == [1, 0, 1, 0]
    assert mask["b"].tolist() == [0] * 10 + [1, 1]


@pytest.mark.parametrize("name", ["erk", "balanced"])
def test_allocation_keeps_round_density_times_size_per_layer(name):
    torch.manual_seed(0)
    scores = {"conv": torch.rand(16, 3, 3, 3), "fc1": torch.rand(64, 256), "fc2": torch.rand(10, 64)}
    densities = getattr(ratios, name)({layer: s.shape for layer, s in scores.items()}, 0.1)
    mask = masks.from_scores(scores, 0.1, name)
    for layer, layer_scores in scores.items():
        assert int(mask[layer].sum()) == round(densities[layer] * layer_scores.numel()), layer
        assert mask[layer].shape == layer_scores.shape and mask[layer].sum() > 0


@pytest.mark.parametrize("allocation", [ratios.erk_allocation, ratios.balanced_allocation])
def test_allocation_that_empties_a_layer_is_an_error_naming_it(allocation):
    # K = 0.0005 * 1004 = 0.502: far below one weight per layer, so round() empties a layer.
    scores = {"small": torch.ones(2, 2), "big": torch.ones(10, 100)}
    with pytest.raises(MaskError, match="small|big"):
        allocation(scores, 0.0005)


def test_registered_in_the_one_registry():
    assert masks.ALLOCATIONS["erk"] is ratios.erk_allocation
    assert masks.ALLOCATIONS["balanced"] is ratios.balanced_allocation

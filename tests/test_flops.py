"""FLOP accounting: hand-counted MACs per layer, density scaling, and what a run records."""

import pytest
import torch
from test_runs import tiny
from torch import nn

from lotterylab.pruning import flops
from lotterylab.training import results, runs


def test_layer_macs_are_weights_times_positions():
    net = nn.Sequential(nn.Conv1d(1, 4, 5), nn.ReLU(), nn.Identity(),
                        nn.Flatten(), nn.Linear(4 * 36, 10))
    macs = flops.layer_macs(net, (1, 40))
    assert macs == {"0.weight": 4 * 1 * 5 * 36, "4.weight": 4 * 36 * 10}
    image = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(128, 5))
    before = image[1].running_mean.clone()
    assert flops.layer_macs(image, (3, 8, 8)) == {"0.weight": 8 * 3 * 9 * 16, "3.weight": 128 * 5}
    assert torch.equal(image[1].running_mean, before) and image.training


def test_training_flops_scale_with_each_layers_density():
    macs = {"a": 100, "b": 50}
    assert flops.forward_flops(macs, {"a": 0.5}) == 2 * (50 + 50)
    assert flops.training_flops(macs, {"a": 0.5, "b": 0.2}, examples=10, epochs=3) == 3 * 2 * (50 + 10) * 10 * 3


def test_a_run_records_flops_from_its_layer_densities(tmp_path):
    cfg = tiny(schedule={"epochs": 1}, method={"name": "lrr", "prune_fraction": 0.5}, mask={"sparsity": 0.75})
    ds = results.read(runs.run(cfg, tmp_path))
    width, inputs = 64, 40  # tiny(): mlp width 64, depth 1 on MNIST-1D signals of length 40
    macs = {"1.weight": inputs * width, "3.weight": width * 10}
    for stage in range(3):
        density = dict(zip(ds.layer.values, ds.layer_density.values[stage]))
        assert ds.train_flops.values[stage] == pytest.approx(flops.training_flops(macs, density, 1024, 1))
    assert ds.train_flops.values[0] > ds.train_flops.values[1] > ds.train_flops.values[2]
    assert ds.attrs["total_train_flops"] == pytest.approx(ds.train_flops.values.sum())

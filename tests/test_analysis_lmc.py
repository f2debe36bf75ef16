"""Linear mode connectivity (barrier, masks, BatchNorm recomputation) and the analyses end to end on a finished run."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lotterylab import cli
from lotterylab.analysis import lmc, sharpness, signs
from lotterylab.core import config, data, models, paths
from lotterylab.core.config import DataConfig, ModelConfig
from lotterylab.training import runs


def vectors(train_size: int = 256) -> data.Data:
    return data.load(DataConfig(name="synthetic", shape=[16], train_size=train_size, test_size=64), seed=0)


def images() -> data.Data:
    return data.load(DataConfig(name="synthetic", shape=[3, 8, 8], train_size=64, test_size=16), seed=0)


def logistic_regression(seed: int, dataset: data.Data, steps: int) -> nn.Module:
    """A linear classifier trained by full-batch gradient descent from a seeded random init."""
    torch.manual_seed(seed)
    model = nn.Linear(16, dataset.num_classes)
    nn.init.normal_(model.weight, std=3.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(dataset.train.x), dataset.train.y).backward()
        optimizer.step()
    return model


def test_barrier_by_hand():
    alphas = [0.0, 0.5, 1.0]
    # chord at 0.5 is 2.0: barrier = 3.0 - 2.0; a path under its chord has barrier 0 (attained at the endpoints).
    assert lmc.barrier([1.0, 3.0, 3.0], alphas) == pytest.approx(1.0)
    assert lmc.barrier([[1.0, 1.5, 3.0], [2.0, 1.0, 2.0]], alphas).tolist() == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="alphas"):
        lmc.barrier([1.0, 2.0], [0.0, 0.5])


def test_identical_endpoints_give_a_flat_path_and_zero_barrier():
    dataset = vectors()
    model = logistic_regression(0, dataset, steps=20)
    state = copy.deepcopy(model.state_dict())
    result = lmc.interpolate(model, state, state, dataset)
    assert result.sizes["alpha"] == 11
    assert np.ptp(result.train_loss.values) < 1e-6
    assert float(result.train_barrier) == pytest.approx(0.0, abs=1e-6)
    assert float(result.test_barrier) == pytest.approx(0.0, abs=1e-6)


def test_convex_logistic_regression_has_no_barrier_between_two_different_solutions():
    dataset = vectors()
    a = logistic_regression(0, dataset, steps=30).state_dict()
    b = logistic_regression(1, dataset, steps=30).state_dict()
    result = lmc.interpolate(nn.Linear(16, dataset.num_classes), a, b, dataset, alphas=np.linspace(0, 1, 21))
    chord = (1 - result.alpha) * result.train_loss[0] + result.alpha * result.train_loss[-1]
    assert float((chord - result.train_loss).max()) > 1e-2  # the endpoints differ: the path is strictly below
    assert float(result.train_barrier) <= 1e-5
    assert float(result.test_barrier) <= 1e-5


def test_a_weight_pruned_in_both_endpoints_stays_zero():
    mask_a = {"weight": torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])}
    mask_b = {"weight": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])}
    assert torch.equal(lmc.union_mask(mask_a, mask_b)["weight"], torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    assert lmc.union_mask(mask_a, None) == {}  # a dense endpoint leaves every weight free
    dataset = data.Data(*(data.TensorSplit(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(2)), 2, (3,),
                        torch.empty(0, dtype=torch.int64))
    model = nn.Linear(3, 2)
    a = {"weight": torch.full((2, 3), 2.0), "bias": torch.zeros(2)}
    b = {"weight": torch.full((2, 3), -1.0), "bias": torch.ones(2)}
    lmc.interpolate(model, a, b, dataset, alphas=[0.0, 1.0], mask_a=mask_a, mask_b=mask_b)  # leaves theta(1) loaded
    assert torch.equal(model.weight.detach(), torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0]]))
    assert torch.equal(lmc.interpolated_state(a, b, 0.25)["weight"], torch.full((2, 3), 1.25))


def resnet_endpoints(dataset: data.Data) -> tuple[nn.Module, dict, dict]:
    """Two differently initialized tiny ResNet20s whose running stats come from a few training-mode passes."""
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = models.build(ModelConfig(name="resnet20", width_mult=0.25), dataset.input_shape, dataset.num_classes)
        model.train()
        with torch.no_grad():
            for x, _ in dataset.train.batches(16):
                model(x)
        states.append(copy.deepcopy(model.state_dict()))
    return model, states[0], states[1]


def test_batchnorm_recomputation_changes_the_interpolated_resnet_loss():
    dataset = images()
    model, a, b = resnet_endpoints(dataset)
    kept = lmc.interpolate(model, a, b, dataset, alphas=[0.0, 0.5, 1.0], bn_batches=0)
    recomputed = lmc.interpolate(model, a, b, dataset, alphas=[0.0, 0.5, 1.0], bn_batches=2, batch_size=16)
    assert kept.attrs["bn_recompute"] == 0 and recomputed.attrs["bn_recompute"] == 1
    assert abs(float(kept.train_loss.sel(alpha=0.5) - recomputed.train_loss.sel(alpha=0.5))) > 1e-3


def test_recomputed_running_stats_are_the_average_of_the_batch_statistics():
    dataset = images()
    model, a, _ = resnet_endpoints(dataset)
    model.load_state_dict(a)
    lmc.recompute_batchnorm(model, dataset, batches=2, batch_size=16)
    generator = torch.Generator().manual_seed(lmc.BN_SEED)
    first = [x for _, (x, _) in zip(range(2), dataset.train.batches(16, generator))]
    with torch.no_grad():
        means = [model.conv(x).mean(dim=(0, 2, 3)) for x in first]  # the first BN's input is the stem conv's output
    torch.testing.assert_close(model.bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    assert model.bn.momentum == 0.1  # restored after the cumulative average


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = config.from_dict({
        "data": {"name": "synthetic", "shape": [3, 8, 8], "train_size": 64, "test_size": 32, "batch_size": 32},
        "model": {"name": "resnet20", "width_mult": 0.25},
        "optimizer": {"lr": 0.05},
        "schedule": {"epochs": 1},
        "method": {"name": "lrr", "prune_fraction": 0.5},
        "mask": {"sparsity": 0.75},
        "train": {"progress": False, "device": "cpu"},
    })
    return runs.run(cfg, tmp_path_factory.mktemp("runs"))


def test_convenience_functions_on_a_finished_run(finished_run):
    result = lmc.between_stages(finished_run, bn_batches=1)
    assert result.sizes == {"pair": 2, "alpha": 11}
    assert result.stage_a.values.tolist() == [0, 1] and result.stage_b.values.tolist() == [1, 2]
    assert np.all(result.train_barrier.values >= 0) and result.attrs["run_hash"] == finished_run.name

    top = sharpness.top_eigenvalue(finished_run, stage=-1, batches=1, batch_size=32, max_iter=30)
    assert int(top.stage) == 2 and np.isfinite(float(top.eigenvalue)) and top.attrs["batchnorm"] == "eval"

    flips = signs.between_stages(finished_run)
    assert flips.sizes["pair"] == 2 and flips.sizes["layer"] == len(flips.layer)
    # LRR prunes half of the remaining weights per level: level 1 keeps 1/2 of the dense weights, level 2 keeps 1/4.
    assert flips.global_jaccard.values.tolist() == pytest.approx([0.5, 0.5], abs=0.01)
    same = signs.against_reference(finished_run, finished_run)
    assert float(same.global_overlap) == 1.0 and float(same.global_jaccard) == 1.0


def test_cli_writes_each_analysis_next_to_the_run(finished_run, capsys):
    for argv, name in ((["lmc", "--pair", "1:2", "--bn-batches", "1"], "lmc"),
                       (["sharpness", "--batches", "1", "--max-iter", "5"], "sharpness"),
                       (["signs"], "signs")):
        assert cli.main(["analyze", *argv, str(finished_run)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1] == str(paths.analysis(finished_run, name))
        assert paths.analysis(finished_run, name).is_file()
    import xarray as xr

    with xr.open_dataset(paths.analysis(finished_run, "lmc"), engine="h5netcdf") as written:
        assert written.stage_a.values.tolist() == [1] and written.attrs["bn_batches"] == 1


def test_cli_bad_input_is_one_line_and_exit_2(finished_run, tmp_path, capsys):
    assert cli.main(["analyze", "lmc", str(tmp_path)]) == 2
    expected = f"lotterylab: error: {paths.config(tmp_path)}: no such file (not a run directory?)"
    assert capsys.readouterr().err.strip() == expected
    assert cli.main(["analyze", "sharpness", "--stage", "7", str(finished_run)]) == 2
    error = capsys.readouterr().err.strip()
    assert "stage 7" in error and len(error.splitlines()) == 1

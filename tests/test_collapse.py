"""Layer collapse: a prune that leaves a layer below `train.collapse_threshold` is flagged in results.nc and named in
one warning line; grids.collect carries the flags into a study's dataset."""

import numpy as np

from lotterylab.core import config
from lotterylab.studies import grids
from lotterylab.training import results, runs


def erk_config(threshold: float) -> config.Config:
    # ERK at 98% on MLP 40-64-10: density ∝ (fan_in + fan_out) / (fan_in * fan_out) gives the 2560-weight first layer
    # ~1.5% and the 640-weight last layer ~4.2% (tests/test_masks checks ERK itself).
    return config.from_dict({
        "data": {"name": "mnist1d", "batch_size": 64, "train_size": 128, "test_size": 64},
        "model": {"name": "mlp", "width": 64, "depth": 1},
        "mask": {"sparsity": 0.98, "criterion": "random", "allocation": "erk"},
        "method": {"name": "pai", "cycles": 1},
        "schedule": {"epochs": 1},
        "train": {"progress": False, "collapse_threshold": threshold},
    })


def test_collapsed_layer_is_flagged_and_named_once(tmp_path, capfd):
    run = runs.run(erk_config(0.02), tmp_path)
    warned = [line for line in capfd.readouterr().err.splitlines() if "layer collapse" in line]
    data = results.read(run)
    density = data.layer_density.values[0]
    assert density[0] < 0.02 < density[1]  # the setting does what the test assumes
    np.testing.assert_array_equal(data.collapsed.values[0], density < 0.02)
    assert data.attrs["collapse_threshold"] == 0.02
    assert len(warned) == 1 and str(data.layer.values[0]) in warned[0] and str(data.layer.values[1]) not in warned[0]


def test_threshold_is_not_part_of_the_run_hash():
    assert erk_config(0.02).run_hash() == erk_config(0.01).run_hash()


def test_no_flag_and_no_warning_above_threshold(tmp_path, capfd):
    run = runs.run(erk_config(0.001), tmp_path)
    assert "layer collapse" not in capfd.readouterr().err
    assert not results.read(run).collapsed.values.any()


def test_collect_carries_the_flags(tmp_path):
    base = erk_config(0.02).model_dump()
    points = grids.grid(base, {"seed": grids.values("seed", [0, 1])})
    grids.run_all(points, tmp_path)
    collected = grids.collect(points, tmp_path)
    assert collected.collapsed.dims == ("seed", "cycle", "layer")
    assert collected.collapsed.sel(layer=collected.layer.values[0]).all()


def test_combinations_not_run_are_never_flagged(tmp_path):
    base = erk_config(0.02).model_dump()
    points = (grids.grid(base, {"allocation": {"erk": {}}, "sparsity": {0.98: {}}, "seed": grids.values("seed", [0])})
              + grids.grid({**base, "mask": {**base["mask"], "sparsity": 0.0}},
                           {"allocation": {"dense": {}}, "sparsity": {0.0: {}}, "seed": grids.values("seed", [0])}))
    grids.run_all(points, tmp_path)
    collected = grids.collect(points, tmp_path)
    assert collected.collapsed.dtype == bool
    assert not bool(collected.collapsed.sel(allocation="erk", sparsity=0.0).any())  # not run: NaN before the fix
    assert bool(collected.collapsed.sel(allocation="erk", sparsity=0.98).any())

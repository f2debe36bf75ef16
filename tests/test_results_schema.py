"""Self-describing results: quantities recorded by name, a schema version, and runs of older versions still read."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runs import tiny

from lotterylab.core import paths
from lotterylab.studies import grids
from lotterylab.training import checkpoint, results, runs

KEPT = Path(__file__).parent / "data" / "runs"  # a run directory written by lotterylab at results schema 2
KEPT_BASE = {"data": {"name": "mnist1d", "batch_size": 32, "train_size": 64, "test_size": 32},
             "model": {"name": "mlp", "width": 4, "depth": 1}, "schedule": {"epochs": 1, "warmup_epochs": 0.5},
             "method": {"name": "pai", "cycles": 2}, "mask": {"sparsity": 0.5}, "train": {"progress": False}}


class WeightNorm:
    """A callback with its own quantity: the L2 norm of the weights, recorded in odd epochs only."""

    def on_epoch_end(self, trainer, stage, epoch, metrics):
        if epoch % 2 == 1:
            trainer.record("weight_norm", sum(float(p.detach().norm()) ** 2 for p in trainer.params.values()) ** 0.5)


def test_a_callback_records_its_own_quantity_by_name(tmp_path):
    run = runs.run(tiny(schedule={"epochs": 2}), tmp_path, callbacks=[WeightNorm()])
    found = results.read(run)
    assert found.attrs["results_schema"] == results.RESULTS_SCHEMA == 3
    assert found.weight_norm.dims == ("stage", "epoch")
    norms = found.weight_norm.values  # (stage, epoch): recorded in epoch index 1 only
    assert np.isnan(norms[:, 0]).all() and (norms[:, 1] > 0).all()
    points = grids.grid(tiny(schedule={"epochs": 2}).model_dump(), {"seed": grids.values("seed", [0])})
    collected = grids.collect(points, tmp_path)
    assert "weight_norm" in collected and "weight_norm" in grids.cycle_end(collected)


def test_a_resume_from_a_checkpoint_lacking_a_metric_fills_it_with_nan(tmp_path):
    cfg = tiny(schedule={"epochs": 2})
    reference = runs.run(cfg, tmp_path / "reference")
    run = paths.run_dir(tmp_path / "older", cfg.run_hash())
    shutil.copytree(reference, run)
    for path in [paths.done_marker(run), paths.results(run), *paths.stage_ends(run)[1:]]:
        path.unlink()
    for _, path in checkpoint.epoch_checkpoints(run):
        path.unlink()
    first = checkpoint.load(paths.stage_end(run, 0), run)  # what a version without `test_loss` would have held
    del first["history"]["test_loss"]
    checkpoint.save(first, paths.checkpoint(run, 0, 2), run.name)
    runs.run(cfg, tmp_path / "older")
    loss = results.read(run).test_loss.values
    assert np.isnan(loss[0]).all() and not np.isnan(loss[1, -1])
    assert np.array_equal(results.read(run).train_loss.values, results.read(reference).train_loss.values)


def test_the_kept_run_of_schema_2_is_read_and_collected(monkeypatch):
    points = grids.grid(KEPT_BASE, {"seed": grids.values("seed", [0])})
    run = grids.run_dir(points[0], KEPT)
    assert results.is_complete(run), f"{run}: the kept run no longer verifies (its format or hash changed)"
    found = results.read(run)
    assert found.attrs["results_schema"] == 2 and set(results.METRICS) <= set(found.data_vars)
    monkeypatch.setattr(results, "METRICS", (*results.METRICS, "a_metric_added_later"))
    collected = grids.collect(points, KEPT)
    assert np.isnan(collected.a_metric_added_later).all()
    assert float(collected.test_acc.isel(epoch=-1).max()) == pytest.approx(float(found.test_acc.max()))

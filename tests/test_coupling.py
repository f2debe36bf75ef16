"""Coupled runs on MNIST-1D: an LRR run's mask with each kind of init, YAML sources, and clear errors."""

import pytest
import torch
import yaml
from test_runs import tiny

from lotterylab.core import config, paths
from lotterylab.core.config import ConfigError
from lotterylab.training import checkpoint, results, runs


def lrr() -> config.Config:
    return tiny(method={"name": "lrr", "rewind_epoch": 1, "prune_fraction": 0.5}, mask={"sparsity": 0.75},
                schedule={"epochs": 2})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return runs.run(lrr(), tmp_path_factory.mktemp("source"))


def coupled(source_path, **method) -> config.Config:
    return tiny(method={"name": "coupled", "source": str(source_path), "cycles": 2, **method}, mask={"sparsity": 0.0},
                schedule={"epochs": 2})


def started_from(run_dir) -> dict:
    return checkpoint.load(paths.init_weights(run_dir))


@pytest.fixture(scope="module")
def source_states(source):
    last = checkpoint.load(paths.stage_end(source, 2))
    return {"mask": last["mask"], "warmup": last["snapshots"]["warmup"], "init": last["snapshots"]["init"],
            "level1": checkpoint.load(paths.stage_end(source, 1))["model"]}


@pytest.mark.parametrize("init", ["random", "warmup", "level", "signs", "perturbed_signs"])
def test_each_init_trains_the_source_mask(tmp_path, source, source_states, init):
    run_dir = runs.run(coupled(source, init=init, init_level=1), tmp_path)
    ds = results.read(run_dir)
    assert ds.density.isel(epoch=-1).values.tolist() == pytest.approx([0.25, 0.25], abs=1e-3)
    mask = checkpoint.load(paths.stage_end(run_dir, 1))["mask"]
    assert all(torch.equal(mask[k], source_states["mask"][k]) for k in mask)
    start = started_from(run_dir)
    warmup = source_states["warmup"]
    for name, m in mask.items():
        kept = m > 0
        assert torch.all(start[name][~kept] == 0), name
        w, s = warmup[name][kept], start[name][kept]
        if init == "warmup":
            assert torch.equal(s, w)
        elif init == "level":
            assert torch.equal(s, source_states["level1"][name][kept])
        elif init == "signs":
            assert torch.equal(torch.sign(s), torch.sign(w)) and not torch.allclose(s.abs(), w.abs())
        elif init == "perturbed_signs":
            assert torch.equal(s.abs(), w.abs())
            assert int((torch.sign(s) != torch.sign(w)).sum()) == round(0.2 * int(kept.sum()))
        else:  # a fresh draw: neither the source's init nor its warmup point
            assert not torch.allclose(s, source_states["init"][name][kept])
            assert not torch.allclose(s, w)
    if init in ("warmup", "perturbed_signs"):  # biases come with the init as well
        assert all(torch.equal(start[k], warmup[k]) for k in start if k.endswith("bias"))


def test_a_yaml_source_is_run_first_under_the_same_root(tmp_path):
    source_file = tmp_path / "lrr.yaml"
    source_file.write_text(yaml.safe_dump(lrr().model_dump(mode="json")))
    run_dir = runs.run(coupled(source_file, init="warmup"), tmp_path / "runs")
    assert results.is_complete(tmp_path / "runs" / lrr().run_hash())
    assert results.read(run_dir).density.values[0, 0] == pytest.approx(0.25, abs=1e-3)


def test_source_errors_name_the_field(tmp_path, source):
    with pytest.raises(ConfigError, match="method.source: .* is not a finished run"):
        runs.run(coupled(tmp_path / "nowhere"), tmp_path)
    wider = tiny(method={"name": "coupled", "source": str(source)}, model={"width": 32}, mask={"sparsity": 0.0})
    with pytest.raises(ConfigError, match="method.source: .* different model section"):
        runs.run(wider, tmp_path)
    with pytest.raises(ConfigError, match="stage 7 does not exist"):
        runs.run(coupled(source, source_level=7), tmp_path)
    with pytest.raises(ConfigError, match="stage 0 of .* trained dense"):
        runs.run(coupled(source, source_level=0), tmp_path)


def test_building_a_coupled_run_never_trains_its_source(tmp_path):
    """Sources are resolved when a run is planned (runs.run, run_many), not while it is built: a pack holding locks
    never trains a whole other run inside a RunDriver."""
    source_file = tmp_path / "source.yaml"
    source_file.write_text(lrr().to_yaml())
    cfg = coupled(source_file)
    with pytest.raises(ConfigError, match="is a config, not a run: plan the coupled run first"):
        runs.RunDriver(cfg, tmp_path / "runs", paths.run_dir(tmp_path / "runs", cfg.run_hash()))
    assert not paths.run_dir(tmp_path / "runs", lrr().run_hash()).exists()
    planned = runs.plan_coupled(cfg, tmp_path / "runs")
    assert results.is_complete(paths.run_dir(tmp_path / "runs", lrr().run_hash()))
    assert planned.method.source == str(paths.run_dir(tmp_path / "runs", lrr().run_hash()))
    assert planned.run_hash() == cfg.run_hash()

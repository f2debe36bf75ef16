"""Studies: literal-only parameters, grids and collection of tiny real runs, the CLI's one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from lotterylab.core import config
from lotterylab.studies import catalog as studies
from lotterylab.studies import grids
from lotterylab.studies.catalog import StudyError
from lotterylab.training import results

REPO = studies.ROOT
TINY = {
    "data": {"name": "mnist1d", "batch_size": 64, "train_size": 256, "test_size": 128},
    "model": {"name": "mlp", "width": 16, "depth": 1},
    "schedule": {"epochs": 2, "warmup_epochs": 0.5},
    "train": {"progress": False},
}


def _defaults():
    return studies.schema(studies.get("label_noise"))


@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_every_scale_file_validates_and_sets_every_parameter(name):
    study = studies.get(name)
    assert set(studies.notebook_parameters(study.notebook)) == set(studies.SCALE_MODE)
    known = set(studies.schema(study))
    for scale in studies.SCALES:
        parameters = studies.parameters(name, scale)
        assert set(parameters.values) == known and parameters.label == scale
        assert len(parameters.seeds) >= (3 if scale != "smoke" else 1)


def test_overrides_replace_values_and_unknown_ones_are_one_line():
    assert studies.parameters("sculpt", "cpu", overrides={"seeds": [7]}).seeds == [7]
    with pytest.raises(StudyError, match="overrides: unknown parameter 'bogus'"):
        studies.parameters("sculpt", "cpu", overrides={"bogus": 1})


def test_a_params_file_missing_a_parameter_is_one_line_naming_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: base/cpu.yaml\nstarts: [0.5]\n")
    with pytest.raises(StudyError, match="missing parameter 'cycles'") as error:
        studies.parameters("sculpt", params_file=path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("text, match", [
    ("bogus: 1\n", "unknown parameter 'bogus'"),
    ("seeds: 2024-01-01\n", "seeds: date is not a plain literal"),
    ("base: {when: 2024-01-01}\n", "base: dict is not a plain literal"),
    ("seeds: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("- seeds\n", "expected a mapping"),
    ("output_dir: /tmp\n", "output_dir is set by `lotterylab study`"),
    ("{1: 2}\n", "parameter name 1 is not a plain identifier"),
])
def test_bad_params_file_is_one_line_naming_file_and_parameter(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match=match) as error:
        studies.load_params(path, _defaults())
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(StudyError, match="no such params file"):
        studies.load_params(tmp_path / "absent.yaml", _defaults())


def _notebook(tmp_path, source: str):
    path = tmp_path / "study.ipynb"
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": source, "outputs": [],
            "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.mark.parametrize("source, match", [
    ("seeds = list(range(3))\n", "parameter seeds: not a literal"),
    ("import os\n", "parameters line 1: only `name = literal`"),
    ("a = b = 1\n", "only `name = literal`"),
    ("shape = (1, 2)\n", "shape: tuple is not a plain literal"),
    ("x = 1 +\n", "not valid Python"),
])
def test_parameters_cell_must_hold_only_plain_literals(tmp_path, source, match):
    with pytest.raises(StudyError, match=match):
        studies.notebook_parameters(_notebook(tmp_path, source))


def test_parameters_cell_defaults_are_read(tmp_path):
    source = "# comment\nseeds = [0, 1]\nbase = {'data': {'name': 'mnist1d'}, 'x': None}\nlr = -0.5\n"
    assert studies.notebook_parameters(_notebook(tmp_path, source)) == {
        "seeds": [0, 1], "base": {"data": {"name": "mnist1d"}, "x": None}, "lr": -0.5}


def test_grid_is_validated_before_anything_runs():
    with pytest.raises(config.ConfigError, match=r"study \[sparsity=0.5, seed=0\]: schedule.epochs"):
        grids.grid({**TINY, "schedule": {"epochs": 0}}, {"sparsity": grids.sparsities([0.5]),
                                                         "seed": grids.values("seed", [0])})


def test_sparsities_axis_makes_zero_dense():
    points = grids.grid(TINY, {"sparsity": grids.sparsities([0.0, 0.9])})
    assert [(p.config.method.name, p.config.mask.sparsity) for p in points] == [("dense", 0.0), ("pai", 0.9)]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Dense and 90% random-sparse for 2 cycles over 2 seeds, plus one lrr run of 3 levels with other epochs."""
    runs_root = tmp_path_factory.mktemp("runs")
    cyclic = {**TINY, "method": {"cycles": 2}}
    points = grids.grid(cyclic, {"sparsity": grids.sparsities([0.0, 0.9]), "method": {"cyclic": {}},
                                 "seed": grids.values("seed", [0, 1])})
    points += grids.grid({**TINY, "schedule": {"epochs": 3, "warmup_epochs": 0.5}},
                         {"sparsity": {0.9: {"method.name": "lrr", "mask.sparsity": 0.9, "method.prune_fraction": 0.7}},
                          "method": {"lrr": {}}, "seed": grids.values("seed", [0])})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny runs thrash with more threads on a shared 2-core machine
    try:
        grids.run_all(points, runs_root)
    finally:
        torch.set_num_threads(threads)
    return points, runs_root


def test_collect_stacks_runs_along_named_dims(tiny_study, tmp_path):
    points, runs_root = tiny_study
    dataset = grids.collect(points, runs_root, {"study": "tiny"})
    assert dict(dataset.sizes) == {"sparsity": 2, "method": 2, "seed": 2, "cycle": 3, "epoch": 3, "layer": 2}
    for name in results.METRICS:
        assert dataset[name].dims == ("sparsity", "method", "seed", "cycle", "epoch"), name
    assert dataset.layer_density.dims == ("sparsity", "method", "seed", "cycle", "layer")
    assert dataset.attrs["study"] == "tiny" and len(json.loads(dataset.attrs["runs"])) == len(points)
    run = results.read(runs_root / points[1].config.run_hash())  # sparsity 0.0, seed 1
    stacked = dataset.test_acc.sel({"sparsity": 0.0, "method": "cyclic", "seed": 1})
    assert stacked.isel(cycle=slice(0, 2), epoch=slice(0, 2)).values.tolist() == run.test_acc.values.tolist()
    assert bool(dataset.test_acc.sel({"method": "lrr", "seed": 1}).isnull().all())  # never run: NaN
    assert bool(dataset.test_acc.sel({"method": "cyclic"}).sel(cycle=2).isnull().all())  # 2 cycles only
    path = grids.save(dataset, tmp_path)
    assert path.name == "results.nc" and path.is_file()


def test_cycle_end_and_final_read_each_runs_last_epoch_and_cycle(tiny_study):
    points, runs_root = tiny_study
    dataset = grids.collect(points, runs_root)
    ends = grids.cycle_end(dataset)
    assert ends.test_acc.dims == ("sparsity", "method", "seed", "cycle")
    lrr = results.read(runs_root / points[-1].config.run_hash())
    for stage in range(3):
        expected = float(lrr.test_acc.isel(epoch=-1).sel(stage=stage))
        assert float(ends.test_acc.sel({"sparsity": 0.9, "method": "lrr", "seed": 0, "cycle": stage})) == expected
    final = grids.final(ends.test_acc)
    assert float(final.sel({"sparsity": 0.9, "method": "lrr", "seed": 0})) == float(lrr.test_acc[-1, -1])
    sparse = results.read(runs_root / points[2].config.run_hash())  # sparsity 0.9, seed 0, 2 cycles of 2 epochs
    assert float(final.sel({"sparsity": 0.9, "method": "cyclic", "seed": 0})) == float(sparse.test_acc[-1, -1])


def test_collect_refuses_unfinished_runs(tmp_path):
    points = grids.grid(TINY, {"seed": grids.values("seed", [0])})
    with pytest.raises(ValueError, match="1 runs are not finished"):
        grids.collect(points, tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lotterylab.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_lists_studies_and_refuses_bad_input_in_one_line(tmp_path):
    listed = _cli("studies")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(studies.STUDIES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus: 1\n")
    for args, match in ((["study", "nope"], "unknown study 'nope'"),
                        (["study", "label_noise", "--scale", "huge"], "unknown scale 'huge'"),
                        (["study", "label_noise", "--params", str(bad)], "unknown parameter 'bogus'")):
        result = _cli(*args, "--reports", str(tmp_path / "reports"))
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and match in result.stderr, result.stderr
    assert not (tmp_path / "reports").exists()

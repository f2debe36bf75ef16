"""Every study notebook executed at the smoke scale through `run_study`: its results.nc and its offline report."""

import json
import os
import re

import pytest

from lotterylab.studies import catalog as studies
from lotterylab.studies import claims, grids, reports, runner
from lotterylab.training import results

EXPECTED_DIMS = {  # a discovered study missing here is still run and checked, with its dims and figures unpinned
    "cyclic_training": {"method", "schedule", "seed", "cycle", "epoch", "layer"},
    "layerwise_ratios": {"allocation", "sparsity", "seed", "cycle", "epoch", "layer"},
    "label_noise": {"noise", "sparsity", "seed", "cycle", "epoch", "layer"},
    "sculpt": {"method", "target", "seed", "cycle", "epoch", "layer"},
    "pruning_criteria": {"criterion", "target", "seed", "cycle", "epoch", "layer"},
    "pai_cyclic": {"criterion", "sparsity", "seed", "cycle", "epoch", "layer"},
    "coupling": {"method", "target", "seed", "cycle", "epoch", "layer"},
    "sign_sufficiency": {"variant", "sparsity", "seed", "cycle", "epoch", "layer"},
    "lmc_barriers": {"method", "seed", "cycle", "epoch", "layer", "cycle_pair", "alpha"},
    "sharpness": {"method", "schedule", "seed", "cycle", "epoch", "layer"},
}
FIGURES = {"cyclic_training": 3, "layerwise_ratios": 3, "label_noise": 3, "sculpt": 4, "pruning_criteria": 3,
           "pai_cyclic": 4, "coupling": 1, "sign_sufficiency": 3, "lmc_barriers": 3, "sharpness": 2}
ANALYSES = {  # analysis results merged into the study's Dataset, with their dims
    "sign_sufficiency": {"global_sign_overlap": ("variant", "sparsity", "seed"), "lrr_test_acc": ("seed", "sparsity"),
                         "sign_overlap": ("variant", "sparsity", "seed", "layer")},
    "lmc_barriers": {"lmc_train_loss": ("method", "seed", "cycle_pair", "alpha"),
                     "lmc_test_loss": ("method", "seed", "cycle_pair", "alpha"),
                     "train_barrier": ("method", "seed", "cycle_pair"),
                     "test_barrier": ("method", "seed", "cycle_pair")},
    "sharpness": {"eigenvalue": ("method", "schedule", "seed", "cycle")},
    "label_noise": {"noisy_train_acc": ("noise", "sparsity", "seed"), "clean_train_acc": ("noise", "sparsity", "seed")},
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Shared run root; one thread per process, since tiny runs on a shared 2-core machine thrash with more."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield tmp_path_factory.mktemp("reports"), tmp_path_factory.mktemp("runs")
    if previous is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = previous


def test_every_pinned_expectation_names_a_discovered_study():
    assert set(EXPECTED_DIMS) | set(FIGURES) | set(ANALYSES) <= set(studies.STUDIES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_smoke_scale_writes_results_and_an_offline_report(roots, name):
    import xarray as xr

    reports_root, runs_root = roots
    html = runner.run_study(name, scale="smoke", reports_root=reports_root, runs_root=runs_root)
    out = reports_root / name / "smoke"
    assert html == out / "report.html" and (out / "nb" / f"{name}.ipynb").is_file()

    with xr.open_dataset(out / "results.nc", engine="h5netcdf") as dataset:
        assert set(dataset.dims) == EXPECTED_DIMS.get(name, set(dataset.dims))
        assert {"cycle", "epoch"} <= set(dataset.dims)
        for variable in (*results.METRICS, "layer_density", "collapsed", "epochs_per_cycle"):
            assert variable in dataset, variable
        assert bool(dataset.test_acc.notnull().any())
        for variable, dims in ANALYSES.get(name, {}).items():
            assert set(dataset[variable].dims) == set(dims) and bool(dataset[variable].notnull().any()), variable
        assert dataset.attrs["study"] == name and dataset.attrs["git_revision"]

    text = html.read_text()
    bokehjs = reports.bokehjs()
    assert text.count(bokehjs) == 1  # inlined once per report, not once per plot
    rest = text.replace(bokehjs, "")  # BokehJS itself names a MathJax CDN it would load for TeX labels; none are used
    assert not re.search(r"<script[^>]*\bsrc\s*=", rest), "every script must be inline"
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", rest), "no remote stylesheets"
    assert "cdn." not in rest and "require.js" not in rest and "panel.min.js" not in text
    figures = FIGURES.get(name, rest.count("Bokeh.safely"))
    assert rest.count("Bokeh.safely") == figures >= 1
    assert "from lotterylab import" not in text  # code cells are hidden
    assert rest.count("git ") >= figures  # every figure has a caption with the revision
    assert len(text) < 2_500_000
    assert text.index("What the data say") < text.index("Setup") < text.index("Bokeh.safely")  # report order

    document = json.loads((out / claims.CLAIMS_FILE).read_text())
    assert document["study"] == name and document["scale"] == "smoke" and document["claims"]
    for claim in document["claims"]:
        assert claim["verdict"] in claims.VERDICTS and claim["n_seeds"] < claims.MIN_SEEDS  # smoke: 1 or 2 seeds
        assert claim["verdict"] == "inconclusive" and claim["id"] in text


@pytest.mark.slow
def test_claims_json_agrees_with_results_nc_at_the_smoke_scale(roots, tmp_path):
    import xarray as xr

    params = tmp_path / "three_seeds.yaml"
    params.write_text(f"extends: {studies.get('sculpt').params_file('smoke')}\nseeds: [0, 1, 2]\n")
    html = runner.run_study("sculpt", params=params, reports_root=roots[0], runs_root=roots[1])
    document = json.loads((html.parent / claims.CLAIMS_FILE).read_text())
    with xr.open_dataset(html.parent / "results.nc", engine="h5netcdf") as dataset:
        dataset = dataset.load()
    reached = grids.at_stage(grids.cycle_end(dataset).test_acc, dataset.target_stage)
    start = max(studies.parameters("sculpt", params_file=params).starts)
    found = {claim["id"]: claim for claim in document["claims"]}
    for target in dataset.target.values:
        expected = claims.evaluate(claims.beats("x", "", "A", "B", "test accuracy (%)"),
                                   100 * reached.sel({"method": f"sculpt_{start:g}", "target": target}),
                                   100 * reached.sel({"method": "pai", "target": target}))
        claim = found[f"sculpt_beats_pai_{target:g}"]
        assert claim["n_seeds"] == 3 and claim["verdict"] == expected.verdict
        assert claim["difference"]["mean"] == pytest.approx(expected.difference.mean, abs=1e-5)
        assert claim["difference"]["ci95"] == pytest.approx([expected.difference.low, expected.difference.high],
                                                           abs=1e-5)
        means = [value["mean"] for value in claim["values"].values()]
        assert means == pytest.approx([expected.values["A"].mean, expected.values["B"].mean], abs=1e-5)


def test_a_failing_cell_is_one_line_naming_the_study_and_the_error(roots, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    def fail(*args, **kwargs):
        message = "study [seed=0]: schedule.epochs: must be > 0\nmore"
        raise PapermillExecutionError(3, 4, "source", "ConfigError", message, [])

    monkeypatch.setattr(papermill, "execute_notebook", fail)
    with pytest.raises(studies.StudyError, match=r"^label_noise \(.*smoke.yaml\): ConfigError: .*schedule.epochs: "
                                                 r"must be > 0 \(see .*label_noise.ipynb\)$") as error:
        runner.run_study("label_noise", scale="smoke", reports_root=roots[0], runs_root=roots[1])
    assert "\n" not in str(error.value)

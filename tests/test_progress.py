"""A study's progress and bookkeeping: the bar over run directories (shown where someone watches, never under
papermill), the summary line in the log rather than the output, and executed notebooks signed as trusted."""

import logging
import sys
import types

import pytest
from test_locks import TINY

from lotterylab.studies import grids, reports
from lotterylab.training import progress

SHARED = {"target": {0.8: {}, 0.9: {}}}  # two points, one run: a SCULPT run serves every target


def test_summary_counts_run_directories_and_goes_to_the_log_not_the_output(tmp_path, capsys, caplog):
    points = grids.grid(TINY, {"seed": grids.values("seed", [0, 1]), **SHARED})
    caplog.set_level(logging.INFO, logger="lotterylab")
    grids.run_all(points, tmp_path, show_progress=False)
    grids.run_all(points[:2], tmp_path, show_progress=False)
    summaries = [record.getMessage() for record in caplog.records if record.name == "lotterylab.studies.grids"]
    assert summaries[0].startswith("2 runs for 4 points: 2 trained, 0 reused, ")
    assert summaries[1].startswith("1 runs for 2 points: 0 trained, 1 reused, ")
    assert capsys.readouterr() == ("", "")  # nothing on the page of a notebook that calls run_all


def test_bar_counts_runs_and_names_the_run_at_its_stage_and_epoch(tmp_path, capsys, monkeypatch):
    cycles = {**TINY, "method": {"name": "pai", "cycles": 2}, "mask": {"sparsity": 0.5}}
    points = grids.grid(cycles, {"seed": grids.values("seed", [0, 1]), **SHARED})
    # outside a notebook: tqdm.auto picks its class once per process, and a test that imported ipykernel earlier
    # would have made it the notebook widget
    import tqdm.std

    monkeypatch.setattr("tqdm.auto.tqdm", tqdm.std.tqdm)
    shown = []
    show = progress.StudyProgress._show
    monkeypatch.setattr(progress.StudyProgress, "_show", lambda self, text: shown.append(text) or show(self, text))
    grids.run_all(points, tmp_path, show_progress=True)
    assert "seed=0 target=0.8,0.9 · stage 1/2, epoch 1/1 · test acc" in shown[1]
    assert "seed=1 target=0.8,0.9 · stage 2/2, epoch 1/1 · test acc" in shown[-1]
    bar = capsys.readouterr().err  # tqdm's text bar outside a notebook
    assert "runs: 100%" in bar and "2/2" in bar


def test_progress_is_watched_in_jupyterlab_and_on_a_terminal_never_under_papermill(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.watched()  # pytest's captured stderr: no bar, log records only
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not progress.watched()  # a kernel papermill started
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/notebooks/sculpt.ipynb")
    assert progress.watched()  # a kernel a Jupyter server started for an open notebook


def test_run_labels_merge_the_coordinates_of_points_sharing_a_run(tmp_path):
    run, other = tmp_path / "a", tmp_path / "b"
    labels = progress.run_labels([(run, {"method": "sculpt", "target": 0.8}),
                                  (run, {"method": "sculpt", "target": 0.9}),
                                  (other, {"method": "pai", "target": 0.8})])
    assert labels == {run: "method=sculpt target=0.8,0.9", other: "method=pai target=0.8"}


def test_trust_signs_the_executed_notebook_for_this_user(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbformat.sign import NotebookNotary

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # the signature store, not the user's
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
        "display_data", {"application/javascript": "console.log(1)"})])])
    path = tmp_path / "executed.ipynb"
    nbformat.write(notebook, path)
    reports.trust(path)
    notary = NotebookNotary()
    try:
        assert notary.check_signature(nbformat.read(path, as_version=4))
        notebook.metadata["edited"] = True  # an edit made outside Jupyter
        assert not notary.check_signature(notebook)
    finally:
        notary.store.close()


def test_a_command_echoes_its_summary_and_leaves_the_process_as_it_was(tmp_path, capsys, caplog):
    from lotterylab import cli

    cli.main(["studies"])  # any command: the echo lasts while it runs
    capsys.readouterr()
    points = grids.grid(TINY, {"seed": grids.values("seed", [0]), **SHARED})
    grids.run_all(points, tmp_path, show_progress=False)
    assert capsys.readouterr().out == ""  # a later run_all in the same process prints nothing

"""Failures during a checkpoint write, repeated resumes across boundaries, and hostile checkpoints and parameters."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import papermill
import pytest
import torch
from papermill.parameterize import parameterize_notebook
from test_runs import Crash, assert_states_equal, final_state, tiny

from lotterylab.core import paths
from lotterylab.studies import catalog as studies
from lotterylab.studies import runner
from lotterylab.studies.catalog import StudyError
from lotterylab.training import checkpoint, results, runs

TESTS = os.path.dirname(__file__)
TARGET = "stage001-epoch0002.pt"  # the checkpoint whose write fails


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return runs.run(tiny(), tmp_path_factory.mktemp("reference"))


def _fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_failed_checkpoint_write_keeps_the_old_ones_and_resume_is_bitwise(reference, tmp_path, monkeypatch, call):
    real = getattr(os, call)

    def failing(*args):
        name = _fd_name(args[0]) if call == "fsync" else os.path.basename(args[0])
        if name.startswith(f".{TARGET}."):
            raise OSError(f"injected {call} failure")
        return real(*args)

    monkeypatch.setattr(os, call, failing)
    with pytest.raises(OSError, match=f"injected {call} failure"):
        runs.run(tiny(), tmp_path)
    monkeypatch.undo()
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    names = sorted(path.name for path in paths.checkpoints(run_dir).iterdir())
    assert TARGET not in names and not any(name.endswith(".tmp") for name in names), names
    assert not results.is_complete(run_dir)
    runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(run_dir, 1))


def test_sigkill_inside_os_replace_leaves_a_temp_file_that_resume_ignores(reference, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from test_runs import tiny
        from lotterylab.training import runs

        real = os.replace
        def replace(source, target):
            if os.path.basename(target) == {TARGET!r}:
                os.kill(os.getpid(), signal.SIGKILL)
            real(source, target)
        os.replace = replace
        runs.run(tiny(), {str(tmp_path)!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    leftovers = [path for path in paths.checkpoints(run_dir).iterdir() if path.name.startswith(f".{TARGET}.")]
    assert len(leftovers) == 1 and not paths.checkpoint(run_dir, 1, 2).exists()
    runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(run_dir, 1))


@pytest.mark.parametrize("method", [{"name": "pai", "cycles": 3}, {"name": "lrr", "cycles": 1}])
def test_three_resumes_across_cycle_and_level_boundaries(tmp_path, method):
    cfg = tiny(method=method, mask={"sparsity": 0.36}, schedule={"epochs": 2})
    reference_dir = runs.run(cfg, tmp_path / "reference")
    stages = len(paths.stage_ends(reference_dir))
    assert stages >= 3
    run_dir = paths.run_dir(tmp_path / "resumed", cfg.run_hash())
    seen = []
    for crash_at in [(1, 0, 0), (1, 1, 3), (2, 0, 0)]:  # a boundary, mid-epoch, the next boundary
        with pytest.raises(KeyboardInterrupt):
            runs.run(cfg, tmp_path / "resumed", callbacks=[Crash(*crash_at)])
        seen.append(checkpoint.load(checkpoint.latest_valid(run_dir)))
    for earlier, later in zip(seen, seen[1:]):  # every resume made progress, so the final check is not vacuous
        assert (earlier["stage"], earlier["epoch"]) < (later["stage"], later["epoch"])
        assert any(not torch.equal(earlier["model"][k], later["model"][k]) for k in earlier["model"])
    runs.run(cfg, tmp_path / "resumed")
    last = stages - 1
    assert_states_equal(final_state(reference_dir, last), final_state(run_dir, last))


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickle_is_refused_and_never_runs(reference, tmp_path):
    marker = tmp_path / "pwned"
    newest = tmp_path / paths.checkpoint(reference, 9, 9).name
    torch.save({"model": _Planted(marker)}, newest)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load(newest)
    assert not marker.exists()

    run_dir = tmp_path / "copy" / reference.name  # the same run elsewhere: its checkpoints are its own
    paths.checkpoints(run_dir).mkdir(parents=True)
    (paths.checkpoints(run_dir) / newest.name).write_bytes(newest.read_bytes())
    (paths.checkpoint(run_dir, 1, 3)).write_bytes(paths.checkpoint(reference, 1, 3).read_bytes())
    with pytest.warns(UserWarning, match=f"skipping unreadable checkpoint .*{newest.name}"):
        newest_valid = checkpoint.latest_valid(run_dir)
    assert paths.checkpoint_position(newest_valid) == (1, 3) and not marker.exists()


def _defaults():
    return studies.notebook_parameters(studies.get("label_noise").notebook)


@pytest.mark.parametrize("name", ["x = 1; import os", "seeds\nimport os", "__import__('os')", "a.b"])
def test_injected_parameter_names_are_refused_before_papermill_runs(tmp_path, monkeypatch, name):
    params = tmp_path / "hostile.yaml"
    params.write_text(f"{json.dumps(name)}: 1\n")
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("papermill ran"))
    with pytest.raises(StudyError, match="is not a plain identifier"):
        runner.run_study("label_noise", params=params, reports_root=tmp_path, runs_root=tmp_path)


def test_code_in_a_string_value_stays_data_when_injected(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    params = tmp_path / "hostile.yaml"
    params.write_text(f"output_name: {json.dumps(payload)}\n")
    values = studies.load_params(params, {"output_name": "x"})
    notebook = parameterize_notebook(papermill.iorw.load_notebook_node(str(studies.get("label_noise").notebook)),
                                     values)
    injected = next(cell for cell in notebook.cells if "injected-parameters" in cell.metadata.get("tags", []))
    namespace = {}
    exec(injected.source, namespace)  # what the kernel would run
    assert namespace["output_name"] == payload and not marker.exists()


def test_config_paths_with_shell_syntax_stay_data(tmp_path, monkeypatch, capsys):
    from lotterylab import cli

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`.yaml"
    assert cli.main(["run", hostile, "--out", str(tmp_path / "runs")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert cli.main(["study", "sculpt", "--params", hostile]) == 2
    assert not marker.exists()
    # The one subprocess the package starts (git, for provenance) takes an argument list, never a shell string.
    sources = "\n".join(path.read_text() for path in paths_of_package())
    assert "shell=True" not in sources and "os.system(" not in sources and "os.popen(" not in sources


def paths_of_package():
    import lotterylab

    return sorted(Path(lotterylab.__file__).parent.glob("*.py"))

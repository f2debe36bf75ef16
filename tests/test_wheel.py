"""The built wheel ships the studies: installed into a fresh environment, `lotterylab study sculpt --scale smoke` runs
from an empty directory and writes reports/ and runs/ there."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import lotterylab
from lotterylab.core import paths

REPO = Path(__file__).resolve().parent.parent


def _source_copy(target: Path) -> Path:
    """The files a clean clone plus this checkout's uncommitted work would hold (not build/, .venv/, runs/...)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files a clean clone holds")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_a_study_from_an_empty_directory(tmp_path):
    source = _source_copy(tmp_path / "source")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(source)])
    wheel, = (tmp_path / "dist").glob("lotterylab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"lotterylab-{lotterylab.__version__}.dist-info/METADATA").decode()
    for shipped in ("notebooks/sculpt.ipynb", "params/sculpt/smoke.yaml", "params/base/smoke.yaml",
                    "params/runs/lrr.yaml", "params/executors/slurm.yaml"):
        assert f"lotterylab/study_files/{shipped}" in names, shipped
    assert f"lotterylab-{lotterylab.__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata and f"Version: {lotterylab.__version__}" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # The dependencies come from this environment; .pth files inside that folder are not processed, so its editable
    # lotterylab stays out of reach and only the wheel's copy can be imported.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", "--no-compile", str(wheel)])  # ignore: never touch the editable install it can see

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "LOTTERYLAB_STUDIES")}
    env["OMP_NUM_THREADS"] = "1"
    # data files of the dependencies (nbconvert's templates) live under this environment's prefix, not the new one's
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    where = _run([str(python), "-c", "import lotterylab; print(lotterylab.__file__)"], cwd=empty, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    assert _run([str(python), "-m", "lotterylab.cli", "--version"], cwd=empty, env=env) == \
        f"lotterylab {lotterylab.__version__}\n"
    report = _run([str(python), "-m", "lotterylab.cli", "study", "sculpt", "--scale", "smoke"], cwd=empty, env=env,
                  timeout=900)
    assert Path(report.strip()) == empty / "reports" / "sculpt" / "smoke" / "report.html"
    assert (empty / "reports" / "sculpt" / "smoke" / "results.nc").is_file()
    assert len([run for run in (empty / "runs").iterdir() if paths.done_marker(run).is_file()]) == 4
    assert sorted(path.name for path in empty.iterdir()) == ["reports", "runs"]
    # the notebook's kernel imported the installed copy too: only notebooks import lotterylab.studies.plots
    assert list((site / "lotterylab" / "studies" / "__pycache__").glob("plots.*.pyc"))
    status = _run([str(python), "-m", "lotterylab.cli", "status", "sculpt", "--scale", "smoke"], cwd=empty, env=env)
    assert status.startswith("sculpt · smoke: 4 runs: 4 finished, 0 running, 0 pending"), status

"""The cases that once ended done-and-wrong or stuck: a lost stage-end under a coupled run, foreign checkpoints,
a truncated config.yaml, an empty lock. Each is now repaired, or refused in one line naming the file."""

import os
import shutil
import time

import pytest
from test_coupling import coupled, lrr
from test_runs import tiny

from lotterylab import cli
from lotterylab.core import config, files, paths
from lotterylab.core.config import ConfigError
from lotterylab.training import locks, results, runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-level LRR run: the source every case below damages a copy of."""
    return runs.run(lrr(), tmp_path_factory.mktemp("finished"))


def _copy(run, root):
    copy = root / run.name
    shutil.copytree(run, copy)
    return copy


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lotterylab: error: "), lines
    return lines[0]


def _config_file(cfg: config.Config, folder):
    path = folder / "config.yaml"
    path.write_text(cfg.to_yaml())
    return str(path)


def test_a_coupled_run_never_reads_a_source_that_lost_a_stage_end(finished, tmp_path):
    source = _copy(finished, tmp_path / "runs")
    paths.stage_end(source, 2).unlink()  # the last level's end: source_level -1 once took level 1 without a word
    assert not results.is_complete(source)
    with pytest.raises(ConfigError, match=f"method.source: {source} is not a finished run"):
        runs.run(coupled(source, source_level=-1), tmp_path / "coupled")
    runs.run(lrr(), tmp_path / "runs")  # the source resumes: its last epoch checkpoint rebuilds the stage end
    assert results.is_complete(source) and results.stage_count(source) == 3
    assert paths.stage_end(source, 2).read_bytes() == paths.stage_end(finished, 2).read_bytes()
    assert runs.run(coupled(source, source_level=-1), tmp_path / "coupled").is_dir()


def test_foreign_checkpoints_are_refused_in_one_line(finished, tmp_path, capsys):
    other = lrr().model_copy(update={"seed": 1})
    run = paths.run_dir(tmp_path, other.run_hash())
    run.mkdir()
    os.symlink(paths.checkpoints(finished), paths.checkpoints(run))  # another config's checkpoints
    assert cli.main(["run", _config_file(other, tmp_path), "--out", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert str(paths.checkpoints(run)) in line and "outside its run directory" in line
    assert not results.is_complete(run) and not paths.results(run).exists()

    copied = paths.run_dir(tmp_path / "copied", other.run_hash())  # the files themselves copied in
    shutil.copytree(paths.checkpoints(finished), paths.checkpoints(copied))
    assert cli.main(["run", _config_file(other, tmp_path), "--out", str(tmp_path / "copied")]) == 2
    line = _one_error_line(capsys)
    assert f"belongs to run {finished.name}, not to {other.run_hash()}" in line and "stage002-epoch0002.pt" in line
    assert not paths.results(copied).exists()


def test_a_truncated_config_is_refused_by_analyses_and_repaired_by_a_rerun(tmp_path, capsys):
    seed_one = lrr().model_copy(update={"seed": 1})
    run = runs.run(seed_one, tmp_path)
    text = paths.config(run).read_text()
    paths.config(run).write_text(text[:text.index("seed:")])  # cut before the seed: it would load as seed 0
    assert not results.is_complete(run)
    assert cli.main(["analyze", "lmc", str(run)]) == 2
    line = _one_error_line(capsys)
    assert str(paths.config(run)) in line and f"not to its directory's name {run.name}" in line
    with pytest.warns(UserWarning, match="does not hold this run's config"):
        assert cli.main(["run", _config_file(seed_one, tmp_path), "--out", str(tmp_path)]) == 0
    assert paths.config(run).read_text() == text and results.is_complete(run)
    assert config.load(paths.config(run)).run_hash() == run.name


def test_an_empty_lock_is_taken_over_at_once(tmp_path):
    cfg = tiny(schedule={"epochs": 1})
    lock = paths.lock(paths.run_dir(tmp_path, cfg.run_hash()))
    lock.parent.mkdir(parents=True)
    lock.touch()  # what a full disk left behind when the lock was created and written in two steps
    stale_after = locks.RunLock(lock).stale_after
    assert stale_after >= 3600 and time.time() - lock.stat().st_mtime < stale_after  # not stale by its age
    with pytest.warns(UserWarning, match="taking over a stale lock .empty or unreadable"):
        run = runs.run(cfg, tmp_path)
    assert results.is_complete(run) and not lock.exists()


def test_a_lock_is_never_visible_before_its_content(tmp_path, monkeypatch):
    """The lock is linked into place only once written: a failed write leaves no lock at all."""
    lock = tmp_path / "run" / "lock"

    def full_disk(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(lock), "write_bytes", full_disk)
    with pytest.raises(files.WriteError, match=f"{lock}: disk full"):
        locks.RunLock(lock).acquire()
    assert not lock.exists() and list(lock.parent.iterdir()) == []

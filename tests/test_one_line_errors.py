"""The CLI's failures and interruptions: one stderr line naming the field or file, a non-zero exit, no traceback."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing
import urllib.error
import urllib.request
from pathlib import Path

import papermill
import pytest
import yaml
from test_runs import Crash  # raises KeyboardInterrupt at one step: Ctrl-C in process

from lotterylab import cli
from lotterylab.analysis import analyze
from lotterylab.core import config, criterion_options, hashing, method_options, paths
from lotterylab.core.config import Config
from lotterylab.training import checkpoint, results, runs

TINY = {
    "data": {"name": "mnist1d", "train_size": 256, "test_size": 64, "batch_size": 32},
    "model": {"name": "mlp", "width": 16, "depth": 1},
    "schedule": {"epochs": 2},
    "train": {"progress": False},
}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def fails(capsys, argv: list[str], *named: str, code: int = 2) -> str:
    """Run the CLI in this process; assert the exit code and one stderr line holding every `named` text."""
    assert cli.main(argv) == code
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lotterylab: error: " if code == 2 else "lotterylab: interrupted"), line
    assert all(text in line for text in named), line
    return line


def write(path, raw) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def leaf_fields() -> typing.Iterator[tuple[str, typing.Any]]:
    """Every leaf field of the config, each method's own fields included, with its annotation."""
    seen = set()
    for path, field in hashing.leaf_fields(Config):
        if path not in seen:
            seen.add(path)
            yield path, field.annotation


def fields_of(kind: type) -> list[tuple[str, bool]]:
    """(dotted name, is a list) of every config field holding `kind` values, alone, optional or in a list."""
    found = []
    for name, annotation in leaf_fields():
        args = typing.get_args(annotation)
        if annotation is kind or kind in args:
            found.append((name, typing.get_origin(annotation) is list))
    return found


FLOATS = fields_of(float)
INTS = fields_of(int)
OWNER = {f"method.{field}": name for name, options in reversed(method_options.OPTIONS.items())
         for field in options.model_fields}
"""The method a method field belongs to: the field is set on a run of that method."""


CRITERION_OWNER = {field: name for name, options in reversed(criterion_options.OPTIONS.items())
                   for field in options.model_fields}
"""The criterion a criterion option belongs to (`mask.criterion.<field>`, `method.prune_criterion.<field>`)."""


def setting(field: str, text: str) -> list[str]:
    """--set arguments that put `text` into `field`, on a method and a criterion that have it."""
    owner = ["--set", f"method.name={OWNER[field]}"] if field in OWNER else []
    section, _, option = field.rpartition(".")
    if section in ("mask.criterion", "method.prune_criterion") and option != "name":
        owner = [*(["--set", "method.name=sculpt"] if section.startswith("method.") else []),
                 "--set", f"{section}.name={CRITERION_OWNER[option]}"]
    return [*owner, "--set", f"{field}={text}"]


def test_every_numeric_field_is_covered():
    """The walk over the config finds the fields the checks below must reach; a new field is checked too."""
    names = {name for name, _ in FLOATS + INTS}
    assert {"optimizer.lr", "schedule.milestones", "method.targets", "seed", "data.shape", "model.width"} <= names
    assert len(FLOATS) >= 14 and len(INTS) >= 20


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize(("field", "is_list"), FLOATS, ids=[name for name, _ in FLOATS])
def test_non_finite_floats_name_the_field(tmp_path, capsys, field, is_list, value):
    text = f"[{value}]" if is_list else value
    out = tmp_path / "runs"
    line = fails(capsys, ["run", write(tmp_path / "c.yaml", TINY), "--out", str(out), *setting(field, text)], "c.yaml",
                 field)
    assert "unknown key" not in line and not out.exists()


@pytest.mark.parametrize(("field", "is_list"), INTS, ids=[name for name, _ in INTS])
def test_ints_beyond_int64_name_the_field(tmp_path, capsys, field, is_list):
    text = f"[{2**63}]" if is_list else str(2**63)
    line = fails(capsys, ["run", write(tmp_path / "c.yaml", TINY), "--out", str(tmp_path), *setting(field, text)],
                 "c.yaml", field)
    assert "unknown key" not in line


@pytest.mark.parametrize(("raw", "field"), [
    ({"optimizer": {"lr": 1.0e308}}, "optimizer.lr"),  # was 27 lines from inside SGD (float32 overflow)
    ({"optimizer": {"weight_decay": 1.0e30}}, "optimizer.weight_decay"),
    ({"seed": 99999999999999999999999}, "seed"),
])
def test_out_of_range_values_name_the_field(tmp_path, capsys, raw, field):
    fails(capsys, ["run", write(tmp_path / "c.yaml", {**TINY, **raw}), "--out", str(tmp_path)], "c.yaml", field)


def test_deeply_nested_yaml_names_the_file(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 100_000 + "]" * 100_000 + "\n")  # was a RecursionError of 2,999 lines
    fails(capsys, ["run", str(deep)], str(deep))


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x00\x01\x02 binary \x7f"],
                         ids=["not-utf8", "control-characters"])
def test_binary_file_names_the_file(tmp_path, capsys, content):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(content)
    fails(capsys, ["run", str(binary)], str(binary))


def test_a_directory_as_config_names_it(tmp_path, capsys):
    fails(capsys, ["run", str(tmp_path)], str(tmp_path))


@pytest.mark.parametrize("content", ["", "# nothing set\n"], ids=["empty", "comments-only"])
def test_empty_config_is_an_error_naming_the_file(tmp_path, capsys, content):
    empty = tmp_path / "empty.yaml"
    empty.write_text(content)
    fails(capsys, ["run", str(empty), "--out", str(tmp_path / "runs")], str(empty))
    fails(capsys, ["run", str(empty), "--out", str(tmp_path / "runs"), "--set", "seed=1"], str(empty))
    assert not (tmp_path / "runs").exists()


def test_an_explicit_empty_mapping_is_the_default_config(tmp_path):
    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}\n")
    assert config.load(explicit) == Config()


def test_overrides_on_a_config_file_still_apply(tmp_path, capsys):
    assert cli.main(["run", write(tmp_path / "c.yaml", TINY), "--out", str(tmp_path / "runs"),
                     "--set", "schedule.epochs=1", "--set", "seed=3"]) == 0
    run_dir = Path(capsys.readouterr().out.strip())
    stored = config.load(paths.config(run_dir))
    assert stored.schedule.epochs == 1 and stored.seed == 3 and results.is_complete(run_dir)


@pytest.mark.parametrize(("name", "first_file"), [("cifar10", "data_batch_1"), ("cifar100", "train")])
def test_cifar_offline_names_the_expected_files_and_the_network(tmp_path, capsys, monkeypatch, name, first_file):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "cifar"
    raw = {**TINY, "data": {"name": name, "root": str(root), "download": True}}
    downloading = fails(capsys, ["run", write(tmp_path / "c.yaml", raw), "--out", str(tmp_path / "runs")],
                        str(root), first_file, "data.download", "network")
    raw["data"]["download"] = False
    absent = fails(capsys, ["run", write(tmp_path / "c.yaml", raw), "--out", str(tmp_path / "runs")],
                   str(root), first_file, "data.download", "network")
    assert downloading.split(";")[0] == absent.split(";")[0]  # the same files named, download or not


def test_disk_full_during_a_checkpoint_names_the_file(tmp_path, capsys, monkeypatch):
    real = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "stage000-epoch0001.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    params = write(tmp_path / "c.yaml", TINY)
    fails(capsys, ["run", params, "--out", str(tmp_path / "runs")], "stage000-epoch0001.pt")
    sweep = write(tmp_path / "sweep.yaml", {"base": TINY, "axes": {"seed": [5]}})
    fails(capsys, ["sweep", sweep, "--runs", str(tmp_path / "runs")], "stage000-epoch0001.pt")


def test_interrupt_before_the_first_checkpoint_says_stage_0_epoch_0(tmp_path, capsys, monkeypatch):
    train = runs.run
    monkeypatch.setattr(runs, "run", lambda cfg, out, callbacks=(): train(cfg, out, [*callbacks, Crash(0, 0, 0)]))
    assert cli.main(["run", write(tmp_path / "c.yaml", TINY), "--out", str(tmp_path)]) == 130
    assert one_line(capsys.readouterr().err) == \
        "lotterylab: interrupted at stage 0, epoch 0; rerun the same command to resume"


def test_interrupted_sweep_counts_the_finished_runs(tmp_path, capsys, monkeypatch):
    sweep = write(tmp_path / "sweep.yaml", {"base": TINY, "axes": {"seed": [0, 1]}})
    train = runs.run
    monkeypatch.setattr(runs, "run", lambda cfg, out, callbacks=(): train(
        cfg, out, [*callbacks, Crash(0, 0, 0)] if cfg.seed == 1 else callbacks))
    assert cli.main(["sweep", sweep, "--runs", str(tmp_path / "runs")]) == 130
    assert one_line(capsys.readouterr().err) == \
        "lotterylab: interrupted with 1 of 2 runs finished, 1 pending; rerun the same command to resume"
    monkeypatch.undo()
    assert cli.main(["sweep", sweep, "--runs", str(tmp_path / "runs")]) == 0


def test_interrupted_study_and_analysis_are_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert cli.main(["study", "sculpt", "--scale", "smoke", "--reports", str(tmp_path), "--runs", str(tmp_path)]) == 130
    assert one_line(capsys.readouterr().err) == \
        "lotterylab: interrupted during study sculpt; rerun the same command to resume"
    monkeypatch.setattr(analyze, "main", interrupted)
    assert cli.main(["analyze", "lmc", str(tmp_path)]) == 130
    assert one_line(capsys.readouterr().err) == "lotterylab: interrupted"


# The real CLI in a child process whose run holds at its second epoch (after the first epoch's checkpoint) until a
# signal comes: without the hold, a run this small could finish before the test's SIGINT arrives. Python's own SIGINT
# handler is installed as in a terminal: a test run started in the background would pass its child SIGINT ignored.
HELD_RUN = textwrap.dedent("""
    import signal, sys, time
    from lotterylab import cli
    from lotterylab.training import runs

    signal.signal(signal.SIGINT, signal.default_int_handler)

    class Hold:
        def on_step(self, trainer, stage, epoch, step):
            while epoch == 1:
                time.sleep(0.01)

    train = runs.run
    runs.run = lambda cfg, out, callbacks=(): train(cfg, out, [*callbacks, Hold()])
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_ctrl_c_names_where_the_rerun_resumes_and_the_rerun_finishes(tmp_path):
    params, out = write(tmp_path / "c.yaml", TINY), tmp_path / "runs"
    run_dir = paths.run_dir(out, config.load(params).run_hash())
    first = paths.checkpoint(run_dir, 0, 1)
    child = subprocess.Popen([sys.executable, "-c", HELD_RUN, "run", params, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a failure bound only: the test synchronizes on the checkpoint file
        while not first.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no first checkpoint within 120 s"
            time.sleep(0.05)
        written = first.stat()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()  # a no-op once it has exited; else no held child outlives a failed test
    assert child.returncode == 130, err
    assert one_line(err) == "lotterylab: interrupted at stage 0, epoch 1; rerun the same command to resume"
    assert checkpoint.epoch_checkpoints(run_dir)[-1][0] == (0, 1)

    rerun = subprocess.run([sys.executable, "-m", "lotterylab.cli", "run", params, "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.strip() == str(run_dir), rerun.stderr
    assert results.is_complete(run_dir)
    kept = first.stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # resumed, not retrained

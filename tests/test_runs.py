"""Runs end to end on MNIST-1D: schema, idempotence, retention, bitwise resume, fallback, divergence, determinism."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lotterylab.core import config, paths
from lotterylab.training import checkpoint, results, runs
from lotterylab.training.checkpoint import CheckpointError
from lotterylab.training.train import DivergenceError, Trainer


def tiny(**sections) -> config.Config:
    raw = {
        "seed": 0,
        "data": {"name": "mnist1d", "batch_size": 128, "train_size": 1024, "test_size": 256},
        "model": {"name": "mlp", "width": 64, "depth": 1},
        "optimizer": {"lr": 0.05},
        "schedule": {"epochs": 3, "warmup_epochs": 1.0},
        "method": {"name": "pai", "cycles": 2},
        "mask": {"sparsity": 0.5},
        "train": {"progress": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) else values
    return config.from_dict(raw)


class Crash:
    """Callback that interrupts training at one step (an in-process stand-in for a kill)."""

    def __init__(self, stage: int, epoch: int, step: int):
        self.at = (stage, epoch, step)

    def on_step(self, trainer, stage, epoch, step):
        if (stage, epoch, step) == self.at:
            raise KeyboardInterrupt


def final_state(run_dir, stage: int) -> dict:
    return checkpoint.load(paths.stage_end(run_dir, stage))


def assert_states_equal(a: dict, b: dict) -> None:
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["mask"]:
        assert torch.equal(a["mask"][name], b["mask"][name]), name
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]), key
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run every resume test compares against."""
    return runs.run(tiny(), tmp_path_factory.mktemp("reference"))


def test_results_follow_the_schema(reference):
    ds = results.read(reference)
    assert dict(ds.sizes)["stage"] == 2 and dict(ds.sizes)["epoch"] == 3
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "density"):
        assert ds[name].dims == ("stage", "epoch"), name
        assert bool(ds[name].notnull().all()), name
    assert float(ds.density.max()) == pytest.approx(0.5, abs=1e-3)
    assert ds.layer_density.dims == ("stage", "layer") and ds.sizes["layer"] == 2
    for key in ("config", "lotterylab_version", "git_revision", "seed", "torch_version", "device", "run_hash"):
        assert key in ds.attrs, key
    assert config.from_dict(__import__("yaml").safe_load(ds.attrs["config"])) == tiny()
    assert float(ds.test_acc[-1, -1]) > 0.15  # above chance (0.1) after 6 short epochs on 1024 examples
    assert results.is_complete(reference)


def test_pruned_weights_are_exactly_zero_after_training(reference):
    state = final_state(reference, 1)
    assert state["mask"], "a sparse run must store its mask"
    for name, mask in state["mask"].items():
        weight = state["model"][name]
        assert torch.all(weight[mask == 0] == 0), name
        assert torch.count_nonzero(weight[mask == 1]) == mask.sum(), name


def test_rerun_of_a_finished_run_trains_nothing(reference, monkeypatch):
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert runs.run(tiny(), reference.parent) == reference


def test_retention_keeps_last_two_epochs_and_every_stage_end(reference):
    kept = [path.name for _, path in checkpoint.epoch_checkpoints(reference)]
    assert kept == ["stage001-epoch0002.pt", "stage001-epoch0003.pt"]
    assert paths.stage_end(reference, 0).is_file() and paths.stage_end(reference, 1).is_file()


def test_consecutive_checkpoints_differ(reference):
    """Guards the resume tests against passing vacuously on a run that never changes."""
    first, second = final_state(reference, 0), final_state(reference, 1)
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])


@pytest.mark.parametrize("crash_at", [(0, 1, 3), (1, 0, 0), (1, 2, 7)])
def test_resume_after_interruption_is_bitwise(reference, tmp_path, crash_at):
    with pytest.raises(KeyboardInterrupt):
        runs.run(tiny(), tmp_path, callbacks=[Crash(*crash_at)])
    assert not results.is_complete(paths.run_dir(tmp_path, tiny().run_hash()))
    resumed = runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(resumed, 1))
    assert results.read(resumed).test_acc.equals(results.read(reference).test_acc)


def test_sigkill_mid_epoch_then_resume_is_bitwise(reference, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_runs import tiny
        from lotterylab.training import runs

        class Kill:
            def on_step(self, trainer, stage, epoch, step):
                if (stage, epoch, step) == (1, 1, 4):
                    os.kill(os.getpid(), signal.SIGKILL)

        runs.run(tiny(), {str(tmp_path)!r}, callbacks=[Kill()])
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    assert not results.is_complete(run_dir)
    assert [p.name for _, p in checkpoint.epoch_checkpoints(run_dir)][-1] == "stage001-epoch0001.pt"
    with pytest.warns(UserWarning, match="stale lock .pid \\d+ is dead"):  # the killed process left its lock
        runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(run_dir, 1))


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        runs.run(tiny(), tmp_path, callbacks=[Crash(1, 2, 0)])
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    newest = checkpoint.epoch_checkpoints(run_dir)[-1][1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match=newest.name):
        runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(run_dir, 1))


def test_bit_flipped_checkpoint_is_detected_and_skipped(reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        runs.run(tiny(), tmp_path, callbacks=[Crash(1, 2, 0)])
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    newest = checkpoint.epoch_checkpoints(run_dir)[-1][1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the tensor data: torch.load alone would return altered weights
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        checkpoint.load(newest)
    with pytest.warns(UserWarning, match=newest.name):
        runs.run(tiny(), tmp_path)
    assert_states_equal(final_state(reference, 1), final_state(run_dir, 1))


class PoisonWeights:
    """Callback that makes the weights NaN at one step, as a diverging optimizer would."""

    def __init__(self, stage: int, epoch: int):
        self.at = (stage, epoch)

    def on_step(self, trainer, stage, epoch, step):
        if (stage, epoch) == self.at and step == 1:
            with torch.no_grad():
                next(iter(trainer.params.values())).fill_(float("nan"))


def test_divergence_keeps_the_checkpoints_from_before_it(tmp_path):
    cfg = tiny()
    with pytest.raises(DivergenceError, match=r"stage 1, epoch 1, step 2"):
        runs.run(cfg, tmp_path, callbacks=[PoisonWeights(1, 1)])
    run_dir = paths.run_dir(tmp_path, cfg.run_hash())
    assert not results.is_complete(run_dir)
    (position, newest), = checkpoint.epoch_checkpoints(run_dir)[-1:]
    assert position == (1, 1)  # the last epoch that finished before the loss went NaN
    state = checkpoint.load(newest)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_deterministic_mode_is_reproducible_and_recorded(tmp_path):
    cfg = tiny(train={"progress": False, "deterministic": True}, schedule={"epochs": 1})
    first = runs.run(cfg, tmp_path / "a")
    second = runs.run(cfg, tmp_path / "b")
    assert torch.are_deterministic_algorithms_enabled()
    weights = [checkpoint.load(paths.stage_end(run, 1))["model"] for run in (first, second)]
    digests = {hashlib.sha256(b"".join(w[k].numpy().tobytes() for k in sorted(w))).hexdigest() for w in weights}
    assert len(digests) == 1
    assert results.read(first).attrs["deterministic"] == 1
    torch.use_deterministic_algorithms(False)


def test_no_valid_checkpoint_stops_and_deletes_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        runs.run(tiny(), tmp_path, callbacks=[Crash(0, 2, 0)])
    run_dir = paths.run_dir(tmp_path, tiny().run_hash())
    files = sorted(checkpoint.epoch_checkpoints(run_dir))
    for _, path in files:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no valid checkpoint"), pytest.warns(UserWarning):
        runs.run(tiny(), tmp_path)
    assert sorted(checkpoint.epoch_checkpoints(run_dir)) == files


def test_divergence_names_stage_epoch_and_step(tmp_path):
    cfg = tiny(optimizer={"lr": 1e3}, schedule={"warmup_epochs": 0.0})  # the largest LR a config accepts
    with pytest.raises(DivergenceError, match=r"loss is not finite at stage 0, epoch \d+, step \d+"):
        runs.run(cfg, tmp_path)
    assert not results.is_complete(paths.run_dir(tmp_path, cfg.run_hash()))


def _weights_digest(run_dir) -> str:
    state = final_state(run_dir, 1)["model"]
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


def test_same_seed_same_weights_other_seed_differs(reference, tmp_path):
    again = runs.run(tiny(train={"progress": False, "keep_checkpoints": 3}), tmp_path)
    assert _weights_digest(again) == _weights_digest(reference)
    other = runs.run(tiny(seed=1), tmp_path)
    assert _weights_digest(other) != _weights_digest(reference)


def test_label_noise_indices_are_recorded(tmp_path):
    ds = results.read(runs.run(tiny(data={"label_noise": 0.25}, method={"name": "dense", "cycles": 1},
                                    mask={"sparsity": 0.0}), tmp_path))
    assert ds.noisy_index.size == round(0.25 * 1024)
    assert len(set(ds.noisy_index.values.tolist())) == ds.noisy_index.size


def test_cli_run_prints_the_run_dir_and_is_idempotent(tmp_path):
    command = [sys.executable, "-m", "lotterylab.cli", "run", "params/runs/dense.yaml", "--out", str(tmp_path),
               "--set", "schedule.epochs=2", "--set", "data.train_size=512", "--set", "train.progress=false"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert first.returncode == 0, first.stderr
    run_dir = first.stdout.strip()
    assert results.is_complete(__import__("pathlib").Path(run_dir))
    second = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert second.stdout.strip() == run_dir

"""One run end to end: idempotent, checkpointed after every epoch, resumable bitwise from the last valid checkpoint."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lotterylab.core import config, data, distributed, files, identity, models, paths
from lotterylab.core.config import Config
from lotterylab.pruning import flops, masks
from lotterylab.training import checkpoint, coupling, locks, results
from lotterylab.training.methods import METHODS
from lotterylab.training.progress import notify_run_end
from lotterylab.training.train import Callback, EpochMetrics, Trainer, resolve_device


class Progress:
    """A tqdm bar over all epochs of the run, showing stage, epoch and the latest test accuracy."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = None
        if enabled:  # tqdm.auto is imported only for a bar: in a kernel without ipywidgets it warns on stderr
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="epoch", dynamic_ncols=True)

    def on_epoch_end(self, trainer: Trainer, stage: int, epoch: int, metrics: EpochMetrics) -> None:
        if self.bar is not None:
            self.bar.set_description(f"stage {stage} epoch {epoch + 1}")
            self.bar.set_postfix(train_acc=f"{metrics.train_acc:.3f}", test_acc=f"{metrics.test_acc:.3f}",
                                 refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _apply_determinism(cfg: Config) -> None:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _write_config(run: Path, cfg: Config) -> None:
    """config.yaml as `cfg`'s canonical YAML; a missing, truncated or edited one is rewritten (with a warning)."""
    if not distributed.is_main() or identity.config_matches(run, cfg):
        return
    if paths.config(run).exists():
        warnings.warn(f"{paths.config(run)}: does not hold this run's config (truncated or edited); rewritten",
                      stacklevel=2)
    identity.inside(run, paths.config(run))
    files.atomic_write(paths.config(run), cfg.to_yaml().encode())


def _save_init(run: Path, snapshots: dict[str, Any]) -> None:
    """The weights the run started from (a coupled run's chosen init), written once after stage 0 is prepared."""
    if distributed.is_main() and not checkpoint.is_valid(paths.init_weights(run), run):
        checkpoint.save(snapshots["init"], paths.init_weights(run), identity.run_hash(run))


def resume_point(run: Path, epochs: int, keep: int) -> Path | None:
    """The checkpoint a run resumes from: its newest valid one, once every finished stage has a valid stage-end
    checkpoint. A lost one is rebuilt from that stage's last per-epoch checkpoint (the same bytes) where it is still
    kept; otherwise the run resumes from the end of the stage before, and the later per-epoch checkpoints, which
    that retraining supersedes, are deleted. Per-epoch checkpoints past `keep` that a crash left are deleted, as the
    step that crashed would have. None: start afresh."""
    newest = checkpoint.latest_valid(run)
    if newest is None:
        return None
    stage, epoch = paths.checkpoint_position(newest)
    for finished in range(stage + (epoch == epochs)):  # stages whose stage-end checkpoint must exist
        end, last_epoch = paths.stage_end(run, finished), paths.checkpoint(run, finished, epochs)
        if checkpoint.is_valid(end, run):
            continue
        if checkpoint.is_valid(last_epoch, run):
            warnings.warn(f"{end}: missing or invalid; rebuilt from {last_epoch.name}", stacklevel=2)
            files.atomic_write(end, last_epoch.read_bytes())
            continue
        warnings.warn(f"{end}: missing or invalid and {last_epoch.name} is gone; retraining from stage {finished}",
                      stacklevel=2)
        for position, path in checkpoint.epoch_checkpoints(run):
            if position > (finished, 0):
                path.unlink()
        return paths.stage_end(run, finished - 1) if finished > 0 else None
    checkpoint.prune_old(run, keep)
    return newest


def _save_epoch(run: Path, trainer: Trainer, progress: dict[str, Any], stage_done: bool, keep: int) -> None:
    if not distributed.is_main():  # every rank holds the same state; rank 0 writes it
        return
    payload = checkpoint.encode({**trainer.state_dict(), **progress}, identity.run_hash(run))
    files.atomic_write(paths.checkpoint(run, progress["stage"], progress["epoch"]), payload)
    if stage_done:
        # Stage-end checkpoints outlive the keep-last rule: analyses (LMC, sharpness) read them later.
        files.atomic_write(paths.stage_end(run, progress["stage"]), payload)
    checkpoint.prune_old(run, keep)


def plan_coupled(cfg: Config, root: Path) -> Config:
    """`cfg` with its coupled source resolved to a finished run directory, before any run is built: a YAML source
    is run first (or found finished) under `root`. Other configs come back unchanged. The run hash is the same
    before and after (a source enters the hash as its run hash)."""
    if cfg.method.name != "coupled" or cfg.method.source is None:
        return cfg
    source = Path(cfg.method.source)
    if source.suffix not in (".yaml", ".yml"):
        return cfg
    source_cfg = config.load(source)
    coupling.check_compatible(cfg, source_cfg, source)
    run_dir = run(source_cfg, root)
    return cfg.model_copy(update={"method": cfg.method.model_copy(update={"source": str(run_dir)})})


def run(cfg: Config, out: str | Path, callbacks: Sequence[Callback] = ()) -> Path:
    """Train the run described by `cfg` under `out/<hash>/`; return at once if it already finished.

    Holds the run's lock while training: a second process given the same config waits, then returns the finished run.
    Under torchrun every rank trains (DDP); rank 0 alone holds the lock and writes, and decides for all whether to.
    """
    distributed.init(resolve_device(cfg.train.device))
    cfg = plan_coupled(cfg, Path(out))  # a coupled run's YAML source trains first, before this run is built
    run_dir = paths.run_dir(Path(out), cfg.run_hash())
    if distributed.broadcast_object(results.is_complete(run_dir)):
        return run_dir
    with locks.RunLock(paths.lock(run_dir)) if distributed.is_main() else contextlib.nullcontext() as lock:
        # Another process may have finished it while this one waited; the other ranks wait here for rank 0's lock.
        if not distributed.broadcast_object(results.is_complete(run_dir)):
            _train(cfg, Path(out), run_dir, [*callbacks, lock] if lock else list(callbacks))
    distributed.barrier()  # no rank returns before rank 0 has written the results
    return run_dir


def _train(cfg: Config, out: Path, run_dir: Path, callbacks: list[Callback]) -> None:
    driver = RunDriver(cfg, out, run_dir, callbacks)
    try:
        while not driver.done:
            driver.begin_epoch()
            driver.end_epoch(*driver.trainer.train_epoch(driver.stage, driver.epoch, driver.callbacks))
    finally:
        driver.close()
    driver.finish()


class RunDriver:
    """One run advanced an epoch at a time, so that several runs can share one training step
    (lotterylab.training.packing).

    `begin_epoch` prepares a stage at its first epoch; the caller trains the epoch; `end_epoch` evaluates (unless
    given test metrics), records, calls back and checkpoints; `finish` writes results.nc once `done`.
    """

    def __init__(self, cfg: Config, out: Path, run_dir: Path, callbacks: Sequence[Callback] = ()):
        _apply_determinism(cfg)
        self.cfg, self.run_dir = cfg, run_dir
        self.device = resolve_device(cfg.train.device)
        self.dataset = data.load(cfg.data, cfg.seed, self.device)
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg.model, self.dataset.input_shape, self.dataset.num_classes)
        self.trainer = Trainer(cfg, self.model, self.dataset, self.device)
        _write_config(run_dir, cfg)
        self.stages = METHODS[cfg.method.name](cfg, out)
        self.epochs = cfg.schedule.epochs
        self.stage, self.epoch = 0, 0
        self.history: dict[str, list[float]] = {}
        self.layer_density: list[list[float]] = []
        keep = cfg.train.keep_checkpoints
        point = resume_point(run_dir, self.epochs, keep) if distributed.is_main() else None
        point = distributed.broadcast_object(point)  # rank 0 repaired the run; every rank resumes from its choice
        state = checkpoint.load(point, run_dir) if point is not None else None
        if state is not None:
            if "init" in state["snapshots"]:
                _save_init(run_dir, state["snapshots"])  # lost after stage 0 began: the state still holds it
            self.trainer.load_state_dict(state)
            self.stage, self.epoch = state["stage"], state["epoch"]
            self.history, self.layer_density = state["history"], state["layer_density"]
            if self.epoch == self.epochs:  # the last checkpoint ended a stage: the next one starts
                self.stage, self.epoch = self.stage + 1, 0
        self.progress = Progress(len(self.stages) * self.epochs, self.stage * self.epochs + self.epoch,
                                 cfg.train.progress and distributed.is_main())
        self.callbacks = [*callbacks, self.progress]
        for callback in self.callbacks:  # a study's progress (lotterylab.training.progress) names the run training now
            if hasattr(callback, "on_run_start"):
                callback.on_run_start(self.trainer, run_dir, len(self.stages), self.epochs)

    @property
    def done(self) -> bool:
        return self.stage >= len(self.stages)

    def begin_epoch(self) -> None:
        """At a stage's first epoch: fresh optimizer, the stage's prepare, and its layer densities recorded."""
        trainer = self.trainer
        if self.epoch == 0:
            trainer.restart()
            self.stages[self.stage].prepare(trainer, self.cfg, self.stage)
            trainer.broadcast_from_main()
            if self.stage == 0:
                _save_init(self.run_dir, trainer.snapshots)
            per_layer = masks.layer_density(trainer.mask)
            self.layer_density.append([per_layer.get(name, 1.0) for name in trainer.params])
            self._warn_collapse()

    def _warn_collapse(self) -> None:
        """One warning line (stderr) at a stage whose mask collapses a layer that the previous stage's did not."""
        threshold = self.cfg.train.collapse_threshold
        now = results.collapsed(self.layer_density[-1], threshold)
        before = results.collapsed(self.layer_density[-2], threshold) if len(self.layer_density) > 1 else now & False
        if distributed.is_main() and (now & ~before).any():
            print(results.collapse_warning(self.run_dir.name, self.stage, list(self.trainer.params),
                                           self.layer_density[-1], threshold), file=sys.stderr, flush=True)

    @property
    def evaluate_now(self) -> bool:
        return (self.epoch + 1) % self.cfg.train.eval_every == 0 or self.epoch + 1 == self.epochs

    def end_epoch(self, train_loss: float, train_acc: float, lr: float,
                  test: tuple[float, float] | None = None) -> None:
        """Evaluate (or take `test` = (loss, accuracy) measured by the caller), record, call back, checkpoint."""
        if test is None:
            test = self.trainer.evaluate(self.dataset.test) if self.evaluate_now else (math.nan, math.nan)
        metrics = EpochMetrics(train_loss, train_acc, *test, lr)
        for callback in [self.stages[self.stage], *self.callbacks]:
            if hasattr(callback, "on_epoch_end"):
                callback.on_epoch_end(self.trainer, self.stage, self.epoch, metrics)
        density = masks.density(self.trainer.mask) if self.trainer.mask else 1.0
        results.append_epoch(self.history, {**vars(metrics), "density": density, **self.trainer.recorded})
        self.trainer.recorded = {}
        position = {"stage": self.stage, "epoch": self.epoch + 1, "history": self.history,
                    "layer_density": self.layer_density}
        stage_done = self.epoch + 1 == self.epochs
        _save_epoch(self.run_dir, self.trainer, position, stage_done, self.cfg.train.keep_checkpoints)
        self.stage, self.epoch = (self.stage + 1, 0) if stage_done else (self.stage, self.epoch + 1)

    def close(self) -> None:
        self.progress.close()

    def finish(self) -> None:
        """Write results.nc: the history, per-stage layer densities, kinds, epochs and training FLOPs."""
        cfg, dataset, epochs, stages = self.cfg, self.dataset, self.epochs, self.stages
        macs = flops.layer_macs(self.model, dataset.input_shape)
        names = list(self.trainer.params)
        cost = [flops.training_flops(macs, dict(zip(names, row)), len(dataset.train), epochs)
                for row in self.layer_density]
        per_stage = {"stage_kind": [s.kind for s in stages], "stage_epochs": [epochs] * len(stages),
                     "train_flops": cost}
        attrs = {**results.provenance(cfg, self.device), "total_epochs": epochs * len(stages),
                 "total_train_flops": sum(cost)}
        dataset_out = results.run_dataset(self.history, len(stages), epochs, self.layer_density, names,
                                          dataset.noisy_indices, attrs, per_stage, cfg.train.collapse_threshold)
        if distributed.is_main():
            results.write(self.run_dir, dataset_out)
        notify_run_end(self.callbacks, self.run_dir)

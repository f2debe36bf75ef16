"""One run end to end: idempotent, checkpointed after every epoch, resumable bitwise from the last valid checkpoint."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lotterylab import checkpoint, data, flops, locks, masks, models, paths, results
from lotterylab.config import Config
from lotterylab.methods import METHODS
from lotterylab.train import Callback, EpochMetrics, Trainer, resolve_device


class Progress:
    """A tqdm bar over all epochs of the run, showing stage, epoch and the latest test accuracy."""

    def __init__(self, total: int, done: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, disable=not enabled, unit="epoch", dynamic_ncols=True)

    def on_epoch_end(self, trainer: Trainer, stage: int, epoch: int, metrics: EpochMetrics) -> None:
        self.bar.set_description(f"stage {stage} epoch {epoch + 1}")
        self.bar.set_postfix(train_acc=f"{metrics.train_acc:.3f}", test_acc=f"{metrics.test_acc:.3f}", refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _apply_determinism(cfg: Config) -> None:
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _write_config(run: Path, cfg: Config) -> None:
    if not paths.config(run).is_file():
        checkpoint.atomic_write(paths.config(run), cfg.to_yaml().encode())


def _save_init(run: Path, trainer: Trainer) -> None:
    """The weights the run started from (a coupled run's chosen init), written once after stage 0 is prepared."""
    if not paths.init_weights(run).is_file():
        checkpoint.save(trainer.snapshots["init"], paths.init_weights(run))


def _save_epoch(run: Path, trainer: Trainer, progress: dict[str, Any], stage_done: bool, keep: int) -> None:
    payload = checkpoint.encode({**trainer.state_dict(), **progress})
    checkpoint.atomic_write(paths.checkpoint(run, progress["stage"], progress["epoch"]), payload)
    if stage_done:
        # Stage-end checkpoints outlive the keep-last rule: analyses (LMC, sharpness) read them later.
        checkpoint.atomic_write(paths.stage_end(run, progress["stage"]), payload)
    checkpoint.prune_old(run, keep)


def run(cfg: Config, out: str | Path, callbacks: Sequence[Callback] = ()) -> Path:
    """Train the run described by `cfg` under `out/<hash>/`; return at once if it already finished.

    Holds the run's lock while training: a second process given the same config waits, then returns the finished run.
    """
    run_dir = paths.run_dir(Path(out), cfg.run_hash())
    if results.is_complete(run_dir):
        return run_dir
    with locks.RunLock(paths.lock(run_dir)) as lock:
        if not results.is_complete(run_dir):  # another process may have finished it while this one waited
            _train(cfg, Path(out), run_dir, [*callbacks, lock])
    return run_dir


def _train(cfg: Config, out: Path, run_dir: Path, callbacks: list[Callback]) -> None:
    _apply_determinism(cfg)
    device = resolve_device(cfg.train.device)
    dataset = data.load(cfg.data, cfg.seed, device)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes)
    trainer = Trainer(cfg, model, dataset, device)
    _write_config(run_dir, cfg)
    stages = METHODS[cfg.method.name](cfg, out)
    epochs = cfg.schedule.epochs
    state = checkpoint.latest_valid(run_dir)
    stage, epoch = 0, 0
    history: dict[str, list[float]] = {name: [] for name in results.METRICS}
    layer_density: list[list[float]] = []
    if state is not None:
        trainer.load_state_dict(state)
        stage, epoch, history, layer_density = state["stage"], state["epoch"], state["history"], state["layer_density"]

    progress = Progress(len(stages) * epochs, stage * epochs + epoch, cfg.train.progress)
    callbacks = [*callbacks, progress]
    try:
        for stage in range(stage, len(stages)):
            if epoch == 0:
                trainer.restart()
                stages[stage].prepare(trainer, cfg, stage)
                if stage == 0:
                    _save_init(run_dir, trainer)
                per_layer = masks.layer_density(trainer.mask)
                layer_density.append([per_layer.get(name, 1.0) for name in trainer.params])
            density = masks.density(trainer.mask) if trainer.mask else 1.0
            for epoch in range(epoch, epochs):
                train_loss, train_acc, lr = trainer.train_epoch(stage, epoch, callbacks)
                evaluate = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs
                test_loss, test_acc = trainer.evaluate(dataset.test) if evaluate else (math.nan, math.nan)
                metrics = EpochMetrics(train_loss, train_acc, test_loss, test_acc, lr)
                for name, value in vars(metrics).items():
                    history[name].append(value)
                history["density"].append(density)
                for callback in [stages[stage], *callbacks]:
                    if hasattr(callback, "on_epoch_end"):
                        callback.on_epoch_end(trainer, stage, epoch, metrics)
                position = {"stage": stage, "epoch": epoch + 1, "history": history, "layer_density": layer_density}
                _save_epoch(run_dir, trainer, position, epoch + 1 == epochs, cfg.train.keep_checkpoints)
            epoch = 0
    finally:
        progress.close()

    macs = flops.layer_macs(model, dataset.input_shape)
    names = list(trainer.params)
    cost = [flops.training_flops(macs, dict(zip(names, row)), len(dataset.train), epochs) for row in layer_density]
    per_stage = {"stage_kind": [s.kind for s in stages], "stage_epochs": [epochs] * len(stages), "train_flops": cost}
    attrs = {**results.provenance(cfg, device), "total_epochs": epochs * len(stages), "total_train_flops": sum(cost)}
    dataset_out = results.run_dataset(history, len(stages), epochs, layer_density, names, dataset.noisy_indices,
                                      attrs, per_stage)
    results.write(run_dir, dataset_out)

"""Iterative methods (IMP, WR, LRR): level schedule, what each level does to the weights, and resume."""

import pytest
import torch
from test_runs import Crash, assert_states_equal, tiny
from torch.nn.utils import prune

from lotterylab.core import config, data, models, paths
from lotterylab.training import checkpoint, methods, results, runs
from lotterylab.training.train import Trainer


def test_level_densities_prune_a_fraction_of_what_remains_and_land_on_the_target():
    cfg = config.from_dict({"method": {"name": "lrr"}, "mask": {"sparsity": 0.5}})
    assert methods.level_densities(cfg) == pytest.approx([0.8, 0.64, 0.512, 0.5])
    half = config.from_dict({"method": {"name": "imp", "prune_fraction": 0.5}, "mask": {"sparsity": 0.75}})
    assert methods.level_densities(half) == pytest.approx([0.5, 0.25])


def make_trainer(method: str) -> tuple[Trainer, config.Config]:
    cfg = tiny(method={"name": method, "cycles": 1, "rewind_epoch": 1}, mask={"sparsity": 0.5})
    dataset = data.load(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    return Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset,
                   torch.device("cpu")), cfg


def trained_levels(method: str) -> tuple[Trainer, list[methods.Stage], dict[str, torch.Tensor]]:
    trainer, cfg = make_trainer(method)
    stages = methods.METHODS[method](cfg, None)
    for epoch in range(2):
        trainer.train_epoch(0, epoch)
        stages[0].on_epoch_end(trainer, 0, epoch, None)
    learned = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.restart()
    stages[1].prepare(trainer, cfg, 1)
    return trainer, stages, learned


@pytest.mark.parametrize("method", ["imp", "wr", "lrr"])
def test_each_level_starts_from_the_right_weights(method):
    trainer, _, learned = trained_levels(method)
    start = {"imp": trainer.snapshots["init"], "wr": trainer.snapshots.get("warmup"), "lrr": learned}[method]
    assert start is not None
    state = trainer.model.state_dict()
    for name, mask in trainer.mask.items():
        torch.testing.assert_close(state[name], start[name] * mask, rtol=0, atol=0)
    assert masks_density(trainer) == pytest.approx(0.8, abs=1e-3)
    if method != "lrr":  # rewinding also restores BatchNorm-free layers' biases
        assert all(torch.equal(state[k], start[k]) for k in state if k not in trainer.mask)


def masks_density(trainer: Trainer) -> float:
    from lotterylab.pruning import masks

    return masks.density(trainer.mask)


def test_warmup_point_is_taken_after_the_configured_epoch():
    trainer, cfg = make_trainer("wr")
    stages = methods.METHODS["wr"](cfg, None)
    trainer.train_epoch(0, 0)
    after_one = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stages[0].on_epoch_end(trainer, 0, 0, None)
    trainer.train_epoch(0, 1)
    stages[0].on_epoch_end(trainer, 0, 1, None)
    assert all(torch.equal(trainer.snapshots["warmup"][k], after_one[k]) for k in after_one)


def test_first_level_mask_matches_torch_global_magnitude_pruning():
    trainer, cfg = make_trainer("lrr")
    trainer.train_epoch(0, 0)
    weights = {name: p.detach().clone() for name, p in trainer.params.items()}
    methods.prune_global_magnitude(trainer, 0.8)
    modules = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    for module, name in zip(modules, weights):
        module.weight.data.copy_(weights[name])
    total = sum(w.numel() for w in weights.values())
    prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=total - round(0.8 * total))
    for module, name in zip(modules, weights):
        assert torch.equal(trainer.mask[name], module.weight_mask), name


def test_lrr_run_records_levels_and_nested_masks(tmp_path):
    cfg = tiny(method={"name": "lrr", "cycles": 1}, mask={"sparsity": 0.5}, schedule={"epochs": 2})
    run_dir = runs.run(cfg, tmp_path)
    ds = results.read(run_dir)
    assert ds.density.isel(epoch=0).values.tolist() == pytest.approx([1.0, 0.8, 0.64, 0.512, 0.5], abs=1e-3)
    stage_masks = [checkpoint.load(paths.stage_end(run_dir, s))["mask"] for s in range(1, 5)]
    for earlier, later in zip(stage_masks, stage_masks[1:]):
        assert all(torch.all(later[k] <= earlier[k]) for k in earlier)


@pytest.mark.parametrize(("method", "crash_at"), [("lrr", (2, 0, 3)), ("wr", (0, 1, 2)), ("imp", (1, 1, 0))])
def test_iterative_runs_resume_bitwise_across_levels(tmp_path, method, crash_at):
    cfg = tiny(method={"name": method, "cycles": 1, "rewind_epoch": 1}, mask={"sparsity": 0.36},
               schedule={"epochs": 2})
    reference = runs.run(cfg, tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        runs.run(cfg, tmp_path / "resumed", callbacks=[Crash(*crash_at)])
    resumed = runs.run(cfg, tmp_path / "resumed")
    last = len(methods.level_densities(cfg))
    assert_states_equal(checkpoint.load(paths.stage_end(reference, last)),
                        checkpoint.load(paths.stage_end(resumed, last)))


@pytest.mark.parametrize("method", ["imp", "wr", "lrr"])
def test_iterative_methods_reach_90_percent_through_the_recorded_levels(tmp_path, method):
    cfg = tiny(method={"name": method, "rewind_epoch": 1}, mask={"sparsity": 0.9}, schedule={"epochs": 1})
    ds = results.read(runs.run(cfg, tmp_path))
    expected = [0.8**k for k in range(11)] + [0.1]  # 0.8^11 < 0.1, so the last level lands on the target
    total = 40 * 64 + 64 * 10  # tiny(): mlp 40 -> 64 -> 10
    assert ds.density.isel(epoch=0).values.tolist() == pytest.approx(expected, abs=1 / total)
    assert ds.stage_kind.values.tolist() == ["level"] * 12
    sizes = [40 * 64, 64 * 10]
    weighted = (ds.layer_density.values * sizes).sum(1) / total
    assert weighted.tolist() == pytest.approx(ds.density.isel(epoch=0).values.tolist())

"""SCULPT-ing end to end on MNIST-1D: shared cycles, one-shot pruning of the cycled weights per target, resume."""

import pytest
import torch
from test_runs import Crash, assert_states_equal, tiny
from torch.nn.utils import prune

from lotterylab.core import paths
from lotterylab.core.config import SCULPT_CRITERIA
from lotterylab.pruning import flops, masks
from lotterylab.training import checkpoint, results, runs


def sculpt(**method) -> object:
    return tiny(method={"name": "sculpt", "cycles": 2, "targets": [0.9, 0.95], **method},
                mask={"sparsity": 0.5}, schedule={"epochs": 2})


@pytest.fixture(scope="module")
def sculpted(tmp_path_factory):
    return runs.run(sculpt(), tmp_path_factory.mktemp("sculpt"))


def test_records_start_and_target_densities_and_stage_kinds(sculpted):
    ds = results.read(sculpted)
    assert ds.density.isel(epoch=-1).values.tolist() == pytest.approx([0.5, 0.5, 0.1, 0.05], abs=1e-3)
    assert ds.stage_kind.values.tolist() == ["cycle", "cycle", "target", "target"]
    assert ds.stage_epochs.values.tolist() == [2, 2, 2, 2]
    assert ds.attrs["total_epochs"] == 8


def test_every_target_prunes_the_cycled_weights_by_global_magnitude(sculpted):
    cycled = checkpoint.load(paths.stage_end(sculpted, 1))
    last = checkpoint.load(paths.stage_end(sculpted, 3))
    # The second target starts again from the end of the cycles, not from the first target's retrained weights.
    assert all(torch.equal(last["snapshots"]["cycled"][k], v) for k, v in cycled["model"].items())
    assert all(torch.equal(last["saved_masks"]["cycled"][k], v) for k, v in cycled["mask"].items())
    weights = {name: cycled["model"][name] for name in cycled["mask"]}
    total = sum(w.numel() for w in weights.values())
    for stage, target in [(2, 0.9), (3, 0.95)]:
        reference = {name: torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for name, w in weights.items()}
        for name, module in reference.items():
            module.weight.data.copy_(weights[name])
        keep = round((1 - target) * total)
        prune.global_unstructured([(m, "weight") for m in reference.values()], prune.L1Unstructured,
                                  amount=total - keep)
        mask = checkpoint.load(paths.stage_end(sculpted, stage))["mask"]
        for name, module in reference.items():
            assert torch.equal(mask[name], module.weight_mask), (stage, name)
            assert torch.all(mask[name] <= cycled["mask"][name])


@pytest.mark.parametrize("criterion", [c for c in SCULPT_CRITERIA if c != "magnitude"])
def test_other_one_shot_criteria_hit_the_targets_inside_the_cycled_mask(tmp_path, criterion):
    cfg = tiny(method={"name": "sculpt", "cycles": 1, "targets": [0.8], "prune_criterion": criterion},
               mask={"sparsity": 0.5, "synflow_rounds": 10, "score_batch_size": 128}, schedule={"epochs": 1})
    run_dir = runs.run(cfg, tmp_path)
    start, end = (checkpoint.load(paths.stage_end(run_dir, s))["mask"] for s in (0, 1))
    assert masks.density(end) == pytest.approx(0.2, abs=1e-3)
    assert all(torch.all(end[k] <= start[k]) for k in start)


def test_resumes_bitwise_inside_the_second_target(tmp_path):
    reference = runs.run(sculpt(), tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        runs.run(sculpt(), tmp_path / "resumed", callbacks=[Crash(3, 1, 2)])
    resumed = runs.run(sculpt(), tmp_path / "resumed")
    assert_states_equal(checkpoint.load(paths.stage_end(reference, 3)), checkpoint.load(paths.stage_end(resumed, 3)))


def test_cost_of_a_target_counts_the_shared_cycles_once(sculpted):
    ds = results.read(sculpted)
    flops_per_stage = ds.train_flops.values
    assert flops_per_stage[2] < flops_per_stage[0]  # sparser retraining is cheaper
    assert flops.cost_to_reach(ds, 3) == (6, pytest.approx(flops_per_stage[[0, 1, 3]].sum()))
    assert flops.cost_to_reach(ds, 1) == (4, pytest.approx(flops_per_stage[:2].sum()))

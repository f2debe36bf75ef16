"""Each criterion owns its options (lotterylab.core.criterion_options): one model per criterion, chosen by name, in
`mask.criterion` and in SCULPT's `method.prune_criterion`; the flat form of older configs still reads, with its hash."""

import pytest
import torch
from torch import nn

from lotterylab.core import config, criterion_options
from lotterylab.core.config import ConfigError, from_dict
from lotterylab.core.data import load
from lotterylab.core.registry import CRITERIA
from lotterylab.pruning import criteria, masks

# Hashes computed at d86f47d, when criterion options were flat fields of the mask section.
FLAT = {
    "3ab6e7122d13ce1a": {"mask": {"criterion": "grasp", "sparsity": 0.9, "grasp_temperature": 100.0,
                                  "score_batches": 2}, "method": {"name": "pai"}},
    "64b51fa8094d8803": {"mask": {"criterion": "snip", "sparsity": 0.9, "score_batch_size": 64},
                         "method": {"name": "pai", "cycles": 3}},
    "b83d572dac59736c": {"mask": {"criterion": "synflow", "sparsity": 0.5, "synflow_rounds": 20},
                         "method": {"name": "pai"}},
    "279ee6e5a74635da": {"mask": {"sparsity": 0.5}, "method": {"name": "sculpt", "targets": [0.9],
                                                               "prune_criterion": "snip"}},
}
NESTED = {
    "3ab6e7122d13ce1a": {"mask": {"criterion": {"name": "grasp", "temperature": 100.0, "batches": 2},
                                  "sparsity": 0.9}, "method": {"name": "pai"}},
    "64b51fa8094d8803": {"mask": {"criterion": {"name": "snip", "batch_size": 64}, "sparsity": 0.9},
                         "method": {"name": "pai", "cycles": 3}},
    "b83d572dac59736c": {"mask": {"criterion": {"name": "synflow", "rounds": 20}, "sparsity": 0.5},
                         "method": {"name": "pai"}},
    "279ee6e5a74635da": {"mask": {"sparsity": 0.5}, "method": {"name": "sculpt", "targets": [0.9],
                                                               "prune_criterion": {"name": "snip"}}},
}


@pytest.mark.parametrize("pinned", list(FLAT))
def test_the_flat_form_keeps_its_hash_and_equals_the_nested_form(pinned):
    flat, nested = from_dict(FLAT[pinned]), from_dict(NESTED[pinned])
    assert flat == nested
    assert flat.run_hash() == nested.run_hash() == pinned
    assert from_dict(config.yaml.safe_load(flat.to_yaml())) == flat  # a run's config.yaml reads back


def test_each_criterion_holds_only_its_own_options():
    grasp = from_dict(NESTED["3ab6e7122d13ce1a"]).mask.criterion
    assert isinstance(grasp, criterion_options.Grasp) and grasp.options() == {
        "batches": 2, "batch_size": 512, "temperature": 100.0}
    assert from_dict({"mask": {"criterion": "magnitude"}}).mask.criterion.options() == {}
    with pytest.raises(ConfigError, match=r"^config: mask.criterion.temperature: unknown key$"):
        from_dict({"mask": {"criterion": {"name": "snip", "temperature": 1.0}}})
    with pytest.raises(ConfigError, match=r"^config: mask.criterion.rounds: Input should be greater than 0$"):
        from_dict({"mask": {"criterion": {"name": "synflow", "rounds": 0}}})
    with pytest.raises(ConfigError, match=r"^config: mask.criterion.name: unknown criterion 'nope'; valid: grasp"):
        from_dict({"mask": {"criterion": "nope"}})


def test_flat_keys_go_to_the_criteria_that_take_them_and_are_dropped_elsewhere():
    """The study params files set flat options once for a sweep over criteria (pai_cyclic): each criterion takes
    what it has, SCULPT's one-shot criterion included."""
    raw = {"mask": {"criterion": "random", "synflow_rounds": 5, "score_batch_size": 64, "sparsity": 0.5},
           "method": {"name": "sculpt", "targets": [0.9], "prune_criterion": "synflow"}}
    cfg = from_dict(raw)
    assert cfg.mask.criterion == criterion_options.CriterionOptions(name="random")
    assert cfg.method.prune_criterion == criterion_options.Synflow(rounds=5)
    with pytest.raises(ConfigError, match=r"^config: mask.score_batches: given twice, also as the criterion's batches"):
        from_dict({"mask": {"criterion": {"name": "snip", "batches": 2}, "score_batches": 3}})


def test_a_changed_option_changes_the_hash():
    base = from_dict(NESTED["64b51fa8094d8803"])
    changed = from_dict({**NESTED["64b51fa8094d8803"],
                         "mask": {"criterion": {"name": "snip", "batch_size": 32}, "sparsity": 0.9}})
    assert base.run_hash() != changed.run_hash()


def test_every_registered_criterion_is_a_valid_name_and_options_models_name_registered_criteria():
    assert set(criterion_options.OPTIONS) <= set(CRITERIA)
    for name in CRITERIA:
        assert from_dict({"mask": {"criterion": name}}).mask.criterion.name == name


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize(("options", "direct"), [
    (criterion_options.Snip(batches=2, batch_size=16), lambda *a: criteria.snip_scores(*a, batches=2, batch_size=16)),
    (criterion_options.Grasp(batch_size=16, temperature=50.0),
     lambda *a: criteria.grasp_scores(*a, batches=1, batch_size=16, temperature=50.0)),
    (criterion_options.Synflow(rounds=3), lambda *a: criteria.synflow_scores(*a, density=0.2, rounds=3)),
])
def test_score_passes_each_criterion_its_own_options(options, direct):
    data = load(config.DataConfig(name="mnist1d", train_size=64, test_size=16), seed=0)
    net = _net()
    params = masks.prunable(net)
    got = criteria.score(options, net, params, data, torch.Generator().manual_seed(3), 0.2)
    want = direct(net, params, data, torch.Generator().manual_seed(3))
    default = criteria.score(type(options)(), net, params, data, torch.Generator().manual_seed(3), 0.2)
    assert all(torch.equal(got[name], want[name]) for name in params)
    assert any(not torch.equal(got[name], default[name]) for name in params)  # the options made a difference

"""LR schedules: values worked out by hand for the paper's cycle and for each shape."""

import math

import pytest

from lotterylab.core.config import ScheduleConfig
from lotterylab.core.schedules import SCHEDULES, lr_at

PAPER = ScheduleConfig(name="step_warmup", epochs=150, warmup_epochs=5.0, step="epoch")


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.1 * 1 / 5), (3, 0.1 * 4 / 5), (4, 0.1), (69, 0.1), (70, 0.01), (129, 0.01), (130, 0.001), (149, 0.001)],
)
def test_paper_step_warmup_cycle(epoch, expected):
    assert lr_at(PAPER, 0.1, epoch, 0, 98) == pytest.approx(expected)


def test_iteration_stepping_ramps_within_an_epoch():
    cfg = ScheduleConfig(name="constant", epochs=10, warmup_epochs=1.0, step="iteration")
    lrs = [lr_at(cfg, 1.0, 0, step, 4) for step in range(4)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(cfg, 1.0, 1, 0, 4) == 1.0


def test_epoch_stepping_is_constant_within_an_epoch():
    cfg = ScheduleConfig(name="cosine", epochs=10, step="epoch")
    assert {lr_at(cfg, 1.0, 3, step, 7) for step in range(7)} == {lr_at(cfg, 1.0, 3, 0, 7)}


def test_one_cycle_decays_linearly_after_warmup():
    cfg = ScheduleConfig(name="one_cycle", epochs=12, warmup_epochs=2.0, final_lr=0.0, step="epoch")
    assert lr_at(cfg, 1.0, 2, 0, 1) == pytest.approx(1.0)
    assert lr_at(cfg, 1.0, 7, 0, 1) == pytest.approx(0.5)  # halfway through the 10 decay epochs
    assert lr_at(cfg, 1.0, 11, 0, 1) == pytest.approx(0.1)


def test_cosine_halfway_and_floor():
    cfg = ScheduleConfig(name="cosine", epochs=10, final_lr=0.1, step="epoch")
    assert lr_at(cfg, 2.0, 5, 0, 1) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 2.0, 0, 0, 1) == pytest.approx(2.0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_stays_in_range_and_peaks_after_warmup(name):
    cfg = ScheduleConfig(name=name, epochs=20, warmup_epochs=2.0, step="iteration")
    lrs = [lr_at(cfg, 0.4, epoch, step, 5) for epoch in range(20) for step in range(5)]
    assert all(0.0 < lr <= 0.4 + 1e-12 for lr in lrs)
    assert math.isclose(lrs[9], 0.4)  # the last step of warmup reaches the peak
    assert lrs[0] < lrs[5] < lrs[9]


IMAGENET = ScheduleConfig(name="step_warmup", epochs=90, warmup_epochs=10.0, warmup="constant", warmup_factor=0.1,
                          milestones=[40 / 90, 70 / 90])


@pytest.mark.parametrize("step", [0, 624])
@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.01), (9, 0.01), (10, 0.1), (39, 0.1), (40, 0.01), (69, 0.01), (70, 0.001), (89, 0.001)],
)
def test_imagenet_constant_warmup_holds_a_tenth_then_drops_at_40_and_70(epoch, step, expected):
    # The seed paper's harness on ImageNet (TurboPrune's ImageNetLRDropsWarmup): 0.1 x lr for 10 epochs, then lr,
    # x0.1 at epochs 40 and 70 of 90; the same LR for every step of an epoch.
    assert lr_at(IMAGENET, 0.1, epoch, step, 625) == pytest.approx(expected)


def test_constant_warmup_ends_exactly_at_a_fractional_warmup_epochs():
    cfg = ScheduleConfig(name="constant", epochs=20, warmup_epochs=1.5, warmup="constant", warmup_factor=0.25)
    assert [lr_at(cfg, 1.0, epoch, step, 4) for epoch, step in ((0, 0), (1, 1), (1, 2), (2, 0))] == [0.25, 0.25, 1, 1]


def test_linear_warmup_is_the_default_and_ignores_warmup_factor():
    linear = ScheduleConfig(name="step_warmup", epochs=150, warmup_epochs=10.0, step="epoch")
    assert linear.warmup == "linear"
    assert [lr_at(linear.model_copy(update={"warmup_factor": 0.5}), 0.1, e, 0, 1) for e in (0, 4, 9, 10)] == \
        pytest.approx([0.01, 0.05, 0.1, 0.1])

"""memorization.fit_by_label splits training accuracy by the run's own noisy indices; checked by hand on a real run."""

import pytest
import torch

from lotterylab.analysis import loading, memorization
from lotterylab.core import config, data
from lotterylab.training import runs


def noisy_run(tmp_path, noise):
    cfg = config.from_dict({
        "data": {"name": "mnist1d", "batch_size": 32, "train_size": 200, "test_size": 64, "label_noise": noise},
        "model": {"name": "mlp", "width": 32, "depth": 1},
        "method": {"name": "dense", "cycles": 1}, "schedule": {"epochs": 2},
        "train": {"progress": False},
    })
    return runs.run(cfg, tmp_path)


def test_accuracy_on_noisy_and_clean_examples_matches_a_direct_count(tmp_path):
    run = noisy_run(tmp_path, 0.25)
    found = memorization.fit_by_label(run)
    loaded = loading.load_run(run, "cpu")
    loaded.model.load_state_dict(loaded.state(-1)["model"])
    loaded.model.eval()
    with torch.no_grad():
        predicted = loaded.model(loaded.data.train.x).argmax(1)
    noisy = torch.zeros(len(predicted), dtype=torch.bool)
    noisy[loaded.data.noisy_indices] = True
    assert int(noisy.sum()) == 50 == found.attrs["noisy_examples"]
    right = predicted == loaded.data.train.y
    assert float(found.noisy_train_acc) == pytest.approx(float(right[noisy].float().mean()))
    assert float(found.clean_train_acc) == pytest.approx(float(right[~noisy].float().mean()))
    clean = data.load(loaded.cfg.data.model_copy(update={"label_noise": 0.0}), loaded.cfg.seed, "cpu")
    assert torch.equal(clean.train.y[~noisy], loaded.data.train.y[~noisy])  # only the noisy subset was relabelled
    true_right = predicted == clean.train.y
    assert float(found.noisy_true_label_acc) == pytest.approx(float(true_right[noisy].float().mean()))
    assert 0 < float(found.relabelled_fraction) <= 1


def test_a_run_without_noise_is_refused_in_one_line(tmp_path):
    with pytest.raises(loading.AnalysisError, match="without label noise"):
        memorization.fit_by_label(noisy_run(tmp_path, 0.0))

"""Config: strict validation with one-line errors, canonical form and pinned run hashes."""

import subprocess
import sys

import pytest

from lotterylab.core import config
from lotterylab.core.config import Config, ConfigError


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigError, match=r"^cfg: data\.batchsize: unknown key$"):
        config.from_dict({"data": {"batchsize": 3}}, "cfg")


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        config.from_dict({"optimizer": {"lr": "fast"}})


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(ConfigError, match=r"mask\.sparsity"):
        config.from_dict({"method": {"name": "pai"}, "mask": {"sparsity": sparsity}})


@pytest.mark.parametrize(
    ("section", "valid"),
    [("data", "mnist1d"), ("model", "resnet20"), ("schedule", "one_cycle"), ("method", "pai")],
)
def test_unknown_registry_name_lists_valid_names(section, valid):
    with pytest.raises(ConfigError) as error:
        config.from_dict({section: {"name": "nope"}})
    message = str(error.value)
    assert f"{section}.name" in message and valid in message and "\n" not in message


def test_dense_rejects_a_sparsity():
    with pytest.raises(ConfigError, match=r"mask\.sparsity"):
        config.from_dict({"method": {"name": "dense"}, "mask": {"sparsity": 0.5}})


def test_canonical_drops_defaults_and_unhashed_fields():
    cfg = config.from_dict({"seed": 3, "optimizer": {"lr": 0.1}, "train": {"progress": False}})
    assert cfg.canonical() == {"seed": 3}


def test_explicit_defaults_and_execution_settings_keep_the_hash():
    plain = config.from_dict({"seed": 1})
    spelled = config.from_dict({"seed": 1, "schedule": {"epochs": 150}, "data": {"root": "/elsewhere"}})
    assert plain.run_hash() == spelled.run_hash()
    assert plain.run_hash() != config.from_dict({"seed": 2}).run_hash()
    assert plain.run_hash() != config.from_dict({"seed": 1, "schedule": {"epochs": 149}}).run_hash()


def test_pinned_hashes():
    """A refactor must not silently rename every existing run directory."""
    assert Config().run_hash() == PINNED_DEFAULT
    cyclic = config.from_dict({
        "seed": 1,
        "data": {"name": "mnist1d", "batch_size": 64},
        "model": {"name": "mlp", "width": 128},
        "schedule": {"epochs": 20, "warmup_epochs": 2.0},
        "method": {"name": "pai", "cycles": 3},
        "mask": {"sparsity": 0.9},
    })
    assert cyclic.run_hash() == PINNED_CYCLIC


def test_set_override_parses_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: pai}\n")
    cfg = config.load(path, ["mask.sparsity=0.8", "schedule.milestones=[0.5]", "data.augment=false"])
    assert cfg.mask.sparsity == 0.8 and cfg.schedule.milestones == [0.5] and cfg.data.augment is False


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.load(bad)


def test_cli_rejects_bad_config_before_training(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet99}\n")
    done = subprocess.run(
        [sys.executable, "-m", "lotterylab.cli", "run", str(path), "--out", str(tmp_path / "runs")],
        capture_output=True, text=True,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.name" in lines[0] and "resnet20" in lines[0]
    assert not (tmp_path / "runs").exists()


PINNED_DEFAULT = "44136fa355b3678a"
PINNED_CYCLIC = "3437e3975e212c30"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"method": {"name": "sculpt"}, "mask": {"sparsity": 0.5}}, "method.targets"),
        ({"method": {"name": "sculpt", "targets": [0.4]}, "mask": {"sparsity": 0.5}}, "method.targets"),
        ({"method": {"name": "pai", "targets": [0.9]}, "mask": {"sparsity": 0.5}}, "method.targets"),
        ({"method": {"name": "coupled"}}, "method.source"),
        ({"method": {"name": "coupled", "source": "runs/x"}, "mask": {"sparsity": 0.5}}, "mask.sparsity"),
        ({"method": {"name": "lrr", "source": "runs/x"}, "mask": {"sparsity": 0.5}}, "method.source"),
        ({"method": {"name": "lrr", "rewind_epoch": 200}, "mask": {"sparsity": 0.5}}, "method.rewind_epoch"),
        ({"method": {"name": "sculpt", "targets": [0.9], "prune_criterion": "grasp"}}, "method.prune_criterion"),
        ({"method": {"name": "coupled", "source": "runs/x", "init": "signs_only"}}, "method.init"),
    ],
)
def test_method_fields_are_checked_against_the_method(raw, field):
    with pytest.raises(ConfigError, match=rf"config: {field}: "):
        config.from_dict(raw)


def test_each_method_owns_its_options_and_old_full_configs_still_load():
    """A run's config.yaml written before methods owned their options lists every method's fields at their defaults:
    it loads to the same run. A field of another method set away from its default is an unknown key."""
    from pathlib import Path

    from lotterylab.core import method_options
    from lotterylab.training import methods

    assert set(method_options.OPTIONS) == set(methods.METHODS)
    kept = next((Path(__file__).parent / "data" / "runs").iterdir())
    old = config.load(kept / "config.yaml")
    assert "prune_fraction" in (kept / "config.yaml").read_text() and old.run_hash() == kept.name
    assert not hasattr(old.method, "prune_fraction")
    with pytest.raises(ConfigError, match=r"^config: method\.prune_fraction: unknown key$"):
        config.from_dict({"method": {"name": "pai", "prune_fraction": 0.5}})

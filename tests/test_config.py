"""Config: strict validation with one-line errors, canonical form and pinned run hashes."""

import subprocess
import sys

import pytest

from lotterylab import config
from lotterylab.config import Config, ConfigError


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


def test_default_values_are_frozen():
    """Changing a default changes what old configs mean without changing their hash: forbid it."""
    assert hashed_defaults(Config()) == FROZEN_DEFAULTS


def hashed_defaults(section) -> dict:
    out = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if hasattr(type(value), "model_fields"):
            out[name] = hashed_defaults(value)
        elif extra.get("hashed", True):
            out[name] = value
    return out


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
FROZEN_DEFAULTS = {
    "seed": 0,
    "data": {"name": "mnist1d", "batch_size": 128, "augment": True, "label_noise": 0.0, "train_size": None,
             "test_size": None, "shape": [3, 32, 32], "num_classes": 10, "image_size": 224, "decode": "device"},
    "model": {"name": "mlp", "width": None, "depth": None, "width_mult": 1.0, "init": "kaiming_normal"},
    "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "nesterov": False},
    "schedule": {"name": "step_warmup", "epochs": 150, "warmup_epochs": 0.0, "milestones": [70 / 150, 130 / 150],
                 "gamma": 0.1, "final_lr": 0.0, "step": "iteration"},
    "mask": {"sparsity": 0.0, "criterion": "random", "allocation": "auto", "prune_first": True, "prune_last": True,
             "score_batches": 1, "score_batch_size": 512, "grasp_temperature": 200.0, "synflow_rounds": 100},
    "method": {"name": "dense", "cycles": 1, "prune_fraction": 0.2, "rewind_epoch": 0, "targets": [],
               "prune_criterion": "magnitude", "source": None, "source_level": -1, "init": "random", "init_level": 0,
               "flip_fraction": 0.2},
    "train": {"bf16": False, "channels_last": False, "compile": False, "deterministic": False,
              "sync_batchnorm": False},
}


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

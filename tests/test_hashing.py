"""Versioned defaults: a changed default changes the hashes that relied on it, a new field changes none, and a
coupled run hashes its source by the source's run hash, not its path."""

from pydantic import BaseModel
from test_runs import tiny

from lotterylab.core import config, hashing


def test_every_hashed_field_has_a_pinned_default():
    fields = hashing.hashed_paths(config.Config)
    assert set(fields) == set(hashing.PINNED_DEFAULTS), "add new fields to hashing.PINNED_DEFAULTS"


def test_changing_a_default_changes_the_hash_of_configs_that_relied_on_it(monkeypatch):
    relied, explicit_old = config.from_dict({}), config.from_dict({"optimizer": {"lr": 0.05}})
    before = relied.run_hash()
    # As if lr's default had been 0.05 when hashes were pinned and is 0.1 now.
    monkeypatch.setitem(hashing.PINNED_DEFAULTS, "optimizer.lr", 0.05)
    assert relied.run_hash() != before  # relies on the new default: a new run
    assert explicit_old.run_hash() == before  # says the old default out loud: the same run as before


class Old(BaseModel):
    width: int = 3


class WithNewField(Old):
    depth: int = 7  # added later, with a default that keeps the old behaviour


class ChangedDefault(BaseModel):
    width: int = 4


def test_adding_a_field_with_a_default_changes_no_hash(monkeypatch):
    monkeypatch.setitem(hashing.PINNED_DEFAULTS, "width", 3)
    assert hashing.canonical(WithNewField()) == hashing.canonical(Old()) == {}
    assert hashing.canonical(WithNewField(width=5)) == hashing.canonical(Old(width=5)) == {"width": 5}
    assert hashing.canonical(ChangedDefault()) == {"width": 4}  # while a changed default shows


def test_a_coupled_run_hashes_its_source_by_run_hash_not_by_path(tmp_path):
    source = tiny(method={"name": "lrr", "prune_fraction": 0.5}, mask={"sparsity": 0.75})
    yaml_source = tmp_path / "source.yaml"
    yaml_source.write_text(source.to_yaml())

    def coupled(where: str) -> config.Config:
        return tiny(method={"name": "coupled", "source": where}, mask={"sparsity": 0.0})

    hashes = {coupled(str(root / source.run_hash())).run_hash() for root in (tmp_path / "a", tmp_path / "moved")}
    assert len(hashes) == 1
    assert coupled(str(yaml_source)).run_hash() in hashes
    assert coupled(str(tmp_path / "a" / tiny(seed=1).run_hash())).run_hash() not in hashes

"""The package's layout is its architecture: layers that import only downward, no import circles, short files, one
place for registries and a short public API."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lotterylab

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lotterylab"
MAX_LINES = 350
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

needs_import_linter = pytest.mark.skipif(not LINT_IMPORTS.is_file(),
                                         reason="import-linter is not installed (dev extra)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contract in `root`/pyproject.toml, on the package in `root`."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@needs_import_linter
def test_the_layers_contract_is_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


@needs_import_linter
def test_the_layers_contract_catches_an_upward_import(tmp_path):
    """The same contract on a copy where a core module imports the studies layer, even lazily inside a function."""
    shutil.copytree(PACKAGE, tmp_path / "lotterylab", ignore=shutil.ignore_patterns("__pycache__", "study_files"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    paths_module = tmp_path / "lotterylab" / "core" / "paths.py"
    paths_module.write_text(paths_module.read_text() + "\n\ndef _upward():\n    from lotterylab.studies import claims\n"
                            "    return claims\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "lotterylab.core.paths -> lotterylab.studies.claims" in result.stdout


def test_no_two_modules_import_each_other_in_a_circle():
    """Within a layer too: for every direct import a -> b, no chain of imports leads from b back to a (imports under
    TYPE_CHECKING, for annotations only, do not count)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("lotterylab", exclude_type_checking_imports=True)
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and not importer.startswith(f"{imported}."):  # a package's __init__ importing its own
                circles.append(" -> ".join([importer, *back]))
    assert circles == []


def test_every_module_is_at_most_350_lines():
    long = {str(path.relative_to(REPO)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_module_lives_in_a_layer():
    """Only the package's __init__ and the command line sit outside the five layers."""
    layers = {"core", "pruning", "training", "analysis", "studies"}
    top = {path.name for path in PACKAGE.glob("*.py")}
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert top == {"__init__.py", "cli.py"}
    assert folders == layers


def test_a_fresh_interpreter_validates_every_registered_name():
    """Config validation reads the registries (lotterylab.core.registry) and imports no implementation; importing any
    module of lotterylab must still register every built-in entry first."""
    code = ("from lotterylab.core.config import from_dict\n"
            "cfg = from_dict({'data': {'name': 'fashion_mnist'}, 'model': {'name': 'resnet18_imagenet'},"
            " 'schedule': {'name': 'cosine'}, 'mask': {'sparsity': 0.5, 'criterion': 'synflow', 'allocation': 'erk'},"
            " 'method': {'name': 'pai'}})\n"
            "print(cfg.model.name, cfg.mask.allocation)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resnet18_imagenet", "erk"]


def test_the_registries_name_their_kind_in_an_error():
    from lotterylab.core import config, registry

    assert sorted(registry.ALLOCATIONS) == ["balanced", "erk", "global", "uniform"]
    assert set(registry.CRITERIA) == {"random", "magnitude", "snip", "grasp", "synflow"}
    with pytest.raises(config.ConfigError, match=r"^config: model.name: unknown model 'nope'; valid: cnn1d, mlp"):
        config.from_dict({"model": {"name": "nope"}})
    with pytest.raises(ValueError, match="model 'cnn1d' is registered twice"):
        registry.MODELS.register("cnn1d")(lambda *args: None)


def test_the_public_api_resolves_every_name_it_lists():
    import importlib

    for name, (module, attribute) in lotterylab.PUBLIC.items():
        found = getattr(lotterylab, name)
        expected = importlib.import_module(module)
        assert found is (expected if attribute is None else getattr(expected, attribute)), name
    assert set(lotterylab.__all__) == {"__version__", *lotterylab.PUBLIC}
    with pytest.raises(AttributeError, match="no attribute 'trainer'; public names: load_config"):
        lotterylab.trainer  # noqa: B018

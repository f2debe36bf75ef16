"""Studies found from notebook metadata, their params files (merged over a shared base per scale), and `run_study`:
papermill execution plus the HTML report."""

from __future__ import annotations

import ast
import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.core.config import read_yaml

SOURCE_TREE = Path(__file__).resolve().parents[2]
# A checkout keeps notebooks/ and params/ beside the package; a wheel carries a copy inside it (setup.py's build_py).
ROOT = SOURCE_TREE if (SOURCE_TREE / "pyproject.toml").is_file() and (SOURCE_TREE / "notebooks").is_dir() \
    else Path(__file__).resolve().parents[1] / "study_files"
STUDY_PATH = "LOTTERYLAB_STUDIES"  # more folders of studies (each with notebooks/ and params/), os.pathsep-separated
SCALES = ("smoke", "cpu", "gpu", "paper")
INJECTED = ("output_dir", "runs_root")  # set by run_study, never by a params file
STUDY_LOCK = "study.lock"  # in a report directory while `lotterylab study` writes it
SCALE = "scale"  # a notebook whose parameters cell has it reads every value from a params file (`parameters`)
SCALE_MODE = (SCALE, "params_file", "overrides", *INJECTED)  # that cell's names; injected by run_study
OPTIONAL = {"deviations": [], "executor": None}  # parameters a params file may leave out, with their values
EXTENDS = "extends"  # a params file's key naming the file it is merged over, e.g. `extends: base/gpu.yaml`
NOT_STUDIES = ("base", "runs", "executors")  # folders of params/ that hold no study's params
METADATA_KEYS = ("description", "figure")  # of a notebook's metadata.lotterylab


class StudyError(ValueError):
    """A study that cannot run or failed; the message is one line naming the study, file or parameter."""


@dataclass(frozen=True)
class Study:
    """A study: a notebook whose metadata says what it shows, and params/<name>/<scale>.yaml beside it."""

    name: str
    description: str
    figure: str  # the seed paper's figures and tables it reproduces; empty for a study of one's own
    root: Path  # holds notebooks/<name>.ipynb and params/<name>/

    @property
    def notebook(self) -> Path:
        return self.root / "notebooks" / f"{self.name}.ipynb"

    def params_file(self, scale: str) -> Path:
        return self.root / "params" / self.name / f"{scale}.yaml"

    @property
    def summary(self) -> str:
        return f"{self.description} ({self.figure})" if self.figure else self.description


def roots() -> list[Path]:
    """lotterylab's own studies, then each folder named by LOTTERYLAB_STUDIES."""
    extra = [Path(folder) for folder in os.environ.get(STUDY_PATH, "").split(os.pathsep) if folder]
    for folder in extra:
        if not (folder / "notebooks").is_dir():
            raise StudyError(f"{STUDY_PATH}: {folder} has no notebooks/ folder")
    return [ROOT, *extra]


def _study(notebook: Path, root: Path) -> Study:
    """The study a notebook declares in `metadata.lotterylab`; a notebook in notebooks/ without it is an error."""
    try:
        metadata = json.loads(notebook.read_text()).get("metadata", {}).get("lotterylab")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise StudyError(f"{notebook}: not a readable notebook ({type(error).__name__})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("description"), str) \
            or not metadata["description"].strip():
        raise StudyError(f"{notebook}: no metadata.lotterylab.description; every notebook in notebooks/ is a study "
                         f"(README, Studies)")
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise StudyError(f"{notebook}: metadata.lotterylab: unknown key {unknown[0]!r}; valid: "
                         f"{', '.join(METADATA_KEYS)}")
    if not isinstance(metadata.get("figure", ""), str):
        raise StudyError(f"{notebook}: metadata.lotterylab.figure: expected text such as 'Fig. 2'")
    name = notebook.stem
    if not name.isidentifier() or name in NOT_STUDIES:
        why = "names a params folder that is not a study" if name in NOT_STUDIES else "is not a plain identifier"
        raise StudyError(f"{notebook}: {name!r} {why}; rename the notebook")
    return Study(name, metadata["description"], metadata.get("figure", ""), root)


def discover(folders: Iterable[Path] | None = None) -> dict[str, Study]:
    """Every study in `folders` (default: `roots()`), by name; a name found twice is an error naming both."""
    found: dict[str, Study] = {}
    for root in roots() if folders is None else folders:
        for notebook in sorted((Path(root) / "notebooks").glob("*.ipynb")):
            study = _study(notebook, Path(root))
            if study.name in found:
                raise StudyError(f"{notebook}: study {study.name!r} is also {found[study.name].notebook}")
            found[study.name] = study
    return found


def __getattr__(name: str) -> Any:
    """`STUDIES`: the studies discovered now, so that folders named in LOTTERYLAB_STUDIES after import count."""
    if name == "STUDIES":
        return discover()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> Study:
    """The study called `name`."""
    found = discover()
    if name not in found:
        raise StudyError(f"unknown study {name!r}; valid: {', '.join(sorted(found))}")
    return found[name]


def report_dir(reports_root: str | Path, study: str, label: str) -> Path:
    return Path(reports_root) / study / label


def report_html(out: Path) -> Path:
    return out / "report.html"


def executed_notebook(out: Path, study: str) -> Path:
    return out / "nb" / f"{study}.ipynb"


def _is_plain(value: Any) -> bool:
    """str/int/float/bool/None, or lists and str-keyed dicts of those: data that can never become code."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """Defaults from the notebook's one cell tagged `parameters`: `name = literal` statements only."""
    notebook = Path(notebook)
    cells = [cell for cell in json.loads(notebook.read_text())["cells"]
             if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise StudyError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    try:
        statements = ast.parse(source).body
    except SyntaxError as error:
        raise StudyError(f"{notebook}: parameters cell is not valid Python (line {error.lineno})") from None
    defaults = {}
    for statement in statements:
        target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
        if not isinstance(target, ast.Name):
            raise StudyError(f"{notebook}: parameters line {statement.lineno}: only `name = literal` is allowed")
        try:
            value = ast.literal_eval(statement.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise StudyError(f"{notebook}: parameter {target.id}: not a literal") from None
        if not _is_plain(value):
            raise StudyError(f"{notebook}: parameter {target.id}: {type(value).__name__} is not a plain literal")
        defaults[target.id] = value
    return defaults


def _read_params(path: Path, defaults: dict[str, Any] | None) -> dict[str, Any]:
    """One params file as written, checked against the notebook's defaults: known names, plain literals only."""
    raw = read_yaml(path, "params", StudyError)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping of parameter names, got {type(raw).__name__}")
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise StudyError(f"{path}: parameter name {name!r} is not a plain identifier")
        if name in INJECTED:
            raise StudyError(f"{path}: {name} is set by `lotterylab study`, not by a params file")
        if name == EXTENDS:
            if not isinstance(value, str) or not value:
                raise StudyError(f"{path}: {EXTENDS}: expected a path such as base/gpu.yaml, got "
                                 f"{type(value).__name__}")
            continue
        if defaults is not None and name not in defaults and name not in OPTIONAL:
            raise StudyError(f"{path}: unknown parameter {name!r}; valid: {', '.join(sorted(defaults))}")
        if not _is_plain(value):
            raise StudyError(f"{path}: parameter {name}: {type(value).__name__} is not a plain literal")
    return raw


def _merged(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`: a mapping in both merges key by key, anything else in `over` replaces."""
    merged = copy.deepcopy(under)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else copy.deepcopy(value)
    return merged


def load_params(path: str | Path, defaults: dict[str, Any] | None,
                params_roots: Sequence[str | Path] = ()) -> dict[str, Any]:
    """A params YAML file checked against the notebook's defaults: known names and plain literal values only.
    `extends: base/gpu.yaml` merges the file over another (`_merged`), itself checked the same way and free to extend
    a third; a relative path is looked up under `params_roots`, then under lotterylab's own params/."""
    folders = [Path(folder) for folder in (*params_roots, ROOT / "params")]
    chain: list[Path] = []
    layers = []
    path = Path(path)
    while True:
        chain.append(path.resolve())
        raw = _read_params(path, defaults)
        layers.append(raw)
        if EXTENDS not in raw:
            break
        named = Path(raw.pop(EXTENDS))
        found = next((where for where in ([named] if named.is_absolute() else [root / named for root in folders])
                      if where.is_file()), None)
        if found is None:
            raise StudyError(f"{path}: {EXTENDS} '{named}': no such params file under "
                             f"{', '.join(str(root) for root in dict.fromkeys(folders))}")
        if found.resolve() in chain:
            raise StudyError(f"{path}: {EXTENDS} '{named}' again: a cycle of params files")
        path = found
    effective: dict[str, Any] = {}
    for layer in reversed(layers):
        effective = _merged(effective, layer)
    return effective


def is_scale_mode(study: Study) -> bool:
    """Whether the study's notebook names a scale (`scale = "cpu"`) and reads its values from the params files."""
    return SCALE in notebook_parameters(study.notebook)


def schema(study: Study) -> dict[str, Any]:
    """The study's parameter names with their cpu-scale values: the notebook's parameters cell (older notebooks), or
    for a notebook in scale mode the keys of params/<study>/cpu.yaml, merged over its base, plus OPTIONAL ones."""
    defaults = notebook_parameters(study.notebook)
    if SCALE not in defaults:
        return defaults
    return {**OPTIONAL, **load_params(study.params_file("cpu"), None, [study.root / "params"])}


class Parameters:
    """One study's parameter values at one scale (`parameters`), read as attributes: `P.seeds`, `P.base`."""

    def __init__(self, study: str, label: str, file: Path, output_dir: Path, runs_root: Path, values: dict[str, Any]):
        self.study, self.label, self.file, self.output_dir, self.runs_root = study, label, file, output_dir, runs_root
        self.values = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name not in values:
            raise AttributeError(f"{self.__dict__.get('file')}: no parameter {name!r}")
        return values[name]

    def __repr__(self) -> str:
        return f"Parameters({self.study!r}, {self.label!r}: {', '.join(sorted(self.values))})"


def checked_parameters(study: Study, file: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    known = schema(study)
    values = {**OPTIONAL, **load_params(file, known, [study.root / "params"])}
    missing = sorted(set(known) - set(values))
    if missing:
        raise StudyError(f"{file}: missing parameter {missing[0]!r} (params/{study.name}/cpu.yaml sets every one)")
    for name, value in (overrides or {}).items():
        if name not in known:
            raise StudyError(f"overrides: unknown parameter {name!r} of study {study.name}; valid: "
                             f"{', '.join(sorted(known))}")
        if not _is_plain(value):
            raise StudyError(f"overrides: parameter {name}: {type(value).__name__} is not a plain literal")
    return _merged(values, overrides or {})


def parameters(study: str, scale: str = "cpu", params_file: str | Path | None = None,
               overrides: dict[str, Any] | None = None, output_dir: str | Path | None = None,
               runs_root: str | Path | None = None) -> Parameters:
    """What a notebook's parameters cell names, resolved: params/<study>/<scale>.yaml (or `params_file`) merged over
    its base and checked against the study's parameter names, with `overrides` (e.g. {"seeds": [0]}) on top.
    `output_dir` defaults to reports/<study>/lab and `runs_root` to runs/, both beside notebooks/."""
    found = get(study)
    file = resolve_params(found, params_file, None if params_file is not None else scale)
    values = checked_parameters(found, file, overrides)
    out = Path(output_dir) if output_dir is not None else found.root / "reports" / study / "lab"
    runs = Path(runs_root) if runs_root is not None else found.root / "runs"
    return Parameters(study, file.stem, file, out, runs, values)


def resolve_params(study: Study, params: str | Path | None, scale: str | None) -> Path:
    """The params file: an explicit path, or params/<study>/<scale>.yaml (default scale: cpu)."""
    if params is not None and scale is not None:
        raise StudyError("give --params or --scale, not both")
    if params is not None:
        return Path(params)
    scale = scale or "cpu"
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    return study.params_file(scale)

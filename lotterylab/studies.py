"""Study registry, validation of a study's parameters, and `run_study`: papermill execution plus the HTML report."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.config import read_yaml

ROOT = Path(__file__).resolve().parent.parent  # the repository: notebooks/ and params/ live beside the package
SCALES = ("smoke", "cpu", "gpu", "paper")
INJECTED = ("output_dir", "runs_root")  # set by run_study, never by a params file


class StudyError(ValueError):
    """A study that cannot run or failed; the message is one line naming the study, file or parameter."""


@dataclass(frozen=True)
class Study:
    """A registered study: its notebook and what it shows, in one line."""

    name: str
    description: str

    @property
    def notebook(self) -> Path:
        return ROOT / "notebooks" / f"{self.name}.ipynb"

    def params_file(self, scale: str) -> Path:
        return ROOT / "params" / self.name / f"{scale}.yaml"


STUDIES: dict[str, Study] = {
    study.name: study
    for study in (
        Study("cyclic_training", "dense and random-sparse, 1 vs N cycles; LRR and WR per level; cyclic vs one-cycle vs "
                                 "cosine at one budget (Fig. 2)"),
        Study("label_noise", "15% label noise: random-sparse cyclic training against dense (Fig. 9b)"),
        Study("sculpt", "SCULPT-ing from random masks at several start sparsities against LRR and cyclic random PaI "
                        "across targets, with epochs and FLOPs per target (Fig. 7, 8b-c, Table 2)"),
        Study("pruning_criteria", "SCULPT-ing's one-shot step with magnitude, random, SNIP and SynFlow scores across "
                                  "targets (Fig. 9a)"),
        Study("pai_cyclic", "random, SNIP, SynFlow and GraSP masks across sparsities, standard vs cyclic, with the "
                            "dense cyclic gain shaded (Fig. 4)"),
        Study("coupling", "LRR, WR and IMP against their masks retrained cyclically with random or warmup init, and "
                          "a random mask, across sparsities (Fig. 5)"),
        Study("layerwise_ratios", "random masks with ERK, balanced and uniform layerwise ratios across sparsities, "
                                  "standard and cyclic (Fig. 13)"),
        Study("sign_sufficiency", "LRR mask with warmup signs and random magnitudes: cyclic vs one-cycle, 20% of signs "
                                  "flipped; sign overlap with LRR (Fig. 8a, 10)"),
        Study("lmc_barriers", "loss along the line between consecutive cycles: random mask cyclic vs one-cycle, LRR "
                              "mask with warmup vs random init (Fig. 3a-b, 6)"),
        Study("sharpness", "top Hessian eigenvalue after each cycle: dense vs sparse, cyclic vs one-cycle (Fig. 3c)"),
    )
}


def get(name: str) -> Study:
    """The registered study called `name`."""
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; valid: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]


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


def load_params(path: str | Path, defaults: dict[str, Any]) -> dict[str, Any]:
    """A params YAML file checked against the notebook's defaults: known names and plain literal values only."""
    path = Path(path)
    raw = read_yaml(path, "params", StudyError)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping of parameter names, got {type(raw).__name__}")
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise StudyError(f"{path}: parameter name {name!r} is not a plain identifier")
        if name in INJECTED:
            raise StudyError(f"{path}: {name} is set by `lotterylab study`, not by a params file")
        if name not in defaults:
            raise StudyError(f"{path}: unknown parameter {name!r}; valid: {', '.join(sorted(defaults))}")
        if not _is_plain(value):
            raise StudyError(f"{path}: parameter {name}: {type(value).__name__} is not a plain literal")
    return raw


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


def run_study(name: str, params: str | Path | None = None, scale: str | None = None,
              reports_root: str | Path = "reports", runs_root: str | Path = "runs",
              executor: str | None = None) -> Path:
    """Validate, execute the study's notebook into reports/<name>/<label>/nb/, render report.html; return its path.
    `executor` (a name or an executor YAML file) replaces the params' executor: where runs train, not what."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from lotterylab import reports

    study = get(name)
    params_file = resolve_params(study, params, scale)
    values = load_params(params_file, notebook_parameters(study.notebook))
    from lotterylab import executors

    if executor is not None:
        values["executor"] = executors.section(executor)
    elif values.get("executor") is not None:  # a bad executor section fails here, not after the notebook has started
        executors.from_params(values["executor"], f"{params_file}: executor")
    out = report_dir(reports_root, name, params_file.stem).resolve()
    executed = executed_notebook(out, name)
    executed.parent.mkdir(parents=True, exist_ok=True)
    injected = {"output_dir": str(out), "runs_root": str(Path(runs_root).resolve())}
    try:
        papermill.execute_notebook(study.notebook, executed, parameters={**values, **injected}, cwd=str(ROOT),
                                   progress_bar=False, log_output=False)
    except PapermillExecutionError as error:
        message = str(error.evalue).splitlines()[0] if error.evalue else ""
        raise StudyError(f"{name} ({params_file}): {error.ename}: {message} (see {executed})") from None
    return reports.render(executed, report_html(out), title=f"{name} · {params_file.stem}")

"""lotterylab: sparse training research — PaI, iterative pruning, cyclic training and SCULPT-ing.

The package is five layers; each imports only the layers below it (`lint-imports` checks the contract in
pyproject.toml, and tests/test_layout.py runs it):

    lotterylab.cli        the `lotterylab` command
    lotterylab.studies    catalog of studies, grids (planning, running, collecting), claims, plots, reports, gallery
    lotterylab.analysis   reading finished runs: loading, LMC barriers, Hessian sharpness, signs, memorization
    lotterylab.training   the training step, runs and their methods, checkpoints, results, locks, packing, executors
    lotterylab.pruning    masks, layerwise ratios, criteria, FLOPs
    lotterylab.core       config, registries, data and its readers, models, LR schedules, paths

The public API, what notebooks and scripts import from `lotterylab` itself:

    load_config(path, overrides=())      a run config from YAML, validated (lotterylab.core.config.load)
    run(cfg, out)                        train one run, or find it finished; its directory (lotterylab.training.runs)
    run_study(name, scale=...)           execute a study's notebook and render its report (lotterylab.studies.runner)
    catalog                              the studies: discovery, `catalog.parameters(study, scale)` in a notebook
    grids                                points of a study: grid, run_all, collect, and the selections on its dataset
    claims, paper, plots                 declared claims and verdicts, the paper's settings, figures and tables
    lmc, sharpness, signs, memorization  analyses of finished runs
    masks, criteria                      masks and pruning scores

Each name is imported on first use, so `import lotterylab` stays cheap beyond the registries below.
"""

import importlib
from typing import Any

# The registries (lotterylab.core.registry) are filled by the modules that define their entries, which the layers'
# __init__ import. Importing both layers here means that every import of lotterylab, whichever module it names,
# validates configs against every built-in dataset, model, schedule, criterion and allocation.
import lotterylab.core  # noqa: E402, F401
import lotterylab.pruning  # noqa: E402, F401
from lotterylab.core.version import __version__

PUBLIC = {
    "load_config": ("lotterylab.core.config", "load"),
    "run": ("lotterylab.training.runs", "run"),
    "run_study": ("lotterylab.studies.runner", "run_study"),
    "catalog": ("lotterylab.studies.catalog", None),
    "grids": ("lotterylab.studies.grids", None),
    "claims": ("lotterylab.studies.claims", None),
    "paper": ("lotterylab.studies.paper", None),
    "plots": ("lotterylab.studies.plots", None),
    "lmc": ("lotterylab.analysis.lmc", None),
    "sharpness": ("lotterylab.analysis.sharpness", None),
    "signs": ("lotterylab.analysis.signs", None),
    "memorization": ("lotterylab.analysis.memorization", None),
    "masks": ("lotterylab.pruning.masks", None),
    "criteria": ("lotterylab.pruning.criteria", None),
}
"""Public name -> (module, attribute or None for the module itself)."""

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'lotterylab' has no attribute {name!r}; public names: {', '.join(PUBLIC)}")
    module, attribute = PUBLIC[name]
    found = importlib.import_module(module)
    return found if attribute is None else getattr(found, attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])

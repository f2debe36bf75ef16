"""A study's grid of runs, by role (the functions notebooks call, all importable from here):

- planning: `grid` of validated run configs from a base and axes (`values`, `sparsities`), `run_dir` of a point;
- running: `run_all` through an executor with progress and a summary line; `status` and `wait` while they train;
- collecting: `collect` into one Dataset and its selections (`cycle_end`, `final`, `stage_reaching`, `at_stage`,
  `costs`), `per_run` analyses, `coupled_sources` for coupled runs, `save` as results.nc.

Imports run planning <- running, planning <- collecting.
"""

from lotterylab.studies.grids.collecting import (  # noqa: F401
    STAGE_DIM,
    against_source,
    at_each_stage,
    at_stage,
    collect,
    costs,
    coupled_sources,
    cycle_end,
    final,
    lmc_between_epochs,
    per_epoch,
    per_run,
    save,
    stage_reaching,
)
from lotterylab.studies.grids.planning import Axis, Point, grid, run_dir, sparsities, values  # noqa: F401
from lotterylab.studies.grids.running import Status, run_all, status, wait  # noqa: F401

"""Executing a study: its notebook run by papermill into reports/<study>/<label>/, the report rendered, the gallery
updated; and `lotterylab status`, what the last execution planned. Which studies exist and their parameters are
lotterylab.studies.catalog's."""

from __future__ import annotations

import math
from pathlib import Path

from lotterylab.studies import catalog, gallery, reports
from lotterylab.training import executors, locks, plans


def run_study(name: str, params: str | Path | None = None, scale: str | None = None,
              reports_root: str | Path = "reports", runs_root: str | Path = "runs",
              executor: str | None = None) -> Path:
    """Validate, execute the study's notebook into reports/<name>/<label>/nb/, render report.html; return its path.
    `executor` (a name or an executor YAML file) replaces the params' executor: where runs train, not what.
    The notebook records the runs it plans in the report directory's plan.json (`plans`), started afresh here."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    study = catalog.get(name)
    params_file = catalog.resolve_params(study, params, scale)
    scale_mode = catalog.is_scale_mode(study)
    overrides = {"executor": executors.section(executor)} if executor is not None else {}
    if scale_mode:
        values = catalog.checked_parameters(study, params_file, overrides)
    else:
        defaults = catalog.notebook_parameters(study.notebook)
        loaded = catalog.load_params(params_file, defaults, [study.root / "params"])
        # an OPTIONAL parameter the older notebook does not take is left out
        values = {name: value for name, value in loaded.items() if name in defaults}
        values.update(overrides)
    if not overrides and values.get("executor") is not None:  # a bad executor fails here, not in the notebook
        executors.from_params(values["executor"], f"{params_file}: executor")
    out = catalog.report_dir(reports_root, name, params_file.stem).resolve()
    executed = catalog.executed_notebook(out, name)
    executed.parent.mkdir(parents=True, exist_ok=True)
    # One writer per report directory: a second `lotterylab study` of the same study and scale would write the same
    # results.nc and notebook at once. A crashed holder's lock (dead pid, this host) is taken over.
    lock = locks.RunLock(out / catalog.STUDY_LOCK, stale_after=math.inf)
    if not lock.try_acquire():
        raise catalog.StudyError(f"{lock.path}: another `lotterylab study` is writing this report "
                                 f"(holder {lock.holder()}); wait for it to finish, or give another --reports")
    try:
        plans.plan_file(out).unlink(missing_ok=True)
        injected = {"output_dir": str(out), "runs_root": str(Path(runs_root).resolve())}
        if scale_mode:  # the notebook reads the file itself (`parameters`); only where and what replaces travel
            values = {catalog.SCALE: params_file.stem, "params_file": str(params_file.resolve()),
                      "overrides": overrides}
        try:
            papermill.execute_notebook(study.notebook, executed, parameters={**values, **injected},
                                       cwd=str(study.root), progress_bar=False, log_output=False)
        except PapermillExecutionError as error:
            message = str(error.evalue).splitlines()[0] if error.evalue else ""
            raise catalog.StudyError(f"{name} ({params_file}): {error.ename}: {message} (see {executed})") from None
        reports.trust(executed)  # signed as written, so that JupyterLab shows its plots
        plans.finish(out)
        html = reports.render(executed, catalog.report_html(out), title=f"{name} · {params_file.stem}")
        gallery.write(reports_root)  # reports/index.html lists this report too
    finally:
        lock.release()
    return html


def status(name: str, params: str | Path | None = None, scale: str | None = None,
           reports_root: str | Path = "reports", runs_root: str | Path | None = None) -> str:
    """`lotterylab status`: the runs the study's last execution planned (plan.json in its report directory) as
    finished, running or pending, one line each; `runs_root` replaces the one the plan recorded."""
    study = catalog.get(name)
    params_file = catalog.resolve_params(study, params, scale)
    out = catalog.report_dir(reports_root, name, params_file.stem)
    plan = plans.read(out)
    if plan is None:
        how = f"--params {params_file}" if params is not None else f"--scale {params_file.stem}"
        raise catalog.StudyError(f"{plans.plan_file(out)}: no plan yet; `lotterylab study {name} {how}` records one "
                                 f"as its notebook plans runs (grids.run_all(..., plan=output_dir))")
    return plans.summary(f"{name} · {params_file.stem}", plan, runs_root)

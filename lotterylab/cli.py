"""Command line: `lotterylab run CONFIG.yaml [--out DIR] [--set key.path=value ...]`, `sweep`, `analyze`, `study`,
`studies`, `status`, `gallery`, `--version`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXECUTOR_HELP = "local, slurm, or a YAML file with an executor section (e.g. params/executors/slurm.yaml): use it"


def _parser() -> argparse.ArgumentParser:
    from lotterylab import __version__

    parser = argparse.ArgumentParser(prog="lotterylab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lotterylab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train one run (idempotent; resumes an interrupted run)")
    run.add_argument("config", help="YAML config file, e.g. params/runs/cyclic.yaml")
    run.add_argument("--out", default="runs", help="root directory of run directories (default: runs)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set schedule.epochs=5 (repeatable)")
    from lotterylab.analysis import analyze

    analyze.add_parser(commands)
    study = commands.add_parser("study", help="execute a study notebook with papermill and render its offline report")
    study.add_argument("name", help="study name; `lotterylab studies` lists them")
    study.add_argument("--params", help="params YAML file (default: params/NAME/<scale>.yaml)")
    study.add_argument("--scale", help="smoke, cpu, gpu or paper (default: cpu)")
    study.add_argument("--reports", default="reports", help="root of report directories (default: reports)")
    study.add_argument("--runs", default="runs", help="root of run directories (default: runs)")
    study.add_argument("--executor", metavar="NAME|FILE", help=EXECUTOR_HELP + " instead of the params' executor")
    commands.add_parser("studies", help="list the studies, one line each")
    gallery = commands.add_parser("gallery", help="write REPORTS/index.html linking every report (`study` does too)")
    gallery.add_argument("--reports", default="reports", help="root of report directories (default: reports)")
    status = commands.add_parser("status", help="a study's planned runs: finished, running (lock held) or pending")
    status.add_argument("name", help="study name; `lotterylab studies` lists them")
    status.add_argument("--params", help="params YAML file the study ran with (default: params/NAME/<scale>.yaml)")
    status.add_argument("--scale", help="smoke, cpu, gpu or paper (default: cpu)")
    status.add_argument("--reports", default="reports", help="root of report directories (default: reports)")
    status.add_argument("--runs", help="root of run directories (default: the one the study ran with)")
    sweep = commands.add_parser("sweep", help="a base config x grid axes, run by the executor the file names "
                                              "(local, or slurm through submitit)")
    sweep.add_argument("params", help="sweep YAML with sections base, axes and executor (see docs/scaling.md)")
    sweep.add_argument("--runs", default="runs", help="root of run directories (default: runs)")
    sweep.add_argument("--executor", metavar="NAME|FILE", help=EXECUTOR_HELP + " instead of the file's section")
    return parser


def _failures() -> tuple[type[Exception], ...]:
    """What a command ends on with one line naming the field or file: ConfigError, StudyError, AnalysisError and
    MaskError are ValueErrors; WriteError is a durable write that failed (a full disk)."""
    from lotterylab.core.files import WriteError
    from lotterylab.training.checkpoint import CheckpointError
    from lotterylab.training.executors import JobFailed
    from lotterylab.training.train import DivergenceError

    return ValueError, CheckpointError, WriteError, DivergenceError, JobFailed


def _interrupted(where: str) -> int:
    print(f"lotterylab: interrupted {where}; rerun the same command to resume", file=sys.stderr)
    return 130


def _run(args: argparse.Namespace) -> int:
    from lotterylab.core import config, distributed
    from lotterylab.training import runs

    cfg = config.load(args.config, args.overrides)
    try:
        run_dir = runs.run(cfg, args.out)
    except KeyboardInterrupt:
        from lotterylab.core import paths
        from lotterylab.training import executors

        if not distributed.is_main():  # under torchrun, one line for the whole run
            return 130
        at = executors.start_position(paths.run_dir(Path(args.out), cfg.run_hash())) or {"stage": 0, "epoch": 0}
        return _interrupted(f"at stage {at['stage']}, epoch {at['epoch']}")
    if distributed.is_main():
        print(run_dir)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from lotterylab.studies import grids, sweeps

    sweep = sweeps.load(args.params, args.executor)
    try:
        run_dirs = grids.run_all(sweep.points, args.runs, sweep.executor)
    except KeyboardInterrupt:
        return _interrupted(f"with {grids.status(sweep.points, args.runs)}")
    print("\n".join(str(run_dir) for run_dir in run_dirs))
    return 0


def _study(args: argparse.Namespace) -> int:
    from lotterylab.studies import catalog, runner

    if args.command == "studies":
        for study in catalog.STUDIES.values():
            print(f"{study.name:<18} {study.summary}")
        return 0
    try:
        report = runner.run_study(args.name, args.params, args.scale, args.reports, args.runs, args.executor)
    except KeyboardInterrupt:
        return _interrupted(f"during study {args.name}")
    print(report)
    return 0


def _status(args: argparse.Namespace) -> int:
    from lotterylab.studies import runner

    print(runner.status(args.name, args.params, args.scale, args.reports, args.runs))
    return 0


def _gallery(args: argparse.Namespace) -> int:
    from lotterylab.studies import gallery

    print(gallery.write(args.reports))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from lotterylab.analysis import analyze

    print(analyze.main(args))
    return 0


COMMANDS = {"run": _run, "sweep": _sweep, "study": _study, "studies": _study, "status": _status, "gallery": _gallery,
            "analyze": _analyze}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lotterylab.training import progress

    try:
        with progress.echo_log():  # INFO records (a sweep's summary line) are a command's output
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # one the command could not place: in analyze, or before a run or sweep started
        print("lotterylab: interrupted", file=sys.stderr)
        return 130
    except _failures() as error:  # evaluated only once something is raised: `studies` stays fast
        print(f"lotterylab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

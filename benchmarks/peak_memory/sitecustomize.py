"""Peak memory of every Python process of a GPU-check step, recorded at exit (benchmarks/gpu_check.py).

benchmarks/gpu_check.py puts this folder first on PYTHONPATH, so Python imports this module at start-up in each
process a step starts (pytest, a benchmark, the study's notebook kernel). At exit the process appends one JSON line to
$LOTTERYLAB_PEAK_MEMORY_FILE: torch.cuda.max_memory_allocated if it used CUDA, and its peak resident set size.
A sitecustomize this one shadows still runs.
"""

import atexit
import importlib.machinery
import importlib.util
import json
import os
import resource
import sys


def _record(path: str) -> None:
    torch = sys.modules.get("torch")
    gpu = None
    try:
        if torch is not None and torch.cuda.is_initialized():
            gpu = max(torch.cuda.max_memory_allocated(index) for index in range(torch.cuda.device_count())) / 2**20
    except RuntimeError:  # CUDA already torn down at exit: the line still records the process and its RSS
        pass
    line = {"pid": os.getpid(), "argv": sys.argv[:2], "peak_gpu_mem_mib": None if gpu is None else round(gpu, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    with open(path, "a") as file:
        file.write(json.dumps(line) + "\n")


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get("LOTTERYLAB_PEAK_MEMORY_FILE"):
    atexit.register(_record, os.environ["LOTTERYLAB_PEAK_MEMORY_FILE"])
_run_shadowed()

"""Shared fixtures: every test writes datasets and runs under temporary directories, never the user's home."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def jupyter_data(tmp_path_factory):
    """Notebook signatures (reports.trust) go to a temporary Jupyter data dir, not the user's own store."""
    previous = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(tmp_path_factory.mktemp("jupyter-data"))
    yield
    if previous is None:
        os.environ.pop("JUPYTER_DATA_DIR", None)
    else:
        os.environ["JUPYTER_DATA_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """One MNIST-1D cache for the whole session; subprocesses inherit it through the environment."""
    path = tmp_path_factory.mktemp("data-cache")
    previous = os.environ.get("LOTTERYLAB_DATA")
    os.environ["LOTTERYLAB_DATA"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("LOTTERYLAB_DATA", None)
    else:
        os.environ["LOTTERYLAB_DATA"] = previous

"""Shared fixtures: every test writes datasets and runs under temporary directories, never the user's home."""

import os

import pytest


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

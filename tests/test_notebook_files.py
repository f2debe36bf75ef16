"""Committed notebooks carry the kernel and language metadata JupyterLab 4 writes, in the layout it saves, so that
opening one does not mark it modified (scripts/check_jupyterlab.py checks that in a real JupyterLab)."""

import json
import platform
import re
import shutil
from pathlib import Path

import pytest

from lotterylab.studies import notebook_files

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_metadata_is_what_the_installed_kernel_reports():
    kernel = pytest.importorskip("ipykernel.ipkernel")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    assert notebook_files.language_info() == kernel.IPythonKernel.language_info
    native = kernelspec.KernelSpecManager().get_kernel_spec("python3")
    assert notebook_files.KERNELSPEC == {"display_name": native.display_name, "language": native.language,
                                         "name": "python3"}


def test_write_lab_metadata_sets_both_keeps_the_rest_and_is_idempotent(tmp_path):
    pytest.importorskip("nbformat")
    path = tmp_path / "study.ipynb"
    path.write_text(json.dumps({"cells": [], "metadata": {"lotterylab": {"description": "d"}, "kernelspec": {
        "display_name": "Python 3", "language": "python", "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebook_files.write_lab_metadata(path, "3.11.7")
    metadata = json.loads(path.read_text())["metadata"]
    assert metadata["lotterylab"] == {"description": "d"}
    assert metadata["kernelspec"]["display_name"] == "Python 3 (ipykernel)"
    assert metadata["language_info"]["version"] == "3.11.7" and metadata["language_info"]["name"] == "python"
    assert not notebook_files.write_lab_metadata(path, "3.11.7")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_every_committed_notebook_is_as_jupyterlab_saves_it(notebook, tmp_path):
    pytest.importorskip("nbformat")
    metadata = json.loads(notebook.read_text())["metadata"]
    assert metadata.get("kernelspec") == notebook_files.KERNELSPEC
    version = metadata.get("language_info", {}).get("version", platform.python_version())
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{version!r}: no kernel reports it, so every opening marks " \
        f"the notebook modified (ipykernel reports a full version, as {platform.python_version()!r})"
    assert metadata.get("language_info") == notebook_files.language_info(version)
    copy = shutil.copyfile(notebook, tmp_path / notebook.name)
    assert not notebook_files.write_lab_metadata(copy, version), \
        f"{notebook.name}: not in JupyterLab's layout; run notebook_files.write_lab_metadata on it"

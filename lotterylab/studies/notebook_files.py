"""Committed notebooks as JupyterLab 4 saves them, so that opening one does not mark it modified.

On opening a notebook JupyterLab starts its kernel and copies the kernel's spec and language into the notebook's
metadata; any difference marks the notebook modified. Checked in JupyterLab 4.6 (scripts/check_jupyterlab.py): only
the full set below, Python version included, leaves it unmodified, so a reader whose kernel runs another Python
version still sees the mark.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def language_info(python_version: str | None = None) -> dict[str, Any]:
    """The language_info ipykernel reports (its IPythonKernel.language_info) for `python_version` (default: this
    interpreter's), which JupyterLab writes as it is."""
    return {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": python_version or platform.python_version(),
    }


def with_lab_metadata(notebook: dict[str, Any], python_version: str | None = None) -> dict[str, Any]:
    """`notebook` (a notebook's JSON, or an nbformat node) with metadata.kernelspec and metadata.language_info set as
    JupyterLab 4 sets them; other metadata stays."""
    metadata = notebook.setdefault("metadata", {})
    metadata["kernelspec"] = dict(KERNELSPEC)
    metadata["language_info"] = language_info(python_version)
    return notebook


def write_lab_metadata(path: str | Path, python_version: str | None = None) -> bool:
    """Rewrite the notebook at `path` with `with_lab_metadata`, in the layout JupyterLab saves (nbformat: sorted keys,
    one-space indent, a final newline), so that a save in JupyterLab changes no byte; True if the file changed."""
    import nbformat

    path = Path(path)
    before = path.read_text(encoding="utf-8")
    notebook = with_lab_metadata(nbformat.reads(before, as_version=4), python_version)
    after = nbformat.writes(notebook) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before

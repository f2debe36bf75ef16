"""Offline HTML reports: an executed notebook rendered with code hidden and BokehJS inlined once in the head."""

from __future__ import annotations

from pathlib import Path

BOKEHJS_MARKER = "lotterylab-bokehjs"  # metadata key of the notebook output that carries BokehJS for JupyterLab

# nbconvert's lab template loads require.js, MathJax, mermaid and the widget manager from CDNs; a report needs none.
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}
<script type="text/javascript">
{{ resources.bokehjs }}
</script>
{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
TEMPLATE_NAME = "lotterylab_report.html.j2"


def bokehjs() -> str:
    """BokehJS itself, without widgets, tables, GL or MathJax (the plots are static figures) and without panel."""
    from bokeh.resources import Resources

    return "\n".join(Resources(mode="inline", components=["bokeh"]).js_raw)


def _for_report(notebook):
    """Drop what a reader should not see: the BokehJS output (the head holds it) and stderr (warnings, progress)."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                output for output in cell.outputs
                if not output.get("metadata", {}).get(BOKEHJS_MARKER)
                and not (output.output_type == "stream" and output.name == "stderr")
            ]
    return notebook


def trust(notebook: str | Path) -> None:
    """Sign an executed notebook as trusted in this user's Jupyter signature store (nbformat's NotebookNotary), so that
    JupyterLab runs its outputs' JavaScript and shows its plots when it opens it. Trust follows the content: a copy
    stays trusted, an edit made outside Jupyter untrusts it, another user or machine has its own store."""
    import nbformat
    from nbformat.sign import NotebookNotary

    notary = NotebookNotary()
    try:
        notary.sign(nbformat.read(str(notebook), as_version=4))
    finally:
        notary.store.close()


def _claims_first(notebook):
    """Move the output marked as the claims' verdict table ("What the data say") to a cell of its own right after the
    notebook's first cell (the title), so that a report opens with it; JupyterLab shows it where it was computed."""
    import nbformat

    from lotterylab.studies.claims import REPORT_MARKER

    marked = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.get("metadata", {}).get(REPORT_MARKER)]
    if not marked:
        return notebook
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not output.get("metadata", {}).get(REPORT_MARKER)]
    top = nbformat.v4.new_code_cell(source="", outputs=marked)
    notebook.cells.insert(1 if notebook.cells and notebook.cells[0].cell_type == "markdown" else 0, top)
    return notebook


def render(executed: str | Path, html: str | Path, title: str) -> Path:
    """Write `html` from the executed notebook: markdown and outputs only, no code, no network needed to open it."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    notebook = _claims_first(_for_report(nbformat.read(executed, as_version=4)))
    notebook.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", template_file=TEMPLATE_NAME,
                            extra_loaders=[jinja2.DictLoader({TEMPLATE_NAME: TEMPLATE})],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook, resources={"bokehjs": bokehjs()})
    html = Path(html)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(body, encoding="utf-8")
    return html

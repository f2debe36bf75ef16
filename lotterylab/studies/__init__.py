"""Studies: catalog, grids (planning, running, collecting), claims, plots, reports, gallery and sweeps.

Imports the layers below.
"""

"""Masks, layerwise ratios, pruning criteria and FLOP counts. Imports only lotterylab.core.

The modules imported here register criteria and allocations (lotterylab.core.registry).
"""

from lotterylab.pruning import criteria, masks, ratios  # noqa: F401 (registers their entries)

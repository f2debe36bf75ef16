"""Configuration, registries, data and its readers, models, LR schedules: what a run is made of.

Imports nothing from the other layers. The modules imported here register datasets, models and schedules
(lotterylab.core.registry).
"""

from lotterylab.core import archives, data, imagenet, models, schedules  # noqa: F401 (registers their entries)

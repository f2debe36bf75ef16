"""Name -> implementation tables: config validation reads them, the module defining an entry fills them.

A config names its dataset, model, schedule, criterion and allocation; `lotterylab.core.config` checks each name
against the table here, so it imports no implementation. Each implementing module registers its entries where they
are defined (`@MODELS.register("cnn1d")`), and each layer's `__init__` imports its registering modules; the package's
`__init__` imports the layers, so any import of lotterylab sees every built-in entry. A plug-in registers its own
entries the same way, before it validates a config that names them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lotterylab.core.sections import check_registered

Entry = TypeVar("Entry", bound=Callable[..., Any])


class Registry(dict[str, Callable[..., Any]]):
    """A table of named implementations of one kind (`kind` names it in errors)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """Decorator: register the function under `name`; a second registration of a name is an error."""
        def add(entry: Entry) -> Entry:
            if name in self and self[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = entry
            return entry
        return add

    def check(self, name: str, *also: str) -> str:
        """`name` if it is registered (or one of `also`); a ValueError listing the valid names otherwise."""
        return check_registered(self.kind, name, [*self, *also])

    def get_checked(self, name: str) -> Callable[..., Any]:
        """The entry for `name`; a ValueError listing the valid names when there is none."""
        return self[self.check(name)]


DATASETS = Registry("dataset")
"""data.name -> loader(DataConfig) -> Data (lotterylab.core.data, archives, imagenet)."""
MODELS = Registry("model")
"""model.name -> builder(ModelConfig, input_shape, num_classes) -> nn.Module (lotterylab.core.models)."""
SCHEDULES = Registry("schedule")
"""schedule.name -> factor(ScheduleConfig, position in the cycle) (lotterylab.core.schedules)."""
CRITERIA = Registry("criterion")
"""mask.criterion -> scores (lotterylab.pruning.criteria)."""
ALLOCATIONS = Registry("allocation")
"""mask.allocation -> mask from scores and a density (lotterylab.pruning.masks, lotterylab.pruning.ratios)."""

"""The shared training engine: tasks plug models, data and losses into one loop."""

from detkd.engine.acceleration import resolve_precision
from detkd.engine.checkpoint import atomic_save, load_checkpoint
from detkd.engine.distributed import is_launch_rank_zero
from detkd.engine.task import StreamDataset, Task
from detkd.engine.settings import ExistingRunError, NonFiniteLossError, TrainConfig, TrainResult
from detkd.engine.trainer import Trainer, read_history

__all__ = [
    "ExistingRunError", "NonFiniteLossError", "StreamDataset", "Task", "TrainConfig",
    "TrainResult", "Trainer", "atomic_save", "is_launch_rank_zero", "load_checkpoint", "read_history",
    "resolve_precision",
]

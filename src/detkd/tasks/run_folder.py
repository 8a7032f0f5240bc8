"""What every training command does before its trainer starts: talk on rank zero only, announce
the run and write its ``config.yaml`` (so that the run can be repeated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from detkd.config import save_config
from detkd.engine import TrainConfig


def rank_zero_say(rank_zero: bool) -> Callable[..., None]:
    """``print`` in the process that writes shared files, a no-op in the others."""
    return print if rank_zero else (lambda *args, **kwargs: None)


def open_run_folder(
    config: dict[str, Any], train_cfg: TrainConfig, out: Path, unit: str, rank_zero: bool
) -> None:
    """Announce ``steps x batch {unit} of HxW -> out`` and, on rank zero, write ``out/config.yaml``."""
    rank_zero_say(rank_zero)(
        f"run     : {train_cfg.steps} steps x {train_cfg.batch_size} {unit} of "
        f"{config['data']['height']}x{config['data']['width']} -> {out}"
    )
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")

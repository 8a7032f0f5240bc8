"""What every training command does before its trainer starts: talk on rank zero only, claim the
run folder for this run, refuse a folder that already holds a run (unless resuming), and write
``config.yaml`` (so that the run can be repeated) only once the run is sure to start."""

from __future__ import annotations

import atexit
import copy
import errno
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from detkd.config import ConfigError, dump_config, load_config_file, save_config
from detkd.engine import TrainConfig, Trainer
from detkd.safe_files import LockHeld, acquire_lock, describe_lock_owner, read_lock_owner

log = logging.getLogger(__name__)

LOCK_NAME = ".detkd-run.lock"


class RunFolderError(OSError):
    """``--out`` cannot hold this run: not a folder, not writable, or in use by another live run."""


def rank_zero_say(rank_zero: bool) -> Callable[..., None]:
    """``print`` in the process that writes shared files, a no-op in the others."""
    return print if rank_zero else (lambda *args, **kwargs: None)


def no_model_names(value: str) -> bool:
    """The ``is_name`` of configs whose path keys hold only paths: nothing is a model's name."""
    return False


def open_run_folder(
    config: dict[str, Any], train_cfg: TrainConfig, out: Path, unit: str, rank_zero: bool, resume: bool = False,
    path_keys: Sequence[str] = (), is_name: Callable[[str], bool] = no_model_names,
) -> None:
    """Announce the run, claim ``out`` (rank zero) and write ``out/config.yaml``.

    The values at ``path_keys`` (dotted keys of file or folder paths, e.g. ``data.config``) are
    written absolute (:func:`absolute_paths`; values for which ``is_name`` is true, such as a model's
    name, stay as they are), so that ``--config out/config.yaml`` repeats the run from any folder.
    Nothing in ``out`` changes when the run is refused: a folder of another live run
    (:class:`RunFolderError`), or one that holds a run while ``resume`` is off
    (:class:`~detkd.engine.trainer.ExistingRunError`).
    """
    rank_zero_say(rank_zero)(
        f"run     : {train_cfg.steps} steps x {train_cfg.batch_size} {unit} of "
        f"{config['data']['height']}x{config['data']['width']} -> {out}"
    )
    if rank_zero:
        config = absolute_paths(config, path_keys, is_name)
        claim_run_folder(out)
        Trainer(train_cfg, out).refuse_existing_run(resume)
        if resume:
            refuse_other_models(config, out, path_keys, is_name)
        save_config(config, out / "config.yaml")


def absolute_paths(
    config: dict[str, Any], path_keys: Sequence[str], is_name: Callable[[str], bool] = no_model_names
) -> dict[str, Any]:
    """A copy of ``config`` with the paths at the dotted ``path_keys`` made absolute (from the current folder).

    A value may be a path or a list of paths; ``None``, missing keys and values for which
    ``is_name`` is true (keys that take a model's name or a file) stay as they are. ``~`` is
    expanded; symbolic links are kept as given.
    """
    config = copy.deepcopy(config)

    def absolute(value: Any) -> Any:
        if isinstance(value, (str, Path)) and str(value) and not is_name(str(value)):
            return os.path.abspath(os.path.expanduser(str(value)))
        if isinstance(value, (list, tuple)):
            return [absolute(v) for v in value]
        return value

    for dotted in path_keys:
        *parents, last = dotted.split(".")
        section: Any = config
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and last in section:
            section[last] = absolute(section[last])
    return config


#: Config sections that a resumed run must keep: its checkpoints hold these models' weights.
MODEL_SECTIONS = ("student", "teacher", "model")


def refuse_other_models(
    config: dict[str, Any], out: Path, path_keys: Sequence[str] = (), is_name: Callable[[str], bool] = no_model_names
) -> None:
    """Raise :class:`ConfigError` when resuming ``out`` with other models than it was started with.

    The run's ``config.yaml`` says what it was started with; a resumed run with another student
    (or teacher) would fail deep inside ``load_state_dict`` or, worse, mix two models. Paths at
    ``path_keys`` are compared absolute (a relative one in an older ``config.yaml`` from the current folder).
    """
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return
    saved = absolute_paths(load_config_file(saved_path), path_keys, is_name)
    config = absolute_paths(config, path_keys, is_name)
    for section in MODEL_SECTIONS:
        if section not in config or section not in saved:
            continue
        now = yaml.safe_load(dump_config({section: config[section]}))[section]
        differences = [f"{section}.{key}: {saved[section].get(key)!r} then, {value!r} now"
                       for key, value in now.items() if saved[section].get(key) != value]
        if differences:
            raise ConfigError(
                f"'{out}' holds a run started with other models ({'; '.join(differences)}; see {saved_path}). "
                f"Resume it without {section} options ('--resume' alone keeps the run's own settings) or with "
                "the same ones, or start a new run in another --out."
            )


# ---------------------------------------------------------------------- the folder lock
_held: dict[Path, Path] = {}  # run folder -> its lock file, for the locks this process holds


def claim_run_folder(out: str | Path) -> Path:
    """Create ``out`` if needed and hold its lock file until this process ends.

    The lock file holds the process id, host and start time of the run. A lock whose process
    no longer runs (a killed run) is taken over with a warning; the same process may claim a
    folder again (a resumed run in one Python session).

    Returns:
        The lock file.

    Raises:
        RunFolderError: ``out`` is under a regular file, cannot be written, or another live
            process holds its lock.
    """
    out = Path(out)
    _check_folder_path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error(out, err) from None
    lock = out / LOCK_NAME
    if _held.get(out.resolve()) == lock:
        return lock
    try:
        acquire_lock(lock, reentrant=True, on_takeover=lambda owner: log.warning(
            "Taking over '%s' from process %s, which no longer runs", lock, owner.get("pid", "?")))
    except LockHeld as err:
        raise RunFolderError(
            f"'{out}' is in use by another detkd run{describe_lock_owner(err.owner)}. Wait for it to finish or "
            f"choose another --out; if no such process runs, delete '{lock}'."
        ) from None
    except OSError as err:
        raise _folder_error(out, err) from None
    _held[out.resolve()] = lock
    atexit.register(release_run_folder, out)
    return lock


def release_run_folder(out: str | Path) -> None:
    """Remove the lock of ``out`` if this process holds it."""
    lock = _held.pop(Path(out).resolve(), None)
    if lock is not None and read_lock_owner(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def _check_folder_path(out: Path) -> None:
    """A one-line error when a part of ``out`` is a regular file."""
    for part in [out, *out.parents]:
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == out else f"is inside '{part}', which is a file"
                raise RunFolderError(f"--out '{out}' {where}; choose a folder")
            return


def _folder_error(out: Path, err: OSError) -> RunFolderError:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunFolderError(f"--out '{out}' cannot be written ({err.strerror}); choose a folder you can write to")
    if err.errno == errno.ENOSPC:
        return RunFolderError(f"--out '{out}': the disk is full; free some space or choose another folder")
    return RunFolderError(f"--out '{out}' cannot be used: {err.strerror or err}")

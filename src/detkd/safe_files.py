"""Reading and writing files so that opening one can never run code or use damaged data.

* :func:`safe_torch_load` is the only way detkd reads a ``.pt``/``.pth`` file: ``torch.load``
  with ``weights_only=True`` and no fallback. A file that holds anything beyond tensors and
  plain containers (a pickled class, a function, a ``subprocess`` call) is refused with
  :class:`UnsafeFileError`, which names the file and the object it asked for.
* :func:`content_digest` is a SHA-256 over the *values* of a saved object (tensor bytes, shapes,
  dtypes, plain values, key order). detkd's checkpoints and model files carry it under
  ``"digest"``; :func:`verify_digest` recomputes it after loading, so flipped bytes in a tensor
  are found even though ``torch.load`` reads them without complaint.
* :func:`remove_orphan_temp_files` deletes the ``.NAME.*.tmp`` files that a kill during an
  atomic write leaves behind.
* :func:`lock_owner`, :func:`read_lock_owner` and :func:`lock_owner_alive`: what a lock file says
  (process id, host, start time) and whether that process still runs, so that a lock left by a
  killed process is taken over instead of blocking the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

DIGEST_KEY = "digest"
#: How the files that ``torch.save`` writes begin: a zip archive (since torch 1.6), or a pickle of protocol 2 or
#: more (the legacy format). Anything else fed to ``torch.load`` is read as a protocol-0 pickle and fails on
#: its first byte.
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


class UnreadableFileError(ValueError):
    """The file is not a readable torch file (truncated, corrupt, or something else)."""


class UnsafeFileError(UnreadableFileError):
    """The file holds Python objects beyond tensors and plain containers: loading it could run code."""


class DamagedFileError(UnreadableFileError):
    """The file reads, but its content does not match the digest saved in it."""


def safe_torch_load(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name ``path``.

    Args:
        path: the file.
        what: what the file is meant to be, for messages (``"SuperPoint weights file"``).
        map_location: ``torch.load``'s argument.

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: the file asks for a Python global (class, function) to be imported.
        UnreadableFileError: not a torch file, truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    if not path.is_file():
        raise UnreadableFileError(f"{what} '{path}' is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        start = _first_bytes(path)
        if not start.startswith(TORCH_FILE_STARTS):
            # torch.load reads any other file as a pickle, so a text file or an HTML page fails on its
            # first byte with "Unsupported operand": it was never written by torch.save.
            raise UnreadableFileError(
                f"Cannot read {what} '{path}': it is not a file that torch.save writes (those begin with a "
                f"zip or pickle header; this one begins with {start[:16]!r}). Is it a download error page, a "
                "text file, or another format? Re-download or re-save it."
            ) from err
        if "Unsupported global" in str(err) or "Unsupported operand" in str(err):
            raise UnsafeFileError(
                f"Refusing to load {what} '{path}': it holds Python objects beyond tensors and plain "
                f"containers ({_asked_for(err)}), and unpickling them could run code from the file. "
                "detkd loads only tensors, numbers, strings, lists and dicts. Fix: if you trust the file, "
                "re-save its state dict (torch.save(model.state_dict(), 'clean.pt') where it was made) "
                "and pass that."
            ) from err
        raise _unreadable(path, what, err) from err
    except Exception as err:  # noqa: BLE001 - zip/pickle/EOF errors all mean "not a readable torch file"
        raise _unreadable(path, what, err) from err


def _first_bytes(path: Path, count: int = 64) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(count)
    except OSError:
        return b""


def _unreadable(path: Path, what: str, err: BaseException) -> UnreadableFileError:
    return UnreadableFileError(
        f"Cannot read {what} '{path}': not a readable torch file ({_short(err)}). "
        "Is it truncated, or a download error page? Re-download or re-save it."
    )


def _asked_for(err: BaseException) -> str:
    """What a refused file asked the unpickler for, e.g. ``"it asks for the global 'posix.system'"``."""
    match = re.search(r"GLOBAL (\S+)", str(err))
    return f"it asks for the global '{match.group(1)}'" if match else _short(err)


def _short(err: BaseException) -> str:
    """The informative line of a (possibly very long) torch.load error."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    line = re.sub(r"\s*Check the recommended steps.*", "", line)
    return f"{type(err).__name__}: {line[:200]}"


# ---------------------------------------------------------------------- content digests
def content_digest(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s content: tensors by dtype, shape and bytes; plain values by repr.

    Mappings are hashed in their own key order (which ``torch.save`` keeps), a ``"digest"``
    entry of the top-level mapping is left out, so the digest can be stored inside the object.
    """
    hasher = hashlib.sha256()
    _feed(hasher, value, top=True)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any, top: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key, item in value.items():
            if top and key == DIGEST_KEY:
                continue
            _feed(hasher, key)
            _feed(hasher, item)
        hasher.update(b"}")
    elif isinstance(value, (list, tuple)):
        hasher.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    elif isinstance(value, float):
        hasher.update(b"f" + struct.pack("<d", value))
    else:
        hasher.update(f"{type(value).__name__}:{value!r};".encode())


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its :func:`content_digest` under ``"digest"`` (a new dict)."""
    payload = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    return {**payload, DIGEST_KEY: content_digest(payload)}


def verify_digest(obj: Any, path: str | Path, what: str, required: bool = False) -> None:
    """Check the ``"digest"`` saved in a loaded mapping against its content.

    Args:
        obj: what :func:`safe_torch_load` returned.
        path, what: for messages.
        required: a missing digest is an error (otherwise files written before digests existed pass).

    Raises:
        DamagedFileError: the digest is missing (with ``required``) or does not match.
    """
    saved = obj.get(DIGEST_KEY) if isinstance(obj, Mapping) else None
    if saved is None:
        if required:
            raise DamagedFileError(f"{what} '{path}' has no content digest; it was not written by this detkd")
        return
    if not isinstance(saved, str) or saved != content_digest(obj):
        raise DamagedFileError(
            f"{what} '{path}' is damaged: its content does not match the digest saved in it "
            "(a disk or copy error changed it after it was written). Do not use it."
        )


# ---------------------------------------------------------------------- temporary files
def remove_orphan_temp_files(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp`` files in ``folder`` left by a kill during an atomic write; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


#: A lock file that names no process (unreadable, or created a moment ago and not yet written) is
#: taken as abandoned once it is this old, seconds.
UNNAMED_LOCK_STALE_S = 10.0


class LockHeld(Exception):
    """A live process (or one on another host) holds ``lock``; ``owner`` is what the file names."""

    def __init__(self, lock: Path, owner: Mapping[str, Any]) -> None:
        super().__init__(f"'{lock}' is held{describe_lock_owner(owner)}")
        self.lock, self.owner = lock, dict(owner)


def describe_lock_owner(owner: Mapping[str, Any]) -> str:
    """`` (process 12 on host, since 2026-12-05 03:00:00)``, or ``""`` when the lock names no process."""
    if "pid" not in owner:
        return ""
    return f" (process {owner['pid']} on {owner.get('host', '?')}, since {owner.get('started', '?')})"


def lock_is_stale(lock: Path, owner: Mapping[str, Any]) -> bool:
    """Whether ``lock`` was left by a process that no longer runs (see :func:`lock_owner_alive`); one that
    names no process is stale only after :data:`UNNAMED_LOCK_STALE_S` (its writer may be about to fill it)."""
    if "pid" in owner:
        return not lock_owner_alive(owner)
    try:
        return time.time() - lock.stat().st_mtime > UNNAMED_LOCK_STALE_S
    except FileNotFoundError:
        return True


def acquire_lock(lock: Path, reentrant: bool = False,
                 on_takeover: Callable[[Mapping[str, Any]], None] | None = None) -> bool:
    """Create the lock file ``lock`` (exclusively) naming this process (:func:`lock_owner`).

    A lock left by a process that no longer runs (:func:`lock_is_stale`) is removed, after
    ``on_takeover(owner)`` (the caller's warning), and taken.

    Args:
        reentrant: a lock this process already holds counts as taken.

    Returns:
        True when the file was created now; False when this process held it already (``reentrant``).

    Raises:
        LockHeld: another live process holds it. OSError: the file cannot be created.
    """
    for _ in range(2):  # the second try follows the removal of a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_lock_owner(lock)
            if reentrant and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                return False
            if not lock_is_stale(lock, owner):
                raise LockHeld(lock, owner) from None
            if on_takeover is not None:
                on_takeover(owner)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(lock_owner(), handle)
        return True
    raise LockHeld(lock, read_lock_owner(lock))  # another process took it between our two tries


def lock_owner() -> dict[str, Any]:
    """What this process writes into a lock file: ``pid``, ``host`` and ``started`` (local time)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def read_lock_owner(lock: Path) -> dict[str, Any]:
    """The owner a lock file names; ``{}`` when it is unreadable, half-written or of another format."""
    try:
        owner = json.loads(lock.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_owner_alive(owner: Mapping[str, Any]) -> bool:
    """Whether the lock's process still runs; a lock of another host is taken as alive, one without a
    process id as stale."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True

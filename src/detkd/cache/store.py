"""A folder of teacher outputs: fixed-shape arrays per entry, in memory-mapped ``.npy`` shards.

The store knows nothing of key points or detectors. A task declares its *fields* (name, shape,
dtype of one entry, e.g. ``logits (65, 30, 40) float16``) and a *fingerprint* (a JSON-able
dict: the teacher's checksum and every setting that changes its outputs). Entries are looked
up by string keys that the task derives from the input's content (e.g. an image digest and a
view number). Opening a folder whose fingerprint or fields differ from the caller's is an
error that names the difference, so outputs of another teacher or another preprocessing are
never reused.

Layout of a cache folder::

    manifest.json                 format, fingerprint, fields, committed shards and their rows
    shard-00000.keys.json         the key of each row
    shard-00000.<field>.npy       (rows, *shape) array per field, read with numpy memmap

Shards are written whole and then committed by an atomic rewrite of ``manifest.json``, so a
killed build leaves every committed entry usable; an interrupted shard is simply not listed.
The manifest holds the SHA-256 of each shard file, checked when the shard is first read in a
process: an edited value or swapped keys are refused instead of being trained on.
Variable-size outputs (a detector's candidates) fit by padding to a fixed maximum and storing
the count as another field.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from detkd.safe_files import LockHeld, acquire_lock, describe_lock_owner

CACHE_FORMAT = "detkd.teacher_cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".writing.lock"


class TeacherCacheError(ValueError):
    """A cache that cannot be used as asked: other teacher or settings, missing entries, bad files."""


@dataclass(frozen=True)
class CacheField:
    """One array stored per entry: ``shape`` of a single entry and its numpy ``dtype`` name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "CacheField":
        return cls(str(value["name"]), tuple(int(v) for v in value["shape"]), str(value["dtype"]))

    @property
    def bytes_per_entry(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def fingerprint_differences(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values, e.g. ``teacher: 'ab12…' != 'cd34…'``."""
    if isinstance(stored, Mapping) and isinstance(wanted, Mapping):
        out = []
        for key in sorted(set(stored) | set(wanted), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in stored:
                out.append(f"{where}: missing in the cache")
            elif key not in wanted:
                out.append(f"{where}: only in the cache")
            else:
                out.extend(fingerprint_differences(stored[key], wanted[key], where))
        return out
    if isinstance(stored, (list, tuple)) and isinstance(wanted, (list, tuple)) and len(stored) == len(wanted):
        return [d for i, (a, b) in enumerate(zip(stored, wanted)) for d in fingerprint_differences(a, b, f"{path}[{i}]")]
    if stored != wanted:
        return [f"{path}: cache has {_short(stored)}, this run has {_short(wanted)}"]
    return []


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + "…" + text[-8:]


def _plain(value: Any) -> Any:
    """Tuples -> lists (as JSON gives them back), so that fingerprints compare equal after a round trip."""
    return json.loads(json.dumps(value, default=str))


class TeacherOutputCache:
    """Read and append entries of a cache folder (see the module docstring).

    Args:
        folder: the cache folder (created with ``create=True`` if it does not exist).
        fingerprint: JSON-able description of teacher and preprocessing; must equal the folder's.
        fields: the arrays of one entry; must equal the folder's.
        create: start an empty cache when the folder has none; else that is an error.

    Raises:
        TeacherCacheError: the folder holds a cache of another fingerprint or other fields
            (the message lists every difference), is not a detkd cache, or does not exist.
    """

    def __init__(
        self, folder: str | Path, fingerprint: Mapping[str, Any], fields: Sequence[CacheField], create: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.fingerprint = _plain(dict(fingerprint))
        self.fields = tuple(fields)
        names = [f.name for f in self.fields]
        if not names or len(set(names)) != len(names) or "keys" in names:
            raise ValueError(f"Cache fields need distinct names other than 'keys', got {names}")
        manifest_path = self.folder / MANIFEST
        if manifest_path.exists():
            manifest = self._read_manifest()
            self._check_compatible(manifest)
        elif create:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_manifest([])
        else:
            raise TeacherCacheError(
                f"No teacher cache in '{self.folder}' (no {MANIFEST}); build it first "
                "(detkd keypoints cache-teacher / detkd detect cache-teacher) or check the path"
            )
        self._index: dict[str, tuple[int, int]] | None = None
        self._shard_names: list[str] = []
        self._shard_digests: list[dict[str, str]] = []
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    # ----------------------------------------------------------------- manifest
    def _read_manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TeacherCacheError(f"Cannot read teacher cache manifest '{path}': {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise TeacherCacheError(f"'{path}' is not a detkd teacher cache (format '{CACHE_FORMAT}')")
        if manifest.get("version") != CACHE_VERSION:
            raise TeacherCacheError(
                f"Teacher cache '{self.folder}' has version {manifest.get('version')}, this detkd reads "
                f"{CACHE_VERSION}: rebuild it in a new folder"
            )
        return manifest

    def _check_compatible(self, manifest: Mapping[str, Any]) -> None:
        problems = fingerprint_differences(manifest.get("fingerprint"), self.fingerprint)
        stored_fields = [CacheField.from_json(f) for f in manifest.get("fields", [])]
        if stored_fields != list(self.fields):
            problems.append(
                "fields: cache has " + ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in stored_fields)
                + "; this run needs " + ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in self.fields)
            )
        if problems:
            raise TeacherCacheError(
                f"The teacher cache in '{self.folder}' was built for other settings and cannot be reused:\n  "
                + "\n  ".join(problems)
                + "\nUse another cache folder for this run, or delete this one to rebuild it."
            )

    def _write_manifest(self, shards: list[dict[str, Any]]) -> None:
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "fields": [f.to_json() for f in self.fields],
            "shards": shards,
        }
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=self.folder)
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.folder / MANIFEST)

    def shards(self) -> list[dict[str, Any]]:
        """Committed shards: ``{"name", "rows", "sha256": {"keys" | field: hex digest}}`` each."""
        return list(self._read_manifest()["shards"])

    def _check_file(self, path: Path, number: int, part: str) -> None:
        """Compare a shard file with the digest the manifest holds for it (caches without digests pass)."""
        expected = self._shard_digests[number].get(part) if number < len(self._shard_digests) else None
        if expected is not None and file_sha256(path) != expected:
            raise TeacherCacheError(
                f"Teacher cache file '{path}' was changed after it was written (its SHA-256 differs from the "
                f"manifest's): the folder '{self.folder}' is damaged or was edited; delete it and build the cache again"
            )

    # ----------------------------------------------------------------- reading
    @property
    def index(self) -> dict[str, tuple[int, int]]:
        """``key -> (shard number, row)`` of every committed entry."""
        if self._index is None:
            index: dict[str, tuple[int, int]] = {}
            shards = self.shards()
            self._shard_digests = [dict(shard.get("sha256") or {}) for shard in shards]
            for number, shard in enumerate(shards):
                keys_path = self.folder / f"{shard['name']}.keys.json"
                try:
                    self._check_file(keys_path, number, "keys")
                    keys = json.loads(keys_path.read_text())
                except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise TeacherCacheError(
                        f"Cannot read teacher cache keys '{keys_path}': {err}. The folder '{self.folder}' is "
                        "damaged: delete it and build the cache again"
                    ) from err
                if not isinstance(keys, list) or len(keys) < shard["rows"]:
                    raise TeacherCacheError(
                        f"Teacher cache keys '{keys_path}' list fewer keys than the manifest's {shard['rows']} rows: "
                        f"the folder '{self.folder}' is damaged; delete it and build the cache again"
                    )
                for row, key in enumerate(keys[: shard["rows"]]):
                    index[key] = (number, row)
            self._shard_names = [shard["name"] for shard in shards]
            self._index = index
        return self._index

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys that have no entry yet, in the given order."""
        return [key for key in keys if key not in self.index]

    def read(self, key: str) -> dict[str, np.ndarray]:
        """The arrays of one entry (copies, safe to turn into tensors).

        Raises:
            KeyError: no entry for ``key``.
        """
        number, row = self.index[key]
        return {f.name: np.array(self._array(number, f)[row]) for f in self.fields}

    def _array(self, number: int, field: CacheField) -> np.ndarray:
        array = self._arrays.get((number, field.name))
        if array is None:
            path = self.folder / f"{self._shard_names[number]}.{field.name}.npy"
            try:
                if path.exists():
                    self._check_file(path, number, field.name)
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise TeacherCacheError(
                    f"Cannot read teacher cache shard '{path}': {err}. The file is missing, truncated or "
                    f"overwritten: delete the folder '{self.folder}' and build the cache again"
                ) from err
            if array.shape[1:] != field.shape or array.dtype != np.dtype(field.dtype):
                raise TeacherCacheError(
                    f"Teacher cache shard '{path}' holds {array.shape[1:]} {array.dtype}, the manifest says "
                    f"{field.shape} {field.dtype}: the folder is damaged; delete it and rebuild"
                )
            self._arrays[(number, field.name)] = array
        return array

    def verify(self) -> None:
        """Open every committed shard's arrays and check their shapes and row counts (reads headers only).

        Raises:
            TeacherCacheError: a keys file or shard is missing, truncated or of the wrong shape,
                naming the file; the fix is to delete the folder and build again.
        """
        self._index, self._arrays = None, {}  # read everything afresh
        _ = self.index  # reads and checks every keys file
        for number, shard in enumerate(self.shards()[: len(self._shard_names)]):
            for field in self.fields:
                stored = self._array(number, field).shape[0]
                if stored < shard["rows"]:
                    raise TeacherCacheError(
                        f"Teacher cache shard '{self.folder / shard['name']}.{field.name}.npy' holds {stored} rows, "
                        f"the manifest lists {shard['rows']}: the folder '{self.folder}' is damaged; delete it and "
                        "build the cache again"
                    )

    def __getstate__(self) -> dict[str, Any]:
        # Data-loader workers open their own memory maps; open file handles do not travel.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    # ----------------------------------------------------------------- writing
    def writer(self, total_rows: int, rows_per_shard: int = 512) -> "CacheWriter":
        """A writer that appends ``total_rows`` entries in shards of at most ``rows_per_shard``."""
        return CacheWriter(self, total_rows, rows_per_shard)

    def nbytes_per_entry(self) -> int:
        return sum(f.bytes_per_entry for f in self.fields)


@dataclass
class CacheBuildReport:
    """What a cache build did (``build_keypoint_teacher_cache``, ``build_detector_teacher_cache``)."""

    folder: Path
    views: int  # views the stream needs (images x views_per_image)
    computed: int  # teacher forwards run now
    reused: int  # views already in the cache
    megabytes: float  # size of the cached views on disk
    seconds: float
    views_per_image: int | None = None  # what the stream asked for

    def summary(self) -> str:
        text = (f"teacher cache {self.folder}: {self.views} views ({self.reused} reused, {self.computed} computed "
                f"in {self.seconds:.1f} s), {self.megabytes:.1f} MB")
        if self.reused and self.computed and self.views_per_image:
            text += (f". The cache grew: it held {self.reused} of these views and now holds {self.views_per_image} "
                     "views per image (teacher_cache.views_per_image, --views-per-image); ask for the number it "
                     "holds to keep it as it was")
        return text


class CacheWriter:
    """Appends entries to a :class:`TeacherOutputCache`; use as a context manager.

    Each full shard is committed at once (the manifest is rewritten atomically); leaving the
    ``with`` block commits the last one, also after an error, so finished work is kept. One
    writer per folder at a time: a lock file refuses a second one.
    """

    def __init__(self, cache: TeacherOutputCache, total_rows: int, rows_per_shard: int) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.cache, self.remaining, self.rows_per_shard = cache, total_rows, rows_per_shard
        self._keys: list[str] = []
        self._arrays: dict[str, np.ndarray] = {}
        self._name = ""
        self._lock = cache.folder / LOCK

    def __enter__(self) -> "CacheWriter":
        def warn(owner: Mapping[str, Any]) -> None:
            warnings.warn(f"Taking over the teacher cache in '{self.cache.folder}' from process "
                          f"{owner.get('pid', '?')}, which no longer runs (a killed build)", stacklevel=3)

        try:
            acquire_lock(self._lock, on_takeover=warn)
        except LockHeld as err:
            raise TeacherCacheError(
                f"Another process is writing the teacher cache in '{self.cache.folder}'{describe_lock_owner(err.owner)}, "
                f"lock file '{self._lock}'. If no build is running, delete the file and retry."
            ) from err
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._commit()
        finally:
            self._lock.unlink(missing_ok=True)

    def add(self, keys: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Append ``len(keys)`` entries; ``arrays[field]`` is ``(len(keys), *field.shape)``, cast to the field's dtype."""
        for field in self.cache.fields:
            value = arrays.get(field.name)
            if value is None:
                raise KeyError(f"Cache entries need field '{field.name}'; got {sorted(arrays)}")
            if tuple(value.shape) != (len(keys), *field.shape):
                raise ValueError(
                    f"Cache field '{field.name}' must be {(len(keys), *field.shape)} for {len(keys)} keys, "
                    f"got {tuple(value.shape)}"
                )
        for start in range(len(keys)):
            if not self._arrays:
                self._open_shard()
            row = len(self._keys)
            for field in self.cache.fields:
                self._arrays[field.name][row] = arrays[field.name][start]
            self._keys.append(keys[start])
            self.remaining -= 1
            if len(self._keys) == len(next(iter(self._arrays.values()))):
                self._commit()

    def _open_shard(self) -> None:
        number = len(self.cache.shards())
        self._name = f"shard-{number:05d}"
        rows = max(1, min(self.rows_per_shard, self.remaining))
        self._arrays = {
            f.name: np.lib.format.open_memmap(
                self.cache.folder / f"{self._name}.{f.name}.npy", mode="w+", dtype=f.dtype, shape=(rows, *f.shape)
            )
            for f in self.cache.fields
        }
        self._keys = []

    def _commit(self) -> None:
        if not self._arrays:
            return
        for array in self._arrays.values():
            array.flush()
        names = list(self._arrays)
        self._arrays = {}
        if not self._keys:
            return
        keys_path = self.cache.folder / f"{self._name}.keys.json"
        keys_path.write_text(json.dumps(self._keys))
        digests = {"keys": file_sha256(keys_path)}
        digests.update({name: file_sha256(self.cache.folder / f"{self._name}.{name}.npy") for name in names})
        shards = self.cache.shards() + [{"name": self._name, "rows": len(self._keys), "sha256": digests}]
        self.cache._write_manifest(shards)
        if self.cache._index is not None:
            self.cache._shard_names.append(self._name)
            self.cache._shard_digests.append(digests)
            for row, key in enumerate(self._keys):
                self.cache._index[key] = (len(shards) - 1, row)
        self._keys = []


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            hasher.update(chunk)
    return hasher.hexdigest()

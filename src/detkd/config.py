"""YAML configs: every default visible, user files merged over them, unknown keys rejected.

A config is a plain nested dict. Each task defines its full default dict; a user's YAML file
and command-line options are merged over it with :func:`merge_config`, which refuses keys the
defaults do not have (a typo must not be silently ignored). The resolved config is written
beside a run's results with :func:`save_config` so that the run can be repeated.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

import yaml


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file and key."""


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any] | None, source: str = "config") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``.

    Raises:
        ConfigError: ``override`` has a key that ``base`` lacks, or puts a value where
            ``base`` has a section (or the reverse).
    """
    merged = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if key not in merged:
            raise ConfigError(
                f"{source}: unknown key '{key}'; valid keys here: {', '.join(sorted(merged))}"
            )
        if isinstance(merged[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: '{key}' is a section and needs a mapping, got {value!r}")
            merged[key] = merge_config(merged[key], value, f"{source}.{key}")
        elif isinstance(value, Mapping) and merged[key] is not None:
            raise ConfigError(f"{source}: '{key}' takes a value, not a section")
        else:
            merged[key] = value
    return merged


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML gives a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping at the top, got {type(data).__name__}")
    return data


def to_plain(value: Any) -> Any:
    """Tuples -> lists, Paths -> str, recursively, so that YAML stays plain."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, short lists inline: ``scale: [0.5, 1.0]``."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_config(config: Mapping[str, Any]) -> str:
    """YAML text of a config, keys in their defined order."""
    return yaml.dump(to_plain(config), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


def save_config(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return path


def set_dotted(config: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``config['a']['b'] = value`` for ``dotted_key='a.b'`` (the section must exist)."""
    *sections, leaf = dotted_key.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[leaf] = value


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from a config section, naming any unknown ``what`` option."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"Unknown {what} option(s) {sorted(unknown)}; valid: {sorted(known)}")
    return cls(**values)

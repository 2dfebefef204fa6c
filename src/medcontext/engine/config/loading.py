"""Reading and writing a :class:`~medcontext.engine.config.TrainConfig`: YAML files with ``base:``, ``--set`` overrides.

:func:`load_config` layers the defaults, a YAML file (and the files its ``base:`` key names,
see :func:`read_yaml`) and dotted overrides, then validates; :func:`save_config` writes the
resolved config atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from medcontext.io.atomic import write_text_atomic

from .schema import ConfigError, TrainConfig

__all__ = ["load_config", "parse_override", "read_yaml", "save_config", "BASE_KEY"]


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``"section.key=value"``; the value is read as a YAML scalar/flow value.

    Examples: ``optim.lr=3e-4`` -> 0.0003, ``model.roi=[32,48,32]``, ``data.train_cases=null``.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
    # YAML 1.1 reads '1e-4' (no dot) as a string; accept it as a number
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key, value


BASE_KEY = "base"


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a configuration file from ``path``, with the files it builds on merged in.

    A file may start with ``base: FILE`` or ``base: [FILE, ...]``, paths relative to the file
    itself. The bases are read first (each may have bases of its own), in the order listed,
    then the file's own settings; a later value wins over an earlier one for the same
    ``section.key`` (a mapping-valued setting such as ``model.options`` is replaced whole).
    ``--set`` overrides are applied after all of them. The result has no ``base`` key.

    Raises:
        ConfigError: a missing file, invalid YAML, a cycle of bases, or an unknown key or a
            wrong type, each naming the file it is in.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved):], resolved))
        raise ConfigError(f"config file {path}: its bases form a cycle ({cycle})")
    own = _read_one(path)
    bases = own.pop(BASE_KEY, None)
    TrainConfig().update(own, source=f"config file {path}")  # unknown keys and wrong types, named here
    if bases is None:
        return own
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a file path or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        target = Path(os.path.normpath(path.parent / base))
        if not target.is_file():
            raise ConfigError(f"config file {path}: its base {base!r} does not exist (looked for {target})")
        _merge_into(merged, _read_with_bases(target, (*chain, resolved)))
    return _merge_into(merged, own)


def _merge_into(merged: dict, later: Mapping[str, Any]) -> dict:
    """Section by section, ``later``'s keys over ``merged``'s; returns ``merged``."""
    for section, values in later.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), Mapping):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = dict(values) if isinstance(values, Mapping) else values
    return merged


def _read_one(path: Path) -> dict:
    """One YAML file as a mapping, with errors that name the file."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return _fix_yaml_numbers(data)


def _fix_yaml_numbers(data: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; turn such strings into floats."""
    if isinstance(data, dict):
        return {k: _fix_yaml_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_fix_yaml_numbers(v) for v in data]
    if isinstance(data, str):
        try:
            return float(data) if any(c in data for c in "eE") and data[:1] in "+-.0123456789" else data
        except ValueError:
            return data
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``), then the YAML file at ``path``, then ``overrides``.

    Args:
        path: a YAML file with sections ``data``, ``model``, ``method``, ``optim``, ``train``,
            ``eval`` (and ``base``, see :func:`read_yaml`); ``None`` skips it.
        overrides: ``["optim.lr=3e-4", ...]`` strings or a ``{dotted_key: value}`` mapping.
        base: start from this config instead of the defaults (not modified).

    Returns:
        The validated :class:`TrainConfig`.

    Raises:
        ConfigError: unknown key, wrong type, or out-of-range value.
    """
    cfg = TrainConfig.from_dict(base.to_dict()) if base is not None else TrainConfig()
    if path is not None:
        cfg.update(read_yaml(path), source=str(path))
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        cfg.set(key, value, source=f"--set {key}")
    return cfg.validate()


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    text = "# medcontext resolved training configuration\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    write_text_atomic(path, text)
    return path

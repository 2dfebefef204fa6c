"""Files shipped with the package: the ready-made configs and the studies' fixed test splits.

In a repository checkout they live in ``configs/`` and ``benchmarks/splits/``; a wheel (a
normal ``pip install .``) carries copies inside the package, ``medcontext/configs/`` and
``medcontext/splits/`` (``setup.py`` copies them at build time). :func:`find_config` and
:func:`find_split` look in the package first, then in the checkout the package was imported
from, so a name such as ``cpu_phantom`` works in both and never depends on the current
directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_folders", "split_folders", "find_config", "find_split", "shipped_names"]

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parents[1]  # <repo>/src/medcontext -> <repo>


def config_folders() -> list[Path]:
    """Where shipped configs may be: inside the installed package, then the checkout's ``configs/``."""
    return [_PACKAGE / "configs", _CHECKOUT / "configs"]


def split_folders() -> list[Path]:
    """Where shipped test splits may be: inside the package, then ``benchmarks/splits/``."""
    return [_PACKAGE / "splits", _CHECKOUT / "benchmarks" / "splits"]


def _find(name: str | Path, folders: list[Path], suffixes: tuple[str, ...]) -> Path | None:
    path = Path(name)
    if path.is_file():
        return path.resolve()
    if path.parent != Path("."):  # a path with folders that does not exist: not a shipped name
        return None
    stem = path.name[: -len(path.suffix)] if path.suffix in suffixes else path.name
    for folder in folders:
        for suffix in suffixes:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def shipped_names(folders: list[Path], suffixes: tuple[str, ...]) -> list[str]:
    """Names (without suffix) of the files found in ``folders``, sorted."""
    names = {p.name[: -len(p.suffix)] for f in folders if f.is_dir() for p in f.iterdir() if p.suffix in suffixes}
    return sorted(names)


def find_config(name: str | Path) -> Path:
    """A ``--config`` value as a file: an existing path, else a shipped config's name
    (``cpu_phantom`` or ``cpu_phantom.yaml``).

    Raises:
        FileNotFoundError: neither; the message lists the shipped configs.
    """
    found = _find(name, config_folders(), (".yaml", ".yml"))
    if found is None:
        known = ", ".join(shipped_names(config_folders(), (".yaml", ".yml"))) or "none found"
        raise FileNotFoundError(f"config file {name} does not exist and is not a shipped config (shipped: {known})")
    return found


def find_split(name: str | Path) -> Path:
    """A test-split value as a file: an existing path, else a shipped split's name
    (``hippocampus_test``).

    Raises:
        FileNotFoundError: neither; the message lists the shipped splits.
    """
    found = _find(name, split_folders(), (".json",))
    if found is None:
        known = ", ".join(shipped_names(split_folders(), (".json",))) or "none found"
        raise FileNotFoundError(f"test split {name} does not exist and is not a shipped split (shipped: {known})")
    return found

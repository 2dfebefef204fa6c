"""Build hook: ship ``configs/**/*.yaml`` and ``benchmarks/splits/*.json`` inside the package.

Everything else is in ``pyproject.toml``. A wheel then holds ``medcontext/configs/`` and
``medcontext/splits/``, which :mod:`medcontext.shipped` finds after a normal
(non-editable) install; in a checkout it reads the originals. Subfolders are kept
(``configs/base/``: the files the shipped configs build on, found relative to them).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"configs": ("configs", "**/*.yaml"), "splits": ("benchmarks/splits", "*.json")}


class BuildPyWithShippedFiles(build_py):
    """``build_py`` plus copies of the shipped configs and test splits."""

    def run(self):
        super().run()
        for target, (source, pattern) in SHIPPED.items():
            files = sorted((ROOT / source).glob(pattern))
            destination = Path(self.build_lib) / "medcontext" / target
            for file in files:
                copy = destination / file.relative_to(ROOT / source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, copy)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})

"""Where ``predict`` writes, checked before any work: outputs never overwrite inputs or each other.

Each input case ``<case>`` gets ``<case>.nii.gz`` (and ``<case>_probabilities.nii.gz``) in the
output folder (:func:`output_files`, the one home of those names). :func:`check_outputs`
refuses, before the model is loaded:

* an output folder that holds input files (``--output`` the input folder: a scan would be
  replaced by its own mask, or the masks mixed with the scans);
* an output file that is an input file (through links too);
* two cases writing the same file (``case.nii`` and ``case.nii.gz``; ``a.nii.gz`` and channel files
  ``a_0000.nii.gz``...), naming the inputs of each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["OutputCollisionError", "output_files", "check_outputs"]


class OutputCollisionError(ValueError):
    """``predict`` would overwrite an input or write one file for two cases."""


def output_files(case_id: str, output_dir: str | Path, probabilities: bool = False) -> list[Path]:
    """The files ``predict`` writes for ``case_id``: the label map, then the probabilities."""
    output_dir = Path(output_dir)
    files = [output_dir / f"{case_id}.nii.gz"]
    if probabilities:
        files.append(output_dir / f"{case_id}_probabilities.nii.gz")
    return files


def _real(path: Path) -> str:
    return os.path.realpath(path)


def check_outputs(cases: Sequence, output_dir: str | Path, *, probabilities: bool = False) -> None:
    """Refuse outputs that are inputs or that two cases share (see the module docstring).

    Args:
        cases: the input cases (``case_id`` and ``paths``, :class:`~medcontext.engine.predict.InputCase`).
        output_dir: the ``--output`` folder.
        probabilities: whether probability maps are written too.

    Raises:
        OutputCollisionError: naming the files involved.
    """
    output_dir = Path(output_dir)
    inputs = {_real(p): p for case in cases for p in case.paths}
    input_folders = {os.path.dirname(real) for real in inputs}
    if _real(output_dir) in input_folders:
        raise OutputCollisionError(
            f"--output {output_dir} is a folder of the input files: predictions would overwrite or mix with the "
            "scans; choose another output folder"
        )
    writers: dict[str, object] = {}
    for case in cases:
        for target in output_files(case.case_id, output_dir, probabilities):
            real = _real(target)
            if real in inputs:
                raise OutputCollisionError(f"the output {target} is the input file {inputs[real]}; choose another "
                                           "output folder")
            other = writers.setdefault(real, case)
            if other is not case:
                raise OutputCollisionError(
                    f"two input cases would both be written to {target}: "
                    f"{', '.join(str(p) for p in other.paths)} and {', '.join(str(p) for p in case.paths)}; "
                    "rename one of them (outputs are named by case: <case>.nii.gz)"
                )

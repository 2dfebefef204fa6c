"""Prediction with a trained run: NIfTI files in, label maps with the input's geometry out.

For each case: preprocess with the run's :class:`~medcontext.data.PreprocessConfig`, run the
sliding window (the run's crop, overlap 0.5, Gaussian blending), turn logits into label
values (argmax for softmax; sigmoid regions painted ET over TC over WT), map the result back
onto the input's voxel grid and write ``<case>.nii.gz`` with exactly the input's shape and
affine (atomically). ``probabilities=True`` also writes ``<case>_probabilities.nii.gz``
(``(H, W, D, K)`` float32, softmax or per-region sigmoid).

Inputs: one NIfTI file, or a folder of them. Multi-channel cases are one 4D file
(MSD layout) or one file per channel named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...
(nnU-Net layout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medcontext.data.nifti_names import case_id_from_path, nifti_suffix, split_channel
from medcontext.engine.host.cpu_threads import CpuShare
from medcontext.engine.inference import logits_to_labels, logits_to_probabilities, sliding_window_logits
from medcontext.data.input_checks import check_prediction_case
from medcontext.engine.host.precision import resolve_device, resolve_precision
from medcontext.engine.prediction_outputs import check_outputs, output_files
from medcontext.engine.run_folder import RunInfo, load_model, load_run
from medcontext.io.run_lock import check_writable_folder

__all__ = ["InputCase", "find_input_cases", "Predictor", "PredictionFailedError", "failure_reason", "predict_run"]



@dataclass
class InputCase:
    """One case to predict: its id and its image file(s), one per channel or one 4D file."""

    case_id: str
    paths: list[Path]


def find_input_cases(path: str | Path, num_channels: int) -> list[InputCase]:
    """The cases under ``path`` (a NIfTI file or a folder of them).

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no NIfTI file.
        ValueError: channel files ``<case>_0000...`` do not match ``num_channels``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    # not-a-folder entries with NIfTI names, broken links included: the input check names them instead of skipping
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if not p.is_dir() and nifti_suffix(p.name))
    if path.is_file() and not nifti_suffix(path.name):
        raise ValueError(f"input {path} is not a NIfTI file (.nii or .nii.gz)")
    if not files:
        raise FileNotFoundError(f"input folder {path} holds no .nii/.nii.gz files")
    grouped: dict[str, list[tuple[int, Path]]] = {}
    cases: list[InputCase] = []
    for file in files:
        stem = case_id_from_path(file)
        case_id, channel = split_channel(stem)
        if num_channels > 1 and channel is not None:
            grouped.setdefault(case_id, []).append((channel, file))
        else:  # one file per case (3D, or 4D with channels last)
            cases.append(InputCase(stem, [file]))
    for stem, channels in grouped.items():
        channels.sort()
        indices = [c for c, _ in channels]
        if indices != list(range(num_channels)):
            names = ", ".join(p.name for _, p in channels)
            raise ValueError(
                f"case {stem!r}: channel files {names} do not form channels 0000..{num_channels - 1:04d} "
                f"(the run expects {num_channels} channels)"
            )
        cases.append(InputCase(stem, [p for _, p in channels]))
    return sorted(cases, key=lambda c: c.case_id)


class Predictor:
    """A loaded run ready to predict cases.

    Args:
        run: the run folder (or a loaded :class:`RunInfo`).
        checkpoint: ``best`` (falls back to ``last`` without validation), ``last`` or a path.
        use: ``student`` (default) or ``teacher`` weights.
        device: ``auto``, ``cpu``, ``cuda``...
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` for the forward passes.
        trust_checkpoint: read the checkpoint with full pickle instead of weights-only
            (only for a file you trust).
        postprocess: apply the run's ``postprocessing.json`` (largest connected components,
            chosen on validation; :mod:`medcontext.evaluation.postprocessing`) when it has one.
    """

    def __init__(
        self,
        run: str | Path | RunInfo,
        checkpoint: str = "best",
        use: str = "student",
        device: str = "auto",
        precision: str = "fp32",
        trust_checkpoint: bool = False,
        postprocess: bool = True,
    ):
        from medcontext.evaluation.postprocessing import read_postprocessing

        self.run = run if isinstance(run, RunInfo) else load_run(run)
        self.postprocessing = read_postprocessing(self.run.run_dir) if postprocess else None
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.mc, self.checkpoint = load_model(self.run, checkpoint, self.device, trust=trust_checkpoint)
        self.network = self.mc.inference_network(use)
        self.use = use
        self.spec = self.run.spec

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits (K, H, W, D) of one preprocessed image (C, H, W, D)."""
        cfg = self.run.cfg.eval
        return sliding_window_logits(
            self.network, image.unsqueeze(0), self.run.roi, overlap=cfg.overlap, mode=cfg.mode,
            sw_batch_size=cfg.sw_batch_size, precision=self.precision, device=self.device,
        )[0]

    def predict_case(
        self, case: InputCase, output_dir: str | Path, probabilities: bool = False, regions_dir: str | Path | None = None,
        raw_dir: str | Path | None = None,
    ) -> list[Path]:
        """Predict one case and write ``<case>.nii.gz`` (+ probabilities) into ``output_dir``.

        ``regions_dir`` (sigmoid region runs): also write the region channels on their own,
        ``<regions_dir>/<case>.nii.gz`` of shape ``(H, W, D, R)`` uint8, what evaluation scores.
        The run's post-processing (if any, and not turned off) is applied in the training space,
        where it was chosen; ``raw_dir``: also write the outputs without it, ``raw_dir/predictions/``
        (and ``raw_dir/regions/`` with ``regions_dir``), e.g. to score both.
        """
        from medcontext.data import load_for_inference

        image, restore = load_for_inference(self.run.preprocess, case.paths)
        if image.shape[0] != self.spec.num_channels:
            names = ", ".join(str(p) for p in case.paths)
            raise ValueError(
                f"{names}: the image has {image.shape[0]} channel(s) but the run was trained on "
                f"{self.spec.num_channels} ({', '.join(self.spec.channel_names)}); give one 4D file or one file per "
                "channel named <case>_0000.nii.gz, <case>_0001.nii.gz, ..."
            )
        logits = self.logits(image)
        bad = int(logits.numel() - torch.isfinite(logits).sum())
        if bad:  # a broken checkpoint or an overflow: no label map is better than an all-background one
            raise ValueError(f"the network's output has {bad} NaN/Inf values (checkpoint "
                             f"{self.checkpoint['path']}); no label map written")
        raw = self._outputs(logits, postprocess=False)
        final = self._outputs(logits, postprocess=True) if self.postprocessing is not None else raw
        output_dir = Path(output_dir)
        written = self._save_outputs(final, restore, case.case_id, output_dir,
                                     Path(regions_dir) if regions_dir is not None else None)
        if raw_dir is not None:
            raw_dir = Path(raw_dir)
            self._save_outputs(raw, restore, case.case_id, raw_dir / "predictions",
                               raw_dir / "regions" if regions_dir is not None else None)
        if probabilities:
            probs = logits_to_probabilities(logits, self.spec.output_mode).numpy().astype(np.float32)
            written.append(
                restore.save(probs, output_files(case.case_id, output_dir, True)[1], dtype=np.float32, is_label=False)
            )
        return written

    def _outputs(self, logits: torch.Tensor, *, postprocess: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """``(label map (H, W, D), region channels (R, H, W, D) uint8 or None)`` in the training space,
        post-processed when ``postprocess`` and the run has a decision."""
        from medcontext.engine.inference import regions_to_labels

        decision = self.postprocessing if postprocess else None
        if self.spec.output_mode == "sigmoid":
            on = (logits > 0).numpy().astype(np.uint8)  # sigmoid > 0.5
            if decision is not None:
                on = decision.apply(on)
            return regions_to_labels(on, self.spec.regions), on
        labels = logits_to_labels(logits, self.spec.output_mode, regions=self.spec.regions)
        return (decision.apply(labels) if decision is not None else labels), None

    def _save_outputs(self, outputs: tuple[np.ndarray, np.ndarray | None], restore, case_id: str, output_dir: Path,
                      regions_dir: Path | None) -> list[Path]:
        """Write one case's label map (and region channels) in the input's geometry."""
        labels, on = outputs
        output_dir.mkdir(parents=True, exist_ok=True)
        dtype = np.uint8 if max(self.spec.labels) < 256 else np.int16
        written = [restore.save(labels.astype(dtype), output_files(case_id, output_dir)[0], dtype=dtype, is_label=True)]
        if regions_dir is not None and on is not None:
            regions_dir.mkdir(parents=True, exist_ok=True)
            written.append(restore.save(on, regions_dir / f"{case_id}.nii.gz", dtype=np.uint8, is_label=True))
        return written


class PredictionFailedError(RuntimeError):
    """Some cases could not be predicted; the others were written.

    Attributes:
        failures: ``(case, reason)`` of every case that failed, in input order.
        written: the files written for the cases that succeeded.
        total: number of input cases.
    """

    def __init__(self, failures: list[tuple[InputCase, str]], written: list[Path], total: int, output_dir: Path):
        self.failures, self.written, self.total = list(failures), list(written), total
        listing = "\n".join(
            f"- {case.case_id} ({', '.join(str(p) for p in case.paths)}): {reason}" for case, reason in failures
        )
        done = total - len(failures)
        super().__init__(
            f"{len(failures)} of {total} case(s) could not be predicted; the other {done} were written to "
            f"{output_dir}:\n{listing}"
        )


def failure_reason(err: BaseException) -> str:
    """One line saying why a case failed: the innermost cause of ``err`` (the reader's own error,
    not the "applying transform" wrapper of a MONAI pipeline)."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    useful = [e for e in chain if str(e).strip() and not str(e).startswith("applying transform")] or chain[:1]
    root = useful[-1]
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def predict_run(
    run_dir: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    checkpoint: str = "best",
    use: str = "student",
    probabilities: bool = False,
    device: str = "auto",
    echo: Callable[[str], None] = print,
    trust_checkpoint: bool = False,
    postprocess: bool = True,
) -> list[Path]:
    """``medcontext predict``: predict every case under ``input_path`` into ``output_dir``.

    Before any work the outputs are checked (:func:`~medcontext.engine.prediction_outputs.check_outputs`:
    never an input file, never one file for two cases) and the output folder must be writable.
    Cases are predicted one by one, each first through the input checks of ``data check``: a
    case that cannot be read or predicted (a truncated file, a wrong channel count, NaN/Inf
    intensities, a non-finite network output) is reported with its file and reason, and the
    remaining cases are still predicted; the failures are raised together at the end.

    Returns:
        The files written (label maps, and probability maps with ``probabilities``).

    The run's checkpoint is read weights-only unless ``trust_checkpoint`` (only for a file you
    trust; CLI ``--trust-checkpoint``). The run's post-processing decision is applied unless
    ``postprocess=False`` (CLI ``--no-postprocessing``).

    Raises:
        FileNotFoundError: a missing input (named).
        OutputCollisionError: an output would overwrite an input or another case's output.
        RunFolderError: the output folder is a file or cannot be written.
        PredictionFailedError: one or more cases failed (each named with its file and reason);
            the other cases were written.
        DiskFullError: the output's file system is full (the remaining cases are not tried).
    """
    from medcontext.io.atomic import DiskFullError

    run = load_run(run_dir)
    cases = find_input_cases(input_path, run.spec.num_channels)
    check_outputs(cases, output_dir, probabilities=probabilities)  # before any work: never overwrite an input
    check_writable_folder(output_dir, "--output")
    predictor = Predictor(run, checkpoint=checkpoint, use=use, device=device, trust_checkpoint=trust_checkpoint,
                          postprocess=postprocess)
    echo(
        f"predicting {len(cases)} case(s) with {predictor.checkpoint['path']} (step {predictor.checkpoint['step']}, "
        f"{use} weights) on {predictor.device}"
    )
    decision = predictor.postprocessing
    echo("post-processing: " + ("off (--no-postprocessing)" if not postprocess else "none (the run has no "
         "postprocessing.json)" if decision is None else f"{decision.describe()} (postprocessing.json)"))
    written: list[Path] = []
    failures: list[tuple[InputCase, str]] = []
    with CpuShare(predictor.run.cfg.train.threads) as cpu_share:  # counted by trainings beside it
        for case in cases:
            cpu_share.refresh()  # before every case, so a failed case does not skip a re-count
            start = time.perf_counter()
            try:
                check_prediction_case(predictor.spec, case.case_id, case.paths)  # the checks of `data check`
                files = predictor.predict_case(case, output_dir, probabilities=probabilities)
            except DiskFullError:
                raise
            except Exception as err:  # noqa: BLE001 - reported per case, the other cases go on
                reason = failure_reason(err)
                failures.append((case, reason))
                echo(f"  {case.case_id}: FAILED ({', '.join(str(p) for p in case.paths)}): {reason}")
                continue
            written.extend(files)
            echo(f"  {case.case_id}: {files[0]} ({time.perf_counter() - start:.1f} s)")
    if failures:
        raise PredictionFailedError(failures, written, len(cases), Path(output_dir))
    return written

"""What a run reports while it trains: ``metrics.jsonl``, TensorBoard events, a progress bar.

``metrics.jsonl`` holds one JSON object per line: ``{"kind": "train", "step": ...}`` for every
optimizer step (loss terms, lr, momentum, gradient norm, data-wait and step times in seconds)
and ``{"kind": "val", "step": ...}`` for every validation (Dice per class, mean Dice), after a
``{"kind": "start", "step": ...}`` record each time training starts or resumes (the machine:
processor, instruction set, precision, threads; :mod:`medcontext.engine.host.machine`). ``step``
counts completed optimizer steps (the first step logs ``step: 1``). On resume the file is cut
back to the checkpoint's step, so it never holds steps that the resumed run repeats.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from medcontext.io.atomic import write_text_atomic

__all__ = ["RunLog", "read_metrics", "summarize_timing"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (optionally only one ``kind``)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


class RunLog:
    """Writes the run's metrics; a disabled log (non-zero DDP ranks) does nothing.

    Args:
        run_dir: the run folder.
        total_steps: steps of the whole run (progress bar total).
        start_step: completed steps at start (resume).
        enabled: write anything at all (only rank 0 writes).
        progress: show a tqdm bar on stderr.
        tensorboard: write TensorBoard events to ``run_dir/tensorboard``.
        log_every: refresh the bar and TensorBoard every this many steps.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int = 0,
        *,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
        log_every: int = 1,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.log_every = max(1, int(log_every))
        self.path = self.run_dir / "metrics.jsonl"
        self._file = None
        self._writer = None
        self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                file=sys.stderr, leave=True,
            )

    def _truncate(self, start_step: int) -> None:
        """Drop records of steps after ``start_step`` (left by a run that died after its checkpoint)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        """Append one record to ``metrics.jsonl``."""
        if self._file is not None:
            self._file.write(json.dumps(_jsonable(record)) + "\n")

    def start(self, step: int, machine: dict[str, Any]) -> None:
        """Log that training starts (or resumes) at ``step`` on ``machine``
        (:func:`medcontext.engine.host.machine.machine_record`)."""
        if self.enabled:
            self.write({"kind": "start", "step": step, **machine})

    def train_step(self, step: int, values: dict[str, float]) -> None:
        """Log a training step (``values``: loss terms, lr, timings...)."""
        if not self.enabled:
            return
        self.write({"kind": "train", "step": step, **values})
        if self._bar is not None:
            self._bar.update(1)
        if step % self.log_every == 0:
            if self._bar is not None:
                shown = {k: values[k] for k in ("total", "sup", "msl", "cl") if k in values}
                postfix = {k: f"{v:.4f}" for k, v in shown.items()}
                postfix["lr"] = f"{values.get('lr', 0.0):.2e}"
                if "data_share" in values:
                    postfix["data"] = f"{100 * values['data_share']:.0f}%"
                self._bar.set_postfix(postfix, refresh=False)
            if self._writer is not None:
                for key, value in values.items():
                    if isinstance(value, (int, float)) and value is not None:
                        group = "loss" if key in ("total", "sup", "msl", "cl") else "train"
                        self._writer.add_scalar(f"{group}/{key}", value, step)

    def validation(self, step: int, values: dict[str, Any]) -> None:
        """Log a validation result (``mean_dice``, ``dice`` per class, ...)."""
        if not self.enabled:
            return
        self.write({"kind": "val", "step": step, **values})
        if self._writer is not None:
            self._writer.add_scalar("val/mean_dice", values["mean_dice"], step)
            for name, value in values.get("dice", {}).items():
                if value is not None:
                    self._writer.add_scalar(f"val/dice_{name}", value, step)
            if values.get("postprocessed_mean_dice") is not None:
                self._writer.add_scalar("val/postprocessed_mean_dice", values["postprocessed_mean_dice"], step)
        post = values.get("postprocessed_mean_dice")
        self.message(
            f"step {step}: validation mean Dice {values['mean_dice']:.4f}"
            + (f" (post-processed {post:.4f})" if post is not None else "") + (" (best)" if values.get("best") else "")
        )

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summarize_timing(records: Iterable[dict], skip: int = 1) -> dict[str, float]:
    """Mean step time and data-wait share of training records (skipping the first ``skip``)."""
    rows = [r for r in records if r.get("kind") == "train"][skip:]
    if not rows:
        return {"steps": 0, "step_time": float("nan"), "data_time": float("nan"), "data_share": float("nan")}
    step_time = sum(r["step_time"] for r in rows)
    data_time = sum(r["data_time"] for r in rows)
    return {
        "steps": len(rows),
        "step_time": step_time / len(rows),
        "data_time": data_time / len(rows),
        "data_share": data_time / step_time if step_time > 0 else float("nan"),
    }

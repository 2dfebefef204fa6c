"""The few-shot study's settings (issue: few-shot study on real MRI).

Data: MSD Task04_Hippocampus. A fixed test split of 50 case ids (``benchmarks/splits``) is
never trained or selected on; training subsets of k cases and a small validation subset (for
checkpoint selection) are drawn per seed from the other cases. Every method of a setting shares
crop, augmentation, optimizer, number of steps and selection rule; only ``method.*`` differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StudyRun", "hippocampus_plan", "load_test_split", "BASE_SETTINGS", "MODEL_SETTINGS"]

SEEDS = (0, 1, 2)
MAIN_VARIANTS = ("baseline", "medcontext", "no_teacher")

#: settings shared by every run of the study (dotted TrainConfig keys)
BASE_SETTINGS: dict = {
    "data.preset": "msd",
    "data.val_cases": 5,
    "data.num_samples": 2,
    "data.pos": 1.0,
    "data.neg": 1.0,
    "model.roi": [32, 48, 32],
    "optim.name": "adamw",
    "optim.lr": 2e-3,
    "optim.weight_decay": 1e-5,
    "optim.schedule": "warmup_cosine",
    "optim.warmup_steps": 20,
    "train.batch_size": 1,
    "train.precision": "auto",
    "train.checkpoint_every": 50,
    "train.tensorboard": False,
    "eval.every": 50,
    "method.mask_ratio": 0.4,
    "method.beta": 0.5,
    "method.momentum": 0.996,
}

#: per-architecture settings: network options and optimizer steps (same for every method)
MODEL_SETTINGS: dict = {
    "unet3d": {"model.name": "unet3d", "model.options": {"size": "small"}, "train.steps": 300},
    "unetr": {"model.name": "unetr", "model.options": {"size": "small"}, "optim.lr": 5e-4, "train.steps": 300},
}


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study."""

    group: str
    model: str
    train_cases: int
    variant: str
    seed: int
    mask_ratio: float = 0.4
    ablation: str = ""
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        """Folder name below the study folder, e.g. ``unet3d_k5/medcontext_s0``."""
        tag = self.variant if not self.ablation else f"{self.variant}_{self.ablation}"
        return f"{self.group}/{tag}_s{self.seed}"

    def settings(self, data: str, test_ids: list[str]) -> dict:
        """Dotted config settings of this run."""
        settings = dict(BASE_SETTINGS)
        settings.update(MODEL_SETTINGS[self.model])
        settings.update(
            {
                "data.path": data,
                "data.train_cases": self.train_cases,
                "data.test_cases": list(test_ids),
                "data.use_official_test": False,
                "data.split_seed": self.seed,
                "train.seed": self.seed,
                "method.variant": self.variant,
                "method.mask_ratio": self.mask_ratio,
            }
        )
        settings.update(self.overrides)
        return settings


def hippocampus_plan(seeds=SEEDS) -> list[StudyRun]:
    """All runs, in the order they are worth having when the study is cut short: the k = 5
    U-Net comparison first (with the momentum investigation and the k = 10 check), then the
    transformer at k = 5, k = 20, the ablations, and the consistency weight beta; seeds inner-most
    but complete per method group so that partial results stay paired."""
    runs: list[StudyRun] = []
    for group, model, k in (("unet3d_k5", "unet3d", 5), ("unetr_k5", "unetr", 5), ("unet3d_k20", "unet3d", 20)):
        for seed in seeds:
            runs += [StudyRun(group, model, k, variant, seed) for variant in MAIN_VARIANTS]
        if group == "unet3d_k5":
            # investigation: in a 300-step run the paper's momentum 0.996 keeps the teacher near its
            # random start (EMA horizon ~250 steps); a faster teacher isolates that effect
            runs += [
                StudyRun(group, model, k, "medcontext", seed, ablation="m0.95", overrides={"method.momentum": 0.95})
                for seed in seeds
            ]
            # the pipeline issue's first check: k = 10, one seed
            runs += [StudyRun("unet3d_k10", model, 10, variant, seeds[0]) for variant in ("baseline", "medcontext")]
    for seed in seeds:
        for ratio in (0.2, 0.6, 0.8):
            runs.append(StudyRun("unet3d_k5", "unet3d", 5, "medcontext", seed, ratio, ablation=f"ratio{ratio}"))
        for variant in ("msl_only", "cl_only"):
            runs.append(StudyRun("unet3d_k5", "unet3d", 5, variant, seed))
    # investigation: the weight of the consistency term (0 = msl_only above, 0.5 = the main runs)
    for seed in seeds:
        for beta in (0.1, 1.0):
            runs.append(
                StudyRun("unet3d_k5", "unet3d", 5, "medcontext", seed, ablation=f"beta{beta:g}", overrides={"method.beta": beta})
            )
    return runs


def load_test_split(path: str | Path) -> list[str]:
    """The fixed test case ids of a study (JSON ``{"test": [...]}``)."""
    data = json.loads(Path(path).read_text())
    ids = data.get("test")
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'test' list of case ids")
    return [str(i) for i in ids]

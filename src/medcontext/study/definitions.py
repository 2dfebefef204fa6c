"""The studies' settings: few-shot MedContext against the baseline on real MRI.

Four studies, each a list of :class:`StudyRun` (and, where a run starts from pretrained weights,
the :class:`PretrainStage` that makes them; see :data:`STUDIES`):

- ``hippocampus``: MSD Task04_Hippocampus, 300-step runs (the first study of RESULTS.md) and
  the long-budget k = 5 comparison (``hippo_long``).
- ``acdc``: ACDC cardiac cine MRI (the paper's Table 2/4 data), k = 5 volumes of 5 different
  patients, at a budget where the baseline's validation Dice has converged (fixed by the pilot).
- ``acdc_semi``: the same k = 5 with the unlabelled pool, semi-supervised arms against the
  labelled ones (:mod:`medcontext.study.semi_supervised_plan`).
- ``acdc_pretrain``: the same k = 5, pretraining on the unlabelled pool then fine-tuning, against
  MedContext from scratch (the paper's Tables 5 and 6; :mod:`medcontext.study.pretraining_plan`).

A fixed test split (``benchmarks/splits``) is never trained or selected on; training subsets
of k cases and a validation subset (for checkpoint selection) are drawn per seed from the other
cases. Every method of a setting shares crop, augmentation, optimizer, number of steps and
selection rule; only ``method.*`` differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .pretraining_plan import ALSO_AGAINST, acdc_pretrain_plan
from .semi_supervised_plan import acdc_semi_notes, acdc_semi_study_plan

__all__ = [
    "Study", "StudyRun", "PretrainStage", "STUDIES", "hippocampus_plan", "acdc_plan", "load_test_split",
    "BASE_SETTINGS", "MODEL_SETTINGS", "ACDC_BASE_SETTINGS", "ACDC_MODEL_SETTINGS",
]

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
    """One training run of the study.

    ``pretrain``: the stage whose ``pretrained.pt`` initialises the network (``model.init_checkpoint``,
    set by the runner, which runs the stage first when it is not finished); ``None``: from scratch.
    """

    group: str
    model: str
    train_cases: int
    variant: str
    seed: int
    mask_ratio: float = 0.4
    ablation: str = ""
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    study: str = "hippocampus"
    pretrain: "PretrainStage | None" = None

    @property
    def name(self) -> str:
        """Folder name below the study folder, e.g. ``unet3d_k5/medcontext_s0``."""
        tag = self.variant if not self.ablation else f"{self.variant}_{self.ablation}"
        return f"{self.group}/{tag}_s{self.seed}"

    def settings(self, data: str, test_ids: list[str]) -> dict:
        """Dotted config settings of this run."""
        base, models = _SETTINGS[self.study]
        settings = dict(base)
        settings.update(models[self.model])
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


@dataclass(frozen=True)
class PretrainStage:
    """The pretraining of one (model, seed) of a study: ``medcontext pretrain`` on the unlabelled
    pool of ``base``'s split, whose ``pretrained.pt`` the runs that name it start from.

    Attributes:
        base: the labelled run whose settings it shares: dataset, split (so ``pool`` is what that
            run leaves unlabelled, never a validation or test patient), preprocessing, network,
            crop, seed and device (:meth:`PretrainConfig.from_train_config`).
        budget: the pretraining settings (``steps``, ``batch_size``, masking, optimizer), fixed
            before any run (e.g. :data:`~medcontext.study.pretraining_plan.ACDC_PRETRAIN_BUDGET`).
    """

    base: StudyRun
    budget: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def group(self) -> str:
        return self.base.group

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def name(self) -> str:
        """Folder name below the study folder, e.g. ``acdc_pcrlv2_k5/pretrain_s0``."""
        return f"{self.base.group}/pretrain_s{self.base.seed}"

    @property
    def steps(self) -> int:
        return int(self.budget["steps"])

    def config(self, data: str, test_ids: list[str]):
        """The :class:`~medcontext.engine.pretraining.PretrainConfig` of the stage: ``base``'s data
        section with ``unlabeled: pool``, its network, crop, seed and device, then :attr:`budget`."""
        from medcontext.data.unlabeled import POOL
        from medcontext.engine.config import load_config
        from medcontext.engine.pretraining import PretrainConfig

        train = load_config(None, self.base.settings(data, test_ids))
        train.data.unlabeled = POOL
        return PretrainConfig.from_train_config(train, **self.budget).validate()


#: candidate run-relative teacher horizons of the 300-step Hippocampus runs (fractions of the run)
HIPPO_HORIZONS = (0.02, 0.05, 0.2)


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
    # investigation (ACDC issue): the teacher's EMA time constant as a fraction of the run
    # (6, 15 and 60 of 300 steps; the paper's 0.996 is about 250), chosen on validation Dice only
    for seed in seeds:
        for horizon in HIPPO_HORIZONS:
            runs.append(StudyRun("unet3d_k5", "unet3d", 5, "medcontext", seed, ablation=f"h{horizon:g}",
                                 overrides={"method.momentum_horizon": horizon}))
    return runs


# ---------------------------------------------------------------------------------- hippocampus
#: the long-budget Hippocampus comparison (issue: ACDC study, "both datasets answer the same
#: question"): k = 5 unet3d, baseline vs medcontext; the pilot (seed 0) validates every 250 steps
HIPPO_LONG_STEPS = 3000


def hippocampus_long_plan(seeds=SEEDS) -> list[StudyRun]:
    """Hippocampus k = 5 unet3d at ``HIPPO_LONG_STEPS`` (pilot seed first, then the others)."""
    long = {"train.steps": HIPPO_LONG_STEPS, "eval.every": 250, "train.checkpoint_every": 250,
            "optim.warmup_steps": 50}
    return [
        StudyRun("hippo_long_unet3d_k5", "unet3d", 5, variant, seed, overrides=dict(long))
        for seed in seeds for variant in ("baseline", "medcontext")
    ]


# ---------------------------------------------------------------------------------------- ACDC
#: Shared by every ACDC run. CPU study: in-plane 2.0 mm instead of the preset's 1.5 mm (0.56x
#: the voxels), 5 mm between slices as the preset; 80 x 80 x 16 crops = 160 x 160 x 80 mm, the
#: whole heart of a typical patient (median foreground 105 x 98 x 80 mm) with its neighbours.
#: Validation: 10 volumes = 5 patients, every 250 steps (the learning curves of RESULTS.md).
ACDC_BASE_SETTINGS: dict = {
    "data.preset": "acdc",
    "data.preprocess": {"target_spacing": [2.0, 2.0, 5.0]},
    "data.val_cases": 10,
    "data.num_samples": 2,
    "data.pos": 1.0,
    "data.neg": 1.0,
    "model.roi": [80, 80, 16],
    "optim.name": "adamw",
    "optim.lr": 2e-3,
    "optim.weight_decay": 1e-5,
    "optim.schedule": "warmup_cosine",
    "optim.warmup_steps": 50,
    "train.batch_size": 1,
    "train.precision": "auto",
    "train.checkpoint_every": 250,
    "train.tensorboard": False,
    "eval.every": 250,
    "method.mask_ratio": 0.4,
    "method.beta": 0.5,
    "method.momentum": 0.996,
}

#: The budget of every ACDC run. The pilot (seed 0, baseline and medcontext, validated every
#: 250 steps) is the first pair of runs at this budget: the baseline's validation Dice peaked at
#: step 750 and stayed level or lower after it (RESULTS.md), so 3000 steps is 4x past its plateau.
ACDC_PILOT_STEPS = 3000

#: ``pcrlv2`` (the pretraining study): a CNN like ``unet3d``, so its learning rate; size ``small``
#: (8 -> 128 channels, 1.05M parameters: unet3d small's 1.40M and step time, so that a MedContext run
#: fits a sitting of a 2-core CPU); the crop of every ACDC run suits it (sides multiples of 8 and
#: >= 16: 80 x 80 x 16 pools to 10 x 10 x 2)
ACDC_MODEL_SETTINGS: dict = {
    "unet3d": {"model.name": "unet3d", "model.options": {"size": "small"}, "train.steps": ACDC_PILOT_STEPS},
    "unetr": {"model.name": "unetr", "model.options": {"size": "small"}, "optim.lr": 5e-4,
              "train.steps": ACDC_PILOT_STEPS},
    "pcrlv2": {"model.name": "pcrlv2", "model.options": {"size": "small"}, "train.steps": ACDC_PILOT_STEPS},
}


def acdc_plan(seeds=SEEDS) -> list[StudyRun]:
    """ACDC k = 5: the unet3d pilot (seed 0, baseline and medcontext: the curves that fix the
    budget), then the other seeds and ``no_teacher``, then UNETR small the same way, then the
    run-relative teacher schedule (chosen on validation Dice only)."""
    runs: list[StudyRun] = []
    for model in ("unet3d", "unetr"):
        group = f"acdc_{model}_k5"
        runs += [StudyRun(group, model, 5, variant, seeds[0], study="acdc") for variant in ("baseline", "medcontext")]
        runs.append(StudyRun(group, model, 5, "no_teacher", seeds[0], study="acdc"))
        for seed in seeds[1:]:
            runs += [StudyRun(group, model, 5, variant, seed, study="acdc") for variant in MAIN_VARIANTS]
    # the teacher schedule: EMA time constant 5% of the run instead of the paper's fixed 0.996
    for seed in seeds:
        runs.append(StudyRun("acdc_unet3d_k5", "unet3d", 5, "medcontext", seed, ablation="h0.05",
                             overrides={"method.momentum_horizon": 0.05}, study="acdc"))
    return runs


@dataclass(frozen=True)
class Study:
    """A study: its runs, its data and its fixed test split (a shipped split name).

    ``plan`` lists :class:`StudyRun` and :class:`PretrainStage` items (a stage before the runs
    that start from it). ``last_step``: every run is also evaluated at its last step
    (``eval_last/``), beside the checkpoint validation chose (``eval/``), and the report is
    written for both. ``notes``: markdown lines about the study folder that ``--status`` prints
    and the report starts with (``acdc_semi``: its budget rule applied to the pilot's validation
    curves). ``also_against``: method labels of the report that every other method is also
    compared with, paired per seed (as ``medcontext report --also-against``).
    """

    name: str
    plan: Callable[[], list]
    test_split: str
    title: str
    description: str
    last_step: bool = False
    notes: Callable[[Path], list[str]] | None = None
    also_against: tuple[str, ...] = ()


_SETTINGS = {"hippocampus": (BASE_SETTINGS, MODEL_SETTINGS), "acdc": (ACDC_BASE_SETTINGS, ACDC_MODEL_SETTINGS)}

#: the studies of ``medcontext experiment``
STUDIES: dict[str, Study] = {
    "hippocampus": Study(
        "hippocampus", lambda: hippocampus_plan() + hippocampus_long_plan(), "hippocampus_test",
        "MedContext few-shot study: Task04_Hippocampus",
        "few-shot study on MSD Task04_Hippocampus: baseline / medcontext / no_teacher, 3 seeds, unet3d at k=5 and "
        "k=20, unetr at k=5, ablations, run-relative teacher horizons (62 runs of 300 steps), then k=5 unet3d at "
        "3000 steps (6 runs)",
    ),
    "acdc": Study(
        "acdc", acdc_plan, "acdc_test", "MedContext few-shot study: ACDC (k = 5 patients)",
        "ACDC k=5 (5 patients): unet3d and UNETR small, baseline / medcontext / no_teacher, 3 seeds at a budget "
        "past the baseline's plateau, validation curves every 250 steps, run-relative teacher schedule (21 runs)",
    ),
    "acdc_semi": Study(
        "acdc_semi", acdc_semi_study_plan, "acdc_test", "Semi-supervised study: ACDC (k = 5 labelled patients + the pool)",
        "ACDC k=5 labelled patients plus the unlabelled pool (every other non-validation, non-test patient): unet3d "
        "small, baseline / medcontext / mean_teacher / bcp / medcontext_semi_cl / medcontext_semi / medcontext_bcp, "
        "3 seeds at 6000 steps (the budget its 3000-step pilot decided by validation Dice); test Dice at the "
        "validation-chosen checkpoint and at the last step (21 runs)",
        last_step=True, notes=acdc_semi_notes,
    ),
    "acdc_pretrain": Study(
        "acdc_pretrain", acdc_pretrain_plan, "acdc_test",
        "Pretraining then fine-tuning against MedContext: ACDC (k = 5 patients + the pool)",
        "ACDC k=5 (the paper's Tables 5 and 6): unet3d and pcrlv2 small, per seed (0-2) a masked-volume "
        "pretraining on the unlabelled pool (3000 steps) then baseline and medcontext fine-tuned from it, against "
        "medcontext and baseline from scratch (unet3d: the acdc study's runs); each arm's cost includes its "
        "pretraining; test Dice at the validation-chosen checkpoint and at the last step (6 stages, 18 new runs; "
        "--out on the acdc study's folder reuses its runs)",
        also_against=ALSO_AGAINST, last_step=True,
    ),
}


def load_test_split(path: str | Path) -> list[str]:
    """The fixed test case ids of a study (JSON ``{"test": [...]}``)."""
    data = json.loads(Path(path).read_text())
    ids = data.get("test")
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'test' list of case ids")
    return [str(i) for i in ids]

"""The pretraining study on ACDC (issue 28; RESULTS.md, "Table 5 and 6 on ACDC"): pretraining then
fine-tuning, against MedContext from scratch.

The ACDC study's setting (``definitions.acdc_plan``: k = 5 labelled patients per seed, seeds 0-2,
the fixed test split ``acdc_test``, 2 mm in-plane spacing, 80 x 80 x 16 crops, AdamW, 3000 steps,
validation every 250 steps) for ``unet3d`` small and ``pcrlv2`` small. Per (model, seed):

- the pretraining stage (:class:`~medcontext.study.definitions.PretrainStage`, folder
  ``GROUP/pretrain_sN``): ``medcontext pretrain`` on the unlabelled pool of that seed's split
  (``data.unlabeled: pool`` with the fine-tuning runs' own data settings: every patient that is
  neither labelled, validation nor test, both frames; the pool of the ``acdc_semi`` study), at the
  budget :data:`ACDC_PRETRAIN_BUDGET`; resumable, finished when ``pretrain_done.json`` exists
  (with its compute and wall-clock time);
- (a) ``baseline_pretrained``: the baseline fine-tuned from the stage's ``pretrained.pt``
  (``model.init_checkpoint``; every layer but the output layer loaded);
- (b) ``medcontext_pretrained``: MedContext fine-tuned from the same weights;
- (c) ``medcontext`` and (d) ``baseline`` from scratch: for ``unet3d`` the ACDC study's own runs
  (same names and settings: ``--out`` on the ACDC study's folder reuses them), for ``pcrlv2`` new
  runs in ``acdc_pcrlv2_k5`` with the same settings.

Every fine-tuning run has the ACDC study's settings; (a) and (b) differ from (d) and (c) only by
their initial weights. The report compares (b) - (a), (c) - (a), (a) - (d) and (b) - (c) per
seed (:data:`ALSO_AGAINST`) and counts the stage's compute in the cost of (a) and (b): once per
seed, shown in both.

``pcrlv2`` takes the ACDC crop as it is: its three poolings need sides that are multiples of 8 and
at least 16, and 80 x 80 x 16 pools to 10 x 10 x 2 (no crop change).
"""

from __future__ import annotations

__all__ = ["ACDC_PRETRAIN_BUDGET", "PRETRAIN_MODELS", "PRETRAINED_TAG", "ALSO_AGAINST", "pretraining_arms",
           "acdc_pretrain_plan"]

#: The pretraining budget of every stage, fixed before any run: the fine-tuning's 3000 steps
#: (``ACDC_PILOT_STEPS``), 2 crops per step of the fine-tuning's crop (80 x 80 x 16, taken from
#: its settings with its preprocessing), 60% of the cube cells masked (16 x 16 x 4 voxels at this
#: crop), AdamW at 1e-3 with weight decay 0.05, 100 warmup steps then cosine decay: the
#: ``medcontext pretrain`` defaults, written out so that a later change of a default does not
#: change this study. Checkpoints every 250 steps, as the fine-tuning's.
ACDC_PRETRAIN_BUDGET: dict = {
    "steps": 3000,
    "batch_size": 2,
    "mask_ratio": 0.6,
    "mask_shape": "cube",
    "mask_cell": None,
    "mask_space": "auto",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 100,
    "save_every": 250,
    "tensorboard": False,
}
#: the networks of the comparison (Table 5's role: a CNN; Table 6's network: PCRLv2)
PRETRAIN_MODELS = ("unet3d", "pcrlv2")
#: the run-name tag of the arms fine-tuned from pretrained weights
PRETRAINED_TAG = "pretrained"
#: the report's methods every arm is also compared with: (b) - (a), (c) - (a) against the
#: pretrained baseline, (b) - (c) against MedContext from scratch ((a) - (d) is the comparison with
#: the baseline every report has)
ALSO_AGAINST = ("baseline (pretrained)", "medcontext")


def pretraining_arms(scratch_baseline, budget: dict) -> list:
    """The stage and the four arms of one (model, seed): ``[stage, (a), (b), (c), (d)]``.

    Args:
        scratch_baseline: the from-scratch baseline run (d) (a
            :class:`~medcontext.study.definitions.StudyRun`); every arm shares its settings but the
            variant and the initial weights, and the stage its data settings, network and crop.
        budget: the stage's pretraining settings (:data:`ACDC_PRETRAIN_BUDGET`).
    """
    import dataclasses

    from medcontext.study.definitions import PretrainStage

    stage = PretrainStage(scratch_baseline, dict(budget))

    def arm(variant: str, pretrained: bool):
        return dataclasses.replace(scratch_baseline, variant=variant, ablation=PRETRAINED_TAG if pretrained else "",
                                   pretrain=stage if pretrained else None)

    return [stage, arm("baseline", True), arm("medcontext", True), arm("medcontext", False), scratch_baseline]


def acdc_pretrain_plan(seeds=(0, 1, 2), budget: dict | None = None) -> list:
    """Every stage and run of the study: ``unet3d`` first (its arms (c) and (d) are the ACDC
    study's runs), then ``pcrlv2``; per model the seeds in order, each complete (stage, (a), (b),
    (c), (d)) so that a study cut short keeps paired seeds.

    Args:
        seeds: the ACDC study's seeds (split, initialisation, data order and crops per seed).
        budget: the stages' pretraining settings (default :data:`ACDC_PRETRAIN_BUDGET`).
    """
    from medcontext.study.definitions import StudyRun

    budget = dict(ACDC_PRETRAIN_BUDGET if budget is None else budget)
    plan: list = []
    for model in PRETRAIN_MODELS:
        for seed in seeds:
            plan += pretraining_arms(StudyRun(f"acdc_{model}_k5", model, 5, "baseline", seed, study="acdc"), budget)
    return plan

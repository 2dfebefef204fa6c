"""The semi-supervised ACDC study (issue 31): k = 5 labelled patients plus the unlabelled pool.

The ACDC study's setting (``definitions.acdc_plan``: its splits, seeds, fixed test split,
``unet3d`` small, crops, optimizer, validation every 250 steps) with, for the semi-supervised
arms, ``data.unlabeled: pool``: every patient of the shared data that is neither a validation,
a test nor a labelled patient, both frames, used without labels (50 patients, 100 volumes per
seed; a labelled patient's other frame is not used). One unlabelled crop per labelled crop.

Arms (every one for seeds 0, 1, 2):

- ``baseline`` and ``medcontext`` on the labelled volumes only: at the ACDC study's budget these
  are that study's own runs (same folder names and settings, so ``--out`` on the ACDC study's
  folder reuses finished ones);
- ``mean_teacher`` and ``bcp``, the field's reference methods on the same data and network;
- ``medcontext_semi_cl`` (MedContext with the consistency term on unlabelled crops),
  ``medcontext_semi`` (consistency and confident pseudo-labels) and ``medcontext_bcp`` (MedContext's
  masking with copy-paste): the *best MedContext combination* is the one of these three that
  seed 0's validation Dice ranks first (RESULTS.md's rule; no extra run).

The budget is fixed by a pilot on seed 0 (validation only) with the rule written in RESULTS.md
before any run: :data:`ACDC_SEMI_STEPS` is the pilot's budget, :func:`acdc_semi_plan` takes
another one when the rule asks for it. Every run is evaluated on the test split twice: at the
checkpoint validation chose and at the last step (``eval/`` and ``eval_last/``).
"""

from __future__ import annotations

__all__ = [
    "ACDC_SEMI_GROUP", "LABELLED_ARMS", "SEMI_ARMS", "COMBINATION_CANDIDATES", "ACDC_SEMI_STEPS", "acdc_semi_plan",
]

#: the folder group of the semi-supervised runs (and of labelled runs at another budget)
ACDC_SEMI_GROUP = "acdc_semi_unet3d_k5"
#: labelled-only arms (the ACDC study's runs at its budget)
LABELLED_ARMS = ("baseline", "medcontext")
#: semi-supervised arms, in the order their pilot runs
SEMI_ARMS = ("mean_teacher", "bcp", "medcontext_semi_cl", "medcontext_semi", "medcontext_bcp")
#: the MedContext combinations among which seed 0's validation picks the best one
COMBINATION_CANDIDATES = ("medcontext_semi_cl", "medcontext_semi", "medcontext_bcp")
#: the pilot's budget: the ACDC study's 3000 steps (the rule in RESULTS.md may double it)
ACDC_SEMI_STEPS = 3000
#: what the semi-supervised arms add to the ACDC study's settings
UNLABELED_SETTINGS = {"data.unlabeled": "pool"}


def acdc_semi_plan(seeds=(0, 1, 2), steps: int = ACDC_SEMI_STEPS) -> list:
    """Every run of the study at ``steps``, the pilot first.

    Order: seed 0's labelled arms (reused at the ACDC study's budget), seed 0's semi-supervised
    arms (the pilot whose validation curves the budget rule reads), then seeds 1 and 2 of every
    arm, so that a study cut short keeps complete, paired seeds.

    Args:
        seeds: the ACDC study's seeds (split, initialisation and data order per seed).
        steps: optimizer steps of every run (every arm shares one budget).

    Returns:
        The :class:`~medcontext.study.definitions.StudyRun` list.
    """
    from medcontext.study.definitions import ACDC_PILOT_STEPS, StudyRun

    budget = {} if steps == ACDC_PILOT_STEPS else {"train.steps": int(steps)}

    def labelled(variant: str, seed: int):
        if not budget:  # the ACDC study's own run: same name, same settings
            return StudyRun("acdc_unet3d_k5", "unet3d", 5, variant, seed, study="acdc")
        return StudyRun(ACDC_SEMI_GROUP, "unet3d", 5, variant, seed, ablation=f"{steps}steps",
                        overrides=dict(budget), study="acdc")

    def semi(variant: str, seed: int):
        tag = "" if not budget else f"{steps}steps"
        return StudyRun(ACDC_SEMI_GROUP, "unet3d", 5, variant, seed, ablation=tag,
                        overrides={**UNLABELED_SETTINGS, **budget}, study="acdc")

    runs = []
    for seed in seeds:
        runs += [labelled(variant, seed) for variant in LABELLED_ARMS]
        runs += [semi(variant, seed) for variant in SEMI_ARMS]
    return runs

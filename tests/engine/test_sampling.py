"""Resumable sampling: the step sampler's indices and shards, seeded draws, a loader resumed at a step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcontext.engine.sampling import SeededDraws, StepSampler, draw_seed, make_step_loader


class _RandomTransform:
    """A Randomizable-like transform: adds uniform noise from its own generator."""

    def __init__(self):
        self.R = np.random.RandomState(0)

    def set_random_state(self, seed=None):
        self.R = np.random.RandomState(seed)

    def __call__(self, value):
        return value + self.R.uniform()


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.transform = n, _RandomTransform()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.tensor([self.transform(float(i))]), "label": torch.tensor([i])}


def test_step_sampler_indices_and_sharding():
    assert list(StepSampler(0, 3, batch_size=2)) == [0, 1, 2, 3, 4, 5]
    assert list(StepSampler(2, 3, batch_size=2)) == [4, 5]
    ranks = [list(StepSampler(0, 2, batch_size=2, world_size=2, rank=r)) for r in (0, 1)]
    assert ranks == [[0, 1, 4, 5], [2, 3, 6, 7]]  # disjoint, together the single-process stream
    with pytest.raises(ValueError, match="rank"):
        StepSampler(0, 2, 1, world_size=2, rank=2)


def test_draws_depend_only_on_seed_and_index():
    a, b = SeededDraws(_Items(5), seed=3), SeededDraws(_Items(5), seed=3)
    forward = [a[i]["image"].item() for i in range(12)]
    backward = [b[i]["image"].item() for i in reversed(range(12))][::-1]
    assert forward == backward
    # every epoch visits every item once, in a seed-dependent order
    cases = [a.case_index(i) for i in range(10)]
    assert sorted(cases[:5]) == sorted(cases[5:]) == list(range(5)) and cases[:5] != cases[5:]
    assert [SeededDraws(_Items(5), seed=4).case_index(i) for i in range(5)] != cases[:5]
    assert draw_seed(0, 1) != draw_seed(0, 2) != draw_seed(1, 1)


def test_loader_resumed_at_a_step_yields_the_same_batches():
    kwargs = dict(seed=1, total_steps=6, batch_size=2, collate_fn=None)
    full = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=0, **kwargs)]
    tail = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=4, **kwargs)]
    assert len(full) == 6 and tail == full[4:]
    # worker processes give the same batches
    workers = [b["image"].flatten().tolist() for b in make_step_loader(_Items(4), start_step=0, num_workers=2, **kwargs)]
    assert workers == full
    # creating and iterating a loader does not consume the global torch RNG
    state = torch.get_rng_state()
    list(make_step_loader(_Items(4), start_step=0, **kwargs))
    assert torch.equal(state, torch.get_rng_state())

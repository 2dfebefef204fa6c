"""Training batches as a pure function of ``(seed, step)``: resumable and shardable.

Every training draw has a global index ``i`` (batch item ``b`` of step ``s`` on rank ``r``
of ``W`` ranks with batch size ``B`` is ``i = (s * W + r) * B + b``). Draw ``i`` reads item
``perm_e[i mod N]`` of the training dataset (``N`` items, e.g. cases x crops per case), where
``perm_e`` is the permutation for epoch ``e = i // N`` seeded by ``(seed, e)``, and its random
augmentation is re-seeded from ``(seed, i)`` right before the transform runs. Nothing depends on what happened before, so:

- resuming at step ``s`` only starts the index stream at ``s`` (no replay, no stored loader
  state), and the batches are bit-identical to an uninterrupted run;
- each DDP rank reads a disjoint part of the same stream (DistributedSampler's role);
- any number of loader workers gives the same batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["draw_seed", "epoch_permutation", "SeededDraws", "StepSampler", "make_step_loader"]


def draw_seed(seed: int, index: int) -> int:
    """A 32-bit seed for draw ``index`` of a run seeded ``seed`` (well mixed, deterministic)."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x6D63]).generate_state(1)[0])


def epoch_permutation(seed: int, epoch: int, num_cases: int) -> np.ndarray:
    """The case order of ``epoch``: a permutation of ``range(num_cases)`` seeded by ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch), 0x7065]).permutation(num_cases)


def _random_transform(dataset: Any) -> Any:
    """The object whose ``set_random_state`` re-seeds a dataset's augmentation."""
    for owner in (dataset, getattr(dataset, "volumes", None), getattr(dataset, "dataset", None)):
        transform = getattr(owner, "transform", None)
        if transform is not None and hasattr(transform, "set_random_state"):
            return transform
    if hasattr(dataset, "set_random_state"):
        return dataset
    raise TypeError(
        f"{type(dataset).__name__} exposes no set_random_state (on itself, its .transform or .volumes.transform); "
        "training augmentation cannot be made resumable"
    )


class SeededDraws(Dataset):
    """Map draw indices (``0, 1, 2, ...``) to freshly augmented training items.

    Args:
        dataset: the training dataset (items are random crops; the random transforms are
            found at ``dataset.transform`` or ``dataset.volumes.transform``).
        seed: the run seed.
        as_tensor: turn MONAI ``MetaTensor`` outputs into plain tensors (cheaper to batch).
    """

    def __init__(self, dataset: Dataset, seed: int, *, as_tensor: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.num_cases = len(dataset)  # type: ignore[arg-type]
        if self.num_cases < 1:
            raise ValueError("the training dataset is empty")
        self.as_tensor = as_tensor
        self.transform = _random_transform(dataset)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def case_index(self, index: int) -> int:
        """The case read by draw ``index``."""
        epoch, position = divmod(int(index), self.num_cases)
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.seed, epoch, self.num_cases)
            self._perm_epoch = epoch
        return int(self._perm[position])  # type: ignore[index]

    def __len__(self) -> int:  # the draw stream is unbounded; the sampler bounds it
        return 2**62

    def __getitem__(self, index: int):
        self.transform.set_random_state(seed=draw_seed(self.seed, index))
        item = self.dataset[self.case_index(index)]
        return _plain(item) if self.as_tensor else item


def _plain(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.as_tensor() if hasattr(item, "as_tensor") else item
    if isinstance(item, dict):
        return {k: _plain(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(_plain(v) for v in item)
    return item


class StepSampler(Sampler[int]):
    """Draw indices of steps ``[start_step, total_steps)`` for one rank (see the module doc)."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step must be in [0, {total_steps}], got {start_step}")
        self.start_step, self.total_steps = start_step, total_steps
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank

    def indices(self, step: int) -> list[int]:
        base = (step * self.world_size + self.rank) * self.batch_size
        return list(range(base, base + self.batch_size))

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps):
            yield from self.indices(step)

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batch_size


def make_step_loader(
    dataset: Dataset,
    *,
    seed: int,
    start_step: int,
    total_steps: int,
    batch_size: int,
    num_workers: int = 0,
    collate_fn: Callable[[Sequence[Any]], Any] | None = None,
    world_size: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` yielding exactly one batch per step ``start_step .. total_steps - 1``."""
    if collate_fn is None:
        from monai.data import list_data_collate

        collate_fn = list_data_collate
    return DataLoader(
        SeededDraws(dataset, seed),
        batch_size=batch_size,
        sampler=StepSampler(start_step, total_steps, batch_size, world_size, rank),
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        # a private generator: creating the loader iterator must not consume the global RNG,
        # otherwise a resumed run would see a different torch RNG stream than an uninterrupted one
        generator=torch.Generator().manual_seed(int(seed)),
        prefetch_factor=2 if num_workers > 0 else None,
    )

"""Data-parallel training across processes: the process group, rank facts and collectives.

``torchrun --nproc_per_node N -m medcontext train ...`` starts N processes with the usual
environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_distributed` reads them and joins the group (NCCL on CUDA, gloo
on CPU). Without them (a plain ``python -m medcontext train``) it returns a one-process
:class:`World` and every collective below is a no-op, so the training loop has one code path.

How the pieces fit (:class:`~medcontext.engine.trainer.Trainer` does all of it)::

    world = init_distributed(cfg.train.device)          # rank, world size, backend
    mc.mask_generator.manual_seed(rank_seed(seed, r))   # masks differ per rank, reproducibly
    model = wrap_ddp(mc, device)                        # DDP: student + mask token gradients averaged
    world.broadcast_tensors(teacher tensors)            # DDP only broadcasts the wrapped module
    ... every step: world.gather_floats(loss terms)     # NaN seen by every rank at once
                    world.max_int(signal number)        # SIGTERM on one rank stops all ranks
    world.check_replicas(mc.state_dict())               # student and teacher bit-identical

A failing rank records its error in the process group's key-value store
(:meth:`World.report_failure`); the other ranks, whose next collective then breaks, raise a
:class:`DistributedError` that names the failed rank and its error instead of a socket message.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "World",
    "DistributedError",
    "ReplicaMismatchError",
    "init_distributed",
    "env_world_size",
    "rank_seed",
    "wrap_ddp",
    "DistributedModule",
]

T = TypeVar("T")

_FAILURE_KEY = "medcontext/failure/rank{}"
_MAIN_FIRST_KEY = "medcontext/main_first/{}"
_main_first_counter = itertools.count()
_EXPLAINED = "_medcontext_failure_reported"


class DistributedError(RuntimeError):
    """Another process of the group failed, or the group cannot be set up."""


class ReplicaMismatchError(DistributedError):
    """Weights that must be identical on every rank differ (a bug: report it)."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when it is not set)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError as err:
        raise DistributedError(f"WORLD_SIZE={value!r} is not an integer") from err
    if size < 1:
        raise DistributedError(f"WORLD_SIZE={value!r} must be >= 1")
    return size


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (masks, dropout) in a run seeded ``seed``.

    Rank 0 keeps ``seed`` itself (so rank 0 draws exactly what a single process draws); other
    ranks get a well-mixed 32-bit seed derived from ``(seed, rank)``. Reproducible from the
    run seed, different on every rank.
    """
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank), 0x72616E6B]).generate_state(1)[0])


@dataclass(frozen=True)
class World:
    """Process-group facts and the collectives the training loop needs.

    With ``world_size == 1`` (the default) every collective returns its input unchanged.

    Attributes:
        rank: global rank of this process (0 writes files).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU ``cuda:local_rank``).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (one process).
        owns_group: :func:`init_distributed` created the process group, :meth:`close`
            destroys it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    # ------------------------------------------------------------------ facts
    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def collective_device(self) -> torch.device:
        """Where tensors of collectives live: the rank's GPU for NCCL, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def describe(self) -> str:
        """One line for the start of a run, e.g. ``2 processes (gloo, 127.0.0.1:29500)``."""
        if not self.is_distributed:
            return "1 process"
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        nodes = os.environ.get("LOCAL_WORLD_SIZE")
        per_node = f", {nodes} per node" if nodes else ""
        return f"{self.world_size} processes{per_node} ({self.backend}, rendezvous {where})"

    def close(self) -> None:
        """Leave the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def gather_floats(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` as a (world_size, n) float64 CPU tensor (row = rank)."""
        local = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if not self.is_distributed:
            return local.unsqueeze(0)
        local = local.to(self.collective_device)
        rows = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(rows, local)
        return torch.stack(rows).cpu()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over all ranks."""
        if not self.is_distributed:
            return int(value)
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=self.collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's picklable ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's picklable ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (same shapes on every rank)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for tensor in tensors:
                if tensor.device == self.collective_device:
                    dist.broadcast(tensor, src=0)
                else:
                    staged = tensor.detach().to(self.collective_device)
                    dist.broadcast(staged, src=0)
                    tensor.copy_(staged)

    def check_replicas(self, tensors: Mapping[str, torch.Tensor], what: str) -> None:
        """Raise :class:`ReplicaMismatchError` unless ``tensors`` are identical on every rank.

        Compares a float64 fingerprint per tensor (sum and sum of squares, computed where the
        tensor lives), so the check costs one pass over the weights and one small gather.

        Args:
            tensors: name -> tensor, the same names on every rank (e.g. ``mc.state_dict()``).
            what: what is compared, for the message (e.g. ``"student and teacher"``).
        """
        if not self.is_distributed:
            return
        names = [k for k, v in tensors.items() if torch.is_tensor(v) and v.numel() > 0]
        with torch.no_grad():
            prints = torch.stack(
                [torch.stack([tensors[k].double().sum(), tensors[k].double().square().sum()]).cpu() for k in names]
            ) if names else torch.zeros(0, 2, dtype=torch.float64)
        rows = self.gather_floats(prints.reshape(-1)).reshape(self.world_size, len(names), 2)
        differing = sorted(
            {names[i] for r in range(1, self.world_size) for i in range(len(names)) if not torch.equal(rows[r, i], rows[0, i])}
        )
        if differing:
            ranks = [r for r in range(1, self.world_size) if not torch.equal(rows[r], rows[0])]
            shown = ", ".join(differing[:8]) + (f", ... ({len(differing) - 8} more)" if len(differing) > 8 else "")
            raise ReplicaMismatchError(
                f"{what} differ between rank 0 and rank(s) {ranks} ({len(differing)} tensors: {shown}); the replicas "
                "must stay bit-identical. This is a bug: please report it with the configuration."
            )

    # ------------------------------------------------------------------ work done by rank 0 only
    def main_first(self, fn: Callable[[], T], what: str, timeout: timedelta = timedelta(hours=12)) -> T:
        """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank.

        The other ranks wait in the key-value store rather than in a collective, so long work
        on rank 0 (checking a large dataset) is not cut short by the process-group timeout.
        If ``fn`` raises on rank 0, every rank raises that error (or a
        :class:`DistributedError` naming it when it cannot be pickled).
        """
        if not self.is_distributed:
            return fn()
        key = _MAIN_FIRST_KEY.format(next(_main_first_counter))
        store = _default_store()
        if self.is_main:
            try:
                result = fn()
            except Exception as err:
                payload = _pickle_or_none(("error", err)) or pickle.dumps(("message", f"{type(err).__name__}: {err}"))
                self._publish(store, key, payload)
                raise
            self._publish(store, key, pickle.dumps(("ok", result)))
            return result
        if store is not None:
            store.wait([key], timeout)
            kind, value = pickle.loads(store.get(key))
        else:
            kind, value = self.broadcast_object(None)
        if kind == "ok":
            return value
        if kind == "error":
            raise value
        raise DistributedError(f"rank 0 failed while {what}: {value}")

    def _publish(self, store, key: str, payload: bytes) -> None:
        if store is not None:
            store.set(key, payload)
        else:
            self.broadcast_object(pickle.loads(payload))

    # ------------------------------------------------------------------ failures
    def report_failure(self, err: BaseException) -> None:
        """Record that this rank failed with ``err`` (read by the others in :meth:`peer_failure`).

        Under torchrun the error also goes to the elastic error file, so the launcher's
        summary names it as the root cause.
        """
        if not self.is_distributed:
            return
        message = f"{type(err).__name__}: {err}"
        store = _default_store()
        if store is not None:
            try:
                store.set(_FAILURE_KEY.format(self.rank), message)
            except Exception:  # the store may already be gone (its host died)
                pass
        if os.environ.get("TORCHELASTIC_ERROR_FILE") and not os.path.exists(os.environ["TORCHELASTIC_ERROR_FILE"]):
            try:
                from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

                ErrorHandler().record_exception(err)
            except Exception:
                pass

    def peer_failure(self) -> str | None:
        """``"rank R: Type: message"`` of the first other rank that reported a failure, if any."""
        if not self.is_distributed:
            return None
        store = _default_store()
        if store is None:
            return None
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            key = _FAILURE_KEY.format(rank)
            try:
                if store.check([key]):
                    return f"rank {rank}: {store.get(key).decode(errors='replace')}"
            except Exception:
                return None
        return None

    def explain_failure(self, err: BaseException) -> BaseException:
        """The error to raise for ``err`` caught on this rank.

        A collective that broke because another rank died shows up here as a backend
        ``RuntimeError``; when another rank reported its failure first, the result is a
        :class:`DistributedError` naming that rank and its error. Anything else is this
        rank's own failure: it is reported to the others and returned unchanged.
        """
        if not self.is_distributed or isinstance(err, DistributedError) or getattr(err, _EXPLAINED, False):
            return err  # DistributedError: already explained, or raised alike on every rank
        peer = self.peer_failure() if _looks_like_collective_error(err) else None
        if peer is not None:
            return DistributedError(
                f"rank {self.rank} stopped because another process of the group failed ({peer}); "
                "see that rank's error above"
            )
        self.report_failure(err)
        try:
            setattr(err, _EXPLAINED, True)  # an outer handler must not re-classify it
        except Exception:
            pass
        return err


def _looks_like_collective_error(err: BaseException) -> bool:
    backend_error = getattr(dist, "DistBackendError", RuntimeError)
    if isinstance(err, backend_error):
        return True
    return type(err) is RuntimeError  # gloo's "Connection closed by peer" and friends


def _pickle_or_none(obj: Any) -> bytes | None:
    try:
        data = pickle.dumps(obj)
        pickle.loads(data)
        return data
    except Exception:
        return None


def _default_store():
    """The process group's key-value store (the rendezvous TCPStore), or ``None``."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def init_distributed(device: str | torch.device = "auto", *, timeout_min: float = 60.0) -> World:
    """Join the process group described by the torchrun environment variables.

    Args:
        device: the run's device setting (``train.device``); a CUDA device selects NCCL and
            the GPU ``cuda:LOCAL_RANK``, anything else gloo.
        timeout_min: minutes a collective may wait for the slowest rank before failing.

    Returns:
        A :class:`World`; one process (no group) when ``WORLD_SIZE`` is unset or 1. When a
        process group already exists (a user's own launcher), it is used as is.

    Raises:
        DistributedError: incomplete environment, or more local ranks than GPUs.
    """
    if dist.is_available() and dist.is_initialized():
        return World(
            rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            backend=str(dist.get_backend()), owns_group=False,
        )
    world_size = env_world_size()
    if world_size == 1:
        return World()
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set: launch with "
            "`torchrun --nproc_per_node N -m medcontext train ...`, which sets all of them"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.index is not None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise DistributedError(
            f"train.device={device} would put every process of this node on the same GPU; use train.device=cuda "
            "(or auto): each process then takes the GPU of its LOCAL_RANK"
        )
    if backend == "nccl":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible on this node: start at most {count} "
                "processes per node (--nproc_per_node) or use train.device=cpu"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend,
                 owns_group=True)


class _TensorTuple(nn.Module):
    """Presents a module whose forward returns a dataclass of tensors as one returning a tuple.

    DDP with ``static_graph=True`` must find the output tensors to schedule its first
    all-reduce; it finds them in tuples, lists and dicts but not in dataclasses, and then
    silently skips the gradient all-reduce (pytorch/pytorch#106690). The dataclass type is
    kept in ``output_type`` so :class:`DistributedModule` can rebuild it.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module
        self.output_type: type | None = None

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if dataclasses.is_dataclass(out):
            self.output_type = type(out)
            return tuple(getattr(out, f.name) for f in dataclasses.fields(out))
        self.output_type = None
        return out


class DistributedModule(nn.Module):
    """``DistributedDataParallel`` around a MedContext module, returning its ``LossBreakdown``.

    Attributes:
        module: the wrapped (unwrapped) MedContext module.
        ddp: the ``DistributedDataParallel`` instance.
    """

    def __init__(self, module: nn.Module, device: torch.device):
        super().__init__()
        device_ids = None
        if device.type == "cuda":
            device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
        self.ddp = nn.parallel.DistributedDataParallel(_TensorTuple(module), device_ids=device_ids, static_graph=True)

    @property
    def module(self) -> nn.Module:
        return self.ddp.module.inner

    def forward(self, *args, **kwargs):
        out = self.ddp(*args, **kwargs)
        output_type = self.ddp.module.output_type
        return output_type(*out) if output_type is not None else out


def wrap_ddp(module: nn.Module, device: torch.device) -> DistributedModule:
    """Data-parallel training of the whole MedContext module (:class:`DistributedModule`).

    The student and the mask tokens are ``module.parameters()``, so their gradients are
    averaged over ranks; the teacher lives outside the module tree and is not touched.
    Constructing it broadcasts rank 0's parameters and buffers of ``module``.

    ``static_graph=True``: the set of parameters that get a gradient is the same at every
    step (it depends on the network and the variant only), but it is not all of them: MONAI's
    UNETR keeps ``norm_cross_attn`` layers it never calls. A plain DDP then stops with
    "Expected to have finished reduction"; ``find_unused_parameters=True`` works too but walks
    the autograd graph after every forward (and warns for networks that use every parameter),
    while a static graph records the unused set once, in the first iteration. Parameters that
    never get a gradient keep ``grad=None`` and the optimizer leaves them alone, as in one
    process. A network whose set of used parameters changes from step to step (layers skipped
    at random) is refused by DDP with "Your training graph is changed in this iteration".
    """
    return DistributedModule(module, device)

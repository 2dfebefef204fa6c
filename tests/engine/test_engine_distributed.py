"""Multi-process training on CPU (gloo): replicas, batch equivalence, resume, stop and failure.

The multi-process tests launch ``torchrun --nproc_per_node 2`` on 127.0.0.1 with a free port,
either on ``python -m medcontext train`` (the user's command) or on this file itself (worker
mode, see ``_worker_main``), which calls :func:`medcontext.engine.train` with a Trainer
subclass that dumps each rank's final weights. Every launch is bounded by a timeout and its
whole process group is killed if it runs over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medcontext.engine import load_config, read_checkpoint, train
from medcontext.engine.config import ConfigError, lr_scale_factor, resolve_batch_scaling
from medcontext.engine.host.distributed import DistributedError, World, init_distributed, rank_seed
from medcontext.engine.training_log import read_metrics
from medcontext.engine.sampling import SeededDraws, StepSampler
from medcontext.engine.host.signals import GracefulStop
from medcontext.engine.trainer import Trainer

LAUNCH_TIMEOUT = 150  # seconds per torchrun launch (a launch takes ~10 s on 2 busy cores)

# a 3-level unet3d (instance norm: no batch-coupled layer) on 16^3 crops, one crop per volume
TINY = [
    "model.name=unet3d", "model.options={size: tiny}", "model.roi=[16,16,16]", "data.num_samples=1",
    "data.val_cases=2", "data.test_cases=2", "train.tensorboard=false", "train.seed=0", "eval.every=0",
    "train.device=cpu", "train.precision=fp32",
]


# ---------------------------------------------------------------------- worker mode
class DumpingTrainer(Trainer):
    """Writes ``rank{R}.pt`` (weights, mask seed, validation shares) at the end of ``fit``."""

    def on_train_start(self) -> None:
        self.val_seen: list = []
        self.mask_token_start = {k: v.clone() for k, v in self.mc.state_dict().items() if "mask_token" in k}

    def on_validation_end(self, step, results):
        record = super().on_validation_end(step, results)
        self.val_seen.append({"results": results, "record": dict(record)})
        return record

    def on_train_end(self, result) -> None:
        generator = getattr(self.mc, "mask_generator", None)
        torch.save(
            {
                "state": {k: v.detach().cpu().clone() for k, v in self.mc.state_dict().items()},
                "mask_token_start": self.mask_token_start,
                "mask_seed": generator.initial_seed() if generator is not None else None,
                "val_local": [case.case_id for case in self.val_cases],
                "val_seen": self.val_seen,
            },
            self.run_dir / f"rank{self.world.rank}.pt",
        )


class FixedMaskTrainer(DumpingTrainer):
    """Every sample gets a fixed mask chosen by its position in the global batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from medcontext.method.masking import tube_mask

        per_rank = self.cfg.train.batch_size * self.cfg.data.num_samples
        grid = self.mc.mask_grid(self.roi_size)
        masks = tube_mask(self.cfg.train.effective_batch_size, grid, 0.4, generator=torch.Generator().manual_seed(123))
        mine = masks[self.world.rank * per_rank : (self.world.rank + 1) * per_rank]
        self.mc.draw_mask = lambda batch, spatial: mine[:batch]


class SignalledTrainer(DumpingTrainer):
    """Rank 1 sends itself SIGTERM after step ``AT`` (rank 0 receives nothing)."""

    AT = 2

    def on_train_step_end(self, step, values):
        if self.world.rank == 1 and step == self.AT:
            os.kill(os.getpid(), signal.SIGTERM)


class FailingTrainer(DumpingTrainer):
    """Rank 1 raises in step ``AT`` (0-based) while rank 0 goes on."""

    AT = 1

    def train_step(self, batch, step):
        if self.world.rank == 1 and step == self.AT:
            raise ValueError("simulated failure in rank 1's data")
        return super().train_step(batch, step)


TRAINERS = {"dump": DumpingTrainer, "fixed": FixedMaskTrainer, "sigterm": SignalledTrainer, "raise": FailingTrainer}


def _worker_main(jobs: list[dict]) -> int:
    """One torchrun process: train the runs ``jobs`` (``mode``, ``out``, ``overrides``) one
    after the other in one process group; returns the largest exit code."""
    world = init_distributed("cpu")
    codes = []
    try:
        for job in jobs:
            cfg = load_config(None, job["overrides"])
            result = train(cfg, job["out"], progress=False, trainer_class=TRAINERS[job["mode"]], world=world)
            codes.append(result.exit_code)
    finally:
        world.close()
    return max(codes)


# ---------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*target: str, timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str, float]:
    """Run ``torchrun --nproc_per_node 2 TARGET...``; returns (exit code, output, seconds)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), *target,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: the session started above
        output, _ = proc.communicate()
        pytest.fail(f"torchrun {' '.join(target[:3])} did not finish within {timeout} s (hang?):\n{output[-4000:]}")
    return proc.returncode, output, time.perf_counter() - start


def _worker(*jobs: tuple[str, Path, list[str]]) -> tuple[int, str, float]:
    """Launch this file on 2 processes; each job is ``(mode, run folder, overrides)``."""
    spec = [{"mode": mode, "out": str(out), "overrides": overrides} for mode, out, overrides in jobs]
    return _torchrun(str(Path(__file__).resolve()), json.dumps(spec))


def _losses(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["total"], r["sup"], r["msl"], r["cl"]) for r in read_metrics(run_dir / "metrics.jsonl", "train")]


def _dumps(run_dir: Path) -> list[dict]:
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


COMMON = [*TINY, "method.variant=medcontext", "train.steps=4", "train.checkpoint_every=100"]


@pytest.fixture(scope="module")
def two_rank_runs(phantom_dir, tmp_path_factory) -> dict:
    """One 2-process launch, three runs: fixed masks; random masks; SIGTERM to rank 1 at step 2."""
    root = tmp_path_factory.mktemp("two_ranks")
    common = [f"data.path={phantom_dir}", *COMMON]
    runs = {"fixed": root / "fixed", "full": root / "full", "parts": root / "parts"}
    code, output, _ = _worker(("fixed", runs["fixed"], common), ("dump", runs["full"], common),
                                    ("sigterm", runs["parts"], common))
    return {**runs, "code": code, "output": output, "common": common}


# ---------------------------------------------------------------------- 2 processes vs 1
def test_two_processes_keep_replicas_identical_and_match_one_process_with_the_total_batch(two_rank_runs, tmp_path):
    two, one, output = two_rank_runs["fixed"], tmp_path / "one", two_rank_runs["output"]
    assert (two / "rank1.pt").is_file(), output[-4000:]
    assert "2 processes" in output and "effective batch 2 crops per step" in output

    # after training, student, mask token and teacher are bit-identical on both ranks
    rank0, rank1 = _dumps(two)
    state0, state1 = rank0["state"], rank1["state"]
    assert state0.keys() == state1.keys() and any(k.startswith("teacher.") for k in state0)
    assert all(torch.equal(state0[k], state1[k]) for k in state0)
    token = next(k for k in state0 if "mask_token" in k)
    assert not torch.equal(state0[token], rank0["mask_token_start"][token])  # the mask token was trained
    teacher_key = next(k for k in state0 if k.startswith("teacher.") and k.endswith("weight"))
    assert not torch.equal(state0[teacher_key], state0["network." + teacher_key[len("teacher."):]])

    # validation: each rank scored its own case, both ranks saw all results and the same record
    assert rank0["val_local"] != rank1["val_local"] and len(rank0["val_local"]) == len(rank1["val_local"]) == 1
    split = json.loads((two / "split.json").read_text())
    assert list(rank0["val_seen"][-1]["results"]) == split["val"] == rank0["val_local"] + rank1["val_local"]
    assert rank0["val_seen"] == rank1["val_seen"] and rank0["val_seen"][-1]["record"]["cases"] == 2
    best = read_checkpoint(two / "best.pt")
    assert best["best"]["metric"] == rank0["val_seen"][-1]["record"]["mean_dice"]
    assert read_checkpoint(two / "last.pt")["world_size"] == 2

    # the same 2 crops per step in one process: the loss trajectory matches (float tolerance)
    result = train(load_config(None, [*two_rank_runs["common"], "train.batch_size=2"]), one, progress=False, echo=lambda s: None,
                   trainer_class=FixedMaskTrainer)
    assert result.finished
    a, b = _losses(two), _losses(one)
    assert [r[0] for r in a] == [r[0] for r in b] == [1, 2, 3, 4]
    assert torch.allclose(torch.tensor([r[1:] for r in a]), torch.tensor([r[1:] for r in b]), rtol=1e-4, atol=1e-6)
    assert all(r[3] > 0 and r[4] > 0 for r in a)  # MSL and CL are part of the compared trajectory


# ---------------------------------------------------------------------- stop and resume
def test_sigterm_on_one_rank_stops_all_ranks_and_the_cli_resumes_exactly(two_rank_runs, capsys):
    full, parts, output = two_rank_runs["full"], two_rank_runs["parts"], two_rank_runs["output"]
    assert (full / "rank1.pt").is_file(), output[-4000:]

    # SIGTERM reaches rank 1 only: both ranks stop after step 2, rank 0 saves, and the first rank
    # to exit reports 143 (torchrun then ends the others, which have already finished their work)
    assert two_rank_runs["code"] != 0 and "exitcode  : 143" in output and "exitcode  : 1 " not in output, output[-4000:]
    assert "another process of the group received SIGTERM: stopped after step 2" in output
    assert read_checkpoint(parts / "last.pt")["step"] == 2
    assert [r["step"] for r in read_metrics(parts / "metrics.jsonl", "train")] == [1, 2]

    # `torchrun -m medcontext train --resume` continues both ranks (weights, optimizer, per-rank RNG)
    cli = ["-m", "medcontext", "train", "--out", str(parts), "--resume", "--no-progress"]
    code, output, _ = _torchrun(*cli)
    assert code == 0, output[-4000:]
    assert _losses(parts) == _losses(full)  # bit-identical floats, all four terms
    a, b = read_checkpoint(full / "last.pt"), read_checkpoint(parts / "last.pt")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    # masks were drawn from different, reproducible generators on the two ranks
    rank0, rank1 = _dumps(full)
    assert rank0["mask_seed"] == rank_seed(0, 0) == 0 and rank1["mask_seed"] == rank_seed(0, 1) != 0
    states = a["rng_ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["mask_generator"], states[1]["mask_generator"])

    # a resume with another number of processes is refused with the reason
    from medcontext.cli import main

    capsys.readouterr()
    assert main(["train", "--out", str(parts), "--resume", "--no-progress"]) == 2
    assert "effective_batch_size=2 but this launch gives 1 crops per step" in capsys.readouterr().err


# ---------------------------------------------------------------------- failure
def test_a_failing_rank_ends_the_run_with_a_clear_error_and_no_hang(phantom_dir, tmp_path):
    overrides = [f"data.path={phantom_dir}", *TINY, "method.variant=medcontext", "train.steps=6"]
    code, output, _ = _worker(("raise", tmp_path / "run", overrides))  # bounded: LAUNCH_TIMEOUT
    assert code != 0
    assert "ValueError: simulated failure in rank 1's data" in output  # the root cause, with its rank
    assert "rank 0 stopped because another process of the group failed (rank 1: ValueError" in output


# ---------------------------------------------------------------------- single-process units
def test_single_process_world_collectives_are_identities(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    world = init_distributed("cpu")
    assert world == World() and world.is_main and not world.is_distributed and world.describe() == "1 process"
    assert world.gather_floats([1.5, 2.0]).tolist() == [[1.5, 2.0]]
    assert world.max_int(3) == 3 and world.all_gather_object("x") == ["x"] and world.broadcast_object(7) == 7
    assert world.main_first(lambda: 41 + 1, "x") == 42
    err = ValueError("mine")
    assert world.explain_failure(err) is err and world.peer_failure() is None
    world.check_replicas({"a": torch.ones(2)}, "weights")  # nothing to compare with


def test_incomplete_torchrun_environment_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DistributedError, match="RANK, MASTER_ADDR, MASTER_PORT is not set: launch with `torchrun"):
        init_distributed("cpu")


def test_rank_seeds_differ_per_rank_and_are_reproducible():
    seeds = [rank_seed(7, r) for r in range(8)]
    assert seeds[0] == 7 and len(set(seeds)) == 8
    assert seeds == [rank_seed(7, r) for r in range(8)] and rank_seed(8, 1) != seeds[1]


def test_effective_batch_and_learning_rate_scaling():
    cfg = load_config(overrides=["train.batch_size=2", "data.num_samples=2", "optim.lr=1e-3"])
    assert resolve_batch_scaling(cfg, 4).train.effective_batch_size == 16
    assert lr_scale_factor(cfg) == 1.0  # optim.lr_scaling=none
    cfg.optim.lr_scaling, cfg.optim.base_batch_size = "linear", 4
    assert lr_scale_factor(cfg) == 4.0
    cfg.optim.lr_scaling = "sqrt"
    assert lr_scale_factor(cfg) == 2.0
    pinned = load_config(overrides=["train.effective_batch_size=8", "data.num_samples=2"])
    resolve_batch_scaling(pinned, 4)  # 1 x 2 x 4 = 8: accepted
    with pytest.raises(ConfigError, match=r"effective_batch_size=8 but this launch gives 4 .*launch 4 processes"):
        resolve_batch_scaling(pinned, 2)
    with pytest.raises(ConfigError, match="optim.lr_scaling must be none, linear or sqrt"):
        load_config(overrides=["optim.lr_scaling=cubic"])


def test_ranks_read_disjoint_shards_that_cover_every_case_each_epoch():
    cases, world_size, batch = 12, 3, 2  # one epoch = 2 steps of 3 ranks x 2 draws

    class Cases(torch.utils.data.Dataset):
        def set_random_state(self, seed=None):  # the augmentation hook SeededDraws re-seeds
            pass

        def __len__(self):
            return cases

        def __getitem__(self, i):
            return i

    draws = SeededDraws(Cases(), seed=5, as_tensor=False)
    orders = []
    for epoch in range(2):
        shards = [[draws[i] for i in StepSampler(2 * epoch, 2 * epoch + 2, batch, world_size, rank)]
                  for rank in range(world_size)]
        assert sorted(sum(shards, [])) == list(range(cases))  # every case exactly once per epoch
        assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1 :])  # disjoint
        orders.append(shards)
    assert orders[0] != orders[1]  # reshuffled every epoch (with the run seed)
    again = SeededDraws(Cases(), seed=5, as_tensor=False)
    assert [again[i] for i in range(2 * cases)] == [draws[i] for i in range(2 * cases)]


def test_graceful_stop_accepts_a_peer_request():
    with GracefulStop(enabled=False) as stop:
        assert not stop.requested
        stop.request(signal.SIGTERM)
        assert stop.requested and stop.from_peer and stop.exit_code == 143 and stop.name == "SIGTERM"
        stop.handle(signal.SIGINT)  # this rank's own first Ctrl-C after a peer's stop: still graceful
        assert stop.name == "SIGTERM" and not stop.from_peer
        with pytest.raises(KeyboardInterrupt):  # the second one is not
            stop.handle(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(_worker_main(json.loads(sys.argv[1])))

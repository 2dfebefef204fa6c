"""``medcontext experiment --status``: where each run of a study stands, without training."""

import json

import torch

from medcontext.cli import main
from medcontext.engine.checkpoint import CHECKPOINT_FORMAT
from medcontext.study import acdc_plan
from medcontext.study.execution import DONE_MARKER, format_status, study_status


def _log(run_dir, step_times, start=None):
    records = [{"kind": "start", "step": 0, **start}] if start else []
    records += [{"kind": "train", "step": i + 1, "step_time": t} for i, t in enumerate(step_times)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_status_reads_finished_interrupted_and_missing_runs(tmp_path, capsys):
    finished, interrupted, broken, started = acdc_plan()[:4]
    for run in (finished, interrupted, broken, started):
        (tmp_path / run.name).mkdir(parents=True)
    (tmp_path / finished.name / DONE_MARKER).write_text(json.dumps({"test_mean_dice": 0.6123}))
    _log(tmp_path / finished.name, [0.5, 0.5, 0.5])
    machine = {"device": "cpu", "processor": "AMD EPYC", "isa": "AVX2", "precision": "fp32"}
    _log(tmp_path / interrupted.name, [4.0, 6.0, 5.0, 9.0], start=machine)
    # the checkpoint is behind the log (a kill after step 4): a resume starts at step 2
    torch.save({"format": CHECKPOINT_FORMAT, "step": 2}, tmp_path / interrupted.name / "last.pt")
    (tmp_path / broken.name / "last.pt").write_bytes(b"cut off")

    statuses = study_status(acdc_plan(), tmp_path)
    by_name = {s.name: s for s in statuses}
    done = by_name[finished.name]
    assert (done.state, done.step, done.test_mean_dice, done.hours_left) == ("finished", 3000, 0.6123, 0.0)
    cut = by_name[interrupted.name]
    assert (cut.state, cut.step, cut.median_step_s) == ("interrupted", 2, 5.5)
    assert cut.hours_left == (3000 - 2) * 5.5 / 3600 and cut.machine == "fp32 on AMD EPYC (AVX2)"
    bad = by_name[broken.name]
    assert bad.state == "interrupted" and bad.step == 0 and "last.pt unreadable" in bad.note
    assert by_name[started.name].state == "started" and by_name[acdc_plan()[4].name].state == "not started"

    text = format_status(statuses)
    assert f"1 of {len(statuses)} runs finished; 4.6 h of steps left in 1 started run(s)" in text
    assert "0.6123" in text and "2/3000" in text

    # the CLI needs no dataset for --status, and trains nothing
    assert main(["experiment", "acdc", "--out", str(tmp_path), "--status", "--only", "acdc_unet3d_k5/*_s0"]) == 0
    out = capsys.readouterr().out
    assert interrupted.name in out and "acdc_unetr_k5" not in out and "1 of 4 runs finished" in out  # h0.05_s0 too
    assert not (tmp_path / "report").exists()
    assert main(["experiment", "acdc", "--out", str(tmp_path)]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_a_run_whose_writer_lock_is_held_by_a_live_process_is_running_at_its_logged_step(tmp_path, dead_pid):
    from medcontext.io.run_lock import LOCK_NAME, RunFolderLock

    running, killed = acdc_plan()[:2]
    for run in (running, killed):
        (tmp_path / run.name).mkdir(parents=True)
        _log(tmp_path / run.name, [2.0] * 7)
        torch.save({"format": CHECKPOINT_FORMAT, "step": 5}, tmp_path / run.name / "last.pt")
    # a writer killed with -9 leaves its lock file behind, naming a process that no longer exists
    (tmp_path / killed.name / LOCK_NAME).write_text(json.dumps(
        {"pid": dead_pid, "host": __import__("socket").gethostname(), "started": "2026-01-01T00:00:00Z",
         "command": "medcontext train"}))
    with RunFolderLock(tmp_path / running.name, "medcontext train"):
        by_name = {s.name: s for s in study_status(acdc_plan()[:2], tmp_path)}
        assert (by_name[running.name].state, by_name[running.name].step) == ("running", 7)
        assert (by_name[killed.name].state, by_name[killed.name].step) == ("interrupted", 5)
    assert not (tmp_path / running.name / LOCK_NAME).exists()
    assert study_status(acdc_plan()[:1], tmp_path)[0].state == "interrupted"

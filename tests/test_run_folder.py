"""Run folders are safe (issue 11, item 4): one run per folder, locked while it trains, no half-made
run folders after a failed start, no temporaries of a killed writer left behind."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_image_folder, run_cli

import alexnet
from alexnet.config import resolve_config
from alexnet.runfolder import RunFolderError, claim
from alexnet.train import Interrupted, fit

QUICK = ["--model", "alexnet_small", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
         "--amp", "none", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
TEMPS = [".last.pt.k2x9_a.tmp", ".best.pt.0abc12.tmp"]  # save_atomic's naming: .NAME.XXXXXX.tmp


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", "--data", str(data), "--out", str(out), *QUICK, *extra)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry under ``folder`` (hidden ones too, the folder itself) with its bytes and mtime."""
    snap = {}
    for path in [folder, *folder.rglob("*")]:
        snap[str(path.relative_to(folder))] = (b"" if path.is_dir() else path.read_bytes(), path.stat().st_mtime_ns)
    return snap


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def _plant_run(run: Path) -> None:
    """A finished run's files (as train leaves them), temporaries of a killed writer, and a file of the user's."""
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out").write_bytes(b"old")
    for name in ("config.json", "metrics.jsonl", "last.pt", "old.pt", "curves.png", "bad_files.txt", *TEMPS):
        (run / name).write_bytes(b"old " + name.encode())
    (run / "notes.txt").write_text("mine\n")


def test_a_new_run_into_a_finished_run_is_refused_and_changes_nothing(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    before = _snapshot(run)
    line = _one_line(_train(tiny_fmnist, run))
    assert line.startswith(f"alexnet: error: {run} already holds a run (")
    assert f"--resume {run}" in line and "--force" in line
    assert _snapshot(run) == before


def _readme_run_files() -> set[str]:
    """The files README's "A run folder holds ..." sentence names (its code spans that are file names)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("A run folder holds `")
    sentence = text[start:text.index("(checkpoints:", start)]
    return {s for s in re.findall(r"`([^`]+)`", sentence) if re.fullmatch(r"\w+\.(?:json|jsonl|png|pt)", s)}


def test_a_run_folder_holds_the_files_readme_names(tiny_fmnist, tmp_path):
    """What README says a run folder holds is what `alexnet train` writes there, no more, no fewer
    (the names are runfolder's constants; README and the tests spell them out)."""
    run = tmp_path / "run"
    r = _train(tiny_fmnist, run)
    assert r.returncode == 0, r.stderr
    named = _readme_run_files()
    assert named == {"config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt"}  # the sentence was found whole
    assert set(os.listdir(run)) == named


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "weights.pt"])
def test_any_run_file_makes_a_folder_a_run(tiny_fmnist, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("{}")
    before = _snapshot(run)
    assert name in _one_line(_train(tiny_fmnist, run))
    assert _snapshot(run) == before


def test_nproc_and_resume_with_force_are_refused_in_one_line(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    before = _snapshot(run)
    assert "already holds a run" in _one_line(_train(tiny_fmnist, run, "--nproc", "2"))  # before torchrun starts
    assert "pass one of them" in _one_line(run_cli("train", "--resume", str(run), "--force"))
    assert _snapshot(run) == before


def test_force_replaces_the_run_and_only_its_files(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    _plant_run(run)
    r = _train(tiny_fmnist, run, "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(run)) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl", "notes.txt"]
    assert (run / "notes.txt").read_text() == "mine\n"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert alexnet.load(run / "last.pt").config.fc_width == 32


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_is_refused_and_free_again_when_its_holder_is_killed(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    _plant_run(run)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        expected = f"alexnet: error: {run} is in use by another alexnet train (pid {holder.pid})"
        assert _one_line(_train(tiny_fmnist, run, "--force")) == expected  # --force removes nothing of a live run
        assert _one_line(_train(tiny_fmnist, run, "--nproc", "2", "--force")) == expected
        assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops a killed process's flock
        holder.wait()
    r = _train(tiny_fmnist, run, "--force")
    assert r.returncode == 0, r.stderr
    assert not (run / ".lock").exists()  # released (and removed) when the run ends


def test_a_lock_taken_in_process_refuses_a_second_claim(tmp_path):
    run = tmp_path / "run"
    with claim(run, resume=False, force=False):
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(alexnet.AlexNetError, match=f"in use by another alexnet train \\(pid {os.getpid()}\\)"):
            claim(run, resume=True, force=False)
    assert not run.exists()  # created by the claim, left empty: removed


@pytest.mark.parametrize("problem", ["empty class folder", "missing --init-from"])
def test_a_run_that_fails_to_start_leaves_no_run_folder(tiny_fmnist, tmp_path, problem):
    run = tmp_path / "runs" / "new"
    if problem == "empty class folder":
        data = make_image_folder(tmp_path / "photos")
        (data / "class9").mkdir()
        r = run_cli("train", "--data", str(data), "--out", str(run), *QUICK)
    else:
        r = _train(tiny_fmnist, run, "--init-from", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not run.exists()
    # Into a folder of the user's: the run's files go, the folder and the user's file stay.
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine\n")
    assert _train(tiny_fmnist, run, "--init-from", str(tmp_path / "nope.pt")).returncode == 2
    assert os.listdir(run) == ["notes.txt"]


def _poison_loss(monkeypatch, at_call: int) -> None:
    """The training loss turns NaN at the ``at_call``-th step: the run stops with a TrainingError."""
    import alexnet.epoch as epoch_mod

    real, calls = epoch_mod.F.cross_entropy, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == at_call else loss

    monkeypatch.setattr(epoch_mod.F, "cross_entropy", poisoned)


def _cfg(data: Path, out: Path, epochs: int):
    options = {"widths": [8, 16, 16, 16, 16], "fc_width": 32}
    return resolve_config(None, dict(data=str(data), out=str(out), epochs=epochs, batch_size=16, amp="none", workers=0,
                                     device="cpu", model="alexnet_small", model_options=options))


def test_a_failure_before_the_first_checkpoint_removes_the_run_after_it_keeps_it(tiny_fmnist, tmp_path, monkeypatch):
    _poison_loss(monkeypatch, at_call=2)  # epoch 1 of 4 steps: no checkpoint yet
    with pytest.raises(alexnet.TrainingError, match="non-finite loss"):
        fit(_cfg(tiny_fmnist, tmp_path / "early", 2), log=lambda s: None)
    assert not (tmp_path / "early").exists()
    _poison_loss(monkeypatch, at_call=6)  # epoch 2: epoch 1's checkpoint is the point of the folder
    with pytest.raises(alexnet.TrainingError, match="non-finite loss"):
        fit(_cfg(tiny_fmnist, tmp_path / "late", 2), log=lambda s: None)
    assert sorted(os.listdir(tmp_path / "late")) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl"]


def test_a_full_disk_at_metrics_jsonl_names_it_and_keeps_its_whole_lines(tiny_fmnist, tmp_path, monkeypatch):
    """A disk that filled up after epoch 2's checkpoints failed its line of metrics.jsonl in Python's
    flush, which names no file: 'alexnet: error: No space left on device', exit 1 (seen on a tmpfs).
    The error names metrics.jsonl and what is kept; the file keeps epoch 1's line whole."""
    import errno
    import io

    run = tmp_path / "run"
    real_open = Path.open

    class Full(io.StringIO):
        def write(self, text):  # half the line reaches the disk, then the disk is full
            with real_open(run / "metrics.jsonl", "a") as f:
                f.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def opening(self, mode="r", *args, **kwargs):
        epoch_two = self.name == "metrics.jsonl" and mode == "a" and self.stat().st_size
        return Full() if epoch_two else real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", opening)
    with pytest.raises(alexnet.TrainingError) as caught:
        fit(_cfg(tiny_fmnist, run, 2), log=lambda s: None)
    assert str(caught.value) == (f"could not write {run / 'metrics.jsonl'}: No space left on device; "
                                 "the run folder keeps the last good checkpoint")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith("\n") and json.loads(lines[0])["epoch"] == 1


def test_a_failure_before_the_first_checkpoint_keeps_the_list_of_unreadable_images(tmp_path, monkeypatch):
    """The start line pointed at bad_files.txt in the run folder: it stays when the rest goes."""
    data = make_image_folder(tmp_path / "photos", classes=2, per_class=8)
    (data / "class0" / "broken.jpg").write_text("not an image\n")
    _poison_loss(monkeypatch, at_call=3)
    options = {"widths": [8, 16, 16, 16, 16], "fc_width": 32, "input_size": 67}
    cfg = resolve_config(None, dict(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=4, amp="none", workers=0,
                                    device="cpu", model="alexnet_small", model_options=options))
    with pytest.raises(alexnet.TrainingError, match="no checkpoint had been written yet"):
        fit(cfg, log=lambda s: None)
    assert os.listdir(tmp_path / "run") == ["bad_files.txt"]
    assert (tmp_path / "run" / "bad_files.txt").read_text().startswith(str(data / "class0" / "broken.jpg") + "\t")


def test_ctrl_c_keeps_the_folder_even_before_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        with claim(run, resume=False, force=False, keep=(Interrupted,)):
            (run / "config.json").write_text("{}")
            raise Interrupted("interrupted")
    assert os.listdir(run) == ["config.json"]  # the lock file goes, the run's files stay


def test_temporaries_of_a_killed_writer_are_removed_on_resume(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    for name in TEMPS:
        (run / name).write_bytes(b"\0" * 1000)
    (run / ".notes.tmp").write_text("mine\n")  # not save_atomic's: kept
    r = run_cli("train", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    assert not any((run / name).exists() for name in TEMPS)
    assert (run / ".notes.tmp").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked: they must not hold the run's lock when the run is gone."""
    from alexnet.runfolder import RunFolderError, refuse_in_use

    run = tmp_path / "run"
    folder = claim(run, resume=False, force=False)
    ready, started = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: outlives its parent's hold on the lock
        import time

        os.write(started, b"1")  # running: the fork hooks are done
        time.sleep(3)
        os._exit(0)
    assert os.read(ready, 1) == b"1"
    try:
        with pytest.raises(RunFolderError):
            refuse_in_use(run)  # held by us
        os.close(folder.fd)  # as a SIGKILL of the main process would: without unlinking the file
        folder.fd = None
        refuse_in_use(run)  # free although the forked child is still alive
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_run_killed_before_its_first_checkpoint_is_started_again_not_resumed(tiny_fmnist, tmp_path):
    """SIGKILL (or a power cut) in the first epoch leaves config.json, metrics.jsonl and .lock, and no
    checkpoint: --resume says there is nothing to resume, and a new run into the folder takes it
    over (it was refused as 'already holds a run ... continue it with --resume', which then failed)."""
    run = tmp_path / "run"
    killed = run_cli("train", "--data", str(tiny_fmnist), "--out", str(run), *QUICK, timeout=300, env={"ALEXNET_FAULT": "kill:step=1"})
    assert killed.returncode == -signal.SIGKILL and sorted(os.listdir(run)) == [".lock", "config.json", "metrics.jsonl"]
    fd = os.open(run / ".lock", os.O_RDWR)  # the same files of a run still in its first epoch: in use, not stopped
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert _one_line(run_cli("train", "--resume", str(run))).startswith(f"alexnet: error: {run} is in use by another alexnet train")
    finally:
        os.close(fd)
    line = _one_line(run_cli("train", "--resume", str(run)))
    assert line == (f"alexnet: error: --resume: {run} stopped before its first checkpoint: nothing to resume; start it "
                    f"again (alexnet train --out {run} ... replaces its files)")
    r = _train(tiny_fmnist, run)
    assert r.returncode == 0, r.stderr
    assert {"last.pt", "best.pt", "config.json"} <= set(os.listdir(run))
    for name in ("last.pt", "best.pt"):  # a finished run whose checkpoints were moved away keeps its records
        os.replace(run / name, tmp_path / name)
    before = _snapshot(run)
    assert "already holds a run" in _one_line(_train(tiny_fmnist, run))
    assert _snapshot(run) == before


def test_temporaries_of_every_file_a_killed_run_was_writing_are_removed(tmp_path):
    """A SIGKILL while train rewrites curves.png (or config.json, metrics.jsonl) leaves atomic_path's
    temporary, e.g. '.curves.png.hbmp75_l.tmp' (seen after a kill at 6.5 s): claiming the folder
    again sweeps it as it sweeps a checkpoint's; a hidden file of the user's stays."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.jsonl", "last.pt"):
        (run / name).write_bytes(b"run")
    temps = [".curves.png.hbmp75_l.tmp", ".config.json.a1b2c3d4.tmp", ".metrics.jsonl.zz_9xq0.tmp", *TEMPS]
    for name in (*temps, ".notes.png.abcdefgh.tmp"):
        (run / name).write_bytes(b"\0" * 100)
    claim(run, resume=True, force=False).release()
    assert sorted(os.listdir(run)) == [".notes.png.abcdefgh.tmp", "config.json", "last.pt", "metrics.jsonl"]


def test_a_folder_made_read_only_mid_run_reports_the_failed_write_not_the_lock(tmp_path, monkeypatch):
    """A run folder made read-only while training (chattr +i, a read-only remount) fails the next
    checkpoint write with a one-line TrainingError; releasing the lock then failed to unlink .lock
    and that PermissionError replaced it: 'alexnet: error: Operation not permitted (RUN/.lock)',
    exit 1. The run's error goes through, and the lock is released all the same."""
    import errno

    from alexnet.errors import TrainingError

    run = tmp_path / "run"
    real_unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self.name == ".lock":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        real_unlink(self, missing_ok=missing_ok)

    with pytest.raises(TrainingError, match="could not write"), claim(run, resume=False, force=False):
        (run / "last.pt").write_bytes(b"good")
        monkeypatch.setattr(Path, "unlink", read_only)
        raise TrainingError(f"could not write {run / 'last.pt'}: Operation not permitted")
    monkeypatch.undo()
    assert (run / "last.pt").read_bytes() == b"good"
    claim(run, resume=True, force=False).release()  # not 'in use': the lock went with the process's descriptor


# --force sets the old run aside until the new run's first checkpoint (runfolder.REPLACED): a forced run
# that fails, or is killed, before it has one loses nothing.
def _entries(folder: Path) -> dict[str, tuple[bytes, int]]:
    """:func:`_snapshot` without the folder's own entry (whose mtime moving entries out and back changes)."""
    return {k: v for k, v in _snapshot(folder).items() if k != "."}


def _kill_env(fault: str) -> dict[str, str]:
    return {"ALEXNET_FAULT": fault}


def test_a_forced_run_that_fails_before_its_first_checkpoint_puts_the_old_run_back(tiny_fmnist, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    (run / "notes.txt").write_text("mine\n")
    before = _entries(run)
    _poison_loss(monkeypatch, at_call=2)  # epoch 1 of 4 steps: no checkpoint yet
    with pytest.raises(alexnet.TrainingError, match="non-finite loss.*the run it was to replace is back in place"):
        fit(_cfg(tiny_fmnist, run, 2), log=lambda s: None, force=True)
    assert _entries(run) == before  # bytes and mtimes: every file of the old run, as it was


@pytest.mark.parametrize("fault", ["kill:step=1", "kill:write=1"])  # in epoch 1; inside the first checkpoint's write
def test_a_forced_run_killed_before_its_first_checkpoint_leaves_the_old_run_to_come_back(tiny_fmnist, tmp_path, fault):
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    before = _entries(run)
    killed = run_cli("train", "--data", str(tiny_fmnist), "--out", str(run), *QUICK, "--force", timeout=300, env=_kill_env(fault))
    assert killed.returncode == -signal.SIGKILL and ".replaced-run" in os.listdir(run), killed.stderr
    line = _one_line(run_cli("evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(tiny_fmnist)))
    assert f"the run it replaces waits in {run / '.replaced-run'}" in line and f"--resume {run}' puts that run back" in line
    assert "already holds a run" in _one_line(_train(tiny_fmnist, run))  # the next claim puts it back, then refuses
    assert _entries(run) == before
    r = run_cli("train", "--resume", str(run), "--epochs", "2")  # and it goes on as the old run
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_puts_back_the_run_a_killed_forced_run_set_aside(tiny_fmnist, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    old = (run / "last.pt").read_bytes()
    killed = run_cli("train", "--data", str(tiny_fmnist), "--out", str(run), *QUICK, "--force", "--model-option", "fc_width=24",
                     timeout=300, env=_kill_env("kill:step=1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    r = run_cli("train", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    assert ".replaced-run" not in os.listdir(run) and (run / "last.pt").read_bytes() != old
    assert alexnet.load(run / "last.pt").config.fc_width == 32  # the old run's network, not the killed one's
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_old_run_goes_with_the_forced_runs_first_checkpoint(tiny_fmnist, tmp_path):
    """Not at the end of the run: from its first checkpoint on, the new run is the one to resume."""
    run = tmp_path / "run"
    assert _train(tiny_fmnist, run).returncode == 0
    killed = run_cli("train", "--data", str(tiny_fmnist), "--out", str(run), *QUICK, "--epochs", "2", "--force", "--model-option",
                     "fc_width=24", timeout=300, env=_kill_env("kill:step=5"))  # in epoch 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ".replaced-run" not in os.listdir(run) and alexnet.load(run / "last.pt").config.fc_width == 24
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 0 and len((run / "metrics.jsonl").read_text().splitlines()) == 2, r.stderr


def test_a_run_killed_while_set_aside_is_moved_back_whole(tmp_path):
    """A kill between two renames of the setting aside (or of the putting back) leaves the old run in
    two places: the next claim that goes on (--resume; --force sets it aside whole) gathers it."""
    run = tmp_path / "run"
    _plant_run(run)
    before = {k: v for k, v in _entries(run).items() if not k.endswith(".tmp")}  # a killed writer's: removed
    (run / ".replaced-run.part").mkdir()
    for name in ("last.pt", "tensorboard", "config.json"):
        os.rename(run / name, run / ".replaced-run.part" / name)
    with pytest.raises(RunFolderError, match="already holds a run"):  # a refusal reads only
        claim(run, resume=False, force=False)
    claim(run, resume=True, force=False).release()
    assert _entries(run) == before


def test_ctrl_c_before_a_forced_runs_first_checkpoint_puts_the_old_run_back(tmp_path):
    run = tmp_path / "run"
    _plant_run(run)
    before = {k: v for k, v in _entries(run).items() if not k.endswith(".tmp")}  # a killed writer's: removed
    with pytest.raises(Interrupted):
        with claim(run, resume=False, force=True, keep=(Interrupted,)):
            assert sorted(os.listdir(run)) == [".lock", ".replaced-run", "notes.txt"]
            (run / "config.json").write_text("{}")
            raise Interrupted("interrupted")
    assert _entries(run) == before


def test_a_resume_killed_in_its_first_epoch_leaves_curves_of_its_record(tiny_fmnist, tmp_path):
    """A kill between last.pt's write and metrics.jsonl's line leaves a record and a figure one epoch
    short; --resume rewrote the record from the checkpoint but drew curves.png only after its next
    epoch, so a resume killed in that epoch left a figure of other epochs than metrics.jsonl. The
    figure must be the one plot_curves draws of the record (same bytes)."""
    from alexnet.figures import plot_curves

    run = tmp_path / "run"
    assert _train(tiny_fmnist, run, "--epochs", "2").returncode == 0
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0])  # as the kill left them
    plot_curves(run)
    steps = alexnet.checkpoint.read_entry(run / "last.pt", "position")["step"]
    killed = run_cli("train", "--resume", str(run), "--epochs", "3", "--threads", "1", timeout=300,
                     env={"ALEXNET_FAULT": f"kill:step={steps + 1}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "metrics.jsonl").read_text() == "".join(lines)
    plot_curves(run, tmp_path / "expected.png")
    assert (run / "curves.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_a_figure_leaves_the_callers_matplotlib_alone(tmp_path):
    """Drawing a figure (fit's curves.png, evaluate --out's confusion, predict/retrieve --figure) set
    pyplot's backend to Agg: in a notebook or a script with its own backend this closed the caller's
    open figures and left plt.show() showing nothing. The figures are drawn on a Figure of their own."""
    import matplotlib
    import matplotlib.pyplot as plt
    import torch

    from alexnet.figures import plot_confusion

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands for the caller's (a notebook's inline, a GUI's)
    try:
        mine = plt.figure()
        plot_confusion(torch.eye(2), ["a", "b"], tmp_path / "c.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [mine.number]
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        plt.close("all")
        plt.switch_backend(before)

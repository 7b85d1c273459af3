"""Bitwise resume for every data kind (issue 11): a run SIGKILLed at a seeded moment, then resumed,
ends with the uninterrupted run's weights and history, and leaves no temporary file behind.

The kill comes from the run itself (``ALEXNET_FAULT``, see :mod:`alexnet.faults`) at a moment drawn
from ``random.Random(SEED + case number)`` and printed (``pytest -s`` or a failure shows it): the
same moment on every machine and every run. Change SEED to try other moments.

Cases (data kind, amp, workers, kill): every data kind with every kill moment, each amp and each
worker count (workers only where a DataLoader is used) at least once:

======== ===== ======= =====================================================
fmnist   none  0       step (after a mid-epoch checkpoint: the resume starts mid-epoch)
fmnist   none  0       eval (inside the evaluation pass)
fmnist   bf16  0       write (half a checkpoint in its temporary file)
fmnist   none  0       best (a write of best.pt, which comes before the epoch's last.pt)
cifar    none  0       eval
cifar    none  0       write
cifar    bf16  0       step
folder   none  0       step (the issue's case: real JPEGs through a DataLoader)
folder   none  0       eval
folder   bf16  2       write
ilsvrc   none  2       step (train/ synsets, a flat val/ labelled by LOC_val_solution.csv)
packed   none  2       eval
packed   none  2       write
packed   bf16  0       step
======== ===== ======= =====================================================

The killed run is a subprocess (a kill must end a process); the uninterrupted reference and the
resume run in this process (a Python start costs seconds here), which also shows that the result
does not depend on the process that computed it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGEWOOF, make_tiny_fmnist, src_pythonpath
from test_command_matrix import _ilsvrc

import alexnet.train
from alexnet import faults, runfolder
from alexnet.cli import main
from alexnet.data.loaders import load_data, set_epoch
from alexnet.model import create_model

SEED = 2024  # draws the kill moments
EPOCHS, SAVE_EVERY = 2, 3  # a checkpoint every 3 steps: a resume replays the steps since the last one
TINY = ["--model", "alexnet_small", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
NO_PHOTOS = f"needs the real photos in {IMAGEWOOF} (../shared)"

CASES = [
    ("fmnist", "none", 0, "step"),
    ("fmnist", "none", 0, "eval"),
    ("fmnist", "bf16", 0, "write"),
    ("fmnist", "none", 0, "best"),
    ("cifar", "none", 0, "eval"),
    ("cifar", "none", 0, "write"),
    ("cifar", "bf16", 0, "step"),
    ("folder", "none", 0, "step"),
    ("folder", "none", 0, "eval"),
    ("folder", "bf16", 2, "write"),
    ("ilsvrc", "none", 2, "step"),
    ("packed", "none", 2, "eval"),
    ("packed", "none", 2, "write"),
    ("packed", "bf16", 0, "step"),
]


# -- the data: each kind small enough for a run of a second or two --------------------------------
def _photos(root: Path, train: int = 6, val: int = 2, classes: int = 3) -> Path:
    """A train/val folder of real JPEGs from imagewoof-mini: 18 train, 6 val images."""
    for split, n in (("train", train), ("val", val)):
        for folder in sorted((IMAGEWOOF / split).iterdir())[:classes]:
            (root / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                shutil.copy(f, root / split / folder.name / f.name)
    return root


def _cifar(root: Path) -> Path:
    """cifar-10-batches-py as Python 3 pickles it (bytes keys, protocol 2): 5 x 8 train, 16 test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, n in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 16)]:
        labels = [i % 3 for i in range(n)]
        data = rng.integers(0, 80, (n, 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(labels):  # one bright channel per class
            data[i, y] += 150
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data.reshape(n, 3072), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile", b"bird"]}, protocol=2))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """kind -> (data folder, its model options and batch size)."""
    tmp = tmp_path_factory.mktemp("data")
    out = {
        "fmnist": (make_tiny_fmnist(tmp / "fmnist"), [*TINY, "--batch-size", "8"]),
        "cifar": (_cifar(tmp / "cifar"), [*TINY, "--model-option", "input_size=32", "--batch-size", "8"]),
    }
    if IMAGEWOOF.is_dir():
        photos = _photos(tmp / "photos")
        assert main(["prepare", "--data", str(photos), "--out", str(tmp / "packed"), "--size", "73"]) == 0
        small = [*TINY, "--model-option", "input_size=64", "--batch-size", "4"]
        out.update(folder=(photos, small), packed=(tmp / "packed", small), ilsvrc=(_ilsvrc(tmp / "ilsvrc", photos), small))
    return out


def _args(datasets, kind: str, amp: str, workers: int, out: Path) -> list[str]:
    data, extra = datasets[kind]
    batch = extra[extra.index("--batch-size") + 1]
    return [  # evaluation in batches of the training batch size: several evaluation batches to kill in
        "train", "--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--seed", "7", "--amp", amp,
        "--workers", str(workers), "--device", "cpu", "--save-every", str(SAVE_EVERY), "--eval-batch-size", batch, *extra,
    ]


# -- the runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def references(datasets, tmp_path_factory):
    """(kind, amp, workers) -> (uninterrupted run folder, the names of its checkpoint writes in order); run once each."""
    made: dict[tuple[str, str, int], tuple[Path, list[str]]] = {}

    def get(kind: str, amp: str, workers: int) -> tuple[Path, list[str]]:
        key = (kind, amp, workers)
        if key not in made:
            out = tmp_path_factory.mktemp("ref") / f"{kind}-{amp}-w{workers}"
            writes = []
            real = alexnet.train.save_atomic
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(alexnet.train, "save_atomic", lambda obj, path: (writes.append(Path(path).name), real(obj, path)))
                assert main(_args(datasets, kind, amp, workers, out)) == 0
            made[key] = out, writes
        return made[key]

    return get


def _moment(case: int, kill: str, ref: Path, writes: list[str]) -> str:
    """The fault for case number ``case``: a moment drawn from a seeded generator, after the first checkpoint."""
    rng = random.Random(SEED + case)
    last = torch.load(ref / "last.pt", weights_only=True)
    train_cfg, data = last["train_config"], json.loads((ref / "config.json").read_text())["data"]
    if kill == "step":  # a step whose last checkpoint is a mid-epoch one: the resume starts mid-epoch
        total = last["position"]["step"]
        per_epoch = total // EPOCHS
        saved = [c for c in range(1, total + 1) if c % SAVE_EVERY == 0 or c % per_epoch == 0]
        steps = [k for k in range(SAVE_EVERY + 1, total + 1) if max(c for c in saved if c < k) % per_epoch]
        return f"kill:step={rng.choice(steps)}"
    if kill == "eval":  # any batch of any epoch's evaluation pass
        return f"kill:eval={rng.randint(1, EPOCHS * math.ceil(data['val_images'] / train_cfg['eval_batch_size']))}"
    if kill == "best":  # a best.pt write: the epoch's last.pt must not be ahead of it
        return f"kill:write={rng.choice([n for n, name in enumerate(writes, 1) if name == 'best.pt'])}"
    return f"kill:write={rng.randint(2, len(writes))}"  # the 1st write is the run's first checkpoint


def _killed_run(args: list[str], fault: str, log: Path) -> str:
    """Run ``alexnet ARGS`` with ALEXNET_FAULT=fault; it must kill itself. Its output."""
    # TMPDIR: what the killed processes cannot remove (the DataLoader workers' pymp-* folders) stays
    # in the test's folder, not in the machine's /tmp (14 a run).
    env = dict(os.environ, PYTHONPATH=src_pythonpath(), ALEXNET_FAULT=fault, TMPDIR=str(log.parent))
    with log.open("w+") as f:
        # Its own session: once it is dead, its DataLoader workers (which would hold the run
        # folder's lock and our pipe for seconds) go with it.
        proc = subprocess.Popen([sys.executable, "-m", "alexnet", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        f.seek(0)
        output = f.read()
    assert proc.returncode == -signal.SIGKILL, f"{fault}: the run was not killed (exit {proc.returncode}):\n{output}"
    assert f"{faults.ENV}: killed at" in output, output
    return output


def _wait_unlocked(run: Path, seconds: float = 20.0) -> None:
    """Until no process holds the run folder's lock (a dead worker's inherited descriptor is closed)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            runfolder.refuse_in_use(run)
            return
        except runfolder.RunFolderError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path, what: str) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = {k: float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if not torch.equal(wa[k], wb[k])}
    assert not differ, f"{what}: weights differ from the uninterrupted run's (max abs difference per tensor): {differ}"


def _history(run: Path) -> list[tuple]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(x["epoch"], x["step"], x["train_loss"], x["train_top1"], x["val_loss"], x["val_top1"]) for x in lines]


@pytest.mark.parametrize(("kind", "amp", "workers", "kill"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_killed_and_resumed_run_is_bitwise_the_uninterrupted_one(kind, amp, workers, kill, datasets, references, tmp_path, capsys):
    if kind not in datasets:
        pytest.skip(NO_PHOTOS)
    ref, writes = references(kind, amp, workers)
    fault = _moment(CASES.index((kind, amp, workers, kill)), kill, ref, writes)
    print(f"kill at {fault} ({kind}, amp {amp}, workers {workers}, seed {SEED})")
    run = tmp_path / "run"
    _killed_run(_args(datasets, kind, amp, workers, run), fault, tmp_path / "killed.log")
    temporaries = sorted(p.name for p in run.glob(".*.tmp"))
    if kill in ("write", "best"):  # the kill left half a checkpoint; the last whole one is intact
        assert temporaries, f"{fault}: no partial temporary file in {sorted(os.listdir(run))}"
    position = torch.load(run / "last.pt", weights_only=True)["position"]
    print(f"resuming at epoch {position['epoch'] + 1}, batch {position['batch']}, step {position['step']}")
    _wait_unlocked(run)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    print(out, end="")  # back into the captured output, which a failure report shows (the moment)
    assert f"resuming {run} at epoch {position['epoch'] + 1}, batch {position['batch']}" in out
    what = f"{kind}, amp {amp}, workers {workers}, {fault}"
    _assert_same_weights(ref / "last.pt", run / "last.pt", what)
    if (ref / "best.pt").exists():
        assert (run / "best.pt").exists(), f"{what}: the resumed run has no best.pt"
        _assert_same_weights(ref / "best.pt", run / "best.pt", f"{what} (best.pt)")
    assert _history(run) == _history(ref), what
    assert not list(run.glob(".*.tmp")), f"temporary files left after the resume: {sorted(os.listdir(run))}"


# -- the cause, directly: nothing between two steps draws from the training RNG -------------------
@pytest.mark.parametrize(("kind", "workers"), [("fmnist", 0), ("folder", 0), ("folder", 2), ("packed", 2)])
def test_data_and_evaluation_draw_no_training_random_numbers(kind, workers, datasets):
    """Dropout masks come from the global torch RNG; a checkpoint stores its state. Starting an
    epoch's batches (a DataLoader draws its workers' base seed), reading them or evaluating must
    not move it, or a resumed run (a new iterator mid-epoch) draws different masks."""
    if kind not in datasets:
        pytest.skip(NO_PHOTOS)
    data = load_data(datasets[kind][0], 4, 64 if kind != "fmnist" else 28, workers=workers, seed=3, eval_batch_size=4)
    model = create_model("alexnet_small", num_classes=len(data.classes), in_chans=data.preprocess.channels,
                         widths=[8, 16, 16, 16, 16], fc_width=32, input_size=64 if kind != "fmnist" else 28)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for epoch, start in ((0, 0), (1, 2)):
        set_epoch(data.train, epoch, start)
        assert sum(1 for _ in data.train) == len(data.train) - start
    alexnet.train.evaluate(model, data.val, data.preprocess, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before), "reading batches or evaluating drew from the global torch RNG"


def test_fault_values():
    assert faults.parse("") is None and faults.parse("  ") is None
    assert faults.parse("kill:step=5") == faults.Fault("step", 5)
    assert faults.parse("kill:eval=2") == faults.Fault("eval", 2)
    assert faults.parse("kill:write") == faults.Fault("write", 1) == faults.parse("kill:write=1")
    assert faults.parse("rmtemp:load=3") == faults.Fault("load", 3, action="rmtemp")
    for bad in ("kill:step", "kill:step=0", "kill:stp=3", "step=3", "kill:eval=-1", "rmtemp:step=3", "rmtemp:load"):
        assert faults.parse(bad).error is not None, bad
    faults.arm("kill:stpe=3")
    try:
        with pytest.raises(alexnet.ConfigError, match="ALEXNET_FAULT"):
            faults.reached("step", 3)
    finally:
        faults.arm(None)
    faults.reached("step", 3)  # unarmed: nothing happens


def test_rng_states_leave_an_unused_cuda_alone(monkeypatch):
    """A CPU run on a GPU machine must not create CUDA contexts to save or restore GPU RNG states
    (seconds and memory per process, per checkpoint); a run on fewer GPUs than the one that saved
    restores the devices it has. Faked CUDA: this checks which calls are made, not CUDA itself."""
    from alexnet import runtime

    calls = []

    def forbidden(*args):
        raise AssertionError("touched the CUDA RNG of a process that never used CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", forbidden)
    monkeypatch.setattr(torch.cuda, "set_rng_state", forbidden)
    state = runtime.rng_state()
    assert "cuda" not in state
    runtime.set_rng_state({**state, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 3})

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((8,), i, dtype=torch.uint8) for i in range(2)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: calls.append((int(s[0]), index)))
    saved = runtime.rng_state()
    assert [int(s[0]) for s in saved["cuda"]] == [0, 1]
    runtime.set_rng_state({**saved, "cuda": [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(4)]})
    assert calls == [(10, 0), (11, 1)], "states of the GPUs this machine has, each to its own device"


def test_a_run_that_kept_only_its_best_pt_is_told_how_to_continue(tmp_path):
    """A disk that fills up between an epoch's best.pt and last.pt (best.pt is written first) leaves
    a run folder whose one checkpoint is best.pt, and train said 'the run folder keeps the last good
    checkpoint': '--resume RUN' then said only 'no checkpoint at RUN/last.pt'. best.pt holds the
    same full training state, and the error says so."""
    from alexnet.errors import CheckpointError
    from alexnet.resume import resume_source

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best.pt").write_bytes(b"checkpoint")
    with pytest.raises(CheckpointError) as caught:
        resume_source(run)
    assert str(caught.value) == (f"--resume: no checkpoint at {run / 'last.pt'} (its best.pt is one: "
                                 f"--resume {run / 'best.pt'} continues from it)")
    (run / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"last\.pt$"):  # no best.pt: no hint
        resume_source(run)

"""Scaling out (issue 6): data parallel over gloo processes, a lost rank, the two-tower split."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, cli_env, make_image_folder, make_tiny_fmnist, requires_cuda, run_cli

import alexnet
from alexnet.config import resolve_config
from alexnet.distributed import DistInfo
from alexnet.optim import make_optimizer, param_groups
from alexnet.parallel import TowerSplit, grouped_optimizer_state, split_optimizer_state, tower_devices
from alexnet.resume import resume_config
from alexnet.train import fit


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    # 64 images, global batch 16: 4 steps an epoch, 12 in all.
    return [
        "train", "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "16", "--seed", "3",
        "--amp", "none", "--dropout", "0", "--workers", "0", "--device", "cpu", "--save-every", "1", *TINY, *extra,
    ]


def _ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-5), f"{what}: {k} differs by {(a[k] - b[k]).abs().max():.2e}"


@functools.cache
def _dynamo_loads_onnxruntime() -> bool:
    """Whether loading torch._dynamo loads onnxruntime here: torch 2.4's onnxrt backend imports it where it is
    installed (the [export] extra), and onnxruntime writes a session file, $TMPDIR/.ses, as it loads."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = "import sys, torch._dynamo; print('onnxruntime' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TMPDIR": tmp}).stdout
    return out.strip() == "True"


def _left_in(tmp: Path) -> list[Path]:
    """What the subprocesses left in ``tmp``, less onnxruntime's session file where torch._dynamo (the fused
    SGD loads it) loads onnxruntime: onnxruntime's own, not a file of ours."""
    return [p for p in tmp.iterdir() if not (p.name == ".ses" and _dynamo_loads_onnxruntime())]


def _empty_tmpdir(monkeypatch, tmp: Path) -> Path:
    """``tmp`` as the subprocesses' TMPDIR, for a test that it is left empty. torch's compile cache
    ($TMPDIR/torchinductor_USER, made when torch._dynamo loads: the fused SGD loads it) is meant to
    outlive a run: it goes elsewhere. It had gone to the test process's own cache folder only where an
    earlier test had loaded torch._dynamo there (torch sets TORCHINDUCTOR_CACHE_DIR as it does)."""
    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp.parent / "torch-cache"))
    return tmp


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    return make_tiny_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


@pytest.fixture(scope="module")
def one_process(tiny_fmnist, tmp_path_factory) -> Path:
    """The reference: one process, global batch 16."""
    out = tmp_path_factory.mktemp("runs") / "one"
    r = run_cli(*_args(tiny_fmnist, out))
    assert r.returncode == 0, r.stderr
    return out


def test_two_gloo_processes_match_one_process(one_process, tiny_fmnist, tmp_path, monkeypatch):
    out = tmp_path / "two"
    _empty_tmpdir(monkeypatch, tmp_path / "tmp")  # what the launcher leaves there
    r = run_cli(*_args(tiny_fmnist, out, "--nproc", "2"))
    assert r.returncode == 0, r.stderr
    assert not _left_in(tmp_path / "tmp")  # torchrun's agent alone left an empty torchelastic_* tree
    assert "2 processes (batch 8 each)" in r.stdout
    assert r.stdout.count("done:") == 1  # rank 0 alone reports
    ref, two = _ckpt(one_process / "last.pt"), _ckpt(out / "last.pt")
    _assert_same_weights(ref["model"], two["model"], "2 processes vs 1")
    # The checkpoint is rank 0's: its RNG state is rank 0's, not rank 1's (each rank draws its own dropout).
    assert len(two["rng_ranks"]) == 2
    assert torch.equal(two["rng"]["torch"], two["rng_ranks"][0]["torch"])
    assert not torch.equal(two["rng"]["torch"], two["rng_ranks"][1]["torch"])
    # Metrics are summed over both ranks: every image counted once, the same figures as one process.
    for a, b in zip(ref["history"], two["history"]):
        assert (b["train_images"], b["val_images"]) == (64, 40)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_top1"] == a["val_top1"] and b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl"]


def test_hybrid_two_processes_each_split_over_two_devices(one_process, tiny_fmnist, tmp_path):
    out = tmp_path / "hybrid"
    r = run_cli(*_args(tiny_fmnist, out, "--nproc", "2", "--towers", "cpu,cpu"))
    assert r.returncode == 0, r.stderr
    assert "one tower each" in r.stdout
    hybrid = _ckpt(out / "last.pt")
    _assert_same_weights(_ckpt(one_process / "last.pt")["model"], hybrid["model"], "2 processes x 2 towers vs 1")
    # The checkpoint is in the grouped layout: it resumes in one process without towers.
    model = alexnet.checkpoint.model_from_checkpoint(hybrid)
    assert model.conv2.groups == 2
    config = lambda: json.loads((out / "config.json").read_text())  # noqa: E731
    assert config()["distributed"] == {"world_size": 2, "towers": ["cpu", "cpu"]}
    r = run_cli("train", "--resume", str(out), "--epochs", "4", "--towers", "none")
    assert r.returncode == 0 and "one tower each" not in r.stdout, r.stderr
    assert config()["distributed"] == {"world_size": 1, "towers": None}  # it said the towers it started with
    assert config()["environment"]["world_size"] == 2  # the count it started in, for a replay's note
    # Each rank drew its own dropout masks: one process goes on correctly, not bitwise (it went on without a word).
    assert ("note: this run's checkpoint was written by 2 processes and it resumes in 1; it continues, but not bitwise "
            "as an uninterrupted run would (--nproc 2 resumes exactly)") in r.stderr, r.stderr


def test_a_one_process_run_resumed_in_two_says_it_is_not_bitwise(one_process, tiny_fmnist, tmp_path):
    """The reverse: rank 1 starts from its own seed, not the state of the run's one process."""
    out = tmp_path / "one"
    shutil.copytree(one_process, out)
    r = run_cli("train", "--resume", str(out), "--epochs", "4", "--nproc", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert ("note: this run's checkpoint was written by 1 process and it resumes in 2; it continues, but not bitwise as "
            "an uninterrupted run would (one process, without --nproc, resumes exactly)") in r.stderr, r.stderr
    assert r.stderr.count("note: this run's checkpoint") == 1  # rank 0 alone says it
    r = run_cli("train", "--resume", str(out), "--epochs", "5", "--nproc", "2", "--threads", "1")
    assert r.returncode == 0 and "checkpoint was written by" not in r.stdout + r.stderr, r.stderr  # the same count: no note


@pytest.mark.parametrize("info, saved, exactly", [
    (DistInfo(0, 4, 0, 2), [b"a", b"b"], "torchrun with --nnodes times --nproc-per-node = 2 resumes exactly"),
    (DistInfo(0, 4, 0, 2), None, "one process, without torchrun, resumes exactly"),
    (DistInfo(0, 2, 0, 2), [b"a"] * 4, "--nproc 4 resumes exactly"),  # one machine: as c431965 said
    (DistInfo(), [b"a", b"b"], "--nproc 2 resumes exactly"),
])
def test_the_process_count_note_names_torchruns_options_across_machines(info, saved, exactly):
    """A run torchrun started on two machines (world 4, 2 per machine) was told '--nproc 2', which
    runs on one machine: the remedy there is torchrun's --nnodes and --nproc-per-node."""
    from types import SimpleNamespace

    from alexnet.train import _note_process_change

    said: list[str] = []
    _note_process_change(SimpleNamespace(info=info, note=said.append), saved)
    assert len(said) == 1 and said[0].endswith(f"({exactly})"), said


def _start_ranks(args: list[str], env: dict[int, dict[str, str]] | None = None,
                 program: dict[int, str] | None = None) -> tuple[torch.distributed.TCPStore, subprocess.Popen, subprocess.Popen]:
    """Two ranks started by hand (as torchrun would on two machines), with no agent to watch them;
    ``env`` adds variables to a rank's environment, ``program`` runs a rank as ``python -c PROGRAM ARGS``.

    The rendezvous store is served here, as torchrun's agent serves it (TORCHELASTIC_USE_AGENT_STORE),
    on a port it holds from the start: a free port picked, closed and left to rank 0 to bind seconds
    later (once torch has loaded) could be taken meanwhile by another test's bind(0); rank 0 then
    failed to listen ('could not join the gloo process group') and rank 1 waited on the other's socket.
    Keep the store until the ranks have ended."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    procs = []
    for rank in range(2):
        # CPU ranks (gloo) on every machine: the subject is a lost rank, not the device.
        variables = cli_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0",
                            **(env or {}).get(rank, {}))
        start = ["-c", program[rank]] if program and rank in program else ["-m", "alexnet"]
        procs.append(subprocess.Popen([sys.executable, *start, *args], env=variables, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return store, procs[0], procs[1]


def test_killed_rank_stops_the_run_and_resume_continues(one_process, tiny_fmnist, tmp_path):
    out = tmp_path / "killed"
    timeout = 20
    for _attempt in range(3):
        _store, rank0, rank1 = _start_ranks(_args(tiny_fmnist, out, "--dist-timeout", str(timeout)))
        while not (out / "last.pt").exists() and rank0.poll() is None:
            time.sleep(0.005)
        rank1.send_signal(signal.SIGKILL)
        rank1.communicate()
        t0 = time.monotonic()
        try:
            _, err = rank0.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            rank0.kill()
            pytest.fail(f"rank 0 still running {timeout + 30}s after rank 1 was killed")
        waited = time.monotonic() - t0
        if rank0.returncode != 0:
            break
        shutil.rmtree(out)  # the run finished before the kill: try again (a new run into it would be refused)
    else:
        pytest.skip("the run kept finishing before a rank could be killed")
    assert waited < timeout + 30
    lines = err.strip().splitlines()
    assert rank0.returncode == 2 and "Traceback" not in err, err
    assert "rank 0: another process of the distributed run stopped" in lines[-1]
    assert f"--resume {out}" in lines[-1]
    step = _ckpt(out / "last.pt")["position"]["step"]
    assert 0 < step < 12
    # --resume continues the distributed run; it ends where the uninterrupted run ends.
    r = run_cli("train", "--resume", str(out), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert f"at epoch {step // 4 + 1}, batch {step % 4}, step {step}" in r.stdout
    _assert_same_weights(_ckpt(one_process / "last.pt")["model"], _ckpt(out / "last.pt")["model"], f"killed at step {step}")


# Rank 0 as `python -m alexnet`, but stopped with SIGTERM as it starts to close its data loader: where
# torchrun's agent stopped it after rank 1 had died (its own 0.1 s later), on photos in a loader worker.
_STOPPED_WHILE_CLOSING = """
import os, signal, sys
from alexnet.cli import main
from alexnet.data import loaders
close = loaders.Batches.close
def stopped_while_closing(self):
    if sys.exc_info()[0] is not None:  # the run is failing, not ending
        os.kill(os.getpid(), signal.SIGTERM)
    close(self)
loaders.Batches.close = stopped_while_closing
sys.exit(main())
"""


def test_a_stop_request_while_a_rank_closes_after_a_lost_peer_says_the_lost_peer(tmp_path):
    """`alexnet train --nproc 2` on 72 px packed photos, rank 1 killed (SIGKILL) mid-epoch: rank 0 met the lost
    connection, then torchrun's agent stopped it (SIGTERM) while it stopped its loader's worker, and it said
    'alexnet: interrupted' (as if Ctrl-C had stopped the run) in place of the lost rank and the command to
    continue, 3 times in 3 (Fashion-MNIST has no loader workers). Here, on photos with a loader worker, rank 1
    dies at step 2 and rank 0 gets the SIGTERM at that moment: it says the lost rank, as it does when no
    signal comes."""
    photos = make_image_folder(tmp_path / "photos", classes=2, per_class=16)
    out = tmp_path / "run"
    _store, rank0, rank1 = _start_ranks(_args(photos, out, "--workers", "1", "--model-option", "input_size=63"),
                                        env={1: {"ALEXNET_FAULT": "kill:step=2"}}, program={0: _STOPPED_WHILE_CLOSING})
    try:
        said = _first_alexnet_line(rank0, timeout=120)
    finally:  # the agent stops a rank's loader workers with it (killpg) and kills what is left after 30 s
        rank0.kill()
        rank1.kill()
        rank0.communicate()
        rank1.communicate()
    assert said.startswith("alexnet: error: rank 0: another process of the distributed run stopped"), said
    assert said.endswith(f"continue with: alexnet train --resume {out} --nproc 2"), said


def _first_alexnet_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line of ``proc``'s stderr that starts with 'alexnet:' (what it says of its end), or ''
    if none came before its stderr closed or ``timeout`` seconds passed."""
    said: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            if line.startswith("alexnet:"):
                said.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return said[0] if said else ""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _signal_rank_1(data: Path, out: Path, sig: signal.Signals, launcher: bool = False) -> tuple[int, str]:
    """A 2-process run whose rank 1 (or with ``launcher``, the launcher) gets ``sig`` once the first
    checkpoint exists: exit code, stderr."""
    env = cli_env()  # CPU ranks on every machine (see conftest.cli_env)
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", *_args(data, out, "--nproc", "2", "--epochs", "50")],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (out / "last.pt").exists() and proc.poll() is None:
            time.sleep(0.005)
        ranks = _children(proc.pid)  # torchrun's agent runs inside the launcher: its children are the ranks
        assert len(ranks) == 2
        os.kill(proc.pid if launcher else ranks[1], sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the ranks")
def test_nproc_run_with_a_killed_rank_ends_in_one_line(tiny_fmnist, tmp_path, monkeypatch):
    out = tmp_path / "nproc"
    _empty_tmpdir(monkeypatch, tmp_path / "tmp")
    code, err = _signal_rank_1(tiny_fmnist, out, signal.SIGKILL)
    assert code == 1 and "Traceback" not in err, err
    assert not _left_in(tmp_path / "tmp")  # the failed run's log folder is gone too
    last = err.strip().splitlines()[-1]
    assert "the 2-process run stopped: rank 1 was killed by SIGKILL" in last
    assert f"alexnet train --resume {out} --nproc 2" in last




T = 1_765_000_000  # a time stamp of torchrun's: whole seconds


@pytest.mark.parametrize(("rank0", "rank1", "named"), [
    ((2, T), (-signal.SIGKILL, T), "rank 1 was killed by SIGKILL"),  # rank 0 stopped on the lost connection
    ((130, T), (-signal.SIGKILL, T), "rank 1 was killed by SIGKILL"),  # ... by the agent's SIGTERM, as Ctrl-C
    ((-signal.SIGTERM, T), (-signal.SIGKILL, T), "rank 1 was killed by SIGKILL"),  # ... killed by it
    ((-signal.SIGKILL, T + 31), (1, T), "rank 1 exited with code 1 (its message is above)"),  # the agent's own SIGKILL
])
def test_the_launcher_names_the_killed_rank_not_the_one_that_lost_it(monkeypatch, tmp_path, capsys, rank0, rank1, named):
    """Rank 1 killed (SIGKILL), rank 0 stopped by the lost connection (exit 2) or by the agent's
    SIGTERM (130, or killed by it) before torchrun's agent looked: it lists both, in rank order, with
    the same time stamp, and the line named rank 0 ('rank 0 exited with code 2', exit 2; CI:
    test_nproc_run_with_a_killed_rank_ends_in_one_line, forced with PET_MONITOR_INTERVAL=2). A rank
    the agent killed itself, 30 s after its SIGTERM went unanswered, is not the cause."""
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {rank: ProcessFailure(rank, 100 + rank, code, "") for rank, (code, _) in enumerate((rank0, rank1))}
    for failure, (_, stamp) in zip(failures.values(), (rank0, rank1)):
        failure.timestamp = stamp

    def run(args):
        raise ChildFailedError("alexnet", failures)

    monkeypatch.setattr(torch.distributed.run, "run", run)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launch sets it for the ranks where unset
    code = alexnet.distributed.launch(2, ["train"], str(tmp_path))
    assert code == 1 and capsys.readouterr().err == (f"alexnet: error: the 2-process run stopped: {named}; no checkpoint "
                                                     "had been written yet: nothing to resume\n")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the ranks")
def test_sigterm_to_the_launcher_stops_the_run_in_alexnets_lines_alone(tiny_fmnist, tmp_path):
    """The agent's own log line ('W1204 ... api.py:753] Received 15 death signal, shutting down
    workers') came before the launcher's: torch gives each of its loggers a level of its own."""
    out = tmp_path / "term"
    code, err = _signal_rank_1(tiny_fmnist, out, signal.SIGTERM, launcher=True)
    lines = err.strip().splitlines()
    assert code == 130 and all(line.startswith("alexnet: ") for line in lines), err
    assert lines[-1] == f"alexnet: interrupted; continue from the last checkpoint with: alexnet train --resume {out} --nproc 2"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the ranks")
def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(tiny_fmnist, tmp_path):
    """SIGINT reaching one rank only: the ranks agree on it in the step's collective, each saves
    the same step and stops, and the launcher says how to continue (not an error). A signal sent
    late, once epoch 1's 4 steps are done (the test process kept off the CPU for 0.1 s under load),
    reaches rank 1 while the ranks validate: they stop together once the epoch is saved, as
    documented ('interrupted after epoch 1'), which the test took for a failure."""
    out = tmp_path / "ctrl-c"
    code, err = _signal_rank_1(tiny_fmnist, out, signal.SIGINT)
    assert code == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1] == f"alexnet: interrupted; continue from the last checkpoint with: alexnet train --resume {out} --nproc 2"
    said = [line for line in lines if line.startswith(("alexnet: interrupted at epoch ", "alexnet: interrupted after epoch "))]
    assert len(said) == 2 and said[0] == said[1], err  # both ranks, the same step
    assert said[0].endswith(f"continue with: alexnet train --resume {out} --nproc 2"), said  # not without --nproc
    position = torch.load(out / "last.pt", weights_only=True)["position"]
    if ", step " in said[0]:
        assert position["step"] == int(said[0].split(", step ")[1].split(";")[0])
    else:  # 64 images, global batch 16: epoch E ends at step 4E
        epoch = int(said[0].split("after epoch ")[1].split(";")[0])
        assert (position["epoch"], position["batch"], position["step"]) == (epoch, 0, 4 * epoch), (said, position)

def test_hung_rank_stops_the_run_after_the_timeout(tiny_fmnist, tmp_path):
    out = tmp_path / "hung"
    _store, rank0, rank1 = _start_ranks(_args(tiny_fmnist, out, "--dist-timeout", "4", "--epochs", "50"))
    try:
        while not (out / "last.pt").exists() and rank0.poll() is None:
            time.sleep(0.005)
        rank1.send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can end the wait
        t0 = time.monotonic()
        _, err = rank0.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        rank1.kill()
        rank1.communicate()
        rank0.kill()
    assert rank0.returncode == 2 and "Traceback" not in err, err
    assert 3 < waited < 40, waited
    assert "rank 0: another process of the distributed run stopped or stopped answering" in err
    assert "imed out" in err and f"--resume {out}" in err


def test_nproc_run_refused_at_the_start_exits_2_with_nothing_to_resume(tiny_fmnist, tmp_path):
    """Ranks that refuse their input (--device cuda where none is visible: each rank checks its own
    device) end the run with exit 2, as one process does, and no advice to resume a run that saved
    nothing (it said "continue from the last checkpoint" with no checkpoint and no folder)."""
    out = tmp_path / "refused"
    r = run_cli(*_args(tiny_fmnist, out, "--nproc", "2", "--device", "cuda"))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.endswith("no checkpoint had been written yet: nothing to resume"), r.stderr
    assert "--resume" not in r.stderr and "Traceback" not in r.stderr and not (out / "last.pt").exists()


def test_nproc_run_without_out_names_its_folder_in_the_last_line(tiny_fmnist, tmp_path):
    """Without --out the launcher names the run folder itself (runs/DATE-TIME-MODEL) and passes it
    to the ranks, so its last line can say whether a checkpoint exists (it said '--resume RUN')."""
    args = [a for a in _args(tiny_fmnist, tmp_path / "unused") if a not in ("--out", str(tmp_path / "unused"))]
    r = subprocess.run([sys.executable, "-m", "alexnet", *args, "--nproc", "2", "--device", "cuda"], cwd=tmp_path,
                       capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("no checkpoint had been written yet: nothing to resume"), r.stderr
    assert "RUN" not in r.stderr


def test_nproc_rejects_a_batch_that_does_not_divide(tiny_fmnist, tmp_path):
    r = run_cli(*_args(tiny_fmnist, tmp_path / "x"), "--batch-size", "15", "--nproc", "2")
    assert r.returncode == 2 and "global batch" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_uneven_shares_of_a_batch_weigh_each_image_as_one_process_does(tmp_path):
    """15 training images: the batch of 16 is reduced to 15, which two ranks share 8 + 7. DDP's mean
    of the ranks' mean losses weighed rank 1's images 8/7 as much as rank 0's: 6e-4 off one process
    after two steps (it is a batch of 15 either way, so the runs must agree)."""
    data = tmp_path / "photos"
    make_image_folder(data / "train", classes=3, per_class=5)
    make_image_folder(data / "val", classes=3, per_class=2)
    args = ["train", "--data", str(data), "--epochs", "2", "--batch-size", "16", "--seed", "5", "--amp", "none",
            "--dropout", "0", "--workers", "0", "--device", "cpu", "--threads", "1", *TINY,
            "--model-option", "input_size=64", "--schedule", "constant", "--warmup-epochs", "0", "--lr", "0.05"]
    one, two = run_cli(*args, "--out", str(tmp_path / "one")), run_cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "batch size reduced to the 15 training images" in two.stdout + two.stderr
    a, b = _ckpt(tmp_path / "one" / "last.pt")["model"], _ckpt(tmp_path / "two" / "last.pt")["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, f"2 processes sharing a batch of 15 vs 1: the weights differ by {worst:.2e}"


# -- the two-tower split ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        dict(),  # alexnet_small: LRN per tower, norm then pool, dropout after
        dict(norm_order="pool_norm", dropout_position="before", adaptive_pool=2),
    ],
)
def test_tower_split_equals_the_grouped_model(options):
    torch.manual_seed(0)
    # 5 classes: fc8 splits unevenly (3 + 2), which the split must handle.
    grouped = alexnet.create_model(
        "alexnet_small", num_classes=5, widths=[8, 16, 24, 16, 16], fc_width=32, dropout=0.0, init="torch", **options
    ).double()
    split = TowerSplit(grouped, ("cpu", "cpu"))
    assert [split.conv2[t].in_channels for t in (0, 1)] == [4, 4]  # a tower sees only its own maps ...
    assert split.conv3[0].in_channels == 16 and split.fc6[1].in_features == grouped.fc6.in_features  # ... except here
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = grouped(xa), split(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(ya)  # a loss that weighs every output differently
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
    grads = {}
    for name in alexnet.model.LAYER_NAMES:
        for p in ("weight", "bias"):
            halves = [getattr(getattr(split, name)[t], p).grad for t in (0, 1)]
            grads[f"{name}.{p}"] = torch.cat(halves, 0)
    for k, p in grouped.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-10, atol=1e-12, msg=f"gradient of {k}")
    # Back to the grouped layout, weights and optimiser state alike.
    assert all(torch.equal(v, grouped.state_dict()[k]) for k, v in split.grouped_state_dict().items())
    opt = make_optimizer("paper", param_groups(split, {"fc8": 10.0}), 0.1, 0.9, 5e-4)
    opt.step()
    back = grouped_optimizer_state(split, opt)
    ref_opt = make_optimizer("paper", param_groups(grouped, {"fc8": 10.0}), 0.1, 0.9, 5e-4)
    ref_opt.load_state_dict(back)  # fits the grouped model's optimiser ...
    for k, p in grouped.named_parameters():  # ... each velocity the two halves' joined
        layer, param = k.split(".")
        halves = [opt.state[getattr(getattr(split, layer)[t], param)]["velocity"] for t in (0, 1)]
        torch.testing.assert_close(ref_opt.state[p]["velocity"], torch.cat(halves, 0), rtol=0, atol=0)
    assert [g["lr_mult"] for g in ref_opt.param_groups] == [1.0, 10.0]
    again = split_optimizer_state(split, opt, back)
    for i, s in opt.state_dict()["state"].items():
        assert torch.equal(again["state"][i]["velocity"], s["velocity"])


def test_two_device_run_resumes_on_one_device(tiny_fmnist, tmp_path):
    """Checkpoints of a split run are in the grouped layout, optimiser momentum included."""
    base = dict(data=str(tiny_fmnist), batch_size=16, seed=3, amp="none", workers=0, device="cpu", schedule="constant",
                warmup_epochs=0.0, model_options={"widths": [8, 16, 16, 16, 16], "fc_width": 32, "dropout": 0.0})
    quiet = lambda s: None  # noqa: E731
    fit(resolve_config(None, {**base, "out": str(tmp_path / "plain"), "epochs": 2}), log=quiet)
    fit(resolve_config(None, {**base, "out": str(tmp_path / "split"), "epochs": 1, "tower_devices": ["cpu", "cpu"]}), log=quiet)
    ckpt = _ckpt(tmp_path / "split" / "last.pt")
    assert ckpt["model"]["conv2.weight"].shape == (16, 4, 5, 5)  # grouped: 2 groups of 8 -> 4
    fit(resume_config(str(tmp_path / "split"), {"epochs": 2, "tower_devices": ["none"]}), log=quiet)
    _assert_same_weights(_ckpt(tmp_path / "plain" / "last.pt")["model"], _ckpt(tmp_path / "split" / "last.pt")["model"],
                         "1 epoch on two devices + 1 on one vs 2 on one")


def test_tower_devices_are_checked():
    one = DistInfo()
    assert tower_devices(["cpu", "cpu"], one) == (torch.device("cpu"), torch.device("cpu"))
    assert tower_devices([], one) is None and tower_devices(["none"], one) is None
    with pytest.raises(alexnet.ConfigError, match="two devices"):
        tower_devices(["cpu"], one)
    if not torch.cuda.is_available():
        with pytest.raises(alexnet.ConfigError, match="no CUDA device"):
            tower_devices(["cuda:0", "cuda:1"], one)
    else:  # the first device past this machine's last one is named, whatever the machine has
        count = torch.cuda.device_count()
        with pytest.raises(alexnet.ConfigError, match=f"needs cuda:{count} but this machine has {count} CUDA device"):
            tower_devices([f"cuda:{count}", f"cuda:{count + 1}"], one)
        local = (count + 1) // 2  # --towers auto: local rank r takes cuda:2r and cuda:2r+1, past the last device here
        with pytest.raises(alexnet.ConfigError, match=f"rank {local} needs cuda:{2 * local} "):
            tower_devices(["auto"], DistInfo(rank=local, world=local + 1, local_rank=local, local_world=local + 1))
    flat = alexnet.create_model("alexnet_small", widths=[8, 16, 16, 16, 16], fc_width=32, towers=1)
    with pytest.raises(alexnet.ConfigError, match="towers=1"):
        TowerSplit(flat, ("cpu", "cpu"))
    across = alexnet.create_model("alexnet_small", widths=[8, 16, 16, 16, 16], fc_width=32, lrn_per_tower=False)
    with pytest.raises(alexnet.ConfigError, match="lrn_per_tower"):
        TowerSplit(across, ("cpu", "cpu"))


def test_nproc_refuses_towers_this_machine_lacks_before_starting_ranks(tiny_fmnist, tmp_path):
    """--nproc 2 --towers auto without 4 GPUs: one line naming --towers auto, before any rank starts
    (each rank printed the error, then the launcher its own line; and it named --towers cuda,cuda)."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= 4:
        pytest.skip("this machine has the 4 GPUs that 2 processes x 2 towers need")
    r = run_cli(*_args(tiny_fmnist, tmp_path / "run", "--nproc", "2", "--towers", "auto"))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("alexnet: error: --towers"), r.stderr
    assert ("--towers auto: no CUDA device" in err[0]) if not torch.cuda.is_available() else "needs cuda:" in err[0]
    assert not (tmp_path / "run").exists()


def _allreduce_quick(*extra: str, cuda: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allreduce.py"), "--quick", "--nproc", "2", *extra],
                          capture_output=True, text=True, timeout=300, env=cli_env(cuda))


def test_allreduce_benchmark_quick(tmp_path, monkeypatch):
    tmp = _empty_tmpdir(monkeypatch, tmp_path / "tmp")
    r = _allreduce_quick("--device", "cpu")  # gloo on CPUs, on every machine
    assert r.returncode == 0, r.stderr
    assert not _left_in(tmp)  # torchrun's log folder removed
    assert "gloo on cpu" in r.stdout
    results = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert [line.split()[1] for line in results] == ["allreduce_busbw", "grad_sync_ms"]
    fields = dict(kv.split("=") for kv in results[0].split()[2:])
    ours, peer, ratio = float(fields["ours"]), float(fields["peer"]), float(fields["ratio"])
    assert ours > 0 and peer > 0 and ratio == pytest.approx(ours / peer, rel=1e-2)


def test_allreduce_benchmark_buckets_are_ddps():
    """The benchmark all-reduces the buckets DDP uses after its first step (rebuilt in the order
    gradients become ready): checked against torch's own assignment function where this torch has
    it (a private API), and against the sizes worked out by hand for alexnet_paper."""
    import importlib

    import torch.distributed as dist

    from alexnet.model import create_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        allreduce = importlib.import_module("allreduce")
    finally:
        sys.path.pop(0)
    params = list(create_model("alexnet_paper").parameters())
    ours = allreduce.ddp_bucket_sizes([p.numel() * 4 for p in params])
    # fc8 (4096x1000 + 1000), fc7, fc6, then every convolution: the first closes past 1 MiB, the others past 25 MiB
    assert ours == [4097000 * 4, 16781312 * 4, 37752832 * 4, sum(p.numel() for p in params[:10]) * 4]
    if hasattr(dist, "_compute_bucket_assignment_by_size"):
        rev = params[::-1]
        indices, _ = dist._compute_bucket_assignment_by_size(rev, [allreduce.FIRST_BUCKET_BYTES, 25 * 2**20])
        assert ours == [sum(rev[i].numel() * 4 for i in bucket) for bucket in indices]


@requires_cuda
def test_allreduce_benchmark_with_more_ranks_than_gpus():
    """--device auto falls back to gloo on CPUs (and says so); --device cuda is refused in one line."""
    n = str(torch.cuda.device_count() + 1)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allreduce.py"), "--quick", "--nproc", n],
                       capture_output=True, text=True, timeout=300, env=cli_env(cuda=True))
    assert r.returncode == 0, r.stderr
    assert "gloo on cpu" in r.stdout and "CUDA device(s)" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allreduce.py"), "--quick", "--nproc", n, "--device", "cuda"],
                       capture_output=True, text=True, timeout=300, env=cli_env(cuda=True))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "CUDA device(s)" in r.stderr


def test_allreduce_benchmark_refuses_cuda_without_a_gpu():
    r = _allreduce_quick("--device", "cuda")  # GPUs hidden: one line, non-zero exit, nothing launched
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "CUDA" in r.stderr


def test_a_warning_about_the_data_is_said_once_not_by_every_rank(tmp_path):
    """Every rank lists the data: its 'left out' warning came once per rank."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=8)
    (data / "class0" / "notes.txt").write_text("taken in May")
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--amp", "none",
                "--workers", "0", "--device", "cpu", "--nproc", "2", *TINY)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("warning:") and "left out" in line] == [
        f"warning: {data}: left out 1 file of other kinds: 1 .txt; it reads .jpg .jpeg .jpe .jfif .png .ppm .bmp .pgm .tif "
        ".tiff .webp .gif"], r.stderr


def test_data_every_rank_refuses_is_said_once(tmp_path):
    """A data set every rank lists and refuses alike (one class folder) said its error once per rank,
    then the launcher's line: three lines for one refusal. Rank 0 says it, as a stop every rank
    decides (below); the launcher's line names rank 0, and the run exits 2, as one process does."""
    data = make_image_folder(tmp_path / "imgs", classes=1, per_class=4)
    r = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
                "--amp", "none", "--workers", "0", "--device", "cpu", "--nproc", "2", *TINY)
    assert r.returncode == 2, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("alexnet: error:")]
    assert said == [f"alexnet: error: {data}: only one class (class0); a classifier needs at least two",
                    "alexnet: error: the 2-process run stopped: rank 0 exited with code 2 (its message is above); no "
                    "checkpoint had been written yet: nothing to resume"], r.stderr


def test_a_stop_every_rank_decides_is_said_once(tiny_fmnist, tmp_path):
    """A run stopped by a decision all ranks take together (a non-finite loss, the health check) said
    it once per rank and again in the launcher's line, which named whichever rank exited first: three
    lines for one stop, the second rank's saying 'non-finite loss (2.30)' when only another rank's loss
    was NaN. Rank 0 says it, and the launcher's line names rank 0."""
    out = tmp_path / "diverged"
    r = run_cli(*_args(tiny_fmnist, out, "--nproc", "2", "--lr", "1e6", "--health", "stop"))
    assert r.returncode == 2, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("alexnet: error:")]
    assert len(said) == 2, r.stderr
    assert said[0].startswith(("alexnet: error: non-finite loss", "alexnet: error: the training loss diverged")), said
    assert said[1].startswith("alexnet: error: the 2-process run stopped: rank 0 exited with code 2 (its message is above)")


def test_a_loss_that_is_not_finite_on_another_rank_is_said_so():
    """Each rank said the non-finite loss was its own value ('non-finite loss (2.3026)' where rank 0's
    loss was finite and rank 1's NaN); it says on how many of the processes it was not finite."""
    from alexnet.epoch import Position, _take_step
    from alexnet.errors import NonFiniteLoss
    from alexnet.health import HealthMonitor

    cfg = resolve_config(None, {"on_nonfinite": "stop"})
    rank1_nan = lambda flags: [flags[0] + 1.0, flags[1] + 1.0, flags[2], flags[3], *flags[4:]]  # noqa: E731 (+ rank 1's)
    for value, reduce, said in ((2.3026, rank1_nan, "non-finite loss on 1 of the 2 processes at epoch 1, step 1"),
                                (float("nan"), list, "non-finite loss (nan) at epoch 1, step 1")):
        with pytest.raises(NonFiniteLoss, match=r"^" + said.replace("(", r"\(").replace(")", r"\)")) as raised:
            _take_step(value, cfg, Position(), reduce, HealthMonitor(None, 2, "off"), False)
        assert raised.value.every_rank


@pytest.mark.parametrize(("world", "local_world", "every_rank"), [(2, 2, True), (4, 2, False)])
def test_a_data_error_is_rank_0s_to_say_only_on_one_machine(tmp_path, monkeypatch, world, local_world, every_rank):
    """Ranks on one machine list the same files, so rank 0 alone says a data error (above). Ranks on
    other machines (torchrun --nnodes 2) may see other files: a rank whose error was marked every
    rank's exited 0 without a word, and the others waited at their first collective until the
    timeout. There each rank says its own."""
    import contextlib

    import alexnet.train as train
    from alexnet.distributed import DistInfo
    from alexnet.errors import DataError

    def refuse(*args, **kwargs):
        raise DataError("this node's copy of the data is missing")

    monkeypatch.setattr(train, "_wire", refuse)
    cfg = resolve_config(None, {"data": str(tmp_path), "out": str(tmp_path / "run")})
    info = DistInfo(rank=1, world=world, local_rank=1, local_world=local_world)
    with pytest.raises(DataError) as raised:
        train._fit(cfg, info, torch.device("cpu"), None, tmp_path / "run", False, train._Voices(print, print), contextlib.ExitStack())
    assert getattr(raised.value, "every_rank", False) is every_rank

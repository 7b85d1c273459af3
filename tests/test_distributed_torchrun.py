"""Errors under plain ``torchrun --nproc-per-node N -m alexnet train ...`` (README: distributed), where
no launcher of ours checks the request first: each rank met it and said it, N lines for one mistake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli_env, make_image_folder, make_tiny_fmnist, requires_cuda, run_cli


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    return make_tiny_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m alexnet ARGS``, as README tells, on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "alexnet", *args]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1"), timeout=600)


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--amp", "none",
            "--workers", "0", "--device", "cpu", *TINY, *extra]


_REQUESTS = {  # a mistake every rank reads alike, as each reaches the command line
    "missing --data": lambda data, tmp: _train(tmp / "no-such-folder", tmp / "run"),
    "argparse's refusal": lambda data, tmp: _train(data, tmp / "run", "--batch-size", "-3"),
    "our own check of the options": lambda data, tmp: _train(data, tmp / "run", "--schedule", "plateau", "--gamma", "0.5"),
    "unknown preset": lambda data, tmp: _train(data, tmp / "run", "--preset", "no_such_preset"),
    "unreadable --resume": lambda data, tmp: ["train", "--resume", str(tmp / "bad.pt"), "--device", "cpu"],
    "--out holding a run": lambda data, tmp: _train(data, tmp / "held"),  # rank 0 claims the folder, and tells the others
}


@pytest.mark.parametrize("case", list(_REQUESTS))
def test_a_bad_request_is_said_once_under_plain_torchrun(tiny_fmnist, tmp_path, case):
    """Each of the 2 ranks said the error (with argparse's, its usage hint too), then torchrun its
    summary: the same line twice. Local rank 0 says it, the other rank exits without a word; the
    line is the one a single process says, and torchrun's summary names rank 0, the one that said it."""
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "config.json").write_text("{}")  # a run's mark (runfolder)
    args = _REQUESTS[case](tiny_fmnist, tmp_path)
    alone = run_cli(*args)  # what one process says of the same request: one line
    said = alone.stderr.strip()
    assert alone.returncode == 2 and len(said.splitlines()) == 1 and ": error: " in said, alone.stderr
    r = _torchrun(*args)
    ours, _, agent = r.stderr.partition("failed (exitcode: ")  # torchrun's log line, its traceback and summary below
    assert r.returncode != 0 and agent, r.stderr
    assert [line for line in ours.splitlines() if not re.match(r"[WEI]\d{4} ", line)] == [said], r.stderr  # torchrun's log
    root = agent.split("Root Cause")[-1]
    assert "rank      : 0 (local_rank: 0)" in root and "exitcode  : 2" in root, r.stderr

def test_a_rank_whose_machine_lacks_the_data_says_so_naming_itself(tmp_path):
    """torchrun on two machines (--nnodes 2): rank 1 is local rank 0 of its machine, whose copy of the
    data is missing. It says so, naming itself, for no other rank sees its files; on one machine
    (LOCAL_RANK 1 of 2) its local rank 0 says it and it exits 0 without a word."""
    args = _train(tmp_path / "no-such-folder", tmp_path / "run")
    alone = run_cli(*args)
    said = alone.stderr.strip().splitlines()
    assert alone.returncode == 2 and len(said) == 1 and said[0].startswith("alexnet: error: "), alone.stderr
    ranks = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}  # fails before it joins
    for local, expected, code in ((("0", "1"), said[0].replace("error: ", "error: rank 1: ", 1), 2), (("1", "2"), "", 0)):
        env = cli_env(**ranks, LOCAL_RANK=local[0], LOCAL_WORLD_SIZE=local[1])
        r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, env=env, timeout=300)
        assert (r.returncode, r.stderr.strip()) == (code, expected), r.stderr


@requires_cuda
def test_a_rank_without_its_gpu_says_so_naming_itself(tiny_fmnist, tmp_path):
    """A rank whose own device is missing (local rank 1 of 2 where one GPU is visible) must not be
    taken for one whose local rank 0 says a request's error (errors.rank_voice): it says its line and
    exits 2, where local rank 0, which has its GPU, would go on and wait for it at the rendezvous."""
    args = _train(tiny_fmnist, tmp_path / "run")
    args[args.index("cpu")] = "cuda"
    ranks = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300,
                       env=cli_env(cuda=True, CUDA_VISIBLE_DEVICES="0", **ranks))
    said = "alexnet: error: rank 1 needs cuda:1 but this machine has 1 CUDA device(s): start at most 1 processes per machine"
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("alexnet:")] == [said + " (--nproc / --nproc-per-node)"], r.stderr


def test_data_a_machine_refuses_once_the_ranks_have_joined_is_said_by_each_of_its_ranks(tiny_fmnist, tmp_path):
    """torchrun on two machines of two ranks each (started by hand here, the rendezvous store served by
    the test): the second machine's copy of the data has one class folder, which its ranks meet once
    they have joined the process group, where what each rank meets is its own. Each of them says it,
    naming itself, and exits 2; none stays quiet while the first machine's ranks wait for it."""
    import torch.distributed

    bad = make_image_folder(tmp_path / "imgs", classes=1, per_class=4)
    alone = run_cli(*_train(bad, tmp_path / "alone"))
    said = alone.stderr.strip().splitlines()
    assert alone.returncode == 2 and len(said) == 1 and said[0].startswith("alexnet: error: "), alone.stderr
    store = torch.distributed.TCPStore("127.0.0.1", 0, 4, is_master=True, wait_for_workers=False)
    procs = []
    for rank in range(4):
        env = cli_env(RANK=str(rank), LOCAL_RANK=str(rank % 2), WORLD_SIZE="4", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True",
                      TORCHELASTIC_RESTART_COUNT="0", OMP_NUM_THREADS="1")
        args = _train(tiny_fmnist if rank < 2 else bad, tmp_path / f"run{rank // 2}", "--dist-timeout", "60")
        procs.append(subprocess.Popen([sys.executable, "-m", "alexnet", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        for rank in (2, 3):
            _, err = procs[rank].communicate(timeout=300)
            expected = said[0].replace("error: ", f"error: rank {rank}: ", 1)
            assert procs[rank].returncode == 2 and err.strip().splitlines() == [expected], err
    finally:
        for p in procs:  # the first machine's ranks, left waiting for the others
            p.kill()
            p.communicate()

"""The tests' CLI runs, forked from a process that has imported torch (tests/forked_cli.py), are what
a plain ``python -m alexnet`` gives: the same output, exit status and results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import forked_cli
import pytest
import torch
from conftest import TINY, cli_env, run_cli

pytestmark = pytest.mark.skipif(not forked_cli.USABLE, reason="runs are forked on Linux only, and not under ALEXNET_TEST_FORK=0")


def _plain(*args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, cwd=cwd, env=cli_env(**(env or {})),
                          timeout=300)


def _forked(*args: str, cwd=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    served = forked_cli.served()
    r = run_cli(*args, cwd=cwd, env=env)
    assert forked_cli.served() == served + 1, "run_cli did not fork this run"
    return r


@pytest.mark.parametrize("args", [["--version"], ["train", "--epochs", "0"], ["evaluate", "--checkpoint", "missing.pt"],
                                  ["summary", "--model", "nope"], ["summary", "--model", "alexnet_paper"]])
def test_a_forked_run_says_what_a_plain_one_says(args, tmp_path):
    plain, forked = _plain(*args, cwd=tmp_path), _forked(*args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert forked.args == plain.args


def test_a_forked_training_is_bitwise_a_plain_one(tiny_fmnist, tmp_path):
    runs = {}
    for how, run in (("plain", _plain), ("forked", _forked)):
        out = tmp_path / how
        r = run("train", "--data", str(tiny_fmnist), "--epochs", "2", "--batch-size", "16", "--out", how, "--progress", "off", *TINY,
                cwd=tmp_path)  # a relative --out: in the caller's folder
        assert r.returncode == 0, r.stderr
        runs[how] = torch.load(out / "last.pt", weights_only=True)
        config = json.loads((out / "config.json").read_text())
        assert config["environment"]["threads"] == torch.get_num_threads()  # the machine's cores, as in a fresh process
    a, b = runs["plain"]["model"], runs["forked"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_top1"] for h in runs["plain"]["history"]] == [h["val_top1"] for h in runs["forked"]["history"]]


def test_a_forked_run_past_its_timeout_is_killed(tiny_fmnist, tmp_path):
    args = ["train", "--data", str(tiny_fmnist), "--epochs", "50", "--out", str(tmp_path / "r"), "--progress", "off", *TINY]
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(*args, timeout=1)
    pid = forked_cli.last_pid()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # killed: it goes as soon as its go-between reaps it
            os.kill(pid, 0)
            time.sleep(0.05)


def test_alexnets_own_variables_reach_the_forked_run(tiny_fmnist, tmp_path):
    """ALEXNET_FAULT (read by alexnet alone) is passed to the forked process: here it kills it, by
    SIGKILL, at step 2, as it kills a plain one."""
    args = ["train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "16", "--progress", "off", *TINY]
    plain = _plain(*args, "--out", str(tmp_path / "plain"), env={"ALEXNET_FAULT": "kill:step=2"})
    forked = _forked(*args, "--out", str(tmp_path / "forked"), env={"ALEXNET_FAULT": "kill:step=2"})
    assert plain.returncode == forked.returncode == -9, forked.stderr
    assert plain.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1] == "ALEXNET_FAULT: killed at step 2"
    assert run_cli(*args, "--out", str(tmp_path / "after")).returncode == 0  # the next run has it no more


def test_a_run_in_another_environment_is_not_forked(tmp_path, monkeypatch):
    """A test's own TMPDIR (or HOME, ...) is not the server's: that run starts a plain python."""
    served = forked_cli.served()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert run_cli("--version").returncode == 0
    assert forked_cli.served() == served

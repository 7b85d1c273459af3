"""Training the paper's way, and never losing a run (issue 4)."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    TINY,
    cli_env,
    fail_checkpoint_write,
    make_fmnist,
    make_image_folder,
    run_cli,
    run_cli_with_memory,
    src_pythonpath,
)

import alexnet
from alexnet.checkpoint import load_checkpoint, save_atomic
from alexnet.cli import main
from alexnet.config import resolve_config
from alexnet.optim import PaperSGD, PlateauSchedule
from alexnet.resume import resume_config
from alexnet.train import fit

# A tiny AlexNet so that a run takes a second or two on a CPU.
TINY_OPTIONS = {"widths": [8, 16, 16, 16, 16], "fc_width": 32}


def test_paper_sgd_matches_the_rule_by_hand():
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(3)]
    lrs = [0.01, 0.01, 0.001]  # the rate drops by 10 before the third step
    mu, wd = 0.9, 5e-4
    # The paper, line by line: v <- 0.9 v - 0.0005 e w - e g ; w <- w + v
    w, v = w0.clone(), torch.zeros(5, dtype=torch.float64)
    for g, e in zip(grads, lrs):
        v = mu * v - wd * e * w - e * g
        w = w + v
    p = torch.nn.Parameter(w0.clone())
    opt = PaperSGD([p], lr=0.01, momentum=mu, weight_decay=wd)
    for g, e in zip(grads, lrs):
        opt.param_groups[0]["lr"] = e
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-15)
    # torch.optim.SGD puts the rate outside the velocity: it differs once the rate changes.
    q = torch.nn.Parameter(w0.clone())
    sgd = torch.optim.SGD([q], lr=0.01, momentum=mu, weight_decay=wd)
    for g, e in zip(grads, lrs):
        sgd.param_groups[0]["lr"] = e
        q.grad = g.clone()
        sgd.step()
    assert (q.detach() - w).abs().max() > 1e-6



def test_paper_sgd_in_one_fused_pass_matches_the_rule(monkeypatch):
    """float32 parameters (a channels_last conv weight and a bias) take the one-pass fused update:
    weights and velocities match the paper's rule in float64 across a drop of the rate, and the
    four-pass update was not used."""
    from alexnet import optim

    try:
        optim._paper_update_fused([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], 0.1, 0.9, 0.0)
    except RuntimeError:
        pytest.skip("this torch has no fused SGD kernel for the CPU")
    cpu = torch.device("cpu")
    assert optim._fused_matches(cpu, torch.float32) and not optim._fused_matches(cpu, torch.float64)
    monkeypatch.setattr(optim, "_FUSED", {})  # a kernel that computes something else is refused by the probe
    with monkeypatch.context() as m:
        m.setattr(optim, "_paper_update_fused", lambda ps, gs, vs, lr, mu, wd: optim._paper_update(ps, gs, vs, lr, mu, 2 * wd))
        assert not optim._fused_matches(cpu, torch.float32)
    monkeypatch.setattr(optim, "_fused_matches", lambda device, dtype: True)  # the kernel itself is under test below
    monkeypatch.setattr(optim, "_paper_update", lambda *a: pytest.fail("the four-pass update ran"))
    torch.manual_seed(1)
    w0 = [torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last), torch.randn(8)]
    grads = [[torch.randn_like(w) for w in w0] for _ in range(4)]
    lrs, mu, wd = [0.01, 0.01, 0.001, 0.003], 0.9, 5e-4
    ws, vs = [w.double() for w in w0], [torch.zeros_like(w, dtype=torch.float64) for w in w0]
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = PaperSGD(params, lr=0.01, momentum=mu, weight_decay=wd)
    for step_grads, e in zip(grads, lrs):
        vs = [mu * v - wd * e * w - e * g.double() for v, w, g in zip(vs, ws, step_grads)]
        ws = [w + v for w, v in zip(ws, vs)]
        opt.param_groups[0]["lr"] = e
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    for p, w, v in zip(params, ws, vs):
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["velocity"].double(), v, rtol=1e-5, atol=1e-8)
    assert params[0].is_contiguous(memory_format=torch.channels_last)

@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_paper_sgd_float32_matches_the_rule_at_any_momentum(mu):
    """float32 parameters (the fused path where the kernel takes them), momentum 0 included: the
    weights after three steps are the paper's rule computed in float64."""
    torch.manual_seed(2)
    w0, grads, lrs, wd = torch.randn(6), [torch.randn(6) for _ in range(3)], [0.01, 0.01, 0.001], 5e-4
    w, v = w0.double(), torch.zeros(6, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = PaperSGD([p], lr=0.01, momentum=mu, weight_decay=wd)
    for g, e in zip(grads, lrs):
        v = mu * v - wd * e * w - e * g.double()
        w = w + v
        opt.param_groups[0]["lr"] = e
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the exact passes, the fused one
def test_paper_preset_decays_weights_not_biases(dtype, tiny_fmnist, tmp_path):
    """The rule's decay is of the weights w: cuda-convnet, which the paper trained with, gives biases a
    weight cost of 0. Three steps of a layer against the rule in float64; then the preset's run."""
    torch.manual_seed(3)
    layer = torch.nn.Linear(4, 3).to(dtype)
    w, b = layer.weight.detach().double().clone(), layer.bias.detach().double().clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    mu, wd, lr = 0.9, 0.05, 0.1  # a decay large enough to show in three steps
    opt = PaperSGD(alexnet.optim.param_groups(layer, bias_decay=False), lr=lr, momentum=mu, weight_decay=wd)
    for _ in range(3):
        gw, gb = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        vw, vb = mu * vw - wd * lr * w - lr * gw, mu * vb - lr * gb
        w, b = w + vw, b + vb
        layer.weight.grad, layer.bias.grad = gw.to(dtype), gb.to(dtype)
        opt.step()
    torch.testing.assert_close(layer.weight.detach().double(), w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layer.bias.detach().double(), b, rtol=1e-6, atol=1e-7)
    if dtype == torch.float32:  # the preset wires it: the saved optimizer's bias groups have no decay
        cfg = resolve_config("paper", dict(data=str(tiny_fmnist), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                                           amp="none", workers=0, model_options=dict(TINY_OPTIONS)))
        fit(cfg, log=lambda s: None)
        saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]
        assert sorted(g["weight_decay"] for g in saved["param_groups"]) == [0.0, 5e-4]
        for g in saved["param_groups"]:  # biases are the 1-d parameters (their velocities are 1-d)
            assert {saved["state"][i]["velocity"].dim() == 1 for i in g["params"]} == {g["weight_decay"] == 0.0}
        assert sum(len(g["params"]) for g in saved["param_groups"]) == 16  # 8 layers, weights and biases


def test_plateau_schedule_on_scripted_errors():
    sched = PlateauSchedule(patience=2, factor=0.1, max_reductions=3)
    errors = [0.9, 0.8, 0.7, 0.7, 0.71, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5]
    events = [sched.step(e) for e in errors]
    assert events == [None, None, None, None, "reduce", None, None, "reduce", None, None, "reduce", None, "stop"]
    assert sched.reductions == 3 and sched.scale == pytest.approx(1e-3) and sched.stop
    # Its state survives a checkpoint round trip.
    again = PlateauSchedule(patience=2)
    again.load_state_dict(sched.state_dict())
    assert again.state_dict() == sched.state_dict()


def test_plateau_schedule_measures_improvement_afresh_after_a_reduction():
    """After a reduction the error it was cut at is the one to beat ("stopped improving with the
    current learning rate"): 0.55 after a cut at 0.6 is progress at the new rate though worse than
    the 0.5 of the old one, so the next cut waits two epochs without progress from there."""
    sched = PlateauSchedule(patience=2, factor=0.1, max_reductions=3)
    events = [sched.step(e) for e in [0.5, 0.6, 0.6, 0.55, 0.56, 0.57]]
    assert events == [None, None, "reduce", None, None, "reduce"]
    assert sched.best == 0.57 and sched.reductions == 2 and sched.scale == pytest.approx(1e-2)


def test_an_epochs_train_loss_and_top1_are_its_images_mean_loss_and_accuracy(monkeypatch):
    """metrics.jsonl's train_loss and train_top1: the mean cross-entropy and the fraction right over
    the epoch's images (batches of 5, 5 and 3: a mean of batch means would weigh the last one more),
    against float64 on a network held still (lr_mult 0) and inputs the test makes itself."""
    from alexnet import epoch
    from alexnet.config import TrainConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images = torch.randint(0, 256, (13, 3, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3, 3, 0, 0])
    batches = [(images[i : i + 5], labels[i : i + 5], torch.arange(i, min(i + 5, 13))) for i in range(0, 13, 5)]
    monkeypatch.setattr(epoch, "model_input", lambda x, *args, **kwargs: x.float() / 64)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr_mult": 0.0}], lr=0.0)
    got = epoch.train_one_epoch(model, optimizer, batches, None, TrainConfig(epochs=1), torch.device("cpu"), None,
                                torch.amp.GradScaler("cpu", enabled=False), epoch.Position(), show_progress=False)
    w, b = (t.detach().double() for t in model[1].parameters())
    logits = images.double().reshape(13, -1) / 64 @ w.T + b
    want_loss = float(-torch.log_softmax(logits, 1)[torch.arange(13), labels].mean())
    want_top1 = float((logits.argmax(1) == labels).double().mean())
    assert got["train_images"] == 13 and 0 < want_top1 < 1
    assert got["train_loss"] == pytest.approx(want_loss, rel=1e-6) and got["train_top1"] == pytest.approx(want_top1)


def _stalling_run(data, out, epochs: int, max_reductions: int) -> list[str]:
    """train's arguments for a plateau run at a rate too small to change a prediction: its
    validation error stalls every epoch, so patience 1 cuts the rate after each."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "8", "--seed", "1",
            "--amp", "none", "--workers", "0", "--device", "cpu", "--lr", "1e-12", "--schedule", "plateau",
            "--patience", "1", "--max-reductions", str(max_reductions), *TINY]


def test_plateau_reduction_is_logged_after_the_epoch_it_follows(tiny_fmnist, tmp_path, capsys):
    """At a learning rate too small to change a prediction, the validation error stalls: with
    patience 1 the rate falls after epoch 2 (said after epoch 2's line, and recorded from epoch 3)
    and training stops after epoch 3, its one reduction spent."""
    out = tmp_path / "run"
    assert main(_stalling_run(tiny_fmnist, out, epochs=5, max_reductions=1)) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("epoch ", "validation error"))]
    assert [line.split("  ")[0] for line in lines] == [
        "epoch 1/5", "epoch 2/5", "validation error stalled for 1 epoch: lr x 0.1 from epoch 3 (reduction 1)",
        "epoch 3/5", "validation error stalled after 1 reduction: stopping",
    ]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] / 1e-12 for r in rows] == pytest.approx([1.0, 1.0, 0.1])
    # lr_scale is the scale each epoch ran with (the rate it ran at over the base rate), not the next one's
    assert [r["lr_scale"] for r in rows] == pytest.approx([r["lr"] / 1e-12 for r in rows])


def test_a_plateau_at_the_last_epoch_says_the_rate_is_for_a_resume(tiny_fmnist, tmp_path, capsys):
    """A reduction after the last epoch said 'lr x 0.1 from epoch 3' of a run that ended at epoch 2;
    the lower rate is saved for a resume with more epochs, and said so."""
    out = tmp_path / "run"
    assert main(_stalling_run(tiny_fmnist, out, epochs=2, max_reductions=2)) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("epoch ", "validation error"))]
    assert [line.split("  ")[0] for line in lines] == [
        "epoch 1/2", "epoch 2/2", "validation error stalled for 1 epoch: lr x 0.1 if resumed for more epochs (reduction 1)"]
    assert torch.load(out / "last.pt", weights_only=False)["plateau"]["scale"] == pytest.approx(0.1)


def test_recorded_rates_read_as_typed_after_reductions(tiny_fmnist, tmp_path):
    """metrics.jsonl's lr and lr_scale read 1.0000000000000002e-14 and 0.010000000000000002 after two
    plateau reductions of --lr 1e-12 (floats compound 0.1 x 0.1); they read as typed (helper 76)."""
    out = tmp_path / "run"
    assert main(_stalling_run(tiny_fmnist, out, epochs=4, max_reductions=3)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-12, 1e-12, 1e-13, 1e-14]
    assert [r["lr_scale"] for r in rows] == [1.0, 1.0, 0.1, 0.01]


def test_progress_bar_shows_the_schedules_rate_not_a_multiplied_layers(tiny_fmnist, tmp_path, capsys):
    """With --lr-mult conv1=0 the bar's lr was the first parameter group's, conv1's 0, while every
    other layer trained at --lr (and metrics.jsonl said so). Constant schedule: every step's rate
    is --lr, typed here, so the bar must show 0.03 on every update."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--amp", "none", "--workers", "0", "--device", "cpu", "--lr", "0.03", "--schedule", "constant",
                 "--warmup-epochs", "0", "--lr-mult", "conv1=0", "--progress", "on", *TINY]) == 0
    shown = re.findall(r"lr=([0-9.e+-]+)\]", capsys.readouterr().err)  # whole: tqdm 4.60 cut the line at 80 columns
    assert shown and {float(v) for v in shown} == {0.03}
    assert json.loads((out / "metrics.jsonl").read_text())["lr"] == pytest.approx(0.03)


def test_progress_bar_rate_counts_every_ranks_images(tiny_fmnist, tmp_path, capsys, monkeypatch):
    """The bar's img_s was this rank's images over the time: rank 0 of '--nproc 2' showed 88 img/s
    while the epoch's line said 175. Two identical ranks are simulated by a sum over ranks that
    doubles each number; the bar's last rate must then be the epoch's images (all ranks: twice the
    64 Fashion-MNIST images this process trains) over the epoch's seconds, as metrics.jsonl says."""
    import alexnet.distributed as dist_mod

    monkeypatch.setattr(dist_mod, "all_reduce_sum", lambda values: [2.0 * v for v in values])
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--amp", "none", "--workers", "0", "--device", "cpu", "--progress", "on", *TINY]) == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["train_images"] == 2 * 64
    shown = float(re.findall(r"img_s=(\d+)", capsys.readouterr().err)[-1])
    assert shown == pytest.approx(128 / record["train_seconds"], abs=0.5)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _train_args(data: Path, out: Path, epochs: int = 4) -> list[str]:
    # --device cpu: these runs are about resuming exactly, not the device; a resume keeps the saved device.
    return [
        "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "8", "--seed", "5",
        "--amp", "none", "--workers", "0", "--save-every", "1", "--device", "cpu", *TINY,
    ]


# A run killed at a seeded moment and resumed is bitwise the uninterrupted run: tests/test_resume.py
# (every data kind, kills mid-epoch, in evaluation and during a checkpoint write).


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])  # Ctrl-C; kill, docker stop, a SLURM
# preemption; a terminal that hung up
def test_ctrl_c_saves_and_resumes(tiny_fmnist, tmp_path, sig):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=src_pythonpath())
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", *_train_args(tiny_fmnist, out, epochs=30)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    assert load_checkpoint(out / "last.pt")["position"]["step"] > 0
    r = run_cli("train", "--resume", str(out), "--epochs", "2")
    assert r.returncode == 0, r.stderr


def test_sigterm_to_the_whole_job_saves_with_loader_workers(tmp_path):
    """systemd, docker and SLURM send SIGTERM to every process of the job, the loader's workers too:
    the run still saves its step and stops (torch's worker handler ended the workers at once, and the
    run failed with 'DataLoader worker ... is killed by signal: Terminated', saving nothing)."""
    from conftest import cli_env, make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=40)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "30", "--batch-size", "8", "--workers", "2",
            "--save-every", "1", "--device", "cpu", "--amp", "none", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not (out / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted at epoch" in err and "Traceback" not in err, err
    assert load_checkpoint(out / "last.pt")["position"]["step"] > 0


@pytest.mark.skipif(not hasattr(os, "openpty") or not sys.platform.startswith("linux"), reason="a pseudo-terminal: Linux")
def test_a_terminal_that_hangs_up_saves_the_step_with_loader_workers(tmp_path):
    """Real (an ssh connection lost, a terminal window closed): the terminal's hang-up sends SIGHUP to the
    run and its loader's workers, whose default ended them at once (exit -1), the run's last checkpoint
    as old as its last epoch. Now the run saves its step and stops (130), as on SIGTERM: the workers
    ignore SIGHUP, and the output, to a terminal that is no more (each write fails with EIO), goes to
    /dev/null instead of ending the run before it saves. --resume goes on from the step saved."""
    import fcntl
    import termios
    import threading

    from conftest import cli_env, make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=40)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "30", "--batch-size", "8", "--workers", "2",
            "--device", "cpu", "--amp", "none", "--progress", "on", *TINY]
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # the run's session and terminal, as a login shell's command has
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "alexnet", *args], env=cli_env(), stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    shown: list[bytes] = []
    threading.Thread(target=lambda: _read_until_closed(master, shown), daemon=True).start()
    while not (out / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    while len(b"".join(shown).split(b"epoch 2/30")) < 2 and proc.poll() is None:  # well into the run: bars drawn
        time.sleep(0.01)
    os.close(master)  # the hang-up: SIGHUP to the terminal's foreground process group
    assert proc.wait(timeout=120) == 130, b"".join(shown)[-2000:]
    step = load_checkpoint(out / "last.pt")["position"]["step"]
    assert step > 10  # past epoch 1 (10 steps)
    r = run_cli("train", "--resume", str(out), "--epochs", str(step // 10 + 2))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def _read_until_closed(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # closed by the test: the hang-up
            return
        if not chunk:
            return
        into.append(chunk)


def test_resume_refuses_options_it_would_ignore_and_works_from_any_folder(tiny_fmnist, tmp_path, monkeypatch, capsys):
    """A resume continues the run as configured: a changed --lr or --model is refused in one line
    naming them (it was ignored without a word), the same values typed again are not, and more
    epochs are taken. --data is saved absolute, so the resume and evaluate work from another folder."""
    monkeypatch.chdir(tiny_fmnist.parent)
    args = _train_args(Path(tiny_fmnist.name), tmp_path / "run", epochs=1)
    assert main(args) == 0
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]
    assert saved["data"] == json.loads((tmp_path / "run" / "config.json").read_text())["train"]["data"] == str(tiny_fmnist)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", "run", "--epochs", "2", "--lr", "0.5", "--model", "alexnet_paper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model, --lr differ from it: start a new run" in err[0], err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["position"]["epoch"] == 1  # nothing ran
    same = ["--data", str(tiny_fmnist), "--lr", str(saved["lr"]), "--batch-size", "8"]
    assert main(["train", "--resume", "run", "--epochs", "2", *same]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["position"]["epoch"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["epochs"] == 2  # what it went on with
    assert main(["evaluate", "--checkpoint", "run/last.pt"]) == 0
    capsys.readouterr()  # the resume's note (on stderr): --epochs 2 moves the onecycle schedule's end
    # --dropout is a model option, but the user typed --dropout: the refusal names it so.
    assert main(["train", "--resume", "run", "--dropout", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "; --dropout differs from it: start a new run" in err[0], err
    assert main(["train", "--resume", "run", "--dropout", "0.1", "--model-option", "lrn=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # one field, two flags: plural
    assert len(err) == 1 and "--dropout differ from it" in err[0] and "--model-option lrn" in err[0], err
    # Fewer epochs than done: refused (it printed "done" having trained nothing, and config.json
    # then said 1 epoch while the checkpoint and metrics.jsonl held 2).
    config = (tmp_path / "run" / "config.json").read_text()
    assert main(["train", "--resume", "run", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alexnet: error: --epochs 1: run has trained 2 epochs already; --epochs 2 or more continues it"], err
    assert (tmp_path / "run" / "config.json").read_text() == config
    # A run started without --data read Debian's Fashion-MNIST folder: typing that folder is the same
    # data (it was refused as "--data differs").
    from alexnet.data.fashion_mnist import DEBIAN_ROOT

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    ckpt["train_config"]["data"] = None
    (tmp_path / "default").mkdir()
    save_atomic(ckpt, tmp_path / "default" / "last.pt")
    assert resume_config(str(tmp_path / "default"), {"data": str(DEBIAN_ROOT) + "/", "epochs": 3}).epochs == 3
    # Shortened to end within the run's warm-up (which the photos recipe chose from its first --epochs):
    # the limit is named as the saved option (it was 'bad training configuration' of the checkpoint).
    ckpt["train_config"]["warmup_epochs"] = 3.5
    save_atomic(ckpt, tmp_path / "default" / "last.pt")
    with pytest.raises(alexnet.errors.ConfigError) as refused:
        resume_config(str(tmp_path / "default"), {"epochs": 3})
    assert str(refused.value) == ("--epochs 3: the run warms its learning rate up over 3.5 epochs (its saved "
                                  "--warmup-epochs), so it must be longer: --epochs 4 or more continues it")
    assert resume_config(str(tmp_path / "default"), {"epochs": 4}).epochs == 4


def test_resume_takes_model_options_repeated_at_the_networks_own_values(tiny_fmnist, tmp_path):
    """Only the model options typed when a run started are saved: --dropout 0.5 and --model-option
    lrn=true (alexnet_small's own, the paper's values) were refused on resume as "differs from it", and
    so were the widths a fine-tuning run took from its --init-from network. Other values still are."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    assert set(load_checkpoint(out / "last.pt")["train_config"]["model_options"]) == set(TINY_OPTIONS)
    same = {"dropout": 0.5, "lrn": True, "input_size": 28, "widths": [8, 16, 16, 16, 16]}  # README: 0.5, LRN, 28 px
    assert resume_config(str(out), {"epochs": 2, "model_options": same}).epochs == 2
    with pytest.raises(alexnet.errors.ConfigError, match="; --dropout differs from it: start a new run"):
        resume_config(str(out), {"epochs": 2, "model_options": {"dropout": 0.1, "lrn": True}})
    tuned = tmp_path / "tuned"  # the network, TINY widths included, comes from --init-from
    fit(_cfg(tiny_fmnist, tuned, epochs=1, init_from=str(out / "last.pt"), model_options={}), log=lambda s: None)
    assert "widths" not in load_checkpoint(tuned / "last.pt")["train_config"]["model_options"]
    assert resume_config(str(tuned), {"epochs": 2, "model_options": {"widths": [8, 16, 16, 16, 16]}}).epochs == 2
    with pytest.raises(alexnet.errors.ConfigError, match="--model-option widths differs from it"):
        resume_config(str(tuned), {"epochs": 2, "model_options": {"widths": [8, 16, 16, 16, 32]}})


def test_resuming_a_finished_run_says_nothing_is_left(tiny_fmnist, tmp_path):
    """A finished run resumed again (a job script re-run) said 'resuming at epoch 2' of 1 and 'training
    ... 1 epoch'; one its plateau schedule ended took more --epochs and trained none, without a word
    (and config.json then said 5 epochs). Now one line, nothing read or written."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    before = (out / "last.pt").read_bytes()
    lines: list[str] = []
    assert fit(resume_config(str(out), {}), log=lines.append)["val_top1"] == load_checkpoint(out / "last.pt")["history"][-1]["val_top1"]
    assert lines == [f"nothing to train: {out} has trained all its 1 epoch; --epochs 2 or more continues it"], lines
    assert (out / "last.pt").read_bytes() == before
    ckpt = load_checkpoint(out / "last.pt")
    ckpt["plateau"].update(stop=True, reductions=3)
    save_atomic(ckpt, out / "last.pt")
    lines.clear()
    files = {name: (out / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
    fit(resume_config(str(out), {"epochs": 5}), log=lines.append)
    assert files == {name: (out / name).read_bytes() for name in files}  # config.json said 5 epochs, none trained
    assert lines == [f"nothing to train: {out} was ended by its plateau schedule after 3 reductions of the rate "
                     f"(--max-reductions); more --epochs would not train it: --init-from {out / 'last.pt'} starts "
                     "a new run from its weights"], lines


def test_a_finished_run_resumed_reports_its_folder_as_a_trained_one_does(tiny_fmnist, tmp_path, monkeypatch):
    """fit's run_dir was absolute for a run that trained ('done: ... run folder /home/u/run') and as
    typed for one resumed with nothing left ('run folder run'): one key, two meanings after a chdir."""
    monkeypatch.chdir(tmp_path)
    trained = fit(_cfg(tiny_fmnist, Path("run"), epochs=1), log=lambda s: None)
    again = fit(resume_config("run", {}), log=lambda s: None)
    assert trained["run_dir"] == again["run_dir"] == str(tmp_path.resolve() / "run")
    assert again == trained


def test_a_resume_reads_its_checkpoint_once(tiny_fmnist, tmp_path, monkeypatch):
    """resume_config and fit each read last.pt (an ImageNet run's is half a gigabyte: 0.55 s a read
    here, more from a cold disk); now fit takes the one resume_config read, unless the file changed."""
    import alexnet.resume

    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    reads: list[str] = []  # every torch.load of a checkpoint, whichever module asks
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **kw: reads.append(str(path)) or real(path, *a, **kw))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--progress", "off"]) == 0
    assert reads == [str(out / "last.pt")]
    cfg = resume_config(str(out), {"epochs": 3}, keep=True)
    save_atomic(load_checkpoint(out / "last.pt"), out / "last.pt")  # rewritten in between: read again
    fit(cfg, log=lambda s: None)
    assert reads == [str(out / "last.pt")] * 4 and alexnet.resume._READ == {}  # main; resume_config, the test's own, fit
    assert main(["train", "--resume", str(out), "--epochs", "4", "--lr", "5"]) == 2  # refused: nothing held after it
    assert alexnet.resume._READ == {}


def test_resume_takes_its_data_in_a_new_place_but_not_other_classes(tmp_path, capsys):
    """A dataset moved to another disk (or a run folder copied to another machine): the resume says
    where the run's data was and that --data gives its place now (it was refused as '--data differs',
    and without --data failed as '--data: path not found'); there it goes on bitwise as from the old
    place (and evaluate says it too). A class folder renamed or added is refused before anything is written (a renamed one
    trained on silently: folders are numbered by sorted name, so the outputs meant other classes)."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=8)
    args = _train_args(data, tmp_path / "run", epochs=1)
    assert main(args) == 0
    shutil.copytree(tmp_path / "run", tmp_path / "same")  # goes on from the old place
    assert main(["train", "--resume", str(tmp_path / "same"), "--epochs", "2"]) == 0
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alexnet: error: --resume {tmp_path / 'run'}: the run's data {data} is not there (its saved --data); "
                   "--data PATH continues the run with its data where it is now"], err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 2  # its default data is the run's
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"alexnet: error: {tmp_path / 'run' / 'last.pt'}: the data it was trained on, {data}, is not there: "
                   "give --data"], err
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--data", str(tmp_path / "moved")]) == 0
    capsys.readouterr()  # its notes (stderr): the held-out images
    here, there = (load_checkpoint(tmp_path / name / "last.pt") for name in ("run", "same"))
    assert all(torch.equal(here["model"][k], there["model"][k]) for k in there["model"]), "not bitwise the same run"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["data"] == config["data"]["source"] == str(tmp_path / "moved"), config
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("config.json", "metrics.jsonl", "last.pt")}
    (tmp_path / "moved" / "class0").rename(tmp_path / "moved" / "renamed")  # now the last: labels shift
    make_image_folder(tmp_path / "added", classes=4, per_class=8)
    for folder, said in (("moved", "(class0 gone; renamed new)"), ("added", "(4 where the run had 3; class3 new)")):
        assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--data", str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{tmp_path / folder}: its classes are not those --resume {tmp_path / 'run' / 'last.pt'} " \
            f"trained on {said}" in err[0] and "--init-from" in err[0], err
    assert before == {name: (tmp_path / "run" / name).read_bytes() for name in before}


def test_resume_says_when_the_data_preset_changed_since_the_run_started(tmp_path):
    """A run started by an older alexnet whose preset cropped otherwise (here: the torchvision preset
    before it took RandomResizedCrop's scale) goes on with the preset as it is now, and says so."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    out = tmp_path / "run"
    fit(_cfg(data, out, epochs=1, data_preset="torchvision"), log=lambda s: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["preprocess"]["scale"] == [0.08, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming a run of this version: no warning
        # but a library's deprecation is not ours: matplotlib 3.6 calls pyparsing 3.3's parseString
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        fit(resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    ckpt["preprocess"]["scale"] = None  # as an older version saved it
    save_atomic(ckpt, out / "last.pt")
    with pytest.warns(UserWarning, match=r"data preset torchvision has changed since this run started \(scale None -> "):
        fit(resume_config(str(out), {"epochs": 2}), log=lambda s: None)


def test_a_resumed_run_is_watched_as_the_uninterrupted_one(tiny_fmnist, tmp_path):
    """The health monitor's window of losses and its step count travel in the checkpoint: a resumed
    fine-tuning run stopped as diverged at an epoch's end that the uninterrupted one passed, judging
    only the steps since the resume."""
    assert main(_train_args(tiny_fmnist, tmp_path / "whole", epochs=2)) == 0
    killed = run_cli(*_train_args(tiny_fmnist, tmp_path / "parts", epochs=2), timeout=300, env={"ALEXNET_FAULT": "kill:step=12"})
    assert killed.returncode == -signal.SIGKILL and "killed at" in killed.stderr, killed.stderr
    assert main(["train", "--resume", str(tmp_path / "parts")]) == 0
    whole, parts = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("whole", "parts"))
    assert whole["health"]["step"] == 2 * 8 and len(whole["health"]["losses"]) == 10  # 64 images, batch 8
    assert parts["health"] == whole["health"]


def test_resume_of_an_older_checkpoint_takes_a_new_option_at_its_default(tiny_fmnist, tmp_path):
    """--bias-decay (new today) repeated at its default on --resume of a checkpoint written before it
    existed is not a change (it was refused as 'differs'); the opposite value is."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    del ckpt["train_config"]["bias_decay"]  # as an older version saved it
    save_atomic(ckpt, out / "last.pt")
    assert resume_config(str(out), {"bias_decay": True, "epochs": 2}).bias_decay is True
    with pytest.raises(alexnet.ConfigError, match="--bias-decay differs"):
        resume_config(str(out), {"bias_decay": False})


def test_a_resize_of_the_preset_is_not_reported_as_changed_photos(tmp_path):
    """A run of alexnet_caffe stored at 259 px by an older version, resumed at today's 256: its mean
    image has another size because the preset changed, not the photos; one warning says so."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    out = tmp_path / "run"
    fit(_cfg(data, out, epochs=1), log=lambda s: None)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    pre = ckpt["preprocess"]
    pre["resize"] = pre["size"] = 259
    pre["mean_image"] = torch.nn.functional.interpolate(pre["mean_image"][None], size=(259, 259))[0]
    save_atomic(ckpt, out / "last.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    said = [str(w.message) for w in caught if "--resume" in str(w.message)]
    assert len(said) == 1 and "data preset photos has changed" in said[0] and "resize 259 -> 256" in said[0], said


def test_resume_says_when_photos_were_added_since_the_run_started(tmp_path):
    """Photos added to the training folder between a kill and --resume: the run goes on with them (a
    new data order, a recomputed mean image) and says that it is no longer the run it began as."""
    from conftest import make_image_folder
    from PIL import Image

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    out = tmp_path / "run"
    fit(_cfg(data, out, epochs=1), log=lambda s: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same photos: no warning
        # but a library's deprecation is not ours: matplotlib 3.6 calls pyparsing 3.3's parseString
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        fit(resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    for i in range(3):
        Image.new("RGB", (80, 64), (250, 250, 250)).save(data / "class0" / f"new{i}.jpg")
    with pytest.warns(UserWarning, match=r"the training data has changed since this run started \(training images "
                                         r"11 -> 13; validation images 1 -> 2; its mean image\)"):  # 10 % held out
        fit(resume_config(str(out), {"epochs": 3}), log=lambda s: None)
    # A photo moved to the class it belongs in: as many images, other labels, another held-out tenth.
    (data / "class0" / "new0.jpg").rename(data / "class1" / "new0.jpg")
    with pytest.warns(UserWarning, match=r"the training data has changed since this run started \(files renamed or moved "):
        fit(resume_config(str(out), {"epochs": 4}), log=lambda s: None)


def test_a_checkpoint_that_kept_its_held_out_listing_inside_data_resumes(tmp_path):
    """Checkpoints of 6e9ad8d to 071c77d (2026-12-04) kept the held-out listing inside 'data', whose
    values a resume checks as image counts: a run of that release on a folder without val/ was refused
    by every later one ('damaged training state: data held_out_of is {...}, not a number >= 0'). It is
    now read as its own entry: the resume goes on as that of the same checkpoint written today."""
    from conftest import make_image_folder

    from alexnet.checkpoint import read_entry

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    runs = [tmp_path / "today", tmp_path / "then"]
    fit(_cfg(data, runs[0], epochs=1), log=lambda s: None)
    shutil.copytree(runs[0], runs[1])
    for name in ("last.pt", "best.pt"):  # as that release wrote them
        ckpt = torch.load(runs[1] / name, weights_only=True)
        ckpt["data"]["held_out_of"] = ckpt.pop("held_out_of")
        save_atomic(ckpt, runs[1] / name)
    listing = read_entry(runs[0] / "last.pt", "held_out_of")
    assert listing["images"] == 12 and read_entry(runs[1] / "last.pt", "held_out_of") == listing
    assert load_checkpoint(runs[1] / "last.pt")["data"] == {"train_images": 11, "val_images": 1}
    for run in runs:
        fit(resume_config(str(run), {"epochs": 2}), log=lambda s: None)
    a, b = (torch.load(r / "last.pt", weights_only=True)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_interrupt_stops_at_once_and_says_what_is_left(tiny_fmnist, tmp_path, monkeypatch):
    """The second Ctrl-C (or SIGTERM) does not wait for the step's checkpoint: the run says whether
    a checkpoint is there to resume (it printed only 'alexnet: interrupted')."""
    real, calls = alexnet.train._epoch, []

    def epoch(run, *args):
        calls.append(1)
        if len(calls) in (2, 3):  # the first run's second epoch, the next run's first
            raise KeyboardInterrupt  # what _CtrlC raises on the second signal
        return real(run, *args)

    monkeypatch.setattr(alexnet.train, "_epoch", epoch)
    out = tmp_path / "run"
    with pytest.raises(alexnet.train.Interrupted, match=rf"second interrupt; its last checkpoint is kept: continue with: "
                                                         rf"alexnet train --resume {out}$"):
        fit(_cfg(tiny_fmnist, out, epochs=3), log=lambda s: None)
    with pytest.raises(alexnet.train.StoppedAtOnce, match="second interrupt; no checkpoint had been written yet: nothing to resume"):
        fit(_cfg(tiny_fmnist, tmp_path / "other", epochs=3), log=lambda s: None)
    assert not (tmp_path / "other").exists()  # as after any failure of a new run before its first checkpoint
    assert (out / "last.pt").is_file()


def test_fit_resumes_a_run_folder_named_in_python(tiny_fmnist, tmp_path):
    """fit(resume=RUN) (the folder, as --resume takes it) claims RUN, then found RUN's lock held
    and refused: 'RUN is in use by another alexnet train (pid <its own>)'. The CLI passed last.pt."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    fit(_cfg(tiny_fmnist, out, epochs=2, resume=str(out)), log=lambda s: None)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resume_goes_on_as_the_run_was_configured_and_never_back(tiny_fmnist, tmp_path):
    """Two resumes that lost work without a word: a configuration built by hand around resume=RUN
    (resolve_config's preset options, not the run's) trained on with batch 128 and rewrote the run's
    config; and resume_config(RUN/best.pt) of an earlier epoch retrained from it, overwriting
    last.pt's later epochs. Both are refused before anything is written; Path values are taken."""
    from alexnet.errors import ConfigError

    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)  # 64 images, batch 8: 8 steps an epoch
    shutil.copy(out / "last.pt", out / "early.pt")
    fit(_cfg(tiny_fmnist, Path(out), epochs=2, resume=Path(out)), log=lambda s: None)  # as the run was: goes on
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"batch_size differs from the run's saved configuration; alexnet.resume.resume_config"):
        fit(_cfg(tiny_fmnist, out, epochs=3, resume=str(out), batch_size=16), log=lambda s: None)
    with pytest.raises(ConfigError, match=r"holds a later checkpoint, last.pt \(step 16, against 8\), which going on"):
        fit(resume_config(str(out / "early.pt"), {"epochs": 3}), log=lambda s: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match=r"^unknown training option\(s\): learning_rate$"):
        resume_config(str(out), {"epochs": 3, "learning_rate": 1})
    with pytest.raises(ConfigError, match=r"^--epochs must be"):
        resume_config(str(out), {"epochs": "3"})
    assert fit(resume_config(out, {"epochs": 3}), log=lambda s: None)["epoch"] == 3


def test_a_second_interrupt_during_the_checkpoint_write_is_an_interrupt(tiny_fmnist, tmp_path, monkeypatch):
    """A second Ctrl-C that lands while torch.save writes the checkpoint: torch.save's writer turns
    the KeyboardInterrupt raised in the file's write() into RuntimeError('[enforce fail at
    inline_container.cc] unexpected pos'), which the run reported as 'could not write last.pt'. It is
    the interrupt: the run stops at once, keeping the previous checkpoint."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    before = _weights(out / "last.pt")
    fail_checkpoint_write(monkeypatch, ".last.pt.", KeyboardInterrupt())  # what _CtrlC raises on the second signal
    with pytest.raises(alexnet.train.Interrupted, match=rf"second interrupt; its last checkpoint is kept: continue with: "
                                                         rf"alexnet train --resume {out}$"):
        fit(_cfg(tiny_fmnist, out, epochs=2, resume=str(out)), log=lambda s: None)
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(before.values(), _weights(out / "last.pt").values()))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]  # no temporary file


def test_kill_during_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / 'src')!r})
from alexnet.checkpoint import save_atomic
save_atomic({{"model": {{"w": torch.arange(10.0)}}}}, {str(path)!r})
print("saved", flush=True)
save_atomic({{"model": {{"w": torch.zeros(300_000_000)}}}}, {str(path)!r})
print("second", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    time.sleep(0.3)  # well inside the 1.2 GB write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], torch.arange(10.0))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}}, path)

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_atomic({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def _cfg(data: Path, out: Path, **kw) -> alexnet.config.TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=2, batch_size=8, seed=1, amp="none", workers=0,
                model_options=dict(TINY_OPTIONS))
    return resolve_config(None, {**base, **kw})


@pytest.mark.parametrize("epochs", [1, 2])
def test_start_line_counts_the_epochs(tiny_fmnist, tmp_path, epochs):
    lines: list[str] = []
    fit(_cfg(tiny_fmnist, tmp_path / "run", epochs=epochs), log=lines.append)
    start = next(line for line in lines if line.startswith("training "))
    assert f" trainable parameters, {epochs} {'epoch' if epochs == 1 else 'epochs'}, device " in start, start


def test_nan_loss_stops_and_keeps_the_checkpoint(tiny_fmnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    before = _weights(out / "last.pt")
    import alexnet.epoch as epoch_mod

    real = epoch_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(epoch_mod.F, "cross_entropy", poisoned)
    # The message ends with what is left: nothing, for a run stopped before its first checkpoint ...
    with pytest.raises(alexnet.TrainingError, match="non-finite loss.*no checkpoint had been written yet: nothing to resume$"):
        fit(_cfg(tiny_fmnist, tmp_path / "run2", epochs=1), log=lambda s: None)
    assert not (tmp_path / "run2").exists()  # nothing half-trained was written, no half-made folder left
    # ... the last good checkpoint, for a resumed one, whose checkpoint is untouched.
    calls["n"] = 0
    with pytest.raises(alexnet.TrainingError, match="non-finite loss.*the run folder keeps the last good checkpoint$"):
        fit(alexnet.resume.resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    assert all(torch.equal(before[k], _weights(out / "last.pt")[k]) for k in before)
    # With "skip" the bad batch is counted and training goes on.
    calls["n"] = 0
    result = fit(_cfg(tiny_fmnist, tmp_path / "run3", epochs=1, on_nonfinite="skip"), log=lambda s: None)
    assert result["skipped_batches"] == 1


def test_skip_mode_stops_an_epoch_that_skipped_every_batch(tiny_fmnist, tmp_path, monkeypatch):
    """--on-nonfinite skip with every loss NaN: no step is taken. Before, the epoch was recorded as
    train_loss 0.0 over 0 images (a perfect loss) and the run ended 'done' with untrained weights."""
    import alexnet.epoch as epoch_mod

    real = epoch_mod.F.cross_entropy
    monkeypatch.setattr(epoch_mod.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "run"
    with pytest.raises(alexnet.TrainingError, match=r"every batch of epoch 1 \(8\) had a non-finite loss.*nothing to resume$"):
        fit(_cfg(tiny_fmnist, out, epochs=1, on_nonfinite="skip"), log=lambda s: None)
    assert not out.exists()  # nothing was trained, so nothing is kept


@pytest.mark.parametrize("optimizer", ["sgd", "paper"])
@pytest.mark.parametrize("layout", [True, False])
def test_resume_in_the_other_memory_layout_keeps_the_momentum_in_place(tiny_fmnist, tmp_path, optimizer, layout):
    """--resume may switch --channels-last. The checkpoint's momentum buffers keep the saved layout;
    the fused SGD kernels pair weight and buffer by memory position, so before the fix each conv
    weight was updated with other elements' momentum (4e-3 off in a few steps). The reference: the
    same two epochs uninterrupted in the saved layout; the layouts alone differ by float rounding."""
    base = dict(optimizer=optimizer, schedule="constant", warmup_epochs=0.0, channels_last=layout)
    whole, part = tmp_path / "whole", tmp_path / "part"
    fit(_cfg(tiny_fmnist, whole, epochs=2, **base), log=lambda s: None)
    fit(_cfg(tiny_fmnist, part, epochs=1, **base), log=lambda s: None)
    fit(alexnet.resume.resume_config(str(part), {"epochs": 2, "channels_last": not layout}), log=lambda s: None)
    a, b = _weights(whole / "last.pt"), _weights(part / "last.pt")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, f"resumed in the other layout: {worst:.2e} off the uninterrupted run"


def test_a_resume_that_fails_before_its_first_checkpoint_leaves_config_json(tiny_fmnist, tmp_path, monkeypatch):
    """config.json records the options of the run the folder's checkpoints hold. A resume with
    --epochs 3 that stopped at its first step (here a NaN; also --compile without a C compiler)
    rewrote it first: config.json said 3 epochs (and --config RUN/config.json replayed them) while
    last.pt and metrics.jsonl held the 1-epoch run."""
    out = tmp_path / "run"
    fit(_cfg(tiny_fmnist, out, epochs=1), log=lambda s: None)
    before = (out / "config.json").read_bytes()
    import alexnet.epoch as epoch_mod

    real = epoch_mod.F.cross_entropy
    monkeypatch.setattr(epoch_mod.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(alexnet.TrainingError, match="non-finite loss.*keeps the last good checkpoint$"):
        fit(alexnet.resume.resume_config(str(out), {"epochs": 3}), log=lambda s: None)
    assert (out / "config.json").read_bytes() == before
    monkeypatch.setattr(epoch_mod.F, "cross_entropy", real)  # the resume that trains records its options
    fit(alexnet.resume.resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


def test_foreign_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(alexnet.CheckpointError, match="refused"):
        load_checkpoint(path)
    r = run_cli("evaluate", "--checkpoint", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "evil.pt" in r.stderr


def test_best_pt_holds_the_epoch_of_the_best_validation_top1(tiny_fmnist, tmp_path, monkeypatch):
    """best.pt is the epoch whose validation top-1 is the highest (the first of equals), not the
    latest: validation scripted to 0.25, 0.75, 0.5, 0.75 keeps epoch 2 in best.pt, epoch 4 in last.pt."""
    import alexnet.train as train_mod

    scripted = iter([0.25, 0.75, 0.5, 0.75])
    real = train_mod.evaluate

    def scripted_evaluate(*args, **kwargs):
        top1 = next(scripted)
        return {**real(*args, **kwargs), "top1": top1, "top1_error": 1 - top1}

    monkeypatch.setattr(train_mod, "evaluate", scripted_evaluate)
    out = tmp_path / "run"
    result = fit(_cfg(tiny_fmnist, out, epochs=4, schedule="constant"), log=lambda s: None)
    best, last = (torch.load(out / name, weights_only=False) for name in ("best.pt", "last.pt"))
    assert (best["position"]["epoch"], last["position"]["epoch"]) == (2, 4)
    assert result["best_val_top1"] == best["best_val_top1"] == last["best_val_top1"] == 0.75
    assert not torch.equal(best["model"]["fc8.weight"], last["model"]["fc8.weight"])


def test_fine_tuning_keeps_frozen_layers(tiny_fmnist, tmp_path, monkeypatch):
    """Python's fit takes the layers as a tuple too, and names its run folder by a path that still
    holds after a change of folder."""
    src = tmp_path / "src"
    fit(_cfg(tiny_fmnist, src, epochs=1), log=lambda s: None)
    out = tmp_path / "tuned"
    monkeypatch.chdir(tmp_path)
    result = fit(_cfg(tiny_fmnist, Path("tuned"), epochs=1, init_from=str(src / "last.pt"), freeze=("features",),
                      lr_mult={"fc8": 10.0}), log=lambda s: None)
    assert result["run_dir"] == str(out.resolve())
    a, b = _weights(src / "last.pt"), _weights(out / "last.pt")
    for k in a:
        if k.startswith(("conv1", "conv2", "conv3", "conv4", "conv5")):
            assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["fc8.weight"], b["fc8.weight"])


def test_a_layer_at_lr_mult_0_trains_the_others_and_records_the_schedules_lr(tiny_fmnist, tmp_path):
    """--lr-mult conv1=0 (a multiplier >= 0 is allowed) holds conv1 and trains the rest; metrics.jsonl
    records the schedule's rate, computed here by hand (constant: lr itself). It stopped with
    'internal error: ZeroDivisionError' after the first epoch, nothing saved."""
    src = tmp_path / "src"
    fit(_cfg(tiny_fmnist, src, epochs=1), log=lambda s: None)
    out = tmp_path / "tuned"
    fit(_cfg(tiny_fmnist, out, epochs=1, init_from=str(src / "last.pt"), lr_mult={"conv1": 0.0}, schedule="constant",
             lr=0.003, optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0), log=lambda s: None)
    a, b = _weights(src / "last.pt"), _weights(out / "last.pt")
    assert torch.equal(a["conv1.weight"], b["conv1.weight"]) and not torch.equal(a["fc8.weight"], b["fc8.weight"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [0.003]


def test_config_names_the_network_of_init_from(tiny_fmnist, tmp_path):
    """--init-from trains the checkpoint's network: config.json and the checkpoint name it (they said
    --model's default, alexnet_paper, while the run trained imported alexnet_caffe; user sweep)."""
    torch.manual_seed(0)
    start = alexnet.create_model("alexnet_small", num_classes=10, in_chans=1)
    save_atomic({"model": start.state_dict(), "model_config": start.config.to_dict(), "classes": list("abcdefghij")},
                tmp_path / "small.pt")
    out = tmp_path / "ft"
    cfg = resolve_config(None, dict(data=str(tiny_fmnist), out=str(out), epochs=1, batch_size=8, amp="none", workers=0,
                                    model="alexnet_paper", init_from=str(tmp_path / "small.pt")))
    fit(cfg, log=lambda s: None)
    assert json.loads((out / "config.json").read_text())["train"]["model"] == "alexnet_small"
    assert load_checkpoint(out / "last.pt")["train_config"]["model"] == "alexnet_small"


def test_init_from_torchvision_with_new_classes(tmp_path):
    import torchvision
    from conftest import make_image_folder

    weights = tmp_path / "tv.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    out = tmp_path / "ft"
    fit(resolve_config("owt", dict(data=str(data), out=str(out), epochs=1, batch_size=4, amp="none", workers=0,
                                   init_from=str(weights), freeze=["features", "fc6"])), log=lambda s: None)
    # On a GPU machine the run trains on cuda and saves cuda tensors: read it to the CPU, as
    # alexnet's loaders do (a checkpoint must load on a machine without a GPU).
    tuned = load_checkpoint(out / "last.pt", map_location="cpu")["model"]
    tv = torch.load(weights, weights_only=True)
    assert all(t.device.type == "cpu" for t in tuned.values())
    assert tuned["fc8.weight"].shape == (3, 4096)
    assert torch.equal(tuned["conv1.weight"], tv["features.0.weight"])
    assert torch.equal(tuned["fc6.weight"], tv["classifier.1.weight"])


def test_init_from_a_torchvision_file_of_as_many_classes_keeps_its_fc8(tmp_path):
    """A bare torchvision state dict of 3 outputs (torchvision.models.alexnet(num_classes=3), or a
    model exported to .pth) names no classes: on 3 classes its fc8 is kept, row for row (README:
    'a file without class names keeps fc8 only for as many classes'). Its stand-in names "0", "1",
    "2" were matched against the data's and fc8 was re-initialised ('none of them is among the file's')."""
    import torchvision
    from conftest import make_image_folder

    torch.manual_seed(0)
    weights = tmp_path / "tv3.pth"
    torch.save(torchvision.models.alexnet(num_classes=3).state_dict(), weights)
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    out = tmp_path / "ft"
    lines: list[str] = []
    fit(resolve_config("owt", dict(data=str(data), out=str(out), epochs=1, batch_size=4, amp="none", workers=0,
                                   init_from=str(weights), freeze=["classifier"])), log=lines.append)
    tuned = load_checkpoint(out / "last.pt", map_location="cpu")["model"]
    tv = torch.load(weights, weights_only=True)
    assert torch.equal(tuned["fc8.weight"], tv["classifier.6.weight"]) and torch.equal(tuned["fc8.bias"], tv["classifier.6.bias"])
    assert not any("re-initialised" in line for line in lines), lines


def test_init_from_torchvisions_file_alone_and_options_that_would_do_nothing(tmp_path, capsys):
    """torchvision's own file as --init-from without --model: 'weights do not fit alexnet_paper' (the
    default --model), after 'fc8 re-initialised'; now its network, as alexnet.load reads it. A typed
    --model that the file's network overrides, a --lr-mult on a frozen layer and a frozen fresh fc8
    were taken without a word."""
    import torchvision
    from conftest import make_image_folder

    torch.manual_seed(0)
    weights = tmp_path / "tv.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    common = ["--data", str(data), "--init-from", str(weights), "--epochs", "1", "--batch-size", "3", "--amp", "none",
              "--workers", "0", "--progress", "off"]
    assert main(["train", *common, "--out", str(tmp_path / "ft")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["model"] == "alexnet_owt"
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    # the file's weights, moved by two warm-up steps (a fresh init would be nowhere near)
    torch.testing.assert_close(tuned["conv5.weight"], torch.load(weights, weights_only=True)["features.10.weight"], atol=1e-4, rtol=0)
    capsys.readouterr()
    for extra, said in [
        (["--model", "alexnet_paper"], f"--model alexnet_paper: --init-from {weights} holds alexnet_owt, whose architecture"),
        (["--freeze", "features", "--lr-mult", "conv1=10"], "--lr-mult conv1=10: conv1 is frozen (--freeze features), so its"),
    ]:
        assert main(["train", *common, *extra, "--out", str(tmp_path / "no")]) == 2
        assert capsys.readouterr().err.strip().startswith(f"alexnet: error: {said}")
        assert not (tmp_path / "no").exists()
    with pytest.warns(UserWarning, match="--freeze classifier keeps the re-initialised fc8 at its random weights"):
        assert main(["train", *common, "--freeze", "classifier", "--out", str(tmp_path / "frozen")]) == 0


def test_lr_mult_takes_the_layer_groups_of_freeze_and_refuses_an_unknown_layer_before_any_file(tmp_path, capsys):
    """--lr-mult named single layers only ('--lr-mult features=0.1' was refused where '--freeze
    features' is taken), and an unknown layer was refused only after the --init-from file had been
    read and two lines printed. A layer named by itself outranks its group, in either order."""
    from alexnet.optim import param_groups

    model = alexnet.create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67)
    want = {"conv1": 0.0, "conv2": 0.1, "conv3": 0.1, "conv4": 0.1, "conv5": 0.1, "fc6": 1.0, "fc7": 1.0, "fc8": 10.0}
    for given in ({"features": 0.1, "conv1": 0.0, "fc8": 10.0}, {"conv1": 0.0, "fc8": 10.0, "features": 0.1}):
        got = {name.split(".")[0]: g["lr_mult"] for g in param_groups(model, given) for p in g["params"]
               for name, q in model.named_parameters() if q is p}
        assert got == want, given

    own = alexnet.create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67)
    save_atomic({"model": own.state_dict(), "model_config": own.config.to_dict(), "classes": ["a", "b", "c"]}, tmp_path / "own.pt")
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    common = ["--data", str(data), "--init-from", str(tmp_path / "own.pt"), "--epochs", "1", "--batch-size", "3",
              "--amp", "none", "--workers", "0", "--progress", "off", "--lr", "1e-9"]
    capsys.readouterr()
    for extra, said in [
        (["--lr-mult", "fc9=10"], "--lr-mult: unknown layer 'fc9'; use conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8, "
                                  "features or classifier"),
        (["--freeze", "features", "--lr-mult", "features=0.1"], "--lr-mult features=0.1: features is frozen (--freeze features)"),
        (["--freeze", "fc6,fc7,fc8", "--lr-mult", "classifier=2"], "--lr-mult classifier=2: classifier is frozen (--freeze fc6,fc7,fc8)"),
    ]:
        assert main(["train", *common, *extra, "--out", str(tmp_path / "no")]) == 2
        out, err = capsys.readouterr()
        assert (out, err.strip().splitlines()[0][len("alexnet: error: "):].startswith(said)) == ("", True), (out, err)
    # A group some of whose layers are frozen sets the others'.
    assert main(["train", *common, "--freeze", "conv1", "--lr-mult", "features=0.5", "--out", str(tmp_path / "ft")]) == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["lr_mult"] == {"features": 0.5}


def test_a_wholly_new_fc8_is_advised_a_higher_learning_rate(tmp_path):
    """README's fine-tuning table measured +0.017 top-1 from --lr-mult fc8=10 where fc8 starts fresh,
    and train said only 'fc8 re-initialised'. The advice is given where every row is new and no
    multiplier reaches fc8 (not where some rows are kept: the multiplier would hurry those too)."""
    from alexnet.finetune import build_model

    torch.manual_seed(0)
    own = alexnet.create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67)
    save_atomic({"model": own.state_dict(), "model_config": own.config.to_dict(), "classes": ["a", "b", "c"]}, tmp_path / "own.pt")
    init = load_checkpoint(tmp_path / "own.pt")
    hint = "  --lr-mult fc8=10 lets the new fc8 learn ten times as fast as the layers it sits on"
    for classes, options, advised in [
        (["x", "y"], {}, True),
        (["x", "y"], {"lr_mult": {"fc8": 10.0}}, False),
        (["x", "y"], {"lr_mult": {"classifier": 5.0}}, False),
        (["x", "y"], {"lr_mult": {"features": 0.1}}, True),
        (["a", "y"], {}, False),  # row 'a' is kept
        (["a", "b", "c"], {}, False),
    ]:
        cfg = resolve_config("paper", dict(init_from=str(tmp_path / "own.pt"), **options))
        logs: list[str] = []
        build_model(cfg, own.config, classes, init, logs.append)
        assert any(line.startswith(hint) for line in logs) == advised, (classes, options, logs)


def test_a_fine_tuning_runs_new_fc8_is_not_the_files_own_first_fc8(tmp_path, capsys):
    """The new fc8 rows were drawn from --seed as a run from scratch draws them: fine-tuned at the seed
    the file was trained with, each row started as the file's own first row of its number had, and
    kept its trained row's direction (cosine 0.5 after 30 epochs of Imagenette), so a dog-breed model
    fine-tuned from the Imagenette run at its seed called 64 % of Imagenette's tench photos its class 0.
    The rows are drawn from the seed and the file's fc8: none of its own, the same for the same command."""
    source_data = make_image_folder(tmp_path / "src", classes=3, per_class=2)
    data = make_image_folder(tmp_path / "dogs", classes=3, per_class=2)
    for c in range(3):
        (data / f"class{c}").rename(data / f"breed{c}")
    common = ["--epochs", "1", "--batch-size", "3", "--amp", "none", "--workers", "0", "--progress", "off", "--lr", "1e-9",
              "--model-option", "input_size=64", *TINY]
    assert main(["train", "--data", str(source_data), "--out", str(tmp_path / "source"), "--seed", "0", *common]) == 0
    for name, seed in (("ft0", 0), ("ft0-again", 0), ("ft1", 1)):
        assert main(["train", "--data", str(data), "--init-from", str(tmp_path / "source" / "last.pt"), "--seed", str(seed),
                     "--out", str(tmp_path / name), *common]) == 0
    capsys.readouterr()
    weights = {name: load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("source", "ft0", "ft0-again", "ft1")}
    fc8 = {name: torch.nn.functional.normalize(w["fc8.weight"].double(), dim=1) for name, w in weights.items()}
    # At lr 1e-9 the source's fc8 is its first draw (seed 0), which the fine-tuning at seed 0 drew again.
    assert (fc8["ft0"] * fc8["source"]).sum(1).abs().max() < 0.8, (fc8["ft0"] * fc8["source"]).sum(1)
    assert torch.equal(weights["ft0"]["fc8.weight"], weights["ft0-again"]["fc8.weight"])
    assert (fc8["ft1"] * fc8["ft0"]).sum(1).abs().max() < 0.8
    torch.testing.assert_close(weights["ft0"]["conv1.weight"], weights["source"]["conv1.weight"], rtol=0, atol=1e-6)


def test_fine_tuning_on_the_files_folder_at_another_seed_warns_of_validating_on_its_training_images(tmp_path, capsys):
    """A folder without val/ holds out a tenth chosen by --seed. Fine-tuned (or continued with new
    options) from a file trained on that folder at another seed, the run validated, without a word,
    on images the file had trained on. It says how many; at the file's seed it holds out the same."""
    from alexnet.data.loaders import held_out

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=10)
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "3", "--amp", "none", "--workers", "0", "--progress", "off",
              "--lr", "1e-9", "--model-option", "input_size=64", *TINY]
    assert main(["train", *common, "--out", str(tmp_path / "source"), "--seed", "0"]) == 0
    source = tmp_path / "source" / "last.pt"
    theirs = set(held_out(30, 0)[1])
    for seed in (0, 1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["train", *common, "--init-from", str(source), "--seed", str(seed), "--out", str(tmp_path / f"s{seed}"),
                         "--force"]) == 0
        said = [str(w.message) for w in caught if "holds out for validation" in str(w.message)]
        ours = set(held_out(30, seed)[1])
        learnt = len(ours - theirs)
        want = [] if seed == 0 else [f"{learnt} of the 3 images this run holds out for validation trained {source}, which held out "
                                     f"another tenth of {data} (--seed 0): the validation figures count images the weights learnt; "
                                     "--seed 0 holds out the file's tenth"]
        assert said == want and (seed == 0 or learnt > 0), (seed, said)
    # Another folder (here: one image more) is not the file's: nothing to say.
    from PIL import Image

    Image.new("RGB", (80, 64)).save(data / "class0" / "extra.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", *common, "--init-from", str(source), "--seed", "1", "--out", str(tmp_path / "other")]) == 0
    assert not [w for w in caught if "holds out for validation" in str(w.message)]
    capsys.readouterr()


def test_init_from_keeps_fc8_rows_of_the_classes_it_knows_by_name(tmp_path, capsys):
    """fc8 kept whole whenever the class count matched, whatever the classes were, and thrown away
    otherwise: ImageNet weights fine-tuned on dog breeds that ImageNet has started from random
    rows. Now a class named in the file keeps its row; the others are the fresh model's."""
    import torchvision
    from conftest import make_image_folder

    from alexnet.finetune import build_model, finetune_seed
    from alexnet.interop import imagenet_classes

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    cfg = resolve_config("owt", dict(init_from=str(tmp_path / "tv.pth"), freeze=["features"]))
    init = load_checkpoint(tmp_path / "tv.pth", torchvision=True)
    arch = alexnet.model.model_config("alexnet_owt")
    breeds, logs = ["beagle", "my own dog", "Samoyed"], []
    torch.manual_seed(1)
    model = build_model(cfg, arch, breeds, init, logs.append)
    torch.manual_seed(finetune_seed(cfg.seed, {"fc8.weight": tv["classifier.6.weight"]}))  # the new rows' draw
    fresh = build_model(dataclasses_replace(cfg, init_from=None), arch, breeds, None)
    for row, name in ((0, "beagle"), (2, "Samoyed")):  # ImageNet's own rows (162 and 258)
        j = imagenet_classes().index(name)
        assert torch.equal(model.fc8.weight[row], tv["classifier.6.weight"][j]) and model.fc8.bias[row] == tv["classifier.6.bias"][j]
    assert torch.equal(model.fc8.weight[1], fresh.fc8.weight[1]) and torch.equal(model.fc7.weight, tv["classifier.4.weight"])
    assert logs[-1] == f"fc8: 2 of 3 classes keep their rows of {tmp_path / 'tv.pth'} (matched by name), 1 re-initialised"

    # As many classes as the file, none of them its: fc8 was kept (its rows meant other classes).
    own = alexnet.create_model("alexnet_paper", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67)
    save_atomic({"model": own.state_dict(), "model_config": own.config.to_dict(), "classes": ["x", "class2", "y"]},
                tmp_path / "own.pt")
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--init-from", str(tmp_path / "own.pt"), "--epochs", "1", "--batch-size", "3",
                 "--amp", "none", "--workers", "0", "--progress", "off", "--lr", "1e-9", "--out", str(tmp_path / "ft")]) == 0
    assert "fc8: 1 of 3 classes keep their rows of" in capsys.readouterr().out
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    torch.testing.assert_close(tuned["fc8.weight"][2], own.fc8.weight[1].detach(), rtol=0, atol=1e-6)  # class2 <- class2
    assert (tuned["fc8.weight"][0] - own.fc8.weight[0]).abs().max() > 1e-3  # class0 is not the file's "x"


def test_init_from_trains_the_checkpoints_network_and_resumes_without_it(tmp_path):
    """--init-from a checkpoint whose network differs from --model's (here 67 px inputs, as Caffe's
    weights take 227 px): the run trains that network at its input size (it crashed: the data
    came at --model's 224 px); a resume needs only the run's own checkpoint; a network for other
    input channels than the data's is one line."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=3)
    torch.manual_seed(0)
    start = alexnet.create_model("alexnet_paper", num_classes=5, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67)
    weights = tmp_path / "start.pt"
    caffe_like = {"dataset": "image_folder", "resize": 76, "size": 76, "train_crop": 67, "test_crop": 67, "input_size": 67,
                  "mean": [123.0, 117.0, 104.0], "std": [1.0, 1.0, 1.0]}  # raw pixels minus the mean, as Caffe's
    save_atomic({"model": start.state_dict(), "model_config": start.config.to_dict(), "classes": list("abcde"),
                 "preprocess": caffe_like}, weights)
    out, logs = tmp_path / "ft", []
    fit(resolve_config(None, dict(data=str(data), out=str(out), epochs=1, batch_size=4, amp="none", workers=0,
                                  init_from=str(weights), freeze=["conv1"])), log=logs.append)
    tuned = load_checkpoint(out / "last.pt")
    assert tuned["model_config"]["input_size"] == 67 and list(tuned["model_config"]["widths"]) == [8, 8, 8, 8, 8]
    assert tuned["model"]["fc8.weight"].shape == (3, 16)
    assert torch.equal(tuned["model"]["conv1.weight"], start.conv1.weight.detach())  # its weights, frozen
    assert any(line.startswith(f"training alexnet_paper with input_size=67, widths=(8, 8, 8, 8, 8), fc_width=16 of {weights} "
                               "on ") for line in logs), logs
    # --model naming the network's family is no contradiction (it was: 'holds a custom AlexNet')
    assert main(["train", "--data", str(data), "--init-from", str(weights), "--model", "alexnet_paper", "--epochs", "1",
                 "--batch-size", "4", "--amp", "none", "--workers", "0", "--out", str(tmp_path / "named")]) == 0
    # The photos recipe divides by the pixels' std (~60): said, with the preset that matches.
    assert any(line.startswith(f"note: the weights of {weights} were trained on pixels divided by 1,")
               and line.endswith("--data-preset paper scales them alike") for line in logs), logs
    paper_logs = []
    fit(resolve_config(None, dict(data=str(data), out=str(tmp_path / "paper"), epochs=1, batch_size=4, amp="none",
                                  workers=0, init_from=str(weights), data_preset="paper")), log=paper_logs.append)
    assert not any("were trained on pixels divided by" in line for line in paper_logs), paper_logs
    weights.unlink()
    fit(alexnet.resume.resume_config(str(out), {"epochs": 2}), log=lambda s: None)
    assert load_checkpoint(out / "last.pt")["position"]["epoch"] == 2

    grey = alexnet.create_model("alexnet_small", num_classes=3, widths=(8, 8, 8, 8, 8), fc_width=16)
    save_atomic({"model": grey.state_dict(), "model_config": grey.config.to_dict(), "classes": list("abc")}, weights)
    with pytest.raises(alexnet.CheckpointError, match="its network takes 1-channel images but .* has 3-channel ones"):
        fit(resolve_config(None, dict(data=str(data), out=str(tmp_path / "grey"), epochs=1, init_from=str(weights))),
            log=lambda s: None)


def test_config_file_and_presets(tmp_path):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('preset = "paper"\nepochs = 7\nlr = 0.02\n[model_options]\nlrn = false\n')
    cfg = resolve_config(None, {"lr": 0.05, "data": str(tmp_path)}, cfg_file)
    assert (cfg.preset, cfg.epochs, cfg.lr, cfg.optimizer, cfg.schedule) == ("paper", 7, 0.05, "paper", "plateau")
    # The preset's one departure from the paper (biases 0.1) stays under the file's own option.
    assert cfg.model_options == {"init_bias": 0.1, "lrn": False} and cfg.batch_size == 128 and cfg.weight_decay == 5e-4
    photos = resolve_config(None, {"data": str(tmp_path)})  # the default for a folder of photos
    got = (photos.preset, photos.model, photos.model_options, photos.data_preset)
    assert got == ("photos", "alexnet_paper", {"init": "kaiming"}, "photos")
    owt = resolve_config("owt", {})
    assert (owt.model, owt.batch_size, owt.weight_decay, owt.schedule) == ("alexnet_owt", 256, 1e-4, "step")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = \n")
    with pytest.raises(alexnet.ConfigError, match="bad.toml"):
        resolve_config(None, {}, bad)
    with pytest.raises(alexnet.ConfigError, match="unknown training option"):
        resolve_config(None, {"epoch": 3})


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's value by the host (each one a wait for the device on a GPU)."""

    READS = {"item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__"}

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            frames = [f for f in traceback.extract_stack()[:-1] if f"{os.sep}alexnet{os.sep}" in f.filename]
            self.where.append(f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?")
        return func(*args, **(kwargs or {}))


def test_a_training_step_waits_for_the_device_once(tiny_fmnist, tmp_path, monkeypatch):
    """One host read per step (the loss and the correct count together), and one per health probe:
    then a GPU runs a step's backward pass while the host already reads and queues the next batch.
    Evaluation reads once per batch, and once at its end (the classes it predicted, counted on the
    device: efcbc3a's per-batch copy to the host was a second wait per batch). The data path's reads (sampler order, per-image random keys,
    the CPU crop kernel's bounds) are of CPU tensors and do not wait for a GPU; they are left out."""
    import alexnet.train as train_mod

    reads = {"train_one_epoch": _HostReads(), "evaluate": _HostReads()}
    for name, mode in reads.items():
        monkeypatch.setattr(train_mod, name, _counted(getattr(train_mod, name), mode))
    result = fit(_cfg(tiny_fmnist, tmp_path / "run", epochs=1, eval_batch_size=8), log=lambda s: None)
    steps, probes, val_batches = 64 // 8, 1, 40 // 8  # the health probe looks every 20 steps, from step 0
    assert result["train_images"] == 64 and result["val_images"] == 40
    for name, expected in (("train_one_epoch", steps + probes), ("evaluate", val_batches + 1)):
        device_reads = [w for w in reads[name].where if f"{os.sep}alexnet{os.sep}data{os.sep}" not in w]
        assert len(device_reads) == expected, (name, collections.Counter(device_reads))


def _counted(fn, reads: _HostReads):
    def run(*args, **kwargs):
        with reads:
            return fn(*args, **kwargs)

    return run


def test_the_start_says_when_full_batches_leave_many_images_out(tmp_path):
    """--preset owt's batch of 256 on 1,000 photos trains 768 a epoch; the start line said '1000 train'."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=7)  # 13 train / 1 val after the hold-out
    for batch, said in ((5, "note: an epoch trains 10 of the 13 training images (2 full batches of 5, others left out each epoch)"),
                        (13, None)):
        lines: list[str] = []
        fit(_cfg(data, tmp_path / f"b{batch}", epochs=1, batch_size=batch), log=lines.append)
        notes = [line for line in lines if "full batches" in line]
        assert notes == ([said + "; a smaller --batch-size leaves out fewer"] if said else []), lines


def test_a_batch_larger_than_an_in_memory_data_set_trains_every_image(tiny_fmnist, tmp_path):
    """Fashion-MNIST files of 64 images at the preset's batch of 128: full batches only made 0 steps,
    and the run ended 'done' with its untrained weights (an image folder's batch was reduced, this
    one's was not); by hand, one step a epoch on all 64 images."""
    lines: list[str] = []
    result = fit(_cfg(tiny_fmnist, tmp_path / "run", epochs=1, batch_size=128), log=lines.append)
    assert "note: batch size reduced to the 64 training images" in lines, lines
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["position"]["step"] == 1 and ckpt["history"][0]["train_images"] == 64, result


def test_a_resume_with_more_epochs_says_where_the_decay_now_ends(tiny_fmnist, tmp_path):
    """A finished 2-epoch run resumed to 4: its linear decay had brought the rate to 0, and the
    4-epoch schedule has it at (4 - 2) / (4 - 0.5) of its peak at that step, a jump it now says;
    the reference is the schedule's formula, by hand."""
    lines: list[str] = []
    out = tmp_path / "run"
    cfg = _cfg(tiny_fmnist, out, epochs=2, warmup_epochs=0.5, schedule="onecycle")
    fit(cfg, log=lambda s: None)
    fit(resume_config(str(out), {"epochs": 4}), log=lines.append)
    now = cfg.lr * (4 - 2) / (4 - 0.5)
    said = f"note: --epochs 4: the onecycle schedule now decays to 0 at epoch 4, not 2; the rate goes on at {now:.3g} where the run"
    assert f"{said} had it at 0" in lines, lines
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["lr"] == pytest.approx(0, abs=cfg.lr / 10) and records[2]["lr"] > now / 2  # the jump, as said


def test_a_run_of_a_registered_model_resumes_where_it_is_not_registered(tiny_fmnist, tmp_path):
    """A run of a model registered in the training process (alexnet.register_model) resumes in a new
    one that does not register it (the command line cannot): the network is the one last.pt saved.
    resume_config refused it as 'bad training configuration: unknown model', though fit builds the
    saved network. The resume is compared bitwise with one where the model is still registered."""
    from alexnet import model as registry

    def tiny_registered() -> alexnet.AlexNetConfig:
        return alexnet.model_config("alexnet_small", **TINY_OPTIONS)

    alexnet.register_model(tiny_registered)
    try:
        fit(_cfg(tiny_fmnist, tmp_path / "a", epochs=1, model="tiny_registered", model_options={}), log=lambda s: None)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        fit(resume_config(str(tmp_path / "a"), {"epochs": 2}), log=lambda s: None)  # registered: as documented
    finally:
        del registry._REGISTRY["tiny_registered"], registry._DESCRIPTIONS["tiny_registered"]
    fit(resume_config(str(tmp_path / "b"), {"epochs": 2}), log=lambda s: None)  # no longer registered
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("a", "b"))
    assert a["position"] == b["position"] and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "3", "--progress", "off"]) == 0


def test_init_from_gives_no_row_to_a_name_that_the_data_gives_two_classes(tmp_path):
    """A classes.tsv from synset_words.txt names ImageNet's bird crane (n02012849, row 134) and machine
    crane (n03126707, row 517) both 'crane': both classes got row 517, identical outputs from the
    first step, and the log said every class kept its row. Which is which cannot be told by name."""
    import torchvision

    from alexnet.finetune import build_model
    from alexnet.interop import imagenet_classes

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    cfg = resolve_config("owt", dict(init_from=str(tmp_path / "tv.pth")))
    arch = alexnet.model.model_config("alexnet_owt")
    logs = []
    model = build_model(cfg, arch, ["tench", "crane", "crane"], load_checkpoint(tmp_path / "tv.pth", torchvision=True), logs.append)
    assert imagenet_classes()[517] == "crane" and torch.equal(model.fc8.weight[0], tv["classifier.6.weight"][0])
    assert not any(torch.equal(model.fc8.weight[i], tv["classifier.6.weight"][517]) for i in (1, 2))
    assert logs[-1] == (f"fc8: 1 of 3 classes keep their rows of {tmp_path / 'tv.pth'} (matched by name), 2 re-initialised "
                        "('crane' names more than one of the data's classes)")


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_skipped_batches_do_not_delay_the_learning_rate_schedule(tiny_fmnist, tmp_path, monkeypatch, schedule):
    """The schedules are set by the run's position in its data ('lr x gamma every step-size epochs',
    'decay to 0 at epoch N'). A batch skipped by --on-nonfinite skip took no step, and the rate was
    read off the steps taken: with every other batch skipped, the second epoch ran at the first
    epoch's rates (no x0.1 at epoch 2 of --step-size 1; onecycle ended at half its peak instead of
    near 0). Expected: the formulas by hand, in float64, at each batch's index in the run."""
    import math

    import alexnet.epoch as epoch_mod

    real, calls, lrs = epoch_mod.F.cross_entropy, {"n": 0}, []

    def every_other_nan(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] % 2 == 0 else loss

    real_set_lr = epoch_mod._set_lr

    def recording(optimizer, *a, **k):
        real_set_lr(optimizer, *a, **k)
        lrs.append(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0))

    monkeypatch.setattr(epoch_mod.F, "cross_entropy", every_other_nan)
    monkeypatch.setattr(epoch_mod, "_set_lr", recording)
    cfg = _cfg(tiny_fmnist, tmp_path / "run", epochs=2, on_nonfinite="skip", schedule=schedule, warmup_epochs=0.5,
               step_size=1, gamma=0.1, lr=0.08)
    result = fit(cfg, log=lambda s: None)
    assert result["skipped_batches"] == 4  # 4 of the second epoch's 8 batches of 8 images
    total, warm = 16, 4  # 64 images / 8 per batch, 2 epochs; warm-up 0.5 epochs
    expected = []
    for i in range(total):
        if i < warm:
            f = (i + 1) / warm
        elif schedule == "onecycle":
            f = (total - i) / (total - warm)
        elif schedule == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm)))
        else:
            f = 0.1 ** (i // 8)
        expected.append(0.08 * f)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_workers_beyond_the_cores_are_recorded_as_the_loader_ran_them(tmp_path, monkeypatch):
    """--workers 3 on an image folder with one core loaded with one worker (at most one per core) but
    config.json and the checkpoint recorded 3; what ran is recorded now, and a replay reads it."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    small = ["--data", str(data), "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
             "--model-option", "input_size=64", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--progress", "off"]
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--workers", "3", *small]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["workers"] == 1
    assert load_checkpoint(run / "last.pt")["train_config"]["workers"] == 1
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(again), "--threads", "1", "--progress", "off"]) == 0
    losses = [[json.loads(line)["train_loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (run, again)]
    assert losses[0] == losses[1]


def test_workers_typed_for_data_held_in_memory_are_said_unused_and_recorded_as_0(tiny_fmnist, tmp_path, capsys):
    """--workers 2 on Fashion-MNIST (batched in the training process) was recorded in config.json
    and the checkpoint and used by nothing, without a word."""
    small = ["--model", "alexnet_small", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
             "--epochs", "1", "--threads", "1", "--progress", "off"]
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(run), "--workers", "2", *small]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "--workers" in line]
    assert said == ["note: --workers 2: Fashion-MNIST is held in memory and batched in the training process, so no "
                    "worker processes load it; the run records --workers 0"]
    assert json.loads((run / "config.json").read_text())["train"]["workers"] == 0
    assert load_checkpoint(run / "last.pt")["train_config"]["workers"] == 0
    assert main(["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "quiet"), "--workers", "0", *small]) == 0
    assert "--workers" not in capsys.readouterr().err


def test_the_paper_and_default_presets_are_the_documented_recipes():
    """Golden values, not the code's: SPEC section 2 (the paper's update rule, batch 128, momentum
    0.9, weight decay 0.0005 of the weights, lr 0.01 divided by 10 on a plateau, three times) and
    section 3 (mean image subtracted, mirrors, fancy PCA with alpha ~ N(0, 0.1)); README's default
    job (5 epochs of Nesterov SGD, momentum 0.9, weight decay 5e-4, batch 128, peak lr 0.08), which
    takes its momentum and decay from the option defaults."""
    from alexnet.data.presets import get_preset

    cfg = resolve_config("paper", {})
    assert (cfg.model, cfg.optimizer, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.bias_decay) == (
        "alexnet_paper", "paper", 128, 0.01, 0.9, 5e-4, False)
    assert (cfg.schedule, cfg.plateau_max_reductions) == ("plateau", 3)
    data = get_preset(cfg.data_preset)
    assert (data["mean"], data["flip"], data["padding"], data["pca_alpha_std"]) == ("image", True, 0, 0.1)
    job = resolve_config("fashion_mnist", {})
    assert (job.epochs, job.optimizer, job.nesterov, job.momentum, job.weight_decay, job.batch_size, job.lr) == (
        5, "sgd", True, 0.9, 5e-4, 128, 0.08)


def test_workers_under_a_long_tmpdir_do_not_hang_the_run(tmp_path):
    """A data-loading worker hands its batches over a Unix socket that multiprocessing makes under
    TMPDIR; with a TMPDIR over 75 characters (a batch system's job folder; this suite's own folders
    under pytest-xdist) the socket could not be made ('OSError: AF_UNIX path too long' in the worker)
    and the run waited for that batch for ever. It now trains, and leaves no folder of its sockets."""
    data = make_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    long_tmp = tmp_path / ("t" * max(1, 90 - len(str(tmp_path))))
    long_tmp.mkdir()
    assert len(str(long_tmp)) >= 90
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
            "--workers", "1", "--threads", "1", "--amp", "none", "--model-option", "input_size=64",
            "--model-option", "widths=[8,8,8,8,8]", "--model-option", "fc_width=16"]
    try:
        r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=120,
                           env=cli_env(TMPDIR=str(long_tmp)), start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the run hung: {(e.stderr or b'')[-600:]!r}") from None
    assert r.returncode == 0 and "AF_UNIX" not in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "run" / "last.pt").exists()


# A network whose conv1 makes 96 x 32 x 32 floats an image at input 64 (384 KiB: 768 MiB for 2,048
# images at once) and little after it: a batch that large cannot be had in 500 MiB, 64 images can.
_BIG_CONV1 = ["--model-option", "widths=[96,16,16,16,16]", "--model-option", "fc_width=32", "--model-option", "input_size=64",
              "--threads", "1", "--workers", "0", "--device", "cpu", "--amp", "none", "--progress", "off", "--lr", "0.01",
              "--health", "off", "--epochs", "1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_a_training_step_out_of_memory_is_one_line_naming_the_batch_size(tmp_path):
    """Real: a batch the memory cannot hold said "internal error: RuntimeError: [enforce fail at
    alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate
    805306368 bytes. Error code 12 ..."; now what ran out, in which step, the option that lowers it,
    and what is left (a new run: nothing), exit 1 (this machine's limit, not bad input)."""
    data, out = make_fmnist(tmp_path / "fm", 2048, 64), tmp_path / "run"
    r = run_cli_with_memory(500, "train", "--data", str(data), "--out", str(out), "--batch-size", "2048", *_BIG_CONV1)
    assert r.returncode == 1, r.stderr
    assert re.fullmatch(r"alexnet: error: out of CPU memory \(it tried to allocate \d+ MiB\) in a training step of epoch 1: "
                        r"lower --batch-size \(2048 now\) in a new run; no checkpoint had been written yet: nothing to resume\n",
                        r.stderr.split("-> " + str(out) + "\n")[-1]), r.stderr
    assert not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_a_validation_out_of_memory_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    """Real: the validation after epoch 1 (its batch of 2,048 does not fit) stops in one line with
    --eval-batch-size and the --resume line, which a resume accepts; last.pt stays as the last step
    saved it (nothing is written after the failure) and the resume it gives finishes the run."""
    data, out = make_fmnist(tmp_path / "fm", 256, 2048), tmp_path / "run"
    r = run_cli_with_memory(500, "train", "--data", str(data), "--out", str(out), "--batch-size", "64", "--save-every", "1",
                            "--eval-batch-size", "2048", *_BIG_CONV1)
    assert r.returncode == 1, r.stderr
    line = r.stderr.splitlines()[-1]
    assert re.fullmatch(r"alexnet: error: out of CPU memory \(it tried to allocate \d+ MiB\) in the validation of epoch 1: "
                        r"lower --eval-batch-size \(2048 now\); the run folder keeps the last good checkpoint; continue with: "
                        rf"alexnet train --resume {re.escape(str(out))} --eval-batch-size 1024", line), r.stderr
    assert "Traceback" not in r.stderr and not (out / "best.pt").exists()
    saved = (out / "last.pt").read_bytes()
    assert load_checkpoint(out / "last.pt")["position"]["step"] == 4
    resumed = run_cli(*line.split("continue with: alexnet ")[1].split(), "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "best.pt").exists() and (out / "last.pt").read_bytes() != saved

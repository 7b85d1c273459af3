"""The health monitor: a diverged loss or a layer of dead ReLUs stops a run with one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import IMAGEWOOF, run_cli

from alexnet import create_model
from alexnet.health import HealthMonitor, LayerProbe, UnhealthyRun, layer_life


def test_layer_life_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 4, 3)).astype(np.float32)
    x[:, 1] = -np.abs(x[:, 1])  # channel 1 never positive
    x[:, 3] = -1.0
    x[2, 3, 1, 2] = 0.5  # channel 3 positive at one place of one image: alive
    life = layer_life("conv", torch.from_numpy(x))
    alive = [(x[:, c] > 0).any() for c in range(5)]
    assert (life.units, life.live) == (5, sum(alive)) == (5, 4)
    assert life.mean == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-5)
    assert life.dead_fraction == pytest.approx(0.2)
    fc = layer_life("fc", torch.tensor([[-1.0, 2.0, 0.0], [-3.0, -1.0, 0.0]]))
    assert (fc.units, fc.live) == (3, 1)  # zero is not positive


def test_divergence_stops_when_the_window_mean_crosses():
    mon = HealthMonitor(None, num_classes=10, window=4, margin=4.0)
    limit = math.log(10) + 4.0
    losses = [2.3, 2.3, 9.0, 9.0, 4.95]  # window means: -, -, -, 5.65, 6.3125 (> 6.3026, by 0.01)
    for i, loss in enumerate(losses[:4]):
        mon.check(loss, [], f"step {i + 1}")
    assert sum(losses[1:5]) / 4 > limit > sum(losses[:4]) / 4
    with pytest.raises(UnhealthyRun, match=r"diverged at step 5: 6\.3 .*ln\(10\) = 2\.30 \(a uniform guess\); lower --lr"):
        mon.check(losses[4], [], "step 5")
    # A window mean 0.0026 under the limit (6.3) is no divergence.
    below = HealthMonitor(None, num_classes=10, window=4, margin=4.0)
    for i, loss in enumerate([2.3, 9.0, 9.0, 4.9]):
        below.check(loss, [], f"step {i + 1}")


def test_a_loss_far_off_before_any_update_blames_the_weights_not_the_rate():
    """Imported weights on other inputs: 121.8 at step 1 at any learning rate, and the advice was
    'lower --lr'. A loss already far off at the first step (before any update) names the weights;
    the first loss travels in the monitor's state, so a resumed run says the same."""
    mon = HealthMonitor(None, num_classes=5, window=2)
    mon.check(121.8, [], "step 1")
    again = HealthMonitor(None, num_classes=5, window=2)
    again.load_state_dict(mon.state_dict())
    for m in (mon, again):
        with pytest.raises(UnhealthyRun) as e:
            m.check(120.0, [], "step 2")
        assert "it was 121.8 at the first step, before any update, so the learning rate is not the cause" in str(e.value)
        assert "lower --lr" not in str(e.value)
    older = HealthMonitor(None, num_classes=5, window=2)  # resumed from a checkpoint that holds no monitor state
    older.load_state_dict(None)
    older.check(50.0, [], "epoch 3, step 1")
    with pytest.raises(UnhealthyRun, match="lower --lr"):  # its first step here is not the run's first
        older.check(60.0, [], "epoch 3, step 2")


def test_a_run_shorter_than_the_window_is_judged_at_its_epoch_end(tiny_fmnist, tmp_path, monkeypatch):
    """A diverged run of fewer steps than the window was never checked and saved its dead network;
    the epoch's end now judges the steps there were, before the checkpoint (a healthy one passes)."""
    mon = HealthMonitor(None, num_classes=10, window=10)
    for step in range(3):
        mon.check(20.0, [], f"step {step + 1}")  # the window is not full: no verdict yet
    with pytest.raises(UnhealthyRun, match=r"diverged at the end of epoch 1: 20\.0 over the last 3 steps"):
        mon.end_epoch("the end of epoch 1")
    calm = HealthMonitor(None, num_classes=10, window=10)
    calm.check(2.4, [], "step 1")
    calm.end_epoch("the end of epoch 1")
    one = HealthMonitor(None, num_classes=10, window=10)  # one step: "over the last step" (it said "1 steps")
    one.check(20.0, [], "step 1")
    with pytest.raises(UnhealthyRun, match=r"20\.0 over the last step, far above"):
        one.end_epoch("the end of epoch 1")

    import alexnet.epoch as epoch_mod
    import alexnet.train as train_mod
    from alexnet.config import resolve_config

    real = epoch_mod.F.cross_entropy
    monkeypatch.setattr(epoch_mod.F, "cross_entropy", lambda *a, **k: real(*a, **k) * 10)  # ~23 nats: far above ln(10)
    cfg = resolve_config(None, dict(data=str(tiny_fmnist), out=str(tmp_path / "run"), epochs=1, batch_size=16, amp="none",
                                    workers=0, device="cpu", model_options={"widths": [8, 16, 16, 16, 16], "fc_width": 32}))
    with pytest.raises(UnhealthyRun, match=r"diverged at the end of epoch 1 \(step 4\)"):
        train_mod.fit(cfg, log=lambda s: None)
    assert not (tmp_path / "run").exists()  # nothing of the dead network saved


def test_warn_reports_once_and_off_says_nothing():
    said = []
    warn = HealthMonitor(None, num_classes=10, action="warn", window=2, warn=said.append)
    off = HealthMonitor(None, num_classes=10, action="off", window=2, warn=said.append)
    for step in range(5):
        warn.check(50.0, [], f"step {step}")
        off.check(50.0, [], f"step {step}")
    assert len(said) == 1 and said[0].startswith("warning: the training loss diverged at step 1")


def test_a_dead_layer_is_found_and_named():
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=10)
    x = torch.randn(8, 1, 28, 28)
    mon = HealthMonitor(model, num_classes=10, every=2)
    for step in range(3):  # healthy: nothing dead, the probe armed on steps 0 and 2 only
        mon.before_step()
        model(x)
        assert mon.probe.armed == (step % 2 == 0)
        flags = mon.dead_flags()
        assert flags == [0.0] * 7
        mon.check(2.3, flags, f"step {step}")
    with torch.no_grad():
        model.fc6.bias.fill_(-1e4)  # no input can make an fc6 unit positive
    mon.before_step()  # step 3: not a checking step
    model(x)
    assert mon.dead_flags() == [0.0] * 7
    mon.check(2.3, [0.0] * 7, "step 3")
    mon.before_step()
    model(x)
    flags = mon.dead_flags()
    assert flags == [0.0] * 5 + [1.0, 1.0]  # fc7 sees only zeros and its biases are 0: dead too
    with pytest.raises(UnhealthyRun, match=r"every ReLU of fc6 is dead at step 4 \(all 4096 units"):
        mon.check(2.3, flags, "step 4")
    mon.close()
    assert not LayerProbe(torch.nn.Linear(2, 2))  # a model without the named layers: nothing watched


@pytest.mark.skipif(not IMAGEWOOF.is_dir(), reason=f"needs the real photos in {IMAGEWOOF} (../shared)")
def test_the_papers_init_on_photos_stops_with_one_line(tmp_path):
    """The paper's biases of 1 on 10 classes diverge in the first steps (docs/training.md): the run
    stops there, says so in one line, and leaves no checkpoint of the dead network."""
    run = tmp_path / "run"
    r = run_cli(
        "train", "--data", str(IMAGEWOOF), "--preset", "paper", "--model-option", "init_bias=1", "--model-option",
        "input_size=112", "--batch-size", "32", "--epochs", "1", "--workers", "0", "--out", str(run),
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("alexnet: error: the training loss diverged at epoch 1, step "), last
    assert "Traceback" not in r.stderr
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_trace_steps_script_traces_the_recipe_it_is_given(tmp_path):
    """scripts/trace_steps.py (docs/training.md's table) runs the package's own recipe step by step;
    it had fallen behind train.build_model's signature and crashed. Its loss rows must be the run's:
    the first step's loss is that of an untrained net, near ln(classes)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, cli_env, make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=4)
    out = tmp_path / "trace.jsonl"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "trace_steps.py"), "--data", str(data), "--preset", "photos", "--steps", "2",
         "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--out", str(out)],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and r.stdout.count("step ") == 2
    assert abs(rows[0]["loss"] - math.log(3)) < 1.0 and set(rows[0]["dead"]) >= {"conv1", "fc7"}


@pytest.mark.parametrize(("preset", "epochs", "warmup"), [("paper", 1, 0.0), ("paper", 2, 0.0), ("paper", 5, 0.0),
                                                          ("photos", 4, 1.0), ("cifar", 1, 0.0)])
def test_the_advice_of_a_stopped_run_can_be_followed(preset, epochs, warmup):
    """A diverged or dead run names remedies this run can take: a warm-up the configuration accepts
    (shorter than the run), He init only where the run does not have it already."""
    import dataclasses

    from alexnet.config import resolve_config, validate
    from alexnet.model import model_config
    from alexnet.train import health_remedies

    cfg = resolve_config(preset, {"epochs": epochs, "warmup_epochs": warmup})
    model = create_model(cfg.model, **cfg.model_options)
    remedies = health_remedies(cfg, model)
    assert remedies[0].startswith("lower --lr")
    for advice in remedies:
        if "--warmup-epochs" in advice:
            assert not cfg.warmup_epochs
            validate(dataclasses.replace(cfg, warmup_epochs=float(advice.split()[-1])))  # accepted
    he = any("init=kaiming" in advice for advice in remedies)
    assert he == (model_config(cfg.model, **cfg.model_options).init != "kaiming")
    tuned = dataclasses.replace(cfg, init_from="runs/x/last.pt")  # fine-tuning: an init would be replaced by the weights
    assert not any("init=kaiming" in advice for advice in health_remedies(tuned, model))


@pytest.mark.parametrize(("preset", "epochs", "warmup", "longer"), [
    ("photos", 1, None, 4), ("photos", 3, None, 4), ("photos", 4, None, None), ("photos", 1, 0.25, None),
    ("fashion_mnist", 1, None, None), ("paper", 1, None, None)])
def test_a_short_run_that_cut_its_recipes_warm_up_is_told_to_train_longer(preset, epochs, warmup, longer):
    """A 1-epoch photos run warms up over half an epoch (3.5 steps on imagewoof-mini), not the recipe's
    two, and diverged there where 4 epochs did not: its remedies say how many epochs keep the warm-up whole."""
    from alexnet.config import resolve_config
    from alexnet.train import health_remedies

    cfg = resolve_config(preset, {"epochs": epochs, "warmup_epochs": warmup})
    advice = [a for a in health_remedies(cfg, create_model(cfg.model, **cfg.model_options)) if a.startswith("train longer")]
    if longer is None:
        assert advice == []
        return
    assert f"--epochs {longer} or more keeps it whole" in advice[0] and f"cut to {cfg.warmup_epochs:g}" in advice[0]
    assert resolve_config(preset, {"epochs": longer}).warmup_epochs == 2.0  # the photos recipe's, whole
    assert resolve_config(preset, {"epochs": longer - 1}).warmup_epochs < 2.0


@pytest.mark.parametrize("preset", ["paper", "fashion_mnist"])
def test_a_network_that_gives_every_image_one_class_is_said(tiny_fmnist, tmp_path, preset):
    """The paper's fixed 0.01 init below 224 px gave every validation image one class for 10 epochs
    (imagewoof-mini at 63 px: top-1 0.1000, top-5 0.5000) and the run said nothing: its loss sat at
    ln(10), far from the divergence limit, and no layer died whole. The epoch's validation now counts
    the classes it predicts (val_classes_predicted) and a run whose network gives every image the same
    answer says so once. Checked against alexnet.evaluate's confusion matrix of the saved network (a
    second implementation): the warning comes exactly when one column holds every image."""
    import alexnet
    from alexnet.config import resolve_config
    from alexnet.data.loaders import load_eval_data
    from alexnet.evaluate import evaluate
    from alexnet.train import fit

    logs: list[str] = []
    cfg = resolve_config(preset, dict(data=str(tiny_fmnist), out=str(tmp_path / "run"), epochs=2, batch_size=16, amp="none",
                                      workers=0, device="cpu", model_options={"widths": [8, 16, 16, 16, 16], "fc_width": 32}))
    fit(cfg, log=logs.append)
    model = alexnet.load(tmp_path / "run" / "last.pt")
    loader, *_ = load_eval_data(tiny_fmnist, model.preprocess, 16)
    confusion = evaluate(model, loader, "cpu", "none")["confusion"]
    predicted = int((confusion.sum(0) > 0).sum())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_classes_predicted"] == predicted
    assert records[-1]["val_classes_present"] == int((confusion.sum(1) > 0).sum()) == 10
    said = [line for line in logs if "the same class" in line]
    blind_epochs = [r["epoch"] for r in records if r["val_classes_predicted"] == 1]
    assert len(said) == (1 if blind_epochs else 0)
    if blind_epochs:
        assert said[0].startswith(f"warning: epoch {blind_epochs[0]}'s validation gave every one of its 40 images the same class")
    assert (preset == "paper") == (predicted == 1)  # the paper's init at 28 px is blind; the default recipe is not


def test_a_validation_of_one_true_class_is_not_said_blind():
    """A validation set whose images are all of one class (a tiny folder's held-out tenth, one image)
    gave 'every one of its 1 images the same class' though that answer may be right: the warning
    needs two true classes among the images. Validation counts them (classes_present), checked against
    the labels by hand."""
    import types

    from alexnet.data.presets import Preprocess
    from alexnet.model import create_model
    from alexnet.train import _say_blind
    from alexnet.train import evaluate as validate

    model = create_model("alexnet_small", num_classes=3, in_chans=1, widths=[4, 4, 4, 4, 4], fc_width=8, input_size=28)
    pre = Preprocess("fashion_mnist", (72.9,), (90.0,), 28, None, 28, 28, 28)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    for labels in ([2] * 6, [2, 2, 2, 0, 0, 2]):
        batches = [(images[:3], torch.tensor(labels[:3]), torch.arange(3)), (images[3:], torch.tensor(labels[3:]), torch.arange(3, 6))]
        val = validate(model, batches, pre, torch.device("cpu"), classes=3)
        assert val["classes_present"] == len(set(labels))
        said: list[str] = []
        run = types.SimpleNamespace(said_blind=False, cfg=types.SimpleNamespace(health="warn"), note=said.append,
                                    pos=types.SimpleNamespace(epoch=1))
        _say_blind(run, {**val, "classes_predicted": 1})
        assert len(said) == (len(set(labels)) > 1), (labels, said)

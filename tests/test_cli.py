"""The command line end to end, as a user runs it, and its answers to bad input."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY, cli_env, make_image_folder, run_cli

import alexnet


def test_train_evaluate_fashion_mnist_format(tiny_fmnist, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny_fmnist), "--epochs", "2", "--batch-size", "16", "--out", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["model"]["in_chans"] == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["epoch"] == 2
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "model_config", "classes", "optimizer", "position", "rng", "scaler", "plateau"} <= set(ckpt)
    assert ckpt["position"]["epoch"] == 2

    r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(tiny_fmnist), "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["images"] == 40
    # The checkpoint reloaded by another process scores what the run measured with those weights.
    assert stats["top1"] == json.loads(lines[-1])["val_top1"] and stats["top5"] == json.loads(lines[-1])["val_top5"]
    assert 0 <= stats["top1"] <= stats["top5"] <= 1

    # The same figure from the Python API: alexnet.load gives a ready model.
    model = alexnet.load(out / "last.pt")
    assert model.classes[0] == "T-shirt/top" and not model.training
    from alexnet.data.loaders import load_eval_data
    from alexnet.train import evaluate

    loader, *_ = load_eval_data(tiny_fmnist, model.preprocess, 16)
    again = evaluate(model, loader, model.preprocess, torch.device("cpu"), None)
    assert again["top1"] == pytest.approx(stats["top1"], abs=0.051)  # bf16 vs fp32 may flip a couple


def test_train_evaluate_image_folder(tiny_folder, tmp_path):
    """Train and evaluate on a folder of photos, which they leave as they found it: train kept its
    statistics cache in it (.alexnet-cache/), where torchvision's ImageFolder then stopped with 'Found
    no valid file for the classes .alexnet-cache'."""
    from torchvision.datasets import ImageFolder

    before = sorted(p.relative_to(tiny_folder) for p in tiny_folder.rglob("*"))
    out = tmp_path / "run"
    r = run_cli(
        "train", "--data", str(tiny_folder), "--model", "alexnet_paper", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--out", str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "held out" in r.stderr  # a note (stderr): no train/ and val/: a seeded split, said out loud
    r = run_cli("evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(tiny_folder))
    assert r.returncode == 0, r.stderr
    assert "top-1 accuracy" in r.stdout and "top-5 accuracy" in r.stdout
    assert "1 image (" in r.stdout  # the image training held out, not the 11 it trained on
    assert sorted(p.relative_to(tiny_folder) for p in tiny_folder.rglob("*")) == before
    assert len(ImageFolder(str(tiny_folder))) == 12


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "packed"])
def test_evaluate_on_the_training_folder_scores_what_training_held_out(tmp_path, packed):
    """A folder without val/: training validates on a seeded tenth; evaluate of its checkpoint on the
    same folder scored every image, the 90 % it trained on too. It must score the held-out images,
    as training's own validation of the final weights did; another folder is scored whole."""
    import shutil

    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=10)
    if packed:
        assert run_cli("prepare", "--data", str(data), "--out", str(tmp_path / "pk")).returncode == 0
        data = tmp_path / "pk"
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(data), "--epochs", "2", "--batch-size", "9", "--seed", "3", "--out", str(out),
                "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--amp", "none")
    assert r.returncode == 0, r.stderr
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_images"] == 3
    r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--json", "--amp", "none")  # its own data
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["images"] == 3 and "held out, seed 3" in got["data"]
    assert got["top1"] == pytest.approx(last["val_top1"]) and got["top5"] == pytest.approx(last["val_top5"])
    copy = shutil.copytree(data, tmp_path / "copy")  # its very images elsewhere (a pack too): still what training held out
    r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(copy), "--json", "--amp", "none")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 3 and json.loads(r.stdout)["top1"] == pytest.approx(last["val_top1"])
    other = make_image_folder(tmp_path / "other", classes=3, per_class=11)  # not the checkpoint's folder: every image
    r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(other), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 33
    if not packed:  # photos added to (or renamed in) the folder since: its held-out tenth cannot be recovered
        shutil.copy(data / "class0" / "img0.jpg", data / "class0" / "new.jpg")
        r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--json")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
            f"alexnet: error: {data} has changed since training (30 images then, 31 now): the images it held out for "
            "validation can no longer be told from those it trained on; give --data a folder it did not train on")
        (data / "class0" / "new.jpg").rename(data / "class0" / "img9_.jpg")
        (data / "class0" / "img9.jpg").unlink()
        r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--json")
        assert r.returncode == 2 and "has changed since training (files renamed)" in r.stderr
    else:  # 'prepare --force' again from its folder, one photo removed and another added: as many images, other ones
        src = tmp_path / "imgs"
        shutil.copy(src / "class2" / "img0.jpg", src / "class2" / "zz.jpg")
        (src / "class0" / "img0.jpg").unlink()  # every index shifts by one: most of the seed's tenth trained
        assert run_cli("prepare", "--data", str(src), "--out", str(data), "--force").returncode == 0
        r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--json")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
            f"alexnet: error: {data} (train, packed) has changed since training (files renamed): the images it held out "
            "for validation can no longer be told from those it trained on; give --data a folder it did not train on")


def test_evaluate_on_the_training_folder_moved_or_copied_scores_what_training_held_out(tmp_path):
    """The training folder moved: evaluate says 'the data it was trained on ... is not there: give
    --data', and given the new path it scored all 30 images, the 27 the model trained on among them,
    without a word. Its images, listed under the new path, are the ones training split: the held-out
    3 are scored, with the figures training's own validation of these weights gave (metrics.jsonl);
    an ensemble member trained there with another seed is warned about, as on the first path."""
    data = make_image_folder(tmp_path / "imgs", classes=3, per_class=10)
    runs = {}
    for seed in (3, 4):
        runs[seed] = out = tmp_path / f"run{seed}"
        r = run_cli("train", "--data", str(data), "--epochs", "1", "--batch-size", "9", "--seed", str(seed), "--out", str(out),
                    "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32", "--amp", "none")
        assert r.returncode == 0, r.stderr
    last = json.loads((runs[3] / "metrics.jsonl").read_text().splitlines()[-1])
    moved = data.rename(tmp_path / "moved")
    copied = shutil.copytree(moved, tmp_path / "copied")
    for where in (moved, copied):
        r = run_cli("evaluate", "--checkpoint", str(runs[3] / "last.pt"), "--data", str(where), "--json", "--amp", "none")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["images"] == last["val_images"] == 3 and "held out, seed 3" in got["data"]
        assert got["top1"] == pytest.approx(last["val_top1"]) and got["top5"] == pytest.approx(last["val_top5"])
    r = run_cli("evaluate", "--checkpoint", str(runs[3] / "last.pt"), "--ensemble", str(runs[4] / "last.pt"),
                "--data", str(moved), "--json", "--amp", "none")
    assert r.returncode == 0, r.stderr
    assert f"{runs[4] / 'last.pt'} trained on {moved} holding out the images of seed 4" in r.stderr


def test_summary_command():
    r = run_cli("summary", "--model", "alexnet_paper")
    assert r.returncode == 0, r.stderr
    assert "60,965,224" in r.stdout and "724,406,816" in r.stdout and "253,440" in r.stdout
    r = run_cli("summary", "--model", "alexnet_owt", "--num-classes", "10")
    assert r.returncode == 0 and "fc8" in r.stdout


def test_summary_of_an_ablation_and_of_a_checkpoint(tmp_path, capsys):
    from alexnet.checkpoint import save_atomic
    from alexnet.cli import main

    # One tower: conv2, conv4 and conv5 dense (twice their grouped inputs), counted by hand.
    extra = {"conv2": (96 * 256 * 25 // 2, 27 * 27), "conv4": (384 * 384 * 9 // 2, 13 * 13), "conv5": (384 * 256 * 9 // 2, 13 * 13)}
    params = 60_965_224 + sum(w for w, _ in extra.values())
    macs = 724_406_816 + sum(w * hw for w, hw in extra.values())
    capsys.readouterr()
    assert main(["summary", "--model-option", "towers=1"]) == 0
    out = capsys.readouterr().out
    assert f"total parameters:          {params:,}" in out and f"{macs:,} per image" in out
    assert out.startswith("alexnet_paper towers=1: input 3x224x224")  # the header names the ablation (user sweep)
    model = alexnet.create_model("alexnet_small", num_classes=7, widths=[8, 16, 16, 16, 16], fc_width=32)
    ckpt = tmp_path / "m.pt"
    save_atomic({"model": model.state_dict(), "model_config": model.config.to_dict(), "classes": list("abcdefg")}, ckpt)
    assert main(["summary", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    n = sum(p.numel() for p in model.parameters())
    assert out.startswith(f"alexnet_small with widths=(8, 16, 16, 16, 16), fc_width=32 ({ckpt}): input 1x28x28, 7 classes")
    assert f"total parameters:          {n:,}" in out
    assert main(["summary", "--checkpoint", str(ckpt), "--model", "alexnet_owt"]) == 2
    assert "drop --model" in capsys.readouterr().err


def test_summary_takes_num_classes_as_a_model_option(capsys):
    """--model-option num_classes=5 went to create_model beside num_classes=1000: 'internal error:
    TypeError ... multiple values for keyword argument', exit 1. fc8 at 5 classes, by hand: 4096 x 5 + 5."""
    from alexnet.cli import main

    capsys.readouterr()
    assert main(["summary", "--model-option", "num_classes=5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("alexnet_paper num_classes=5: input 3x224x224, 5 classes")
    assert f"total parameters:          {60_965_224 - 4097 * 1000 + 4097 * 5:,}" in out
    assert main(["summary", "--model-option", "num_classes=5", "--num-classes", "3"]) == 2
    err = capsys.readouterr().err
    assert "num_classes=5 and --num-classes 3 differ" in err and len(err.splitlines()) == 1


def test_summary_input_size_builds_the_network_for_it_or_says_why_not(tmp_path, capsys):
    """summary --input-size 100 stopped with 'internal error: ValueError' (fc6 built for 224). A
    named model is built for the size, as --model-option input_size=100; a checkpoint's net is not."""
    from alexnet.checkpoint import save_atomic
    from alexnet.cli import main

    capsys.readouterr()
    assert main(["summary", "--input-size", "100"]) == 0
    out = capsys.readouterr().out
    fc6_inputs = 256 * 2 * 2  # 100 px: conv1 23, pool 11, pool 5, pool 2
    assert out.startswith("alexnet_paper: input 3x100x100")
    assert f"total parameters:          {60_965_224 - (256 * 6 * 6 - fc6_inputs) * 4096:,}" in out
    model = alexnet.create_model("alexnet_paper", num_classes=3)
    save_atomic({"model": model.state_dict(), "model_config": model.config.to_dict(), "classes": list("abc")}, tmp_path / "m.pt")
    assert main(["summary", "--checkpoint", str(tmp_path / "m.pt"), "--input-size", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: --input-size 100: ") and "built for 224x224" in err and len(err.splitlines()) == 1


def test_train_help_gives_the_readme_time_of_the_default_run(capsys):
    """`train --help`'s time for the default job brackets the wall times that README's Results measured."""
    import re

    from conftest import ROOT

    from alexnet.cli import main

    results = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Results", 1)[1].split("\n### ", 1)[0]
    measured = [int(m) + int(s) / 60 for m, s in re.findall(r"(\d+) min (\d+) s", results)]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    said = re.search(r"about (\d+)-(\d+) minutes on 2 CPU cores", " ".join(capsys.readouterr().out.split()))
    assert measured and said, (measured, said)
    assert int(said[1]) <= min(measured) and max(measured) <= int(said[2]), (measured, said[0])


def test_a_misspelt_option_is_named_by_its_command_with_the_option_it_resembles(capsys):
    """'alexnet train --epochz 3' said '(see 'alexnet --help')', whose page lists no training option."""
    from alexnet.cli import main

    for argv, said in ((["train", "--epochz", "3"], "alexnet train: error: unrecognized arguments: --epochz 3; did you "
                                                    "mean --epochs? (see 'alexnet train --help')"),
                       (["summary", "--input-sise=100"], "alexnet summary: error: unrecognized arguments: --input-sise=100; "
                                                        "did you mean --input-size? (see 'alexnet summary --help')"),
                       (["models", "extra"], "alexnet models: error: unrecognized arguments: extra (see 'alexnet models --help')"),
                       (["--bogus"], "alexnet: error: unrecognized arguments: --bogus (see 'alexnet --help')")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and capsys.readouterr().err == said + "\n"


@pytest.mark.parametrize("argv", [["evaluate"], ["predict"], ["features"], ["retrieve"], ["visualize"], ["import"],
                                  ["import", "--out", "m.pt"], ["export"], ["prepare"], ["download"],
                                  ["download", "--out", "d"]], ids=" ".join)
def test_a_command_without_its_arguments_names_them_as_its_usage_line_does(capsys, argv):
    """'alexnet visualize' said 'the following arguments are required: what, PATH': argparse named a
    positional of choices by its dest, shown nowhere, and called the optional PATH required."""
    from alexnet.cli import main
    from alexnet.cli.options import build_parser

    command = argv[0]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    said = capsys.readouterr().err
    assert stop.value.code == 2 and said.count("\n") == 1, said
    named = re.fullmatch(rf"alexnet {command}: error: the following arguments are required: (.+) "
                         rf"\(see 'alexnet {command} --help'\)\n", said)
    assert named, said
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    usage = {word.strip("[]") for word in sub.format_usage().split()}
    for name in re.split(r", | or ", named[1]):  # each as the usage line writes it: an option, a metavar or {a,b}
        assert name in usage, (name, usage)
    assert "PATH" not in named[1]


def _one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_bad_input(tmp_path, tiny_fmnist):
    _one_line_error(run_cli("train", "--model", "resnet50", "--data", str(tiny_fmnist)), "resnet50")
    _one_line_error(run_cli("summary", "--model", "vgg"), "vgg")
    _one_line_error(run_cli("train", "--data", str(tmp_path / "nope")), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(run_cli("train", "--data", str(empty)), "empty")
    (empty / "cls").mkdir()
    _one_line_error(run_cli("train", "--data", str(empty)), "no images")
    _one_line_error(run_cli("train", "--epochs", "0"), "--epochs")
    one = make_image_folder(tmp_path / "one", classes=1)  # trained, it reached loss 0 and "top-1 1.0"
    _one_line_error(run_cli("train", "--data", str(one), "--out", str(tmp_path / "run1")), "only one class (class0)")
    assert not (tmp_path / "run1").exists()  # a run that fails before its first checkpoint leaves nothing
    (tmp_path / "afile").write_text("x")  # it said 'Not a directory (afile/run)', exit 1, naming no option
    r = run_cli("train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "afile" / "run"))
    _one_line_error(r, f"--out {tmp_path / 'afile' / 'run'}: cannot write there: {tmp_path / 'afile'} is a file, not a folder")
    assert r.returncode == 2
    (tmp_path / "runs").write_text("x")  # no --out: the default runs/DATE-MODEL is under a file
    r = run_cli("train", "--data", str(tiny_fmnist), "--nproc", "2", "--device", "cpu", cwd=tmp_path)
    _one_line_error(r, "the run folder runs/", "cannot write there: runs is a file, not a folder")
    assert r.returncode == 2
    _one_line_error(run_cli("evaluate", "--checkpoint", str(tmp_path / "missing.pt")), "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    _one_line_error(run_cli("evaluate", "--checkpoint", str(junk)), "junk.pt")


def test_tensorboard_without_its_package_is_refused_before_the_data_loads(tiny_fmnist, tmp_path):
    """It was refused once the data had loaded and the 'training ...' line was printed (user sweep)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    r = run_cli("train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--tensorboard")
    _one_line_error(r, "--tensorboard needs the tensorboard package")
    assert r.stdout == "" and not (tmp_path / "run").exists()


def test_wrong_num_classes(tiny_fmnist, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "32", "--out", str(out)).returncode == 0
    _one_line_error(run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--num-classes", "5"), "--num-classes 5")
    folder = make_image_folder(tmp_path / "three")  # 3 classes for a 10-class model
    _one_line_error(run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(folder)), "3 classes")


# Ctrl-C (SIGINT) while torch loads, delivered at a set point: when the import reaches MODULE.
_CTRL_C_WHILE_LOADING = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
from alexnet.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module", ["torch.nn", "alexnet.model"])
def test_ctrl_c_while_torch_loads_is_one_line(module, tiny_fmnist, tmp_path):
    """Ctrl-C in a command's first seconds printed a 50-line traceback (each rank of a --nproc run
    too), or aborted the process inside torch's C++ start-up: the package imported torch before the
    command's error handling began. Torch now loads inside it, with Ctrl-C held until it has."""
    args = ["train", "--data", str(tiny_fmnist), "--epochs", "1", "--out", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_LOADING, module, *args], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert (r.returncode, r.stderr) == (130, "alexnet: interrupted\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_rank_stopped_while_it_starts_leaves_the_line_to_rank_0(signame, tiny_fmnist, tmp_path):
    """Under torchrun a Ctrl-C reaches every rank, and the agent stops the other ranks with SIGTERM when
    one has ended: rank 0 on a bad option it said in one line, while rank 1, slower to load torch on a
    busy machine, added 'alexnet: interrupted' below it (test_distributed_torchrun's bad-request test
    failed so under load). Rank 0 says it; another rank exits 130 without a word. Across machines
    (torchrun --nnodes 2: a Ctrl-C in one machine's terminal reaches that machine's ranks) each
    machine's local rank 0 says it, naming itself."""
    args = ["train", "--data", str(tiny_fmnist), "--epochs", "1", "--out", str(tmp_path / "run")]
    script = _CTRL_C_WHILE_LOADING.replace("signal.SIGINT)\n", f"signal.{signame})\n")
    said = {}
    for rank, local, local_world in (("0", "0", "2"), ("1", "1", "2"), ("1", "0", "1")):
        env = cli_env(RANK=rank, WORLD_SIZE="2", LOCAL_RANK=local, LOCAL_WORLD_SIZE=local_world)
        r = subprocess.run([sys.executable, "-c", script, "torch.nn", *args], capture_output=True, text=True, env=env, timeout=300)
        said[rank, local] = (r.returncode, r.stderr)
    assert said == {("0", "0"): (130, "alexnet: interrupted\n"), ("1", "1"): (130, ""),
                    ("1", "0"): (130, "alexnet: rank 1: interrupted\n")}
    assert not (tmp_path / "run").exists()


def test_threads(tiny_fmnist, tmp_path):
    """--threads N: the run computes on N threads (recorded in config.json), on every computing
    command; a resume on another count says that it will not be bitwise. (A narrow network: eight runs.)"""
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "32", "--out", str(out), "--threads", "1", *TINY)
    assert r.returncode == 0, r.stderr
    environment = json.loads((out / "config.json").read_text())["environment"]
    assert environment["threads"] == 1
    from test_evaluate import _versions_of_the_modules  # what decoded, resized and computed: versions of each

    assert {k: environment[k] for k in _versions_of_the_modules()} == _versions_of_the_modules()
    r = run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(tiny_fmnist), "--threads", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 40, r.stderr
    _one_line_error(run_cli("evaluate", "--checkpoint", str(out / "last.pt"), "--threads", "0"), "--threads")
    # Resuming on another thread count is said (CPU reductions round differently); on the same, not.
    r = run_cli("train", "--resume", str(out), "--epochs", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "note: this run started with 1 CPU threads and resumes with 2;" in r.stderr
    r = run_cli("train", "--resume", str(out), "--epochs", "3", "--threads", "1")
    assert r.returncode == 0 and "note: this run started" not in r.stdout + r.stderr, r.stderr
    # The --resume line has no --threads: a resume without it takes the run's count (it took every core,
    # and went on otherwise than the run would have): the same weights as a resume with --threads 1.
    runs = [tmp_path / "plain", tmp_path / "given"]
    run_cli("train", "--data", str(tiny_fmnist), "--epochs", "1", "--batch-size", "32", "--out", str(runs[0]), "--threads", "1", *TINY)
    shutil.copytree(runs[0], runs[1])
    for folder, given in zip(runs, ([], ["--threads", "1"])):
        r = run_cli("train", "--resume", str(folder), "--epochs", "2", *given)
        assert r.returncode == 0 and "note: this run started" not in r.stderr, r.stderr
    a, b = (torch.load(folder / "last.pt", weights_only=True)["model"] for folder in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_computing_command_takes_threads():
    """The commands the README lists as taking --threads (cli._COMPUTING, which sets the count) take
    it; `export` did not."""
    from alexnet.cli import _COMPUTING, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"train", "evaluate", "predict", "features", "retrieve", "prepare", "export"} <= _COMPUTING
    for name in sorted(_COMPUTING):
        assert any("--threads" in a.option_strings for a in commands[name]._actions), name


def test_help_gives_defaults_and_prepare_uses_workers_by_default(tmp_path, monkeypatch):
    """Help states each option's default, the presets' own where they differ (--epochs, --momentum
    had no help); prepare takes no --device/--amp and decodes with one worker per core up to 8 (its
    default was overwritten with 0 before it could apply; user sweep)."""
    import os

    from alexnet.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    train = " ".join(sub["train"].format_help().split())
    assert "--epochs EPOCHS training epochs (default: the preset's: paper 90, photos 30, owt 90, fashion_mnist 5, cifar 15)" in train
    assert "--momentum MOMENTUM SGD momentum (default: 0.9)" in train
    assert "--label-smoothing LABEL_SMOOTHING cross-entropy label smoothing (0: off) (default: the preset's: paper 0.0, photos 0.1" in train
    assert "--top TOP, --top-k TOP, --k TOP classes per image (default: 5)" in " ".join(sub["predict"].format_help().split())
    prepare = sub["prepare"].format_help()
    assert "--workers" in prepare and "--device" not in prepare and "--amp" not in prepare
    seen = {}
    monkeypatch.setattr("alexnet.data.packed.prepare", lambda *a, **kw: seen.update(kw) or {"splits": {}, "bad_files": 0})
    main(["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "p")])
    assert seen["workers"] == min(8, os.cpu_count() or 1)


def test_missing_default_data_message(monkeypatch):
    from alexnet.data import fashion_mnist, loaders

    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", fashion_mnist.Path("/nonexistent/fashion-mnist"))
    with pytest.raises(alexnet.DataError, match="apt-get install dataset-fashion-mnist"):
        loaders.load_data(None, 8, 28)


def test_a_compile_failure_is_one_line(tmp_path, capsys, monkeypatch, tiny_fmnist):
    """torch.compile fails at the first step where a C++ compiler is missing (InvalidCxxCompiler):
    one line naming --compile and the remedy, exit 2, not a multi-line internal error."""
    import torch

    from alexnet.cli import main

    class InductorError(RuntimeError):  # as torch._inductor raises it
        __module__ = "torch._inductor.exc"

    def broken(model, **kwargs):  # "compiled": the model, whose forward fails as inductor's first call does
        def fail(*a, **k):
            raise InductorError("InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1 ...")

        model.forward = fail
        return model

    monkeypatch.setattr(torch, "compile", broken)
    code = main(["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
                 "--workers", "0", "--device", "cpu", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
                 "--compile", "--progress", "off"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("alexnet: error: --compile failed (InvalidCxxCompiler: No working C++ compiler found); "
                                     "run without --compile (set ALEXNET_DEBUG=1 for the traceback)"), err


def test_warnings_are_one_line(tmp_path, tiny_fmnist):
    """Without a C compiler the kernels fall back with a warning: one line each, not Python's two
    (the second, the source line that warned, says nothing to a user)."""
    args = ["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--device", "cpu", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32",
            "--progress", "off"]
    env = cli_env(CC=str(tmp_path / "no-cc"), ALEXNET_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("ALEXNET_NO_KERNELS", None)
    r = subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "C kernel" in line]
    assert warned and all(line.startswith("warning: alexnet: C kernel '") for line in warned), r.stderr
    assert not [line for line in r.stderr.splitlines() if line.startswith(" ")], r.stderr


def test_notes_and_warnings_go_to_stderr_results_to_stdout(tmp_path, tiny_fmnist, capsys):
    """train printed its own 'note: ...' and 'warning: ...' lines on stdout, while the data's warnings
    and the other commands' notes went to stderr; prepare's note on a small pack did too. One rule now:
    notes and warnings on stderr, what a command made (its progress, its results) on stdout."""
    from alexnet.cli import main

    args = ["train", "--data", str(tiny_fmnist), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "128",
            "--workers", "0", "--threads", "1", "--device", "cpu", "--model-option", "widths=[8,16,16,16,16]",
            "--model-option", "fc_width=32", "--progress", "off"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "note: batch size reduced to the 64 training images" in err, err
    assert [line.split()[0] for line in out.splitlines()] == ["training", "epoch", "done:"], out
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=2, size=(40, 36))
    assert main(["prepare", "--data", str(root), "--out", str(tmp_path / "p"), "--size", "62", "--workers", "0",
                 "--progress", "off"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("packed ") and len(out.splitlines()) == 1, out
    assert err.startswith("note: alexnet_paper, the default for photos, takes images of 63 px or more"), err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """'alexnet models | head -1': the pipe is closed before the command writes; no error line."""
    from conftest import cli_env

    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env())
    proc.stdout.close()  # long before the interpreter has imported alexnet
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_broken_pipe_that_is_not_standard_output_is_an_error(monkeypatch, capsys):
    """Only a reader of our output going away is quiet: a worker's or subprocess's pipe breaking is a failure."""
    from alexnet import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli.options, "cmd_models", broken)  # the parser takes the command from there
    assert cli.main(["models"]) == 1
    assert capsys.readouterr().err == "alexnet: error: Broken pipe\n"


@pytest.mark.parametrize("device", ["meta", "xla", "xpu", "hpu"])
def test_devices_torch_names_but_alexnet_cannot_use_are_refused(tmp_path, capsys, device):
    """torch.device takes 'meta', 'xla', 'xpu', 'hpu' (a TPU or Intel GPU user's guess): evaluate ended
    in 'internal error: RuntimeError: PyTorch is not linked with support for xla devices' (or
    'Cannot copy out of meta tensor'); the device is now refused as unknown, in one line, exit 2."""
    from test_evaluate import tiny_checkpoint

    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=1)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert alexnet.cli.main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err == f"alexnet: error: --device: unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)\n", err


def test_a_cuda_index_the_machine_lacks_is_named(monkeypatch):
    """--device cuda:3 on a one-GPU machine is refused naming the devices there, and a missing GPU names
    the device as typed (it said '--device cuda' for 'cuda:1')."""
    from alexnet.errors import ConfigError
    from alexnet.runtime import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^--device cuda:1: no CUDA device is available on this machine$"):
            resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^--device cuda:3: this machine has 1 CUDA device, cuda:0$"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("folder", ["runs/my run", "-run", "runs é 日本/it's run"])
def test_command_lines_printed_to_paste_are_one_word_per_path(folder):
    """The lines a user pastes ('continue with: alexnet train --resume RUN' after Ctrl-C, prepare's and
    download's 'train on it with: alexnet train --data DIR') printed a run folder 'runs/my run' bare: a
    shell split it in two ('unrecognized arguments: run'), and a folder '-run' was read as an option.
    Here a POSIX shell's split of each line (shlex) goes through the command's own parser."""
    import shlex

    from alexnet.cli.options import build_parser
    from alexnet.cli.tools import _train_hint
    from alexnet.distributed import DistInfo, resume_command

    parser = build_parser()
    words = shlex.split(resume_command(folder, DistInfo()))
    assert words[:2] == ["alexnet", "train"] and parser.parse_args(words[1:]).resume in (folder, f"./{folder}")
    words = shlex.split(_train_hint(folder, 256).removeprefix("train on it with: "))
    assert parser.parse_args(words[1:]).data in (folder, f"./{folder}")


def test_a_tilde_the_shell_left_is_the_home_folder(tmp_path):
    """The shell expands '--out ~/x' but not '--out=~/x' or a quoted '~/x' (nor does subprocess):
    'alexnet train --out=~/runs/x' trained into ./~/runs/x, a folder named '~' in the current one.
    Every path option (and positional) takes a leading ~ as the home folder, as a config file's does."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / "run").mkdir(parents=True)
    cwd.mkdir()
    record = {"epoch": 1, "step": 2, "train_loss": 1.5, "lr": 0.01, "val_top1": 0.5, "val_top1_error": 0.5, "val_loss": 1.0}
    (home / "run" / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    r = subprocess.run([sys.executable, "-m", "alexnet", "visualize", "curves", "~/run", "--out=~/figures/c.png"],
                       capture_output=True, text=True, env=cli_env(HOME=str(home)), cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (home / "figures" / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(cwd.iterdir()) == []


@pytest.mark.parametrize(("args", "name"), [
    (("train", "--data", "", "--out", "run"), "--data"), (("train", "--data", "gone", "--out", ""), "--out"),
    (("train", "--resume", ""), "--resume"), (("evaluate", "--checkpoint", ""), "--checkpoint"), (("evaluate", ""), "CHECKPOINT"),
    (("evaluate", "a.pt", "--ensemble", "b.pt", ""), "--ensemble"), (("visualize", "curves", ""), "PATH"),
    (("predict", "", "--checkpoint", "a.pt"), "IMAGE_OR_FOLDER"), (("import", "caffe", "", "--out", "c.pt"), "file")])
def test_an_empty_path_is_refused_in_one_line(tmp_path, args, name):
    """An empty path is what '--data "$DATA"' gives with DATA unset: Path("") is the current folder,
    which train read as the data (and refused --out inside it), 'train --out ""' ran the default
    Fashion-MNIST training into a new runs/DATE-MODEL of the current folder, '--checkpoint ""' said
    '. is a folder'. Each file or folder argument is refused by the parser, named as --help names it."""
    r = run_cli(*args, cwd=tmp_path)
    command = args[0]
    assert r.returncode == 2 and r.stderr == (f"alexnet {command}: error: argument {name}: an empty path "
                                              f"(see 'alexnet {command} --help')\n"), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_home_matplotlib_cannot_write_in_prints_none_of_its_lines(tmp_path):
    """With a home folder that cannot be written (here: a file) matplotlib printed
    'mkdir -p failed for path ...' and 'Matplotlib created a temporary cache directory ...', its own
    format, on every figure (train's curves.png); alexnet now points MPLCONFIGDIR to a temporary folder."""
    run = tmp_path / "run"
    run.mkdir()
    record = {"epoch": 1, "step": 2, "train_loss": 1.5, "lr": 0.01, "val_top1": 0.5, "val_top1_error": 0.5, "val_loss": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "home").write_text("")
    env = cli_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME="", XDG_CACHE_HOME="")
    env.pop("MPLCONFIGDIR", None)
    r = subprocess.run([sys.executable, "-m", "alexnet", "visualize", "curves", str(run), "--out", str(tmp_path / "c.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_a_commands_positionals_may_follow_its_options():
    """'alexnet import caffe --out c.pt bvlc_alexnet.caffemodel' stopped with 'unrecognized arguments:
    bvlc_alexnet.caffemodel', as did 'visualize curves --out f.png RUN' and 'predict a.jpg --checkpoint
    m.pt b.jpg' with b.jpg: argparse took a command's positionals only before its first option
    (helper 77's audit). Typos are still named, positionals still counted."""
    from alexnet.cli.options import build_parser

    parser = build_parser()
    args = parser.parse_args(["import", "caffe", "--out", "c.pt", "--mean-file", "m.binaryproto", "w.caffemodel"])
    assert (args.source, args.file, args.out, args.mean_file) == ("caffe", "w.caffemodel", "c.pt", "m.binaryproto")
    args = parser.parse_args(["visualize", "curves", "--out", "f.png", "runs/a", "runs/b"])
    assert (args.what, args.run_dir, args.out) == ("curves", ["runs/a", "runs/b"], "f.png")
    args = parser.parse_args(["predict", "a.jpg", "--checkpoint", "m.pt", "b.jpg", "--top", "2"])
    assert (args.images, args.checkpoint, args.top) == (["a.jpg", "b.jpg"], "m.pt", 2)
    args = parser.parse_args(["retrieve", "--index", "i.safetensors", "q.jpg"])
    assert (args.image, args.index) == ("q.jpg", "i.safetensors")
    for words in (["import", "caffe", "a", "b", "--out", "c.pt"], ["predict", "a.jpg", "--checkpont", "m.pt"],
                  ["import", "--out", "c.pt"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(words)
        assert e.value.code == 2, words


class _Writes:
    """A stderr that keeps each write apart, as the pipe that the ranks of a torchrun run share does."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:  # an empty write puts nothing on the pipe
            self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("error", [alexnet.errors.Interrupted("interrupted at epoch 1, step 2; saved r/last.pt"),
                                   alexnet.ConfigError("--lr must be positive"), OSError(28, "No space left on device"),
                                   RuntimeError("a bug"), KeyboardInterrupt()])
def test_a_failure_is_one_line_in_one_write(monkeypatch, error):
    """Every rank of an interrupted torchrun run says where it stopped, on one stderr: printed as text
    then newline, two ranks' lines came out run together ('... --nproc 2alexnet: interrupted at epoch
    1 ...'; CI, test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step). Each line is one write."""
    import argparse

    from alexnet.cli import _run
    from alexnet.runtime import say

    def fails(args):
        raise error

    err = _Writes()
    monkeypatch.setattr(sys, "stderr", err)
    code = _run(argparse.Namespace(command="summary", func=fails))
    say("warning: a rank's warning")
    assert code in (1, 2, 130) and len(err.writes) == 2, err.writes
    assert all(w.startswith(("alexnet: ", "warning: ")) and w.endswith("\n") and w.count("\n") == 1 for w in err.writes), err.writes


_STOPPED_AS_IT_ENDS = """
import gc, os, signal, sys
from alexnet.cli import main

collect = gc.collect

def stopped(*args):  # _run's last clean-up, after the outcome is said: the signal torchrun's agent sends
    if sys._getframe(1).f_code.co_name == "_run":
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return collect(*args)

gc.collect = stopped
sys.exit(main(["evaluate", "--checkpoint", sys.argv[2]]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_after_the_error_line_adds_no_traceback(tmp_path, sig):
    """torchrun's agent stops the other ranks with SIGTERM once one has failed: a rank that had just
    said its own error got it while freeing memory at the end of _run, and KeyboardInterrupt's
    traceback followed its line (test_nproc_run_refused_at_the_start_exits_2_with_nothing_to_resume,
    test_nproc_run_with_a_killed_rank_ends_in_one_line). The outcome is said: the process ends with it."""
    missing = tmp_path / "missing.pt"
    r = subprocess.run([sys.executable, "-c", _STOPPED_AS_IT_ENDS, sig, str(missing)], capture_output=True, text=True,
                       env=cli_env(), timeout=300)
    assert r.returncode == 2 and r.stderr == f"alexnet: error: checkpoint not found: {missing}\n", r.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux) to offer one core")
def test_torchs_too_many_workers_warning_is_said_once(tmp_path, tiny_folder):
    """torch warns when a DataLoader is made with more workers than cores and again when it starts
    them; our filters' changes between made Python say it twice in evaluate. On one core, two workers:
    once per command."""
    one_core = min(os.sched_getaffinity(0))
    small = ["--model-option", "input_size=64", "--model-option", "widths=[8,16,16,16,16]", "--model-option", "fc_width=32"]
    for args in (["train", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
                  *small],
                 ["evaluate", str(tmp_path / "run" / "last.pt"), "--data", str(tiny_folder)]):
        r = subprocess.run([sys.executable, "-m", "alexnet", *args, "--workers", "2", "--device", "cpu", "--progress", "off"],
                           capture_output=True, text=True, env=cli_env(), timeout=600,
                           preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
        assert r.returncode == 0, r.stderr
        said = [line for line in r.stderr.splitlines() if "This DataLoader will create 2 worker processes" in line]
        assert len(said) == 1, (args[0], r.stderr)


def test_version_names_the_torch_build_python_and_machine_a_bug_report_needs():
    """`alexnet --version` said 'alexnet 0.1.0' alone; a report of a fault on a GPU needs torch's build
    (2.14.1+cu130, which PyPI's metadata gives as 2.14.1), torchvision's, Python's and the machine's.
    Against the packages' own __version__ after their import here; the answer imports no torch, and a
    reader that goes away (| head -0) is no error."""
    import platform

    import torchvision

    r = run_cli("--version")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == (f"alexnet {alexnet.__version__} (torch {torch.__version__}, torchvision {torchvision.__version__}, "
                        f"Python {platform.python_version()}, {platform.system()} {platform.machine()})\n")
    code = ("import sys\nfrom alexnet.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules, file=sys.stderr)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert probe.stdout == r.stdout and probe.stderr == "0 False\n", probe.stderr
    piped = subprocess.run(f"{sys.executable} -m alexnet --version | head -c 0", shell=True, capture_output=True, text=True,
                           env=cli_env(), timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_the_versions_recorded_beside_results_are_the_ones_the_modules_say_imported_or_not(tmp_path, monkeypatch):
    """`--version` and the records of runs, packed data, indexes and exports read versions by one rule
    (alexnet.installed); before, the records took torchvision's from its metadata (0.29.1, not the build
    0.29.1+cu130 it says). Read before torch is imported (from the version files) and after (from the
    modules), both against the modules' own __version__; then the fallbacks, on packages made here: a
    version file with no literal (numpy's `__version__ = version`) gives the metadata's, none gives None."""
    code = ("import json, sys\nfrom alexnet.installed import versions\nbefore = versions()\nassert 'torch' not in sys.modules\n"
            "import platform, numpy, PIL, torch, torchvision\nimport alexnet\n"
            "said = {'alexnet': alexnet.__version__, 'torch': torch.__version__, 'torchvision': torchvision.__version__, "
            "'numpy': numpy.__version__, 'pillow': PIL.__version__, 'python': platform.python_version()}\n"
            "print(json.dumps([before, versions(), said]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    before, after, said = json.loads(r.stdout)
    assert before == after == said and list(before) == ["alexnet", "torch", "torchvision", "numpy", "pillow", "python"]

    from alexnet.installed import version_of

    (tmp_path / "lit").mkdir()
    (tmp_path / "lit" / "__init__.py").write_text("")
    (tmp_path / "lit" / "_version.py").write_text('__version__: str = "3.1.4"\n')
    (tmp_path / "indirect").mkdir()
    (tmp_path / "indirect" / "__init__.py").write_text("")
    (tmp_path / "indirect" / "version.py").write_text('version = "9.9"\n__version__ = version\n')
    (tmp_path / "indirect-2.7.1.dist-info").mkdir()
    (tmp_path / "indirect-2.7.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: indirect\nVersion: 2.7.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert version_of("lit") == "3.1.4" and "lit" not in sys.modules  # read, not imported
    assert version_of("indirect") == "2.7.1"
    assert version_of("not-a-package", "no_such_module_here") is None

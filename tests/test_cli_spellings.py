"""One command line: an idea spelt one way in one command is taken in the others (helper 82's audit)."""

from __future__ import annotations

import json

import pytest

from alexnet.cli.options import build_parser


@pytest.mark.parametrize("spelling", ["--top", "--top-k", "--k"])
def test_predict_and_retrieve_take_every_spelling_of_k(spelling):
    """predict said --top, retrieve --k: '--top-k 3' (timm's, torchvision's) and either command's own
    spelling in the other were refused as unrecognized."""
    parser = build_parser()
    assert parser.parse_args(["predict", "a.jpg", "--checkpoint", "m.pt", spelling, "3"]).top == 3
    assert parser.parse_args(["retrieve", "q.jpg", "--index", "i.safetensors", spelling, "4"]).k == 4


@pytest.mark.parametrize("command, rest", [("evaluate", ["--json"]), ("export", ["--out", "m.onnx"]),
                                           ("features", ["--data", "d", "--out", "i.safetensors"])])
def test_the_checkpoint_may_be_given_positionally(command, rest):
    """'alexnet evaluate run/best.pt' was refused (--checkpoint required) where import, visualize and
    predict take their inputs positionally; --checkpoint FILE still works, and one of the two is needed."""
    parser = build_parser()
    assert parser.parse_args([command, "run/best.pt", *rest]).checkpoint == "run/best.pt"
    assert parser.parse_args([command, *rest, "run/best.pt"]).checkpoint == "run/best.pt"
    assert parser.parse_args([command, "--checkpoint", "run/best.pt", *rest]).checkpoint == "run/best.pt"
    assert not hasattr(parser.parse_args([command, "run/best.pt", *rest]), "checkpoint_file")


@pytest.mark.parametrize("argv, said", [
    (["evaluate"], "required: CHECKPOINT or --checkpoint"),
    (["evaluate", "--ensemble", "b.pt", "a.pt"], "files after --ensemble are the ensemble's"),
    (["evaluate", "a.pt", "--checkpoint", "b.pt"], "CHECKPOINT a.pt and --checkpoint b.pt: give one checkpoint"),
    (["export", "--out", "m.onnx"], "required: CHECKPOINT or --checkpoint"),
])
def test_a_missing_or_doubled_checkpoint_is_one_line_and_exit_2(argv, said, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and said in err and err.count("\n") == 1 and err.startswith(f"alexnet {argv[0]}: error:")


def test_an_ensemble_takes_its_first_model_positionally():
    args = build_parser().parse_args(["evaluate", "a.pt", "--ensemble", "b.pt", "c.pt", "--ten-crop"])
    assert (args.checkpoint, args.ensemble, args.ten_crop) == ("a.pt", ["b.pt", "c.pt"], True)


def _json_out(capsys, *argv: str):
    from alexnet.cli import main

    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one line, as evaluate's, predict's and retrieve's --json
    return json.loads(out)


def test_summary_json_gives_each_layer_and_the_totals(capsys):
    """evaluate, predict and retrieve had --json; summary, whose table a script reads too, had not.
    Its figures against the paper's network computed here in Python ints."""
    got = _json_out(capsys, "summary", "--json")
    assert (got["model"], got["input"], got["num_classes"]) == ("alexnet_paper", [3, 224, 224], 1000)
    layers = {r["name"]: r for r in got["layers"]}
    assert layers["conv1"] == {"name": "conv1", "type": "Conv2d", "output": [96, 55, 55], "neurons": 96 * 55 * 55,
                               "params": 96 * 3 * 11 * 11 + 96, "macs": 96 * 55 * 55 * 3 * 11 * 11}
    # conv2, conv4, conv5 in two towers (groups of 2); fc6 reads 256x6x6
    assert layers["conv2"]["macs"] == 256 * 27 * 27 * 48 * 5 * 5 and layers["fc6"]["params"] == 256 * 6 * 6 * 4096 + 4096
    assert got["params"] == 60_965_224 and got["params"] == sum(r["params"] for r in got["layers"])
    assert got["macs"] == sum(r["macs"] for r in got["layers"]) and got["neurons"] == sum(r["neurons"] for r in got["layers"])
    assert layers["pool1"] == {"name": "pool1", "type": "MaxPool2d", "output": [96, 27, 27], "neurons": 0, "params": 0, "macs": 0}


def test_models_json_lists_every_model_and_its_published_weights(capsys):
    from alexnet import list_models

    got = _json_out(capsys, "models", "--json")
    assert [m["name"] for m in got] == list_models()
    by_name = {m["name"]: m for m in got}
    assert by_name["alexnet_owt"]["weights"]["top1"] == pytest.approx(0.565, abs=0.001)  # torchvision's published 56.5 %
    assert by_name["alexnet_paper"]["weights"] is None and all(m["description"] for m in got)


def test_predict_takes_batch_size_as_evaluate_and_features_do(tmp_path, monkeypatch, capsys):
    """predict batched its images 32 at a time with no option to change it ('--batch-size 8' was
    refused), where evaluate and features take --batch-size; the figures do not depend on it."""
    from conftest import make_image_folder
    from test_evaluate import tiny_checkpoint

    import alexnet.predict

    folder, ckpt = make_image_folder(tmp_path / "imgs", classes=3, per_class=3), tiny_checkpoint(tmp_path / "m.pt")
    batches, real = [], alexnet.predict.predict
    monkeypatch.setattr(alexnet.predict, "predict", lambda *a, **k: batches.append(k["batch_size"]) or real(*a, **k))
    base = ["predict", str(folder), "--checkpoint", str(ckpt), "--json", "--amp", "none", "--threads", "1"]
    one, default = _json_out(capsys, *base, "--batch-size", "2"), _json_out(capsys, *base)
    assert batches == [2, 32] and len(one) == 9
    assert [r["path"] for r in one] == [r["path"] for r in default]
    for a, b in zip(one, default):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)


def test_workers_where_nothing_uses_them_is_a_note(tmp_path, capsys):
    """'predict FOLDER --workers 4' and 'retrieve ... --workers 4' were taken and used by nothing (both
    decode in their own process): a note on stderr says so; the results on stdout are as without it."""
    from conftest import make_image_folder
    from test_evaluate import tiny_checkpoint

    from alexnet.cli import main

    folder, ckpt = make_image_folder(tmp_path / "imgs", classes=3, per_class=2), tiny_checkpoint(tmp_path / "m.pt")
    index, query = tmp_path / "i.safetensors", str(next(folder.rglob("*.jpg")))
    assert main(["features", str(ckpt), "--data", str(folder), "--out", str(index), "--threads", "1", "--amp", "none"]) == 0
    capsys.readouterr()
    for argv in (["predict", str(folder), "--checkpoint", str(ckpt)], ["retrieve", query, "--index", str(index)]):
        base = [*argv, "--json", "--amp", "none", "--threads", "1"]
        assert main([*base, "--workers", "3"]) == 0
        noted = capsys.readouterr()
        assert noted.err == f"note: --workers 3: {argv[0]} decodes its images in this process, so no worker processes load them\n"
        assert main([*base, "--workers", "0"]) == 0
        plain = capsys.readouterr()
        assert plain.err == "" and json.loads(plain.out) == json.loads(noted.out)


def test_visualize_filters_takes_its_checkpoint_positionally_and_refuses_what_it_would_pass_over(tmp_path, capsys):
    """'visualize filters run/best.pt' said 'needs --checkpoint'; a run folder beside --checkpoint (filters) or
    a --checkpoint beside run folders (curves) was passed over without a word."""
    from test_evaluate import tiny_checkpoint

    from alexnet.cli import main

    ckpt, png = tiny_checkpoint(tmp_path / "m.pt"), tmp_path / "f.png"
    assert main(["visualize", "filters", str(ckpt), "--out", str(png)]) == 0
    by_option = tmp_path / "g.png"
    assert main(["visualize", "filters", "--checkpoint", str(ckpt), "--out", str(by_option)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size == by_option.stat().st_size
    twice = tmp_path / "h.png"  # the same file as CHECKPOINT and --checkpoint is one, as evaluate takes it
    assert main(["visualize", "filters", str(ckpt), "--checkpoint", str(ckpt), "--out", str(twice)]) == 0
    assert twice.read_bytes() == png.read_bytes()
    capsys.readouterr()
    for argv, said in ((["filters", "--checkpoint", str(ckpt), "runs/a"], f"got --checkpoint {ckpt} and runs/a: give one"),
                       (["filters", "a.pt", "b.pt"], "got a.pt b.pt: give one"),
                       (["filters"], "needs a checkpoint: CHECKPOINT or --checkpoint FILE"),
                       (["curves", "runs/a", "--checkpoint", str(ckpt)], f"--checkpoint {ckpt} is visualize filters'")):
        assert main(["visualize", *argv, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("alexnet: error: visualize ") and said in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_visualize_curves_of_a_checkpoint_names_its_run_folder(tmp_path, capsys):
    """'visualize curves RUN/last.pt' (a checkpoint, as filters takes one) said "RUN/last.pt: no metrics.jsonl
    (is it a run folder of 'alexnet train'?)", as if the file were a folder. It says it is a file and names
    its run folder, which then draws."""
    from test_evaluate import cli_fails, tiny_checkpoint

    from alexnet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    ckpt = tiny_checkpoint(run / "last.pt")
    record = {"epoch": 1, "train_loss": 1.1, "train_top1": 0.3, "val_loss": 1.2, "val_top1_error": 0.7, "val_top5_error": 0.0, "lr": 0.01}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    err = cli_fails(capsys, "visualize", "curves", str(ckpt), "--out", str(tmp_path / "c.png"))
    assert f"{ckpt} is a file, not a run folder" in err and f"give its run folder, {run} " in err, err
    assert not (tmp_path / "c.png").exists()
    assert main(["visualize", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 0
    loose = tiny_checkpoint(tmp_path / "loose.pt")  # a checkpoint outside any run folder: no folder to name
    err = cli_fails(capsys, "visualize", "curves", str(loose))
    assert "is a file, not a run folder" in err and "give its run folder" not in err, err


def test_every_argument_of_every_command_has_help_and_help_names_it(capsys):
    """predict's IMAGE_OR_FOLDER, retrieve's QUERY_IMAGE, import's and visualize's first positional
    were listed by --help with no word on them."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert stop.value.code == 0
        for action in command._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
            assert all(o in text for o in action.option_strings)

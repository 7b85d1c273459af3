"""One command line: an idea spelt one way in one command is taken in the others (helper 82's audit)."""

from __future__ import annotations

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

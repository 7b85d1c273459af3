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

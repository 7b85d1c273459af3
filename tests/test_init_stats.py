"""scripts/init_stats.py, behind the init tables of docs/training.md, measures what its columns say.

It is run as a user runs it, on six real photos of imagewoof-mini stored as 256x256 PNGs (so that
their pixels are known exactly here), and its figures are checked against a forward pass written
out below in float64: the paper's layers (two towers, LRN with the paper's constants, overlapping
pooling) applied to the same weights (``torch.manual_seed(seed)`` then the package's ``AlexNet``,
as ``alexnet train --seed`` builds them) and to pixels centred on the mean image computed here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGEWOOF, ROOT, cli_env
from PIL import Image

from alexnet.model import AlexNet, model_config

pytestmark = pytest.mark.skipif(not IMAGEWOOF.is_dir(), reason=f"needs the real photos in {IMAGEWOOF} (../shared)")

SCRIPT = ROOT / "scripts" / "init_stats.py"


def _photo_folder(root, classes: int = 2, per_class: int = 3) -> torch.Tensor:
    """train/ (``per_class`` photos of each of ``classes`` breeds, 256x256 PNGs) and val/ (one JPEG
    each) under ``root``; the training images' pixels, (N, 3, 256, 256) uint8."""
    pixels = []
    for folder in sorted((IMAGEWOOF / "train").iterdir())[:classes]:
        (root / "train" / folder.name).mkdir(parents=True)
        (root / "val" / folder.name).mkdir(parents=True)
        files = sorted(folder.iterdir())
        for f in files[:per_class]:
            image = Image.open(f).convert("RGB").resize((256, 256), Image.BILINEAR)
            image.save(root / "train" / folder.name / f"{f.stem}.png")
            pixels.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        (root / "val" / folder.name / files[-1].name).write_bytes(files[-1].read_bytes())
    return torch.stack(pixels)


def _lrn(a: torch.Tensor, towers: int = 2, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """Section 3.3: a / (k + alpha * sum of a^2 over n adjacent channels)^beta, within each tower."""
    out = []
    for t in a.chunk(towers, 1):
        sq = F.pad(t * t, (0, 0, 0, 0, n // 2, n // 2))
        out.append(t / (k + alpha * sum(sq[:, i:i + t.shape[1]] for i in range(n))) ** beta)
    return torch.cat(out, 1)


def _fc7(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fc7's output (after its ReLU) of the paper's network with weights ``w``, in float64."""
    def conv(name, x, stride=1, pad=1, groups=1):
        return F.relu(F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], stride, pad, groups=groups))

    x = F.max_pool2d(_lrn(conv("conv1", x, 4, 2)), 3, 2)
    x = F.max_pool2d(_lrn(conv("conv2", x, 1, 2, 2)), 3, 2)
    x = F.max_pool2d(conv("conv5", conv("conv4", conv("conv3", x), groups=2), groups=2), 3, 2).flatten(1)
    x = F.relu(F.linear(x, w["fc6.weight"], w["fc6.bias"]))
    return F.relu(F.linear(x, w["fc7.weight"], w["fc7.bias"]))


def _expected(pixels: torch.Tensor, seed: int, divide_by_std: bool, **options) -> tuple[float, float]:
    """(mean ||fc7||^2, mean cosine of two photos' fc7) of ``pixels`` by the forward pass above."""
    x = pixels.double()
    x = x - x.mean(0)  # the training set's mean image
    if divide_by_std:  # the pixels' per-channel std over every training pixel
        x = x / pixels.double().transpose(0, 1).reshape(3, -1).std(1, unbiased=False).reshape(1, 3, 1, 1)
    torch.manual_seed(seed)
    model = AlexNet(model_config("alexnet_paper", num_classes=2, **options))
    h = _fc7({k: v.double() for k, v in model.state_dict().items()}, x[:, :, 16:240, 16:240])  # the centre 224
    unit = h / h.norm(dim=1, keepdim=True)
    n = len(h)
    return float((h * h).sum(1).mean()), float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def test_the_figures_are_those_of_an_independent_forward_pass(tmp_path):
    pixels = _photo_folder(tmp_path / "photos")
    out = tmp_path / "init.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "photos"), "--table", "a", "--photos", "6",
                           "--seed", "3", "--threads", "1", "--json", str(out)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {(r["init"], r["init_bias"]): r for r in json.loads(out.read_text())["a"]}
    paper, kaiming = rows["paper", 1.0], rows["kaiming", None]
    assert (paper["data_preset"], paper["init_bias"], kaiming["data_preset"]) == ("paper", 1.0, "photos")
    for row, divide, options in ((paper, False, {"init_bias": 1.0}), (kaiming, True, {"init": "kaiming"})):
        sq, cos = _expected(pixels, 3, divide, **options)
        assert row["fc7_sq_norm"] == pytest.approx(sq, rel=1e-4)
        assert row["fc7_cosine"] == pytest.approx(cos, abs=1e-5)
        assert row["step_c10"] == pytest.approx(0.01 * sq / 10, rel=1e-4)  # the presets' lr 0.01, 10 classes
    # The paper's init all but ignores the image (docs: cosine 1.000); He init does not (0.90).
    assert paper["fc7_cosine"] > 0.999 and kaiming["fc7_cosine"] < 0.98
    assert "| kaiming (He, biases 0; --preset photos) | ÷ pixel std |" in done.stdout


def test_more_photos_than_the_folder_has_is_one_line(tmp_path):
    _photo_folder(tmp_path)  # six training photos
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--table", "b", "--photos", "9"],
                          capture_output=True, text=True, env=cli_env(), timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [f"init_stats.py: error: --photos 9: {tmp_path} has only 6 readable training images"]

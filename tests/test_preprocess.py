"""The typed preprocessing recipe: one form of the mean image, round trips, and malformed recipes
refused in one line wherever they come from (a checkpoint, an export, an index)."""

from __future__ import annotations

import json

import pytest
import torch

from alexnet.checkpoint import save_atomic
from alexnet.cli import main
from alexnet.data.presets import PCANoise, Preprocess
from alexnet.errors import DataError
from alexnet.model import create_model

RECIPE = {"dataset": "image_folder", "mean": [120.0, 115.0, 100.0], "std": [60.0, 60.0, 60.0], "size": 40,
          "resize": 40, "train_crop": 32, "test_crop": 32, "input_size": 32, "preset": "photos", "scale": [0.35, 1.0],
          "pca": {"eigvals": [0.2, 0.02, 0.003], "eigvecs": [[0.5, 0.7, 0.4], [0.6, 0.0, -0.8], [0.6, -0.7, 0.4]], "alpha_std": 0.1}}


def test_round_trips_keep_every_value_and_the_mean_image():
    mean = torch.rand(3, 40, 40) * 255
    p = Preprocess.from_dict(dict(RECIPE, mean_image=mean))
    assert p.pca == PCANoise((0.2, 0.02, 0.003), ((0.5, 0.7, 0.4), (0.6, 0.0, -0.8), (0.6, -0.7, 0.4)), 0.1)
    assert p.scale == (0.35, 1.0) and p.channels == 3
    back = Preprocess.from_dict(p.state())
    assert back == p and torch.equal(back.mean_image, mean)
    summary = json.loads(json.dumps(p.to_json()))  # JSON-safe
    assert summary["mean_image"]["shape"] == [3, 40, 40]
    assert summary["mean_image"]["channel_mean"] == pytest.approx(mean.double().mean((1, 2)).tolist())
    again = Preprocess.from_dict(summary, mean_image=mean)
    assert again == p and torch.equal(again.mean_image, mean)
    # Older checkpoints: the mean image as a nested list, retired entries, Caffe's channel note.
    legacy = dict(RECIPE, mean_image=mean.tolist(), test_views=1, source_channel_order="BGR")
    old = Preprocess.from_dict(legacy)
    assert old.note == "BGR" and torch.allclose(old.mean_image, mean)


@pytest.mark.parametrize("change, words", [
    ({"std": [60.0, -1.0, 60.0]}, "std"),
    ({"mean": [1.0, 2.0]}, "mean"),
    ({"mean": [float("nan"), 1.0, 2.0]}, "mean"),
    ({"train_crop": 0}, "train_crop"),
    ({"input_size": "224"}, "input_size"),
    ({"scale": [0.9, 0.1]}, "scale"),
    ({"flip": "yes"}, "flip"),
    ({"mean_image": [[1.0]]}, "mean image"),
    ({"mean_image": torch.zeros(1, 4, 4)}, "mean_image"),
    ({"mean_image": torch.zeros(3, 10, 10)}, r"mean_image must be 3 x 40 x 40"),  # was refused only at the first batch
    ({"pca": {"eigvals": [1.0], "eigvecs": [], "alpha_std": 0.1}}, "pca"),
    ({"colour": "blue"}, "unknown entries: colour"),
    ({"size": 10**6}, "size"),
])
def test_malformed_recipes_are_one_line_errors(change, words):
    with pytest.raises(DataError, match=words) as e:
        Preprocess.from_dict(dict(RECIPE, **change), source="x.pt")
    assert str(e.value).startswith("x.pt: ") and "\n" not in str(e.value)


def test_a_checkpoint_with_a_malformed_recipe_is_refused_in_one_line(tmp_path, capsys):
    model = create_model("alexnet_paper", num_classes=3, input_size=64)
    bad = tmp_path / "bad.pt"
    save_atomic({"model": model.state_dict(), "model_config": model.config.to_dict(), "classes": ["a", "b", "c"],
                 "preprocess": dict(RECIPE, std=[0.0, 0.0, 0.0])}, bad)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (50, 40), (10, 20, 30)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet: error:") and "bad.pt" in err and "std" in err and len(err.splitlines()) == 1


class _HostToDevice(torch.overrides.TorchFunctionMode):
    """Records copies from host memory to ``device``: on a GPU each is a wait for the queued work."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device, self.copies = device, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if isinstance(out, torch.Tensor) and out.device.type == self.device:
            inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            # A 0-dim CPU tensor next to device tensors is passed as a number: no copy.
            if any(t.device.type == "cpu" and t.dim() > 0 for t in inputs) or (name in ("tensor", "as_tensor") and not inputs):
                self.copies.append(name)
        return out


@pytest.mark.parametrize("recipe", ["mean image and PCA", "per-channel mean, scale"])
def test_a_batch_copies_nothing_from_the_host_to_its_device(recipe):
    """Every batch's input is made where the batch lies from the recipe's tensors, copied to that
    device once (Preprocess.tensors_on): no per-batch copy from host memory, each of which makes the
    host wait for the training step queued on a GPU. The meta device plays the GPU."""
    from alexnet.data.loaders import model_input

    extra = {"mean_image": torch.rand(3, 40, 40) * 255} if recipe.startswith("mean image") else {"pca": None}
    p = Preprocess.from_dict(dict(RECIPE, **({"scale": None} if "pca" not in extra else {}), **extra))
    images = torch.zeros(4, 3, 40, 40, dtype=torch.uint8, device="meta")
    index = torch.arange(4, device="meta")
    model_input(images, index, p, True)  # the first batch copies the recipe's tensors over
    for train in (True, False):
        with _HostToDevice("meta") as watch:
            x = model_input(images, index, p, train, seed=1, epoch=2)
        assert x.shape == (4, 3, 32, 32) and watch.copies == [], (train, watch.copies)


def test_fixed_rgb_values_of_a_preset_become_grey_for_one_channel_data():
    """`--preset paper` (std 1, 1, 1) and torchvision's ImageNet mean/std on Fashion-MNIST's grey images
    (was: "preprocess std must be 1 numbers"): the grey value of each RGB triple, as PIL's "L" mode."""
    from PIL import Image

    from alexnet.data.presets import IMAGENET_MEAN, IMAGENET_STD, resolve

    base = {"dataset": "fashion_mnist", "resize": None, "size": 28, "train_crop": 28, "test_crop": 28, "input_size": 28}
    stats = {"mean_image": torch.full((1, 28, 28), 72.9), "pixel_mean": [72.9], "pixel_std": [90.0], "eigvals": None}
    assert resolve("paper", stats, base, channels=1).std == (1.0,)
    tv = resolve("torchvision", None, base, channels=1)
    for values, got in ((IMAGENET_MEAN, tv.mean), (IMAGENET_STD, tv.std)):
        grey = Image.new("RGB", (1, 1), tuple(round(v) for v in values)).convert("L").getpixel((0, 0))
        assert len(got) == 1 and got[0] == pytest.approx(grey, abs=0.6)
    assert resolve("torchvision", None, dict(base, dataset="image_folder")).mean == tuple(IMAGENET_MEAN)


def test_torchvision_statistics_read_as_torchvisions_times_255():
    """An imported torchvision network's preprocess (config.json, checkpoints, export's JSON) said std
    57.120000000000005: 0.224 * 255 in floats. Each must be torchvision's figure times 255 as decimals."""
    from decimal import Decimal

    from alexnet.interop import torchvision_recipe

    said = json.loads(json.dumps(torchvision_recipe().to_json()))
    exact = [float(Decimal(v) * 255) for v in ("0.485", "0.456", "0.406", "0.229", "0.224", "0.225")]
    assert said["mean"] + said["std"] == exact
    assert "57.12," in json.dumps(said["std"]) + ","


def test_the_torchvision_preset_crops_as_torchvisions_reference():
    """`--preset owt` is torchvision's references/classification recipe: RandomResizedCrop(224) at
    torchvision's own default area and aspect ranges (read from torchvision), with mirrors."""
    import torchvision

    from alexnet.config import resolve_config
    from alexnet.data.augment import random_resized_crop_params
    from alexnet.data.presets import resolve

    reference = torchvision.transforms.RandomResizedCrop(224)
    assert resolve_config("owt", {}).data_preset == "torchvision"
    base = {"dataset": "image_folder", "resize": 256, "size": 256, "train_crop": 224, "test_crop": 224, "input_size": 224}
    p = resolve("torchvision", None, base)
    assert p.scale == tuple(reference.scale) and p.flip
    # The crops training draws: areas over torchvision's range, aspects inside its ratios (where no
    # side is clipped at the image's edge); the fixed 224-of-256 crops were 0.766 of the area each.
    theta = random_resized_crop_params(torch.arange(4000), seed=0, epoch=0, scale=p.scale, flip=p.flip).double()
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    area, aspect, inside = w * h, w / h, (w < 1) & (h < 1)
    lo, hi = reference.scale
    assert area.min() >= lo - 1e-6 and area.max() <= hi + 1e-6 and area.quantile(0.05) < 0.15 and area.quantile(0.95) > 0.9
    assert aspect[inside].min() >= reference.ratio[0] - 1e-6 and aspect[inside].max() <= reference.ratio[1] + 1e-6
    assert 0.4 < (theta[:, 0, 0] < 0).double().mean() < 0.6  # mirrored half the time

"""One rule for a photo's EXIF orientation tag, for every command: the image as a photo viewer shows it.

Phones store a portrait photo sideways with an orientation tag. Training, evaluation, the statistics
and prepare's pack ignored it where predict applied it: a model fine-tuned on phone photos trained on
them sideways and was shown them upright. Each test writes one known upright picture stored in each
of the 8 orientations, and compares what the command sees with the upright picture's own pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from PIL import Image, ImageOps

from alexnet.cli import main
from alexnet.data.device_decode import DeviceDecoder, collate_raw
from alexnet.data.folder import ImageFolderDataset
from alexnet.data.presets import Preprocess
from alexnet.data.stats import StatsAccumulator, cache_key, folder_stats, save_stats
from alexnet.predict import ImageTransform, load_image

# Each tag's stored pixels of an upright picture u, from the EXIF 2.3 definition of where the stored
# 0th row and 0th column lie in the picture (tag 6, "right-top": the stored rows run down the
# picture's right side): independent of PIL's exif_transpose and of alexnet's turn.
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1, :],
    5: lambda u: u.swapaxes(0, 1),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: u[::-1, ::-1].swapaxes(0, 1),
    8: lambda u: np.rot90(u, -1),
}
SIDE = 64  # the loaders' resize and stored square: the upright picture's height, so no resampling at scale 1
TOLERANCE = 3.0  # mean absolute difference, 0-255: JPEG at quality 95 of smooth gradients, and libjpeg's scaling


def upright_picture(height: int, width: int) -> np.ndarray:
    """A smooth (so JPEG keeps it) landscape picture that no flip or turn maps onto itself: red grows to
    the right, green downwards, blue along the diagonal."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([x * 255 / (width - 1), y * 255 / (height - 1), (x + 2 * y) * 255 / (width + 2 * height - 3)],
                    axis=-1).round().astype(np.uint8)


def expected(upright: np.ndarray, side: int = SIDE) -> torch.Tensor:
    """The central ``side`` square of ``upright`` with its shorter side at ``side`` (PIL's box filter for a
    whole reduction): what every command is to see, as a float (3, side, side) tensor."""
    h, w = upright.shape[:2]
    scaled = np.asarray(Image.fromarray(upright).resize((w * side // h, side), Image.BOX)) if h != side else upright
    left = (scaled.shape[1] - side) // 2
    return torch.from_numpy(scaled[:, left : left + side].copy()).permute(2, 0, 1).float()


def tagged_folder(root: Path, upright: np.ndarray, tags=tuple(STORED)) -> Path:
    """``root/data/photos/oN.jpg``: ``upright`` stored in each orientation ``tags`` N, with its tag (1 has one too);
    checked against PIL's exif_transpose, which shows them as photo viewers do."""
    folder = root / "data" / "photos"
    folder.mkdir(parents=True)
    for tag in tags:
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(np.ascontiguousarray(STORED[tag](upright))).save(folder / f"o{tag}.jpg", quality=95, exif=exif.tobytes())
        with Image.open(folder / f"o{tag}.jpg") as im:
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float64)
        assert shown.shape == upright.shape and np.abs(shown - upright).mean() < TOLERANCE, tag
    return root / "data"


def assert_upright(images: dict[int, torch.Tensor], want: torch.Tensor, what: str) -> None:
    """Every tag's image is ``want``, within JPEG's tolerance; the differences are said for all tags at once."""
    diffs = {tag: round(float((x.float().cpu() - want).abs().mean()), 1) for tag, x in images.items()}
    assert all(d < TOLERANCE for d in diffs.values()), f"{what}: mean difference from the upright picture by tag {diffs}"


# 64 x 96: decoded by torchvision's decoder at full size; 256 x 384: by libjpeg at 1/4 (PIL's draft), its
# sides swapped for tags 5-8 before the turn.
SIZES = pytest.mark.parametrize("shape", [(SIDE, 96), (4 * SIDE, 384)], ids=["full", "draft"])


@SIZES
def test_the_folder_loader_sees_every_orientation_upright(tmp_path, shape):
    """What train, evaluate and features read: tags 2-8 came back as stored (mean differences
    of 41 to 99 from the upright picture; tag 1's: 0.5)."""
    upright = upright_picture(*shape)
    ds = ImageFolderDataset(tagged_folder(tmp_path, upright), SIDE, SIDE)
    images = {int(Path(path).stem[1:]): ds[i][0] for i, (path, _) in enumerate(ds.samples)}
    assert sorted(images) == list(STORED)
    assert_upright(images, expected(upright), "ImageFolderDataset")


def _device_decoded(root: Path, device: str) -> dict[int, torch.Tensor]:
    """Each image as ``--decode device`` gives it on ``device``: the loader's raw items, decoded in one batch."""
    ds = ImageFolderDataset(root, SIDE, SIDE)
    ds.raw = True
    images, _, index = DeviceDecoder(ds, device)(collate_raw([ds[i] for i in range(len(ds))]))
    return {int(Path(ds.samples[i][0]).stem[1:]): x for i, x in zip(index.tolist(), images)}


@SIZES
def test_decoding_on_the_device_sees_every_orientation_upright(tmp_path, shape):
    """``--decode device`` (here on the CPU, torchvision's decoder as nvJPEG's stand-in): a tagged JPEG under
    twice the resize went to the device's decoder as bytes, and came back as stored."""
    upright = upright_picture(*shape)
    assert_upright(_device_decoded(tagged_folder(tmp_path, upright), "cpu"), expected(upright), "--decode device (cpu)")


@requires_cuda
def test_nvjpeg_decoding_sees_every_orientation_upright(tmp_path):
    """nvJPEG ignores the tag (torchvision's decode_jpeg on cuda drops apply_exif_orientation): tagged JPEGs
    are decoded by the CPU workers, upright, and the batch is the same pictures."""
    upright = upright_picture(SIDE, 96)
    assert_upright(_device_decoded(tagged_folder(tmp_path, upright), "cuda"), expected(upright), "--decode device (cuda)")


def test_statistics_see_every_orientation_upright(tmp_path):
    """The mean image of eight files that all show one picture is that picture; it was the blur of its
    eight stored orientations."""
    upright = upright_picture(SIDE, 96)
    ds = ImageFolderDataset(tagged_folder(tmp_path, upright), SIDE, SIDE)
    stats = folder_stats(ds, list(range(len(ds))), show_progress=False)
    assert stats["count"] == 8 and not stats["bad"]
    assert_upright({0: torch.from_numpy(np.load(stats["mean_image"]))}, expected(upright), "the mean image")


def test_prepare_packs_every_orientation_upright(tmp_path, capsys):
    """``alexnet prepare``'s shards hold each photo upright, and its mean image is the picture."""
    upright = upright_picture(256, 384)  # prepare's size: 256
    data = tagged_folder(tmp_path / "photos", upright)
    assert main(["prepare", "--data", str(data), "--out", str(tmp_path / "packed"), "--workers", "0", "--progress", "off"]) == 0
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    files = (tmp_path / "packed" / "train-files.txt").read_text().split("\n")
    shards = [np.load(tmp_path / "packed" / name) for name, _ in index["splits"]["train"]["shards"]]
    images = np.concatenate(shards)
    tags = {int(Path(f).stem[1:]): torch.from_numpy(images[i]) for i, f in enumerate(f for f in files if f)}
    want = expected(upright, 256)
    assert sorted(tags) == list(STORED)
    assert_upright(tags, want, "prepare's shards")
    assert_upright({0: torch.from_numpy(np.load(tmp_path / "packed" / "mean_image.npy"))}, want, "prepare's mean image")


def test_predict_sees_every_orientation_upright(tmp_path):
    """predict's input (a file) and the recipe's transforms() of a PIL image: upright, as the loaders see it."""
    upright = upright_picture(SIDE, 96)
    folder = tagged_folder(tmp_path, upright) / "photos"
    pre = Preprocess.from_dict({"dataset": "image_folder", "resize": SIDE, "size": SIDE, "train_crop": SIDE,
                                "test_crop": SIDE, "input_size": SIDE, "padding": 0, "flip": True, "mean": [0.0] * 3,
                                "std": [1.0] * 3})  # the input is the stored pixels themselves
    files = {tag: folder / f"o{tag}.jpg" for tag in STORED}
    assert_upright({tag: load_image(path, pre) for tag, path in files.items()}, expected(upright), "predict's load_image")
    transform = ImageTransform(pre)
    pil = {}
    for tag, path in files.items():
        with Image.open(path) as image:
            pil[tag] = transform(image)
    assert_upright(pil, expected(upright), "transforms() of a PIL image")


def test_statistics_cached_before_the_rule_are_computed_again(tmp_path, monkeypatch):
    """A release before the rule cached the mean image of these files as they are stored (sideways): under
    the same key it was read back, and a run subtracted it from the photos it now sees upright."""
    upright = upright_picture(SIDE, 96)
    ds = ImageFolderDataset(tagged_folder(tmp_path, upright), SIDE, SIDE)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALEXNET_CACHE", str(cache))
    cache.mkdir()
    old = cache_key([path for path, _ in ds.samples], ds.root, SIDE, SIDE, "stats-1")  # that release's key
    stale = StatsAccumulator()
    stale.add(torch.zeros(8, 3, SIDE, SIDE, dtype=torch.uint8))  # any mean image but the picture's
    save_stats(stale.result(), cache / f"stats-{old}.json", cache / f"mean-{old}.npy", {"bad": [], "root": str(ds.root)})
    stats = folder_stats(ds, list(range(len(ds))), show_progress=False)
    assert_upright({0: torch.from_numpy(np.load(stats["mean_image"]))}, expected(upright), "the mean image")


def test_only_a_turned_image_is_copied():
    """An untagged image's pixels go to the resize as decoded: PIL's come as an (H, W, C) array seen as
    (C, H, W), and a copy of each to (C, H, W) order cost 0.4-0.5 ms of a 5-10 ms decode on every photo
    PIL decodes (large JPEGs, PNGs). A turned one is upright and contiguous (its resize read a
    transposed view slowly)."""
    from alexnet.data.folder import _turned

    u = upright_picture(6, 8)
    for tag, store in STORED.items():
        x = torch.from_numpy(np.ascontiguousarray(store(u))).permute(2, 0, 1)  # as pil_image makes it
        turned = _turned(x, tag)
        assert np.array_equal(turned.permute(1, 2, 0).numpy(), u), tag
        if tag == 1:
            assert turned.data_ptr() == x.data_ptr() and turned.stride() == x.stride()
        else:
            assert turned.is_contiguous(), tag

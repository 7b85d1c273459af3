"""model_input, as training, evaluate, predict and features call it: each kind of crop against an
independent float64 computation of the same crop and normalisation, in the memory format asked
for, and made once in that format (no second batch-sized copy)."""

from __future__ import annotations

import functools

import pytest
import torch
from test_scale_augment import _bilinear_reference

from alexnet.data import augment
from alexnet.data.loaders import model_input
from alexnet.data.presets import Preprocess

B, STORED, CROP = 4, 20, 16
SEED, EPOCH = 3, 2


def _recipe(
    channels: int, mean_image: bool, pca: bool, scale: bool = False, input_size: int = CROP, stored: int = STORED, crop: int = CROP
) -> Preprocess:
    g = torch.Generator().manual_seed(channels * 10 + mean_image)
    spec = {"dataset": "image_folder", "mean": [100.0, 110.0, 120.0][:channels], "std": [50.0, 61.0, 70.0][:channels],
            "size": stored, "resize": stored, "train_crop": crop, "test_crop": crop, "input_size": input_size}
    if mean_image:
        spec["mean_image"] = torch.rand(channels, stored, stored, generator=g) * 200 + 20
    if pca:
        spec["pca"] = {"eigvals": [0.2, 0.02, 0.005], "eigvecs": [[0.58, -0.72, 0.38], [0.58, 0.02, -0.81], [0.57, 0.69, 0.44]],
                       "alpha_std": 0.1}
    if scale:
        spec["scale"] = [0.35, 1.0]
    return Preprocess.from_dict(spec)


def _normalised(x: torch.Tensor, pre: Preprocess, shift: torch.Tensor | None) -> torch.Tensor:
    """(x - mean + shift) / std of the whole stored images, in float64."""
    c = x.shape[1]
    mean = pre.mean_image.double() if pre.mean_image is not None else torch.tensor(pre.mean, dtype=torch.float64).reshape(c, 1, 1)
    out = x.double() - mean
    if shift is not None:
        out = out + shift.double().reshape(-1, c, 1, 1)
    return out / torch.tensor(pre.std, dtype=torch.float64).reshape(1, c, 1, 1)


def _cut(full: torch.Tensor, tops: list[int], lefts: list[int], mirrors: list[bool]) -> torch.Tensor:
    """Crops of CROP x CROP by slicing, mirrored where asked."""
    crops = [full[i, :, t : t + CROP, le : le + CROP] for i, (t, le) in enumerate(zip(tops, lefts))]
    return torch.stack([c.flip(-1) if m else c for c, m in zip(crops, mirrors)])


def _expected(kind: str, x: torch.Tensor, pre: Preprocess, index: torch.Tensor, view: int = 0) -> torch.Tensor:
    """The float64 batch that ``kind`` of crop should give. The random draws (offsets, mirrors, PCA
    alphas, resized-crop maps) are augment's, keyed by (seed, epoch, index): what is checked is the
    crop and normalisation made of them."""
    if kind in ("train", "scale"):
        shift = augment.pca_noise(index, SEED, EPOCH, *(torch.tensor(v) for v in (pre.pca.eigvals, pre.pca.eigvecs)),
                                  pre.pca.alpha_std) if pre.pca else None
        full = _normalised(x, pre, shift)
        if kind == "scale":
            theta = augment.random_resized_crop_params(index, SEED, EPOCH, pre.scale, flip=pre.flip)
            return torch.stack([torch.from_numpy(_bilinear_reference(full[i].numpy(), theta[i].double().numpy(), CROP))
                                for i in range(len(x))])
        top, left, mirror = augment.random_crop_params(STORED, STORED, CROP, index, SEED, EPOCH, pre.flip)
        return _cut(full, top.tolist(), left.tolist(), mirror.tolist())
    full, far, mid = _normalised(x, pre, None), STORED - CROP, (STORED - CROP) // 2
    if kind == "test":
        return _cut(full, [mid] * len(x), [mid] * len(x), [False] * len(x))
    # the paper's ten views: corners tl, tr, bl, br, the centre, then the same five mirrored
    t, le = [0, 0, far, far, mid][view % 5], [0, far, 0, far, mid][view % 5]
    return _cut(full, [t] * len(x), [le] * len(x), [view >= 5] * len(x))


def _made(kind: str, x: torch.Tensor, pre: Preprocess, index: torch.Tensor, channels_last: bool, view: int = 0) -> torch.Tensor:
    if kind in ("train", "scale"):
        return model_input(x, index, pre, True, SEED, EPOCH, channels_last=channels_last)
    if kind == "test":
        return model_input(x, index, pre, False, channels_last=channels_last)
    return model_input(x, index, pre, False, channels_last=channels_last, views=10, view=view)


def _path(monkeypatch, path: str) -> None:
    """Run crop_normalize's ``path``: the C kernel (where it builds), the per-image PyTorch loop, or
    the whole-batch gather that a GPU runs."""
    if path == "loop":
        monkeypatch.setattr(augment, "_crop_kernel", lambda *a: False)
    elif path == "batched":
        monkeypatch.setattr(augment, "crop_normalize", functools.partial(augment.crop_normalize, batched=True))


CASES = [(c, m, p) for c in (1, 3) for m in (True, False) for p in ((False, True) if c == 3 else (False,))]
# The resized crop (scale) is one grid_sample, whichever path crop_normalize would take: run once.
PATH_KINDS = [(p, k) for p in ("kernel", "loop", "batched") for k in ("train", "test", "ten_crop", "scale")
              if k != "scale" or p == "kernel"]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("channels,mean_image,pca", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("path,kind", PATH_KINDS, ids=lambda v: str(v))
def test_every_crop_matches_float64_in_the_layout_asked_for(monkeypatch, path, channels, mean_image, pca, kind, channels_last):
    _path(monkeypatch, path)
    pre = _recipe(channels, mean_image, pca, scale=kind == "scale")
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (B, channels, STORED, STORED), generator=g, dtype=torch.uint8)
    index = torch.tensor([5, 0, 11, 3])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for view in range(10 if kind == "ten_crop" else 1):
        got = _made(kind, x, pre, index, channels_last, view)
        assert got.shape == (B, channels, CROP, CROP) and got.dtype == torch.float32
        assert got.is_contiguous(memory_format=fmt), got.stride()
        if channels_last and channels == 3:
            assert got.stride() == (CROP * CROP * 3, 1, CROP * 3, 3)  # NHWC in memory, as the model's convolutions read it
        torch.testing.assert_close(got.double(), _expected(kind, x, pre, index, view), rtol=1e-5, atol=1e-4)
    if kind == "ten_crop":  # all ten at once: (B * 10, C, s, s), the views of an image adjacent
        every = model_input(x, index, pre, False, channels_last=channels_last, views=10)
        assert every.is_contiguous(memory_format=fmt)
        want = torch.stack([_expected(kind, x, pre, index, v) for v in range(10)], 1).flatten(0, 1)
        torch.testing.assert_close(every.double(), want, rtol=1e-5, atol=1e-4)


def test_a_crop_resized_to_the_input_size_keeps_the_layout_asked_for():
    """A recipe whose input is larger than its crop (interpolated): against the float64 crop resized
    by torch's float64 NCHW interpolation."""
    pre = _recipe(3, True, False, input_size=24)
    x = torch.randint(0, 256, (B, 3, STORED, STORED), dtype=torch.uint8)
    want = torch.nn.functional.interpolate(_expected("test", x, pre, torch.arange(B)), size=(24, 24), mode="bilinear",
                                           align_corners=False)
    for channels_last, fmt in ((True, torch.channels_last), (False, torch.contiguous_format)):
        got = model_input(x, torch.arange(B), pre, False, channels_last=channels_last)
        assert got.shape == (B, 3, 24, 24) and got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def _batch_sized_allocations(fn, nbytes: int) -> int:
    """How many allocations of at least ``nbytes`` the ops that ``fn`` runs make (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    return sum(1 for e in prof.events() if e.name != "[memory]" and e.self_cpu_memory_usage >= nbytes)


@pytest.mark.parametrize("kind", ["train", "test", "ten_crop", "ten_at_once"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_the_input_batch_is_made_once_in_its_layout(kind, channels_last):
    """The fixed-size crops are written in the model's layout, not made NCHW and copied to it: one
    batch-sized allocation (the pool emptied first), not two; the ten views at once are cut from
    the images, not from ten copies of each (counted from the size of those copies: smaller than the
    float batch). (The resized crop's grid_sample writes NCHW whatever it is given: that path still
    copies.)"""
    size = 2 * CROP  # crops of 32 from 40 px images
    pre = _recipe(3, True, True, input_size=size, stored=40, crop=size)
    x = torch.randint(0, 256, (B, 3, 40, 40), dtype=torch.uint8)
    model_input(x, torch.arange(B), pre, kind == "train", channels_last=channels_last)  # the kernel built, the recipe's tensors made
    augment._POOL.clear()  # a pooled batch would hide the allocation counted here
    view = {"ten_crop": {"view": 9, "views": 10}, "ten_at_once": {"views": 10}}.get(kind, {})
    least = x.numel() * 10 if kind == "ten_at_once" else B * 3 * size * size * 4
    made = _batch_sized_allocations(lambda: model_input(x, torch.arange(B), pre, kind == "train", channels_last=channels_last, **view),
                                    least)
    assert made == 1

"""Scale augmentation (preset "photos"): random area/aspect crops resampled to the crop size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alexnet.data import augment
from alexnet.data.loaders import model_input
from alexnet.data.presets import Preprocess


def _bilinear_reference(img: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    """float64 bilinear resampling of img (C, H, W) by the affine map theta (2, 3), the way
    affine_grid + grid_sample(align_corners=False, padding_mode="border") define it."""
    c, h, w = img.shape
    out = np.zeros((c, size, size))
    for i in range(size):
        for j in range(size):
            xo, yo = (2 * j + 1) / size - 1, (2 * i + 1) / size - 1
            xn = theta[0, 0] * xo + theta[0, 1] * yo + theta[0, 2]
            yn = theta[1, 0] * xo + theta[1, 1] * yo + theta[1, 2]
            u = min(max(((xn + 1) * w - 1) / 2, 0), w - 1)  # border: clamp the sampling point
            v = min(max(((yn + 1) * h - 1) / 2, 0), h - 1)
            u0, v0 = int(math.floor(u)), int(math.floor(v))
            u1, v1 = min(u0 + 1, w - 1), min(v0 + 1, h - 1)
            a, b = u - u0, v - v0
            out[:, i, j] = (
                img[:, v0, u0] * (1 - a) * (1 - b) + img[:, v0, u1] * a * (1 - b)
                + img[:, v1, u0] * (1 - a) * b + img[:, v1, u1] * a * b
            )
    return out


def test_resized_crop_against_float64_formula():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(4, 3, 20, 16), dtype=np.uint8))
    mean = torch.from_numpy(rng.uniform(80, 160, size=(3, 20, 16)).astype(np.float32))
    inv_std = torch.tensor([1 / 60, 1 / 55, 1 / 70]).reshape(3, 1, 1)
    shift = torch.from_numpy(rng.normal(0, 5, size=(4, 3)))
    theta = augment.random_resized_crop_params(torch.arange(4), seed=3, epoch=1, scale=(0.3, 1.0))
    out = augment.resized_crop_normalize(x, 12, theta, mean, inv_std, shift)
    assert out.shape == (4, 3, 12, 12) and out.dtype == torch.float32
    for b in range(4):
        norm = (x[b].numpy().astype(np.float64) - mean.numpy() + shift[b].numpy().reshape(3, 1, 1)) * inv_std.numpy()
        ref = _bilinear_reference(norm, theta[b].double().numpy(), 12)
        np.testing.assert_allclose(out[b].numpy(), ref, atol=2e-4)


def test_crop_parameters_cover_the_ranges_and_are_fixed_by_seed_epoch_index():
    n = 20_000
    theta = augment.random_resized_crop_params(torch.arange(n), seed=1, epoch=0, scale=(0.35, 1.0))
    width, height = theta[:, 0, 0].abs().double(), theta[:, 1, 1].double()
    assert bool((width <= 1).all() and (height <= 1).all())
    # the crop stays inside the image: |centre| + half-side <= 1 on both axes
    assert bool(((theta[:, 0, 2].abs() + width) <= 1 + 1e-6).all() and ((theta[:, 1, 2].abs() + height) <= 1 + 1e-6).all())
    unclipped = (width < 1) & (height < 1)
    area, aspect = (width * height)[unclipped], (width / height)[unclipped]
    assert area.min() >= 0.35 - 1e-6 and area.max() <= 1.0
    assert aspect.min() >= 3 / 4 - 1e-6 and aspect.max() <= 4 / 3 + 1e-6
    assert abs(float((theta[:, 0, 0] < 0).double().mean()) - 0.5) < 0.015  # mirrors: 4.2 sigma
    # "anywhere inside the image": each centre is uniform over the room its side leaves (-1: at the
    # left or top edge, 1: at the right or bottom), quartiles -0.5, 0, 0.5 within 0.03 (5 sigma)
    for centre, side in ((theta[:, 0, 2].double(), width), (theta[:, 1, 2].double(), height)):
        room = (centre / (1 - side))[side < 1]
        quartiles = torch.quantile(room, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
        assert quartiles.tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0], abs=0.03)
    again = augment.random_resized_crop_params(torch.tensor([5, 7]), seed=1, epoch=0, scale=(0.35, 1.0))
    assert torch.equal(again, theta[[5, 7]])  # per image, whatever else is in the batch
    other = augment.random_resized_crop_params(torch.tensor([5, 7]), seed=1, epoch=1, scale=(0.35, 1.0))
    assert not torch.equal(other, again)


def test_photos_preset_trains_on_scaled_crops_and_tests_on_the_centre():
    pre = Preprocess.from_dict({"dataset": "image_folder", "mean": [100.0, 110.0, 120.0], "std": [50.0, 50.0, 50.0],
                                "size": 10, "resize": 10, "train_crop": 8, "test_crop": 8, "input_size": 8, "scale": [0.35, 1.0]})
    x = torch.randint(0, 256, (3, 3, 10, 10), dtype=torch.uint8)
    index = torch.arange(3)
    train = model_input(x, index, pre, True, seed=0, epoch=0)
    theta = augment.random_resized_crop_params(index, 0, 0, (0.35, 1.0))
    mean, inv = torch.tensor(pre.mean).reshape(3, 1, 1), 1 / torch.tensor(pre.std).reshape(3, 1, 1)
    assert torch.equal(train, augment.resized_crop_normalize(x, 8, theta, mean, inv))
    test = model_input(x, index, pre, False)
    torch.testing.assert_close(test, (x[:, :, 1:9, 1:9].float() - mean) * inv)

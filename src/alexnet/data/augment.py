"""Batched augmentation on uint8 tensors, on whatever device the batch lives on.

Randomness is drawn *per sample* from (seed, epoch, sample index) with a counter-based hash, not
from a stateful generator: the same image gets the same crop in the same epoch however the data
is split across workers, ranks or a resume, which makes distributed runs match one-process runs
and resumed runs match uninterrupted ones.
"""

from __future__ import annotations

import torch

_MASK63 = (1 << 63) - 1


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """A splitmix64-style finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * -7723592293110705685  # 0x94D049BB133111EB as int64
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def sample_uniform(seed: int, epoch: int, index: torch.Tensor, stream: int, count: int = 1) -> torch.Tensor:
    """Uniform [0, 1) float64 numbers, ``count`` per sample, fixed by (seed, epoch, index, stream).

    Returns a (len(index), count) tensor on ``index``'s device.
    """
    index = index.to(torch.int64).reshape(-1, 1)
    key = (seed * 1_000_003 + epoch) * 1_000_033 + stream
    key = int(_mix64(torch.tensor([key & _MASK63], dtype=torch.int64)).item())
    j = torch.arange(count, device=index.device, dtype=torch.int64).reshape(1, -1)
    h = _mix64(_mix64(index * 0x9E3779B9 + key) + j * 0x632BE5AB + 1)
    return ((h >> 11) & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def sample_normal(seed: int, epoch: int, index: torch.Tensor, stream: int, count: int = 1) -> torch.Tensor:
    """Standard normal float64 numbers per sample (Box-Muller on :func:`sample_uniform`)."""
    u = sample_uniform(seed, epoch, index, stream, 2 * count)
    u1, u2 = u[:, :count].clamp_min(1e-300), u[:, count:]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)


def crop_flip(
    x: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut a ``size`` x ``size`` patch at (top, left) of each image, mirrored where ``flip``.

    ``x`` is (B, C, H, W); ``top``, ``left`` and ``flip`` have B entries. One gather for the whole
    batch on an accelerator (:func:`crop_flip_gather`), B slice copies on a CPU.
    """
    b, c = x.shape[:2]
    if x.device.type == "cpu":
        # On a CPU, B strided slice copies beat one B*C*size*size-element gather by ~5x.
        out = torch.empty((b, c, size, size), dtype=x.dtype)
        tops, lefts = top.tolist(), left.tolist()
        flips = flip.tolist() if flip is not None else [False] * b
        for i in range(b):
            patch = x[i, :, tops[i] : tops[i] + size, lefts[i] : lefts[i] + size]
            out[i] = patch.flip(-1) if flips[i] else patch
        return out
    return crop_flip_gather(x, size, top, left, flip)


def crop_flip_gather(
    x: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`crop_flip` as one gather for the whole batch: the fast way on a GPU."""
    b, c = x.shape[:2]
    ar = torch.arange(size, device=x.device)
    rows = top.to(x.device).long().reshape(b, 1) + ar
    cols = left.to(x.device).long().reshape(b, 1) + ar
    if flip is not None:
        cols = torch.where(flip.to(x.device).reshape(b, 1), cols.flip(1), cols)
    bi = torch.arange(b, device=x.device).reshape(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).reshape(1, c, 1, 1)
    return x[bi, ci, rows.reshape(b, 1, size, 1), cols.reshape(b, 1, 1, size)]


def random_crop_params(
    h: int, w: int, size: int, index: torch.Tensor, seed: int, epoch: int, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(top, left, mirror) of each sample's random ``size`` crop of an ``h`` x ``w`` image.

    Mirror has probability 1/2; all three are fixed by (seed, epoch, index).
    """
    u = sample_uniform(seed, epoch, index, stream=STREAM_CROP, count=3)
    top = (u[:, 0] * (h - size + 1)).floor().long()
    left = (u[:, 1] * (w - size + 1)).floor().long()
    mirror = u[:, 2] < 0.5 if flip else None
    return top, left, mirror


def random_crop_flip(
    x: torch.Tensor,
    size: int,
    index: torch.Tensor,
    seed: int,
    epoch: int,
    padding: int = 0,
    flip: bool = True,
) -> torch.Tensor:
    """Random ``size`` crops (after zero ``padding``) and mirrors with probability 1/2.

    The paper's augmentation 1 (224 patches of 256 images and their reflections).
    """
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    top, left, mirror = random_crop_params(h, w, size, index.to(x.device), seed, epoch, flip)
    return crop_flip(x, size, top, left, mirror)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` patch of every image."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (0-255) -> float: subtract ``mean`` and divide by ``std`` (both on the 0-255 scale).

    ``mean`` may be per channel (C,) or a mean image (C, H, W) of the same size as ``x``.
    """
    x = x.to(dtype)
    mean = mean.to(x.device, dtype)
    std = std.to(x.device, dtype)
    if mean.dim() == 1:
        mean = mean.reshape(1, -1, 1, 1)
    if std.dim() == 1:
        std = std.reshape(1, -1, 1, 1)
    return (x - mean) / std


# Streams of per-sample randomness (see sample_uniform): one per kind of draw, so adding a new kind
# never changes the draws of an old one.
STREAM_CROP = 1
STREAM_PCA = 2


def pca_noise(
    index: torch.Tensor,
    seed: int,
    epoch: int,
    eigvals: torch.Tensor,
    eigvecs: torch.Tensor,
    alpha_std: float = 0.1,
    scale: float = 255.0,
) -> torch.Tensor:
    """The paper's "fancy PCA" colour shift, one RGB offset per image: ``eigvecs @ (alpha * eigvals)``.

    ``eigvals`` (3,) and ``eigvecs`` (3, 3; columns are eigenvectors) are those of the RGB covariance
    of training pixels on the **[0, 1] scale**; alpha ~ N(0, ``alpha_std``) per image and eigenvector,
    drawn from (seed, epoch, index) so the shift is the same however batches are split. The offset is
    computed on the [0, 1] scale and multiplied by ``scale`` (255: the uint8 pipeline's units).
    Returns (B, 3) float64 on ``index``'s device.
    """
    alpha = sample_normal(seed, epoch, index, STREAM_PCA, count=eigvals.numel()) * alpha_std
    vals = eigvals.to(alpha.device, torch.float64)
    vecs = eigvecs.to(alpha.device, torch.float64)
    return (alpha * vals) @ vecs.T * scale


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's test-time views: four corner and one central ``size`` patch, then their mirrors.

    ``x`` is (B, C, H, W); returns (B, 10, C, size, size) in the order top-left, top-right,
    bottom-left, bottom-right, centre, then each of those five mirrored (the same ten views as
    torchvision's ``ten_crop``, whose mirrored corners come in the order tr, tl, br, bl).
    All ten views are cut from the one decoded image.
    """
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"ten_crop: crop {size} is larger than the {h}x{w} image")
    tops = (0, 0, h - size, h - size, (h - size) // 2)
    lefts = (0, w - size, 0, w - size, (w - size) // 2)
    five = torch.stack([x[..., t : t + size, l : l + size] for t, l in zip(tops, lefts)], dim=1)
    return torch.cat([five, five.flip(-1)], dim=1)



def crop_normalize(
    x: torch.Tensor,
    size: int,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor | None,
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    shift: torch.Tensor | None = None,
    batched: bool | None = None,
) -> torch.Tensor:
    """float32 ``(crop_flip(x) - crop_flip(mean) + shift) * inv_std`` for a uint8 batch ``x``.

    ``mean`` is a mean image (C, H, W) cropped like each image, or per channel (C, 1, 1);
    ``inv_std`` is (C, 1, 1); ``shift`` (B, C) is a per-image colour offset (PCA noise). On a CPU
    each image is done start to finish while it is in cache (~1.7x faster than whole-batch steps);
    elsewhere (or with ``batched=True``) in whole-batch steps with one gather per crop.
    """
    b, c = x.shape[:2]
    mean_image = mean.shape[-1] > 1
    if batched or (batched is None and x.device.type != "cpu"):
        out = crop_flip_gather(x, size, top, left, flip).to(torch.float32)
        out.sub_(crop_flip_gather(mean.expand(b, *mean.shape), size, top, left, flip) if mean_image else mean)
        if shift is not None:
            out.add_(shift.to(torch.float32).reshape(b, c, 1, 1))
        return out.mul_(inv_std)
    out = torch.empty((b, c, size, size), dtype=torch.float32)
    flips = flip.tolist() if flip is not None else [False] * b
    inv_std = inv_std.to(torch.float32)
    # Scale once per batch, so that each image takes three passes over its crop: uint8 -> scaled
    # float, minus the scaled mean, plus the scaled shift. A mirrored image is cut mirrored from
    # the uint8 image (a quarter of the bytes) and from the mirrored mean at the mirrored offset.
    mean_scaled = (mean.to(torch.float32) * inv_std).contiguous()
    mean_mirror = mean_scaled.flip(-1) if mean_image else mean_scaled
    width = mean.shape[-1]
    shift = (shift.to(torch.float32) * inv_std.reshape(1, c)).reshape(b, c, 1, 1) if shift is not None else None
    for i, (t, l) in enumerate(zip(top.tolist(), left.tolist())):
        oi = out[i]
        crop = x[i, :, t : t + size, l : l + size]
        if flips[i]:
            torch.mul(crop.flip(-1), inv_std, out=oi)
            m = mean_mirror[:, t : t + size, width - l - size : width - l] if mean_image else mean_mirror
        else:
            torch.mul(crop, inv_std, out=oi)
            m = mean_scaled[:, t : t + size, l : l + size] if mean_image else mean_scaled
        oi.sub_(m)
        if shift is not None:
            oi.add_(shift[i])
    return out


"""Batched augmentation on uint8 tensors, on whatever device the batch lives on.

Randomness is drawn *per sample* from (seed, epoch, sample index) with a counter-based hash, not
from a stateful generator: the same image gets the same crop in the same epoch however the data
is split across workers, ranks or a resume, which makes distributed runs match one-process runs
and resumed runs match uninterrupted ones.
"""

from __future__ import annotations

import ctypes
import threading

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


def crop_flip_gather(
    x: torch.Tensor, size: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor | None = None, repeat: int = 1
) -> torch.Tensor:
    """Cut a ``size`` x ``size`` patch at (top, left) of each image of ``x`` (B, C, H, W), mirrored
    where ``flip``: one gather for the whole batch (``top``, ``left``, ``flip`` have B entries; with
    ``repeat``, B * repeat: that many patches of each image, adjacent)."""
    b, c = x.shape[0] * repeat, x.shape[1]
    ar = torch.arange(size, device=x.device)
    rows = top.to(x.device).long().reshape(b, 1) + ar
    cols = left.to(x.device).long().reshape(b, 1) + ar
    if flip is not None:
        cols = torch.where(flip.to(x.device).reshape(b, 1), cols.flip(1), cols)
    bi = (torch.arange(b, device=x.device) // repeat).reshape(b, 1, 1, 1)
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


# Streams of per-sample randomness (see sample_uniform): one per kind of draw, so adding a new kind
# never changes the draws of an old one.
STREAM_CROP = 1
STREAM_PCA = 2
STREAM_SCALE = 3


def random_resized_crop_params(
    index: torch.Tensor, seed: int, epoch: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Per-sample affine maps (B, 2, 3) for :func:`torch.nn.functional.affine_grid`: a crop covering a
    fraction ``scale`` of the image's area with aspect ``ratio`` (log-uniform), anywhere inside the
    image, mirrored with probability 1/2 (Szegedy et al.'s scale augmentation, torchvision's
    ``RandomResizedCrop`` without its rejection loop: a side that would leave the image is clipped).

    Fixed by (seed, epoch, index), like every other draw here. float32, on ``index``'s device.
    """
    u = sample_uniform(seed, epoch, index, stream=STREAM_SCALE, count=5)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lo, hi = torch.log(torch.tensor(ratio[0], dtype=torch.float64)), torch.log(torch.tensor(ratio[1], dtype=torch.float64))
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image's side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # affine_grid's coordinates run over [-1, 1]: the crop's half-sides are its fractions, and its
    # centre may move by what is left on each side.
    cx = (2 * u[:, 2] - 1) * (1 - width)
    cy = (2 * u[:, 3] - 1) * (1 - height)
    sx = torch.where(u[:, 4] < 0.5, -width, width) if flip else width
    theta = torch.zeros(index.numel(), 2, 3, dtype=torch.float64, device=u.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, height, cy
    return theta.to(torch.float32)


def resized_crop_normalize(
    x: torch.Tensor, size: int, theta: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 ``(x - mean + shift) * inv_std`` of a uint8 batch, each image resampled (bilinear) from
    the region ``theta`` (see :func:`random_resized_crop_params`) to ``size`` x ``size``.

    Normalising before resampling subtracts from every pixel the mean image at the same place, as
    the fixed-size crops do.
    """
    b, c = x.shape[:2]
    full = x.to(torch.float32).sub_(mean.to(torch.float32))
    if shift is not None:
        full.add_(shift.to(torch.float32).reshape(b, c, 1, 1))
    full.mul_(inv_std.to(torch.float32))
    grid = torch.nn.functional.affine_grid(theta.to(x.device), [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(full, grid, mode="bilinear", padding_mode="border", align_corners=False)


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


def ten_crop_params(h: int, w: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, mirror) of the paper's ten test views of an ``h`` x ``w`` image.

    Four corner and one central ``size`` patch (its offset rounded down), then the same five mirrored:
    top-left, top-right, bottom-left, bottom-right, centre, as the paper and Caffe's ``oversample``.
    torchvision's ``ten_crop`` gives the same ten views where both margins are even, with its
    mirrored corners in the order tr, tl, br, bl; for an odd margin its centre (``round``) and its
    mirrored patches (cut from the mirrored image) lie a pixel apart.
    """
    if size > h or size > w:
        raise ValueError(f"ten_crop: crop {size} is larger than the {h}x{w} image")
    tops = [0, 0, h - size, h - size, (h - size) // 2]
    lefts = [0, w - size, 0, w - size, (w - size) // 2]
    return torch.tensor(tops * 2), torch.tensor(lefts * 2), torch.tensor([False] * 5 + [True] * 5)


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
    memory_format: torch.memory_format = torch.contiguous_format,
    repeat: int = 1,
) -> torch.Tensor:
    """float32 ``(crop(x) - crop(mean) + shift) * inv_std`` for a uint8 batch ``x``.

    ``mean`` is a mean image (C, H, W) cropped like each image, or per channel (C, 1, 1);
    ``inv_std`` is (C, 1, 1); ``shift`` (B, C) is a per-image colour offset (PCA noise). On a CPU
    each image is done start to finish while it is in cache (~1.7x faster than whole-batch steps);
    elsewhere (or with ``batched=True``) in whole-batch steps with one gather per crop. The batch is
    written in ``memory_format`` (``torch.channels_last``: the model's), not copied to it after:
    a second batch-sized buffer (147 MiB at 256 crops of 224). ``repeat``: crops per image, adjacent
    (the ten test views; ``top``, ``left``, ``flip``, ``shift`` have B * repeat entries), cut from
    ``x`` as it is rather than from ``repeat`` copies of each image.
    """
    b, c = x.shape[0] * repeat, x.shape[1]  # b: crops
    mean_image = mean.shape[-1] > 1
    if batched or (batched is None and x.device.type != "cpu"):
        out = crop_flip_gather(x, size, top, left, flip, repeat).to(torch.float32, memory_format=memory_format)
        out.sub_(crop_flip_gather(mean.expand(b, *mean.shape), size, top, left, flip) if mean_image else mean)
        if shift is not None:
            out.add_(shift.to(torch.float32).reshape(b, c, 1, 1))
        return out.mul_(inv_std)
    out = _reusable_batch((b, c, size, size), memory_format=memory_format)
    inv_std = inv_std.to(torch.float32)
    # Scale once per batch: then each output element is (uint8 * s - scaled mean) + scaled shift.
    mean_scaled = (mean.to(torch.float32) * inv_std).contiguous()
    shift = (shift.to(torch.float32) * inv_std.reshape(1, c)).contiguous() if shift is not None else None
    if x.dtype == torch.uint8 and _crop_kernel(x, mean_scaled, inv_std, shift, top, left, flip, size, out, repeat):
        return out
    # Without the C kernel: three passes over each crop while it is in cache. A mirrored image is
    # cut mirrored from the uint8 image (a quarter of the bytes) and from the mirrored mean at the
    # mirrored offset. ``out=`` writes through the image's view of ``out`` in its strides.
    flips = flip.tolist() if flip is not None else [False] * b
    mean_mirror = mean_scaled.flip(-1) if mean_image else mean_scaled
    width = mean.shape[-1]
    shift = shift.reshape(b, c, 1, 1) if shift is not None else None
    for i, (t, le) in enumerate(zip(top.tolist(), left.tolist())):
        oi = out[i]
        crop = x[i // repeat, :, t : t + size, le : le + size]
        if flips[i]:
            torch.mul(crop.flip(-1), inv_std, out=oi)
            m = mean_mirror[:, t : t + size, width - le - size : width - le] if mean_image else mean_mirror
        else:
            torch.mul(crop, inv_std, out=oi)
            m = mean_scaled[:, t : t + size, le : le + size] if mean_image else mean_scaled
        oi.sub_(m)
        if shift is not None:
            oi.add_(shift[i])
    return out


def _crop_kernel(
    x: torch.Tensor,
    mean_scaled: torch.Tensor,
    inv_std: torch.Tensor,
    shift: torch.Tensor | None,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor | None,
    size: int,
    out: torch.Tensor,
    repeat: int = 1,
) -> bool:
    """:func:`crop_normalize`'s CPU work in one pass per image with the C kernel (``_kernels/augment.c``).

    Returns False (nothing done) where the kernel cannot be built; the results are bitwise those of
    the PyTorch path.
    """
    from .. import _kernels

    lib = _kernels.load("augment")
    if lib is None:
        return False
    fn = lib.crop_normalize_u8
    if not getattr(fn, "argtypes", None):
        long, ptr = ctypes.c_long, ctypes.c_void_p
        fn.argtypes = [ptr, long, long, long, ptr, long, long, ptr, ptr, ptr, ptr, ptr, long, ptr, long, long, long, long]
        fn.restype = ctypes.c_int
    (_, c, h, w), b = x.shape, top.numel()  # b: crops, ``repeat`` of each image
    x = x.contiguous()
    if mean_scaled.shape[-2:] != (1, 1) and mean_scaled.shape[-2:] != (h, w):
        raise ValueError(f"crop_normalize: mean image {tuple(mean_scaled.shape)} does not match images {h}x{w}")
    top = top.to(torch.int64).contiguous()
    left = left.to(torch.int64).contiguous()
    # The kernel checks too (memory safety), but an error is clearer from here.
    if b and (min(top.min(), left.min()) < 0 or top.max() + size > h or left.max() + size > w or size > 1024):
        raise ValueError(f"crop_normalize: a {size}x{size} crop falls outside the {h}x{w} images")
    flip = flip.to(torch.uint8).contiguous() if flip is not None else None
    inv_std = inv_std.reshape(c).contiguous()
    keep = (x, mean_scaled, inv_std, shift, top, left, flip)  # alive until the threads finish
    xp, mp, sp, shp, tp, lp, fp = (t.data_ptr() if t is not None else None for t in keep)
    mh, mw = mean_scaled.shape[-2:]
    nhwc = _nhwc(out)
    _kernels.parallel(
        lambda i0, i1: fn(xp, c, h, w, mp, mh, mw, sp, shp, tp, lp, fp, size, out.data_ptr(), nhwc, repeat, i0, i1),
        b,
        min_tasks_per_thread=8,
    )
    return True


def _nhwc(out: torch.Tensor) -> int:
    """1 where the kernel is to write ``out`` (B, C, S, S) channels-last, 0 where NCHW; a ValueError
    for any other layout (a view with gaps), which it would write past."""
    if out.is_contiguous():
        return 0
    if out.is_contiguous(memory_format=torch.channels_last):
        return 1
    raise ValueError(f"crop_normalize: output strides {out.stride()} are neither NCHW nor channels_last")


# -- output batches that are written again once nobody holds them -----------------------------------
# A float32 batch of 128 crops of 224 is 77 MB: malloc hands a block that large out as fresh pages
# from mmap and returns it on free, so every batch would pay ~0.2 ms per image in page faults (more
# than the crop itself). FFCV keeps its output batches for the same reason. A pooled batch is handed
# out again only when its storage has no user but the pool (no tensor, view or autograd graph
# holds it), so reuse can never change a batch that someone still reads.
_POOL: dict[tuple, list[tuple[torch.Tensor, int]]] = {}
_POOL_LOCK = threading.Lock()
_POOL_PER_SHAPE = 3


def _storage_users(t: torch.Tensor) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)  # not in every torch: then no reuse
    return count(t.untyped_storage()._cdata) if count is not None else None


def _reusable_batch(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape`` in ``memory_format``: a pooled one that nobody else
    holds, else a new one."""
    key = (tuple(shape), dtype, memory_format)
    with _POOL_LOCK:
        entries = _POOL.setdefault(key, [])
        for t, alone in entries:
            if _storage_users(t) == alone:
                # A new tensor object over the pooled storage: while the caller holds it (or any
                # view of it), the storage's use count shows it. The pooled object never leaves.
                return t.view(shape)
        t = torch.empty(shape, dtype=dtype, memory_format=memory_format)
        alone = _storage_users(t)
        if alone is None or len(entries) >= _POOL_PER_SHAPE:
            return t
        if len(_POOL) > 8:  # shapes seen long ago (another batch size): let them go
            _POOL.clear()
            _POOL[key] = entries
        entries.append((t, alone))
        return t.view(shape)

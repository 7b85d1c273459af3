"""LRN forward and backward as hand-written Triton kernels (the CUDA path of :mod:`alexnet.lrn`).

Sum convention, windows as :func:`alexnet.lrn._split`, optionally of ``relu(x)`` and with the channels
cut into ``groups`` that are normalised apart (the paper's two towers)::

    d_c  = k + alpha * sum_{m=c-before}^{c+after} x_m^2,   y_c = x_c * d_c^-beta
    dx_i = g_i d_i^-beta - 2 alpha beta x_i * sum_{j=i-after}^{i+before} g_j x_j d_j^(-beta-1)

The tensor is seen as (outer, C, inner) with one stride per axis, so NCHW, channels_last (and any
layout whose spatial dimensions merge into one stride) run without a copy. Grid: (positions /
BLOCK, groups). A program owns BLOCK positions of one group and walks its channels once, keeping
running window sums: a channel entering the window is added, the one leaving it subtracted. Cost
is O(C + n) per position, not O(C n). The squares are taken in float64, where those of float32
values are exact (and cannot overflow), and the sums are compensated (Knuth's TwoSum keeps each
addition's rounding error in a second float64): a plain float64 sum kept the rounding error of a
large square after it left the window (x = 1e8 among values near 1 put errors of 2e-4 into every
later channel; x = 2e19, whose float32 square is inf, made them NaN). Sums of squares are clamped
at 0 besides, so that no rounding makes a denominator's base negative.
The backward saves nothing but x: it recomputes the denominators, with three running sums (for
the newest channel, the one leaving the transposed window, and the one whose gradient is written).
Every value is loaded as stored and computed in float32 (float64 for the sums). One difference
from the formula evaluated window by window: an inf or NaN in x poisons the running sums, so the
channels after its window (same position and group) come out NaN too, not only those within it.

Sizes (batch, spatial, strides) are runtime arguments that Triton does not specialise on, so a
new batch or image size reuses the compiled kernel; the window and ``relu`` are compile-time.
Importing this module imports Triton; :mod:`alexnet.lrn` imports it only on first CUDA use.
"""

# No `from __future__ import annotations`: Triton 3.0's interpreter (torch 2.4's) knows a constexpr
# parameter by its annotation's object, and took the string "tl.constexpr" for a runtime value.
import contextlib
import itertools
from typing import Any

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 256  # positions per program: 2 per thread with 4 warps, enough loads in flight per SM
NUM_WARPS = 4
# Arguments that change with the batch or image size: never specialised (no recompilation).
# Strides are left out too: the layouts differ in them alone, and specialising on them gains nothing
# (the vector axis is positions, whose addresses go through a division by ``inner`` anyway).
_FWD_RUNTIME = ["P", "inner", "xsn", "xsc", "xsi", "osn", "osc", "osi"]
_BWD_RUNTIME = _FWD_RUNTIME + ["gsn", "gsc", "gsi"]


@triton.jit
def _ld(p, ch, stride, CG, live):
    """Channel ``ch`` as float32, 0 outside [0, CG)."""
    ok = live & (ch >= 0) & (ch < CG)
    return tl.load(p + tl.cast(ch, tl.int64) * stride, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _lx(v, RELU: tl.constexpr):
    """x as the LRN sees it: relu(x) when fused with the ReLU before it (NaN stays NaN)."""
    v = v.to(tl.float32)
    if RELU:
        v = tl.where(v < 0, 0.0, v)
    return v


@triton.jit
def _sq(xp, ch, xsc, CG, live, RELU: tl.constexpr):
    """Square of channel ``ch`` as float64 (exact), 0 outside [0, CG) so windows stop at edges."""
    v = _lx(_ld(xp, ch, xsc, CG, live), RELU).to(tl.float64)
    return v * v


@triton.jit
def _add(hi, lo, v):
    """The compensated sum (hi, lo) plus ``v``: TwoSum's hi + v, and its exact rounding error added to lo."""
    s = hi + v
    b = s - hi
    return s, lo + ((hi - (s - b)) + (v - b))


@triton.jit
def _move(hi, lo, enters, leaves):
    """A window sum (hi, lo) as ``enters`` comes into the window and ``leaves`` goes out."""
    hi, lo = _add(hi, lo, enters)
    return _add(hi, lo, -leaves)


@triton.jit
def _sum(hi, lo):
    """The value of a compensated sum of squares, at least 0."""
    return tl.maximum(hi + lo, 0.0)


@triton.jit
def _pow(s, alpha, k, e):
    """(k + alpha * s) ** e from a float64 window sum s."""
    d = k + alpha * s.to(tl.float32)
    return tl.exp2(e * tl.log2(d))


@triton.jit
def _bases(x_ptr, o_ptr, P, inner, CG, xsn, xsc, xsi, osn, osc, osi, BLOCK: tl.constexpr):
    """Pointers to channel 0 of this program's group at its BLOCK positions, and their mask."""
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = pos < P
    outer = pos // inner
    i = pos - outer * inner
    group = tl.program_id(1).to(tl.int64) * CG
    xp = x_ptr + outer * xsn + i * xsi + group * xsc
    op = o_ptr + outer * osn + i * osi + group * osc
    return xp, op, live


@triton.jit(do_not_specialize=_FWD_RUNTIME)
def _lrn_fwd_kernel(
    x_ptr,
    y_ptr,
    P,
    inner,
    CG,
    xsn,
    xsc,
    xsi,
    osn,
    osc,
    osi,
    alpha,
    beta,
    k,
    BEFORE: tl.constexpr,
    AFTER: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    xp, yp, live = _bases(x_ptr, y_ptr, P, inner, CG, xsn, xsc, xsi, osn, osc, osi, BLOCK)
    SIZE: tl.constexpr = BEFORE + AFTER + 1
    s, s_lo = tl.zeros([BLOCK], dtype=tl.float64), tl.zeros([BLOCK], dtype=tl.float64)
    new = _sq(xp, 0, xsc, CG, live, RELU)
    # Step e brings channel e into the window sum and writes channel c = e - AFTER, whose window
    # [c - BEFORE, c + AFTER] = [e - SIZE + 1, e] is then complete.
    for e in range(CG + AFTER):
        nxt = _sq(xp, e + 1, xsc, CG, live, RELU)  # issued a step early: more loads in flight
        s, s_lo = _move(s, s_lo, new, _sq(xp, e - SIZE, xsc, CG, live, RELU))
        c = e - AFTER
        ok = live & (c >= 0)
        y = _lx(_ld(xp, c, xsc, CG, live), RELU) * _pow(_sum(s, s_lo), alpha, k, -beta)
        tl.store(yp + tl.cast(c, tl.int64) * osc, y.to(y_ptr.dtype.element_ty), mask=ok)
        new = nxt


@triton.jit
def _t(x, g, ch, s, CG, alpha, beta, k):
    """g x d^(-beta-1) of channel ``ch`` (window sum ``s``) as float64; 0 outside [0, CG)."""
    ok = (ch >= 0) & (ch < CG)
    return tl.where(ok, g * x * _pow(s, alpha, k, -beta - 1.0), 0.0).to(tl.float64)


@triton.jit
def _dx(xp, gp, i, xsc, gsc, CG, live, s_out, tsum, alpha, beta, k, RELU: tl.constexpr):
    """The gradient of channel ``i``: g_i d_i^(-beta) (window sum ``s_out``) less 2 alpha beta x_i
    times ``tsum``, the float64 sum of its transposed window's t terms; under ``RELU``, 0 where the
    ReLU's input was <= 0 (its backward)."""
    xr = _ld(xp, i, xsc, CG, live)
    dx = _ld(gp, i, gsc, CG, live) * _pow(s_out, alpha, k, -beta)
    dx -= 2.0 * alpha * beta * _lx(xr, RELU) * tsum.to(tl.float32)
    if RELU:
        dx = tl.where(xr > 0, dx, 0.0)
    return dx


@triton.jit(do_not_specialize=_BWD_RUNTIME)
def _lrn_bwd_kernel(
    x_ptr,
    g_ptr,
    dx_ptr,
    P,
    inner,
    CG,
    xsn,
    xsc,
    xsi,
    osn,
    osc,
    osi,
    gsn,
    gsc,
    gsi,
    alpha,
    beta,
    k,
    BEFORE: tl.constexpr,
    AFTER: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    xp, dp, live = _bases(x_ptr, dx_ptr, P, inner, CG, xsn, xsc, xsi, osn, osc, osi, BLOCK)
    gp, _, _ = _bases(g_ptr, g_ptr, P, inner, CG, gsn, gsc, gsi, gsn, gsc, gsi, BLOCK)
    SIZE: tl.constexpr = BEFORE + AFTER + 1
    # Step e brings channel e into s_new, the window of a = e - AFTER; t_a = g_a x_a d_a^(-b-1) joins
    # tsum, t_{a-SIZE} (window sum s_old) leaves it, so that tsum is the transposed window
    # [i - AFTER, i + BEFORE] of channel i = a - BEFORE, whose gradient (window sum s_out) is written.
    zero = tl.zeros([BLOCK], dtype=tl.float64)
    s_new, s_new_lo, s_old, s_old_lo, s_out, s_out_lo, tsum, tsum_lo = zero, zero, zero, zero, zero, zero, zero, zero
    new = _sq(xp, 0, xsc, CG, live, RELU)
    g_new = _ld(gp, -AFTER, gsc, CG, live)
    for e in range(CG + SIZE - 1):
        # The two loads that miss the cache (x and g of channels not seen yet) are issued a step early.
        nxt = _sq(xp, e + 1, xsc, CG, live, RELU)
        g_nxt = _ld(gp, e + 1 - AFTER, gsc, CG, live)
        mid = _sq(xp, e - SIZE, xsc, CG, live, RELU)  # leaves s_new's window, enters s_old's
        s_new, s_new_lo = _move(s_new, s_new_lo, new, mid)
        s_old, s_old_lo = _move(s_old, s_old_lo, mid, _sq(xp, e - 2 * SIZE, xsc, CG, live, RELU))
        s_out, s_out_lo = _move(s_out, s_out_lo, _sq(xp, e - BEFORE, xsc, CG, live, RELU),
                                _sq(xp, e - SIZE - BEFORE, xsc, CG, live, RELU))
        a = e - AFTER
        old = a - SIZE
        x_old = _lx(_ld(xp, old, xsc, CG, live), RELU)
        tsum, tsum_lo = _move(
            tsum,
            tsum_lo,
            _t(_lx(_ld(xp, a, xsc, CG, live), RELU), g_new, a, _sum(s_new, s_new_lo), CG, alpha, beta, k),
            _t(x_old, _ld(gp, old, gsc, CG, live), old, _sum(s_old, s_old_lo), CG, alpha, beta, k),
        )
        i = a - BEFORE
        ok = live & (i >= 0)
        dx = _dx(xp, gp, i, xsc, gsc, CG, live, _sum(s_out, s_out_lo), tsum + tsum_lo, alpha, beta, k, RELU)
        tl.store(dp + tl.cast(i, tl.int64) * osc, dx.to(dx_ptr.dtype.element_ty), mask=ok)
        new = nxt
        g_new = g_nxt


def _strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(outer, channel, inner) strides of ``t`` seen as (N, C, prod(spatial)); None if the spatial
    dimensions do not merge into one stride (then the caller copies)."""
    dims = [(n, s) for n, s in zip(t.shape[2:], t.stride()[2:], strict=True) if n != 1]
    for (_, outer), (n, inner) in itertools.pairwise(dims):
        if outer != n * inner:
            return None
    return t.stride(0), t.stride(1), dims[-1][1] if dims else 1


def _merged(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied to contiguous only when its spatial dimensions have no single stride."""
    return t if _strides(t) is not None else t.contiguous()


def check(x: torch.Tensor, groups: int) -> None:
    """Raise ValueError for inputs the kernels do not take."""
    if x.dim() < 3:
        raise ValueError(f"LRN expects (N, C, ...) input, got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"Triton LRN takes float32, bfloat16 or float16, got {x.dtype}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"LRN with groups={groups} needs a channel count divisible by it, got {x.shape[1]}")


def _device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it x's (a no-op for CPU tensors)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _launch(x: torch.Tensor, size: int, relu: bool, groups: int) -> tuple[tuple[int, int], tuple, dict]:
    """Grid, (P, inner, C per group) and compile-time arguments of either kernel for ``x``."""
    n, c = x.shape[:2]
    inner = x[0, 0].numel() if n and c else 0
    p = n * inner
    meta = dict(BEFORE=size // 2, AFTER=(size - 1) // 2, RELU=bool(relu), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return (triton.cdiv(p, BLOCK), groups), (p, inner, c // groups), meta


def forward_launch(
    x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int
) -> tuple[tuple[int, int], tuple, dict]:
    """Grid, positional and keyword arguments of the forward kernel (the tests also use it to check
    that what Triton specialises on does not depend on the batch or image size)."""
    grid, sizes, meta = _launch(x, size, relu, groups)
    return grid, (x, y, *sizes, *_strides(x), *_strides(y), alpha, beta, k), meta


def backward_launch(
    x: torch.Tensor,
    g: torch.Tensor,
    dx: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    relu: bool,
    groups: int,
) -> tuple[tuple[int, int], tuple, dict]:
    """As :func:`forward_launch`, for the backward kernel."""
    grid, sizes, meta = _launch(x, size, relu, groups)
    return grid, (x, g, dx, *sizes, *_strides(x), *_strides(dx), *_strides(g), alpha, beta, k), meta


def lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool = False, groups: int = 1
) -> torch.Tensor:
    """LRN of ``x`` (of ``relu(x)`` if ``relu``), sum convention, by the Triton kernel; no autograd."""
    check(x, groups)
    x = _merged(x)
    y = torch.empty_like(x)
    if x.numel():
        grid, args, meta = forward_launch(x, y, size, alpha, beta, k, relu, groups)
        with _device(x):
            _lrn_fwd_kernel[grid](*args, **meta)
    return y


def lrn_backward(
    x: torch.Tensor,
    grad_y: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    relu: bool = False,
    groups: int = 1,
) -> torch.Tensor:
    """dL/dx of :func:`lrn_forward` from dL/dy; the denominators are recomputed from ``x``."""
    x = _merged(x)
    g = _merged(grad_y.to(x.dtype))  # any layout (an expanded gradient too), copied only if unmergeable
    dx = torch.empty_like(x)
    if x.numel():
        grid, args, meta = backward_launch(x, g, dx, size, alpha, beta, k, relu, groups)
        with _device(x):
            _lrn_bwd_kernel[grid](*args, **meta)
    return dx


class LRNTritonFunction(torch.autograd.Function):
    """Autograd wrapper: saves x only, the backward kernel recomputes the rest."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int
    ) -> torch.Tensor:
        """:func:`lrn_forward` of ``x``, saving ``x`` and the settings for :meth:`backward`."""
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k, relu, groups)
        return lrn_forward(x, size, alpha, beta, k, relu, groups)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None, None]:
        """The gradient with respect to ``x`` (none for the settings): the backward kernel's, or plain
        ops' under ``create_graph`` or where that kernel cannot be built."""
        from .lrn import _plain_grad, _run_triton

        (x,) = ctx.saved_tensors
        # Under create_graph (a gradient penalty) plain ops, which autograd differentiates again;
        # also where the backward kernel fails to build (the forward's did: _run_triton warns once).
        gx = None if torch.is_grad_enabled() else _run_triton(lrn_backward, x, grad_y, *ctx.params)
        if gx is None:
            gx = _plain_grad(x, grad_y, *ctx.params)
        return gx, None, None, None, None, None, None


def lrn_triton(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool = False, groups: int = 1
) -> torch.Tensor:
    """LRN (sum convention) of ``x`` or, with ``relu``, of ``relu(x)``, differentiable, by Triton.

    Runs on any tensor Triton launches on: CUDA, or the CPU under ``TRITON_INTERPRET=1``.
    """
    check(x, groups)
    if torch.is_grad_enabled() and x.requires_grad:
        return LRNTritonFunction.apply(x, size, alpha, beta, k, relu, groups)
    return lrn_forward(x, size, alpha, beta, k, relu, groups)

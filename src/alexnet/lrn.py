"""Local response normalisation (Krizhevsky et al. 2012, section 3.3).

The paper's formula, over the N channels at one spatial position::

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]**2) ** beta

with k=2, n=5, alpha=1e-4, beta=0.75. Note the *sum* of squares. ``torch.nn.LocalResponseNorm``,
Caffe and cuda-convnet divide alpha by n (they average the squares), so the paper's alpha=1e-4
is their alpha=5e-4. Both conventions live here, named, because weights imported from Caffe
(k=1, averaged alpha=1e-4) lose accuracy if the wrong one is used.

Four paths, picked per call by :meth:`LocalResponseNorm.forward`:

* CPU, float32/float64/bfloat16, eager: a fused C kernel (``_kernels/lrn.c``, compiled on first
  use and cached; see :mod:`alexnet._kernels`). The forward reads x and writes y once and saves
  nothing but x; the backward recomputes the denominator in registers (cheaper than storing it)
  and reads g and x once. ``beta = 0.75`` is computed as ``rsqrt(d) * sqrt(rsqrt(d))``.
* CUDA, float32/bfloat16/float16, eager: hand-written Triton kernels (:mod:`alexnet.lrn_triton`,
  imported on first CUDA use), forward and backward, fused with the ReLU and the groups as the C
  kernel is, on NCHW and channels_last tensors without a copy. Compiled once per process for each
  dtype, window and ``relu`` flag, never per batch or image size. ``ALEXNET_TRITON_LRN=0`` turns
  them off; without Triton (or for float64) CUDA takes the eager paths below.
* Without a C compiler on the CPU, without Triton on CUDA, or for other dtypes: :class:`_LRNFunction`,
  a hand-written autograd Function whose window sum over channels is ``n`` shifted adds, several
  times cheaper than the generic pooling kernels torch uses (:func:`lrn_reference` when no
  gradient is wanted).
* Under ``torch.compile`` the C and Triton kernels run as custom operators (:func:`lrn_op`,
  opaque calls in the compiled graph); under TorchScript, tracing, ONNX export and our torch.export:
  :func:`lrn_reference`, plain ops that exporters understand (the files run without this package).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad

from . import _kernels
from .checks import is_finite, is_whole, require

Convention = Literal["sum", "mean"]

# The ranges of LRN's numbers (AlexNetConfig's lrn_* options take them from here): name -> (test, wanted).
# k = 0 divides 0 by 0 on a dark patch.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "alpha": (lambda v: v >= 0, " >= 0"),
    "beta": (lambda v: v >= 0, " >= 0"),
    "k": (lambda v: v > 0, " > 0"),
}


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Sum of ``t[:, j]`` for ``j`` in ``[i - before, i + after]`` (zero outside), for every ``i``.

    ``t`` is (N, C, *spatial); the result has the same shape.
    """
    c = t.shape[1]
    # F.pad takes pairs from the last dim backwards; pad only dim 1 (channels).
    pad = [0, 0] * (t.dim() - 2) + [before, after]
    padded = F.pad(t, pad)
    out = padded.narrow(1, 0, c).clone()
    for offset in range(1, before + after + 1):
        out.add_(padded.narrow(1, offset, c))
    return out


def _split(size: int) -> tuple[int, int]:
    # Channels before and after i in the window. For odd n this is n//2 on each side, as in the
    # paper; for even n torch's convention (more channels before) is kept.
    return size // 2, (size - 1) // 2


def lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Plain tensor-op LRN (sum convention): differentiable by autograd, traceable, exportable."""
    before, after = _split(size)
    denom = _window_sum(x * x, before, after).mul(alpha).add(k)
    return x * denom.pow(-beta)


def _terms(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> tuple[torch.Tensor, ...]:
    """(y, denominator, scale) of the sum-convention LRN of ``x``."""
    before, after = _split(size)
    denom = _window_sum(x * x, before, after).mul_(alpha).add_(k)
    scale = denom.pow(-beta)
    return x * scale, denom, scale


def _reference_grad(x, y, denom, scale, grad_y, size: int, alpha: float, beta: float) -> torch.Tensor:
    """dL/dx of the LRN of ``x`` from dL/dy, given its :func:`_terms`."""
    before, after = _split(size)
    # dy_j/dx_i = [i=j] d_j^-b - 2 a b x_j x_i d_j^(-b-1) [i in window(j)].
    # i in window(j)  <=>  j in [i - after, i + before]: the transposed window.
    inner = grad_y * y / denom
    return grad_y * scale - (2.0 * alpha * beta) * x * _window_sum(inner, after, before)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        y, denom, scale = _terms(x, size, alpha, beta, k)
        ctx.save_for_backward(x, y, denom, scale)
        ctx.params = (size, alpha, beta, k)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, y, denom, scale = ctx.saved_tensors
        size, alpha, beta, k = ctx.params
        if torch.is_grad_enabled():  # create_graph: the gradient as ops of x itself, for a double backward
            y, denom, scale = _terms(x, size, alpha, beta, k)
        return _reference_grad(x, y, denom, scale, grad_y, size, alpha, beta), None, None, None, None


# -- the C kernel ------------------------------------------------------------------------------------
_KERNEL_NAMES = {torch.float32: "lrn_f32", torch.float64: "lrn_f64", torch.bfloat16: "lrn_bf16"}
_BLOCK = 128  # inner positions per task; BLK in lrn.c


def _kernel_lib() -> ctypes.CDLL | None:
    lib = _kernels.load("lrn")
    if lib is not None and not getattr(lib, "_alexnet_typed", False):
        long, int_, dbl, ptr = ctypes.c_long, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
        for prefix in _KERNEL_NAMES.values():
            fwd, bwd = getattr(lib, prefix + "_forward"), getattr(lib, prefix + "_backward")
            fwd.argtypes = [ptr, ptr, long, long, long, long, int_, int_, dbl, dbl, dbl, int_, long]
            bwd.argtypes = [ptr, ptr, ptr, long, long, long, long, int_, int_, dbl, dbl, dbl, int_, long]
            fwd.restype = bwd.restype = ctypes.c_int
        lib._alexnet_typed = True
    return lib


def kernel_available(x: torch.Tensor | None = None) -> bool:
    """Whether the fused C kernel can run (on ``x``, if given): CPU, float32/float64/bfloat16, compiled."""
    if x is not None and (x.device.type != "cpu" or x.dtype not in _KERNEL_NAMES or x.dim() < 3):
        return False
    return _kernel_lib() is not None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a layout the kernel walks: contiguous (channel stride H*W) or channels_last (1)."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _run_kernel(direction: str, tensors: list[torch.Tensor], out: torch.Tensor, params: tuple) -> None:
    x = tensors[0]
    c, inner = x.shape[1], (1 if not x.is_contiguous() else x[0, 0].numel())
    tasks = (x.numel() // (c * inner)) * (-(-inner // _BLOCK))
    fn = getattr(_kernel_lib(), _KERNEL_NAMES[x.dtype] + "_" + direction)
    ptrs = [t.data_ptr() for t in tensors] + [out.data_ptr()]
    if tasks:
        _kernels.parallel(lambda t0, t1: fn(*ptrs, c, inner, t0, t1, *params), tasks)


def lrn_kernel_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool = False, groups: int = 1
) -> torch.Tensor:
    """LRN (sum convention), of ``relu(x)`` if ``relu``, by the C kernel; ``x`` on the CPU,
    float32, float64 or bfloat16; ``groups`` > 1 only for a channels_last ``x``."""
    x = _dense(x)
    y = torch.empty_like(x)  # keeps x's memory format
    _run_kernel("forward", [x], y, (*_split(size), alpha, beta, k, int(relu), groups))
    return y


def _kernel_backward(x: torch.Tensor, grad_y: torch.Tensor, params: tuple) -> torch.Tensor:
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    g = grad_y.to(x.dtype).contiguous(memory_format=fmt)
    grad_x = torch.empty_like(x)
    _run_kernel("backward", [x, g], grad_x, params)
    return grad_x


# -- the fused kernels as operators -------------------------------------------------------------------
# torch.compile cannot look into the C kernel or the Triton launch, and the plain ops it would
# compile instead cost 3x the whole training step on a CPU (benchmarks/train_step.py --compile
# --ablate: 40 img/s, 118 without LRN). As custom operators the kernels stay opaque calls inside
# compiled graphs; eager training calls on the CPU go through them too (one wrapper per kernel;
# eager inference calls the C kernel itself, LocalResponseNorm._lrn says why). Each falls
# back to the plain ops where its kernel is missing (no C compiler, no Triton). Whichever runs,
# an operator computes in and returns the layout of :func:`_dense` (its fake says the same).
def _grouped(fn, groups: int, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
    """``fn`` (plain ops) over each of ``groups`` channel groups of ``x`` (and of ``more``), in
    ``x``'s layout: the operators' fallback where no kernel runs."""
    if groups == 1:
        return fn(x, *more)
    c = x.shape[1] // groups
    parts = zip(*(t.split(c, dim=1) for t in (x, *more)))
    out = torch.cat([fn(*p) for p in parts], dim=1)
    return out.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)


# Schemas written out: torch < 2.5 cannot infer them from this module's postponed (string) annotations.
@torch.library.custom_op(
    "alexnet::lrn", mutates_args=(), schema="(Tensor x, SymInt size, float alpha, float beta, float k, bool relu, SymInt groups) -> Tensor"
)
def lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int) -> torch.Tensor:
    """LRN (sum convention) of ``x``, or of ``relu(x)``, by the fused kernel of ``x``'s device."""
    x = _dense(x)
    triton = _triton_lrn(x)  # None off CUDA
    y = _run_triton(triton.lrn_forward, x, size, alpha, beta, k, relu, groups) if triton is not None else None
    if y is not None:
        return y
    if kernel_available(x):
        return lrn_kernel_forward(x, size, alpha, beta, k, relu, groups)
    return _grouped(lambda t: _terms(F.relu(t) if relu else t, size, alpha, beta, k)[0], groups, x)


@torch.library.custom_op(
    "alexnet::lrn_backward",
    mutates_args=(),
    schema="(Tensor x, Tensor grad_y, SymInt size, float alpha, float beta, float k, bool relu, SymInt groups) -> Tensor",
)
def lrn_backward_op(
    x: torch.Tensor, grad_y: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int
) -> torch.Tensor:
    """dL/dx of :func:`lrn_op` from dL/dy; the kernels recompute the denominators from ``x``."""
    x = _dense(x)
    triton = _triton_lrn(x)  # None off CUDA
    gx = _run_triton(triton.lrn_backward, x, grad_y, size, alpha, beta, k, relu, groups) if triton is not None else None
    if gx is not None:
        return gx
    if kernel_available(x):
        return _kernel_backward(x, grad_y, (*_split(size), alpha, beta, k, int(relu), groups))
    return _plain_grad(x, grad_y, size, alpha, beta, k, relu, groups)


def _plain_grad(
    x: torch.Tensor, grad_y: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int
) -> torch.Tensor:
    """:func:`lrn_backward_op` in plain ops (autograd can differentiate them again)."""

    def grad(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        r = F.relu(t) if relu else t
        gx = _reference_grad(r, *_terms(r, size, alpha, beta, k), g, size, alpha, beta)
        return gx * (t > 0) if relu else gx

    return _grouped(grad, groups, x, grad_y.to(x.dtype))


@lrn_op.register_fake
def _(x, size, alpha, beta, k, relu, groups):
    return torch.empty_like(_dense(x))


@lrn_backward_op.register_fake
def _(x, grad_y, size, alpha, beta, k, relu, groups):
    return torch.empty_like(_dense(x))


def _lrn_op_setup(ctx, inputs, output) -> None:
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = params


def _lrn_op_backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph (a gradient penalty, a Hessian-vector product): plain ops autograd can differentiate
        return _plain_grad(x, grad_y, *ctx.params), None, None, None, None, None, None
    return lrn_backward_op(x, grad_y, *ctx.params), None, None, None, None, None, None


lrn_op.register_autograd(_lrn_op_backward, setup_context=_lrn_op_setup)


_plain_ops = False  # set by plain_ops()


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """LRN as plain ops inside the block, for torch.export (:func:`alexnet.export.export_pt2`):
    a program that calls this package's operator needs the package to load.

    Not ``torch.compiler.is_exporting()``: it is missing before torch 2.7, and dynamo long took it
    for True inside torch.compile too, whose graphs then lost the fused kernels."""
    global _plain_ops
    before, _plain_ops = _plain_ops, True
    try:
        yield
    finally:
        _plain_ops = before


def _exporting() -> bool:
    """Under TorchScript, tracing, ONNX export or :func:`plain_ops`: plain ops only, which exporters
    and loaders without this package understand."""
    return _plain_ops or torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _transformed(x: torch.Tensor) -> bool:
    """Whether ``x`` is inside a ``torch.func`` transform (grad, vmap, jacrev, hessian, jvp) or carries a
    forward-mode tangent (``torch.autograd.forward_ad``): the fused operator and :class:`_LRNFunction`
    have no rules for them (``torch.func.grad`` refused them; forward mode dropped the tangent, a
    silent zero derivative), the plain ops of :func:`lrn_reference` have all of autograd's."""
    if torch.compiler.is_compiling():  # the compiled graph's operators differentiate as eager ones do
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(x) or forward_ad.unpack_dual(x).tangent is not None


# What the operators' kernels take, decided without touching them (torch.compile traces this).
_OP_DTYPES = {"cpu": tuple(_KERNEL_NAMES), "cuda": (torch.float32, torch.bfloat16, torch.float16)}


_triton_state: dict[str, object] = {}  # "module": alexnet.lrn_triton or None; "ran": the functions that worked


def _triton_lrn(x: torch.Tensor) -> ModuleType | None:
    """:mod:`alexnet.lrn_triton` if it should compute LRN of ``x`` (CUDA, float32/bfloat16/float16,
    Triton importable, not turned off by ``ALEXNET_TRITON_LRN=0``), else None."""
    if not x.is_cuda or os.environ.get("ALEXNET_TRITON_LRN", "1") == "0":
        return None
    if "module" not in _triton_state:
        try:  # imported here, not at the top: importing Triton costs seconds and is optional
            from . import lrn_triton
        except ImportError:
            lrn_triton = None
        _triton_state["module"] = lrn_triton
    module = _triton_state["module"]
    return module if module is not None and x.dtype in module.DTYPES else None


def _run_triton(fn: Callable[..., torch.Tensor], *args) -> torch.Tensor | None:
    """``fn(*args)``, a function of :mod:`alexnet.lrn_triton`; None, with a warning and Triton off for
    this process, if its first call fails (Triton present but unable to build kernels on this GPU).
    The callers then compute LRN with PyTorch ops, eager or under torch.compile alike."""
    ran = _triton_state.setdefault("ran", set())
    if fn.__name__ in ran:
        return fn(*args)
    try:
        y = fn(*args)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure to build or launch: the plain-op path is correct too)
        warnings.warn(f"Triton LRN kernel unavailable ({type(e).__name__}: {e}); using PyTorch ops", stacklevel=3)
        _triton_state["module"] = None
        return None
    ran.add(fn.__name__)
    return y


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels.

    Args:
        size: Number of neighbouring channels ``n`` in the window (the channel itself included).
        alpha: Scale ``alpha``; interpreted according to ``convention``.
        beta: Exponent ``beta``.
        k: Additive constant ``k``.
        convention: ``"sum"`` is the paper's formula (alpha multiplies the sum of squares);
            ``"mean"`` divides alpha by ``size`` like ``torch.nn.LocalResponseNorm``, Caffe and
            cuda-convnet. The positional arguments are torch's, but the default is the paper's:
            ``LocalResponseNorm(5, a, b, k)`` is torch's ``LocalResponseNorm(5, 5 * a, b, k)``;
            pass ``convention="mean"`` for torch's own.
        groups: Channel groups normalised apart (the paper's two towers: 2).
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        convention: Convention = "sum",
        groups: int = 1,
    ) -> None:
        """The layer with the settings above; ConfigError naming one out of range (size and groups whole
        numbers >= 1; alpha, beta, k finite and in range; convention "sum" or "mean")."""
        super().__init__()
        # Checked here, not met later as the custom operator's schema error or as NaN outputs.
        for name, value in (("size", size), ("groups", groups)):
            require(is_whole(value, 1), f"LRN {name}", "a whole number >= 1", value)
        for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
            test, wanted = RANGES[name]
            require(is_finite(value) and test(value), f"LRN {name}", f"a finite number{wanted}", value)
        require(convention in ("sum", "mean"), "LRN convention", "'sum' or 'mean'", convention)
        self.size, self.groups = int(size), int(groups)
        self.alpha, self.beta, self.k, self.convention = float(alpha), float(beta), float(k), convention

    @property
    def sum_alpha(self) -> float:
        """Alpha in the paper's (sum) convention."""
        return self.alpha if self.convention == "sum" else self.alpha / self.size

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """LRN of ``x``; with ``relu=True``, LRN of ``relu(x)`` (fused into one pass by the C and Triton kernels)."""
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: one node of the graph, run as here later
            return fx_lrn(x, self.size, self.sum_alpha, self.beta, self.k, self.groups, relu)
        if x.dim() < 3:
            raise ValueError(f"LRN expects (N, C, ...) input, got shape {tuple(x.shape)}")
        g, (n, c) = self.groups, x.shape[:2]
        if c % g:
            raise ValueError(f"LRN with groups={g} needs a channel count divisible by {g}, got {c}")
        if _transformed(x):  # plain ops, which torch.func and forward-mode AD differentiate; no layout queries (vmap has none)
            r = F.relu(x) if relu else x
            return torch.cat([lrn_reference(part, self.size, self.sum_alpha, self.beta, self.k) for part in r.chunk(g, dim=1)], dim=1)
        compiling = torch.compiler.is_compiling()  # the operators below, never the eager-only paths
        triton_lrn = _triton_lrn(x) if not compiling and not _exporting() and x.numel() else None
        if triton_lrn is not None:  # groups, ReLU and layout all handled in the kernel
            y = _run_triton(triton_lrn.lrn_triton, x, self.size, self.sum_alpha, self.beta, self.k, relu, g)
            if y is not None:
                return y
        fused = self._fused(x)
        if g == 1:
            return self._lrn(x, relu, fused)
        # Each group's channels are normalised on their own.
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if channels_last and fused:
            # The kernel keeps the groups apart itself: all of a position's channels in one pass
            # (~2x faster than a view with C/g channels per position).
            return self._lrn(x, relu, fused, g)
        # Otherwise a free view in which a group's channels are the channel dimension of their own.
        if channels_last:
            h, w = x.shape[2:]
            y = self._lrn(x.permute(0, 2, 3, 1).reshape(n * h * w * g, c // g, 1, 1), relu, fused)
            return y.reshape(n, h, w, c).permute(0, 3, 1, 2)
        x = x.contiguous()
        return self._lrn(x.reshape(n * g, c // g, *x.shape[2:]), relu, fused).reshape(x.shape)

    @staticmethod
    def _fused(x: torch.Tensor) -> bool:
        """Whether :func:`lrn_op` computes this call: the C kernel in eager CPU calls; under
        torch.compile, any call its kernels take (the operator checks the kernel when it runs)."""
        if _exporting() or not x.numel():  # in this order: a symbolic batch (export) would be fixed by numel()
            return False
        if torch.compiler.is_compiling():
            return x.dim() >= 3 and x.dtype in _OP_DTYPES.get(x.device.type, ())
        return kernel_available(x)

    def _lrn(self, x: torch.Tensor, relu: bool, fused: bool, groups: int = 1) -> torch.Tensor:
        args = (self.size, self.sum_alpha, self.beta, self.k)
        inference = not (torch.is_grad_enabled() and x.requires_grad)
        if fused and inference and not torch.compiler.is_compiling():
            # The C kernel itself, as the operator would run it: the operator's first eager call
            # imports torch._dynamo (torch.library wraps each kernel in torch._disable_dynamo),
            # 1.5 s of evaluate's, predict's and features' start on a CPU.
            return lrn_kernel_forward(x, *args, relu, groups)
        if fused:
            return lrn_op(x, *args, relu, groups)
        if relu:
            x = F.relu(x)
        if _exporting() or torch.compiler.is_compiling():
            # Traceable ops: exporters see plain graph nodes.
            return lrn_reference(x, *args)
        if inference:  # saves nothing for a backward that never comes
            return lrn_reference(x, *args)
        return _LRNFunction.apply(x, *args)

    def extra_repr(self) -> str:
        """The layer's settings as ``print(model)`` shows them: size, alpha, beta, k, convention (and groups)."""
        extra = f", groups={self.groups}" if self.groups > 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={self.convention!r}{extra}"


def fx_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool) -> torch.Tensor:
    """:class:`LocalResponseNorm` (paper convention) as one call in a torch.fx graph, e.g. of
    torchvision's ``create_feature_extractor``: symbolic tracing cannot follow the module's checks
    and choice of kernel, which this call makes when the graph runs."""
    return LocalResponseNorm(size, alpha, beta, k, "sum", groups)(x, relu)


torch.fx.wrap("fx_lrn")

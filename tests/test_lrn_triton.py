"""The Triton LRN kernels (alexnet.lrn_triton) against the paper's formula written out in float64.

Without a GPU the kernels run in Triton's interpreter on the CPU. ``TRITON_INTERPRET=1`` only takes
effect if it is set before Triton is first imported (and importing alexnet imports Triton through
torchvision), so every interpreted check runs in one subprocess: this file run as a script, which
prints its measurements as JSON for the tests below to judge. The tests marked ``cuda`` run the real
CUDA path in this process.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import src_pythonpath

from alexnet import LocalResponseNorm

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (the CUDA path then runs eager ops)")

# Bound on |got - ref| / (|ref| + max |ref| / 10) elementwise, i.e. rtol = TOL and atol = TOL / 10 *
# max |ref| (as tests/test_lrn.py): a gradient element is the difference of two terms computed in
# float32, so where they cancel its error is relative to the terms, not to itself.
# float32: computed in float32 with float64 window sums. bfloat16/float16 (against the float64
# result of the rounded input): the output's own rounding, 1 ulp (the interpreter truncates to
# bfloat16 where a GPU rounds to nearest, half that), plus the float32 computation's error.
TOL = {"float32": 1e-5, "bfloat16": 2.0**-7 + 1e-5, "float16": 2.0**-10 + 1e-5}
# On a GPU, which rounds the float32 result to nearest: half an ulp.
TOL_CUDA = {"float32": 1e-5, "bfloat16": 2.0**-8 + 1e-5, "float16": 2.0**-11 + 1e-5}


def lrn_float64(
    a: torch.Tensor, size: int, alpha: float, beta: float, k: float, relu: bool, groups: int
) -> torch.Tensor:
    """The paper's equation channel by channel (sum of squares over the window, clipped to the
    channel's group), in float64 torch ops so that autograd gives an independent gradient."""
    if relu:
        a = torch.relu(a)
    channels = a.shape[1]
    per_group = channels // groups
    outs = []
    for i in range(channels):
        first = i // per_group * per_group
        lo, hi = max(first, i - size // 2), min(first + per_group - 1, i + (size - 1) // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        outs.append(a[:, i] / (k + alpha * s) ** beta)
    return torch.stack(outs, dim=1)


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Worst elementwise error (as bounded by TOL) and worst error relative to max |ref|."""
    got, ref = got.detach().double(), ref.detach().double()
    scale = ref.abs().max().item()
    diff = (got - ref).abs()
    return {
        "elementwise": (diff / (ref.abs() + 0.1 * scale)).max().item(),
        "normwise": diff.max().item() / scale,
        "finite": bool(torch.isfinite(got).all()),
    }


def run_case(layout: str, convention: str, relu: bool, groups: int, size: int, dtype: str, shape: tuple) -> dict:
    """Forward and backward through alexnet.lrn_triton.lrn_triton against lrn_float64."""
    from alexnet.lrn_triton import lrn_triton

    torch.manual_seed(zlib.crc32(repr((layout, convention, relu, groups, size, dtype, shape)).encode()))
    lrn = LocalResponseNorm(
        size,
        5e-3 if convention == "mean" else 1e-3,
        0.75 if size % 2 else 0.6,
        2.0 if convention == "sum" else 1.0,
        convention,
        groups,
    )
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(shape) * 20).to(getattr(torch, dtype)).contiguous(memory_format=fmt)
    g = torch.randn(shape).to(x.dtype).contiguous(memory_format=fmt)
    xi = x.clone().requires_grad_()
    y = lrn_triton(xi, lrn.size, lrn.sum_alpha, lrn.beta, lrn.k, relu, lrn.groups)
    y.backward(g)
    x64 = x.double().requires_grad_()  # the rounded input, in float64
    ref = lrn_float64(x64, lrn.size, lrn.sum_alpha, lrn.beta, lrn.k, relu, lrn.groups)
    ref.backward(g.double())
    return {
        "y": errors(y, ref),
        "grad": errors(xi.grad, x64.grad),
        "layout_kept": y.is_contiguous(memory_format=fmt) and xi.grad.is_contiguous(memory_format=fmt),
        "dtype_kept": y.dtype == xi.grad.dtype == x.dtype,
        "normalised": (ref - x64 * (1 if not relu else (x64 > 0))).abs().max().item() > 1e-2,
    }


SHAPE = {1: (2, 11, 3, 4), 2: (2, 10, 3, 4)}  # odd C; with groups=2, 5 channels per group
# float32: every layout, relu, groups and size; the convention alternates so that each meets both
# values of every other factor (it only changes alpha, in LocalResponseNorm.sum_alpha).
CASES = [
    dict(
        layout=lay,
        convention=("sum", "mean")[(relu + (g == 2) + (n == 4)) % 2],
        relu=relu,
        groups=g,
        size=n,
        dtype="float32",
        shape=SHAPE[g],
    )
    for lay, relu, g, n in itertools.product(["nchw", "channels_last"], [False, True], [1, 2], [5, 4])
]
CASES += [
    dict(layout=lay, convention="mean", relu=relu, groups=g, size=5, dtype=dt, shape=SHAPE[g])
    for dt, lay, relu, g in itertools.product(["bfloat16", "float16"], ["nchw", "channels_last"], [False, True], [1, 2])
    if relu == (g == 2)
]
# 3 * 10 * 9 = 270 positions: two programs of BLOCK = 256, the second partial; and a 3-d input.
CASES += [
    dict(layout="nchw", convention="sum", relu=True, groups=1, size=5, dtype="float32", shape=(3, 9, 10, 9)),
    dict(layout="channels_last", convention="sum", relu=False, groups=2, size=3, dtype="float32", shape=(3, 6, 10, 9)),
    dict(layout="nchw", convention="sum", relu=False, groups=1, size=5, dtype="float32", shape=(4, 7, 6)),
]


def case_id(case: dict) -> str:
    return "-".join(str(v) if not isinstance(v, tuple) else "x".join(map(str, v)) for v in case.values())


def run_strided() -> dict:
    """A sliced input (its spatial dimensions do not merge: copied) and the gradient of y.sum()
    (expanded, every stride 0: read as it is)."""
    from alexnet.lrn_triton import lrn_triton

    torch.manual_seed(3)
    base = torch.randn(2, 9, 6, 8) * 20
    xi = base[:, :, ::2].clone().requires_grad_()  # same values, to compare gradients ...
    xs = base.clone().requires_grad_()  # ... with those through the slice
    y = lrn_triton(xs[:, :, ::2], 5, 1e-3, 0.75, 2.0, True)
    y.sum().backward()
    ref = lrn_float64(xi.double(), 5, 1e-3, 0.75, 2.0, True, 1)
    ref.sum().backward()
    grad = xs.grad[:, :, ::2]
    out = {"y": errors(y, ref), "grad": errors(grad, xi.grad), "untouched": xs.grad[:, :, 1::2].abs().max().item()}
    # Views the kernels read in place (strides that merge: no copy): every other channel of a
    # channels_last tensor, and every other image of a batch.
    from alexnet.lrn_triton import _strides

    cl = base.contiguous(memory_format=torch.channels_last)
    for name, view in (("channels_cl_step2", cl[:, ::2]), ("batch_step2", (torch.randn(4, 9, 6, 8) * 20)[::2])):
        assert _strides(view) is not None and not view.is_contiguous(), name
        g = torch.randn(view.shape)
        y = lrn_triton(view, 5, 1e-3, 0.75, 2.0, False)
        leaf = view.detach().double().requires_grad_()
        ref = lrn_float64(leaf, 5, 1e-3, 0.75, 2.0, False, 1)
        ref.backward(g.double())
        vg = view.detach().requires_grad_()  # a leaf with the view's strides
        lrn_triton(vg, 5, 1e-3, 0.75, 2.0, False).backward(g)
        out[name] = {"y": errors(y, ref), "grad": errors(vg.grad, leaf.grad)}
    return out


def run_double_backward() -> dict:
    """The gradient of a gradient (create_graph: a gradient penalty) against the float64 formula's."""
    from alexnet.lrn_triton import lrn_triton

    torch.manual_seed(5)
    x = torch.randn(2, 8, 4, 5) * 20
    v, w = torch.randn_like(x), torch.randn_like(x)
    out = {}
    for name, a, f in (
        ("ours", x.clone().requires_grad_(), lambda t: lrn_triton(t, 5, 1e-3, 0.75, 2.0, True, 2)),
        ("ref", x.double().requires_grad_(), lambda t: lrn_float64(t, 5, 1e-3, 0.75, 2.0, True, 2)),
    ):
        try:
            (g,) = torch.autograd.grad(f(a), a, v.to(a.dtype), create_graph=True)
            (g * w.to(a.dtype)).sum().backward()
        except RuntimeError as e:  # judged by the test, not a lost worker
            return {"error": str(e)}
        out[name] = a.grad
    return errors(out["ours"], out["ref"])


def run_large() -> dict:
    """The channels after a very large value, once it has left their windows (in each tower): the
    running window sums must forget it exactly. 2e19 is finite in float32; its float32 square is not."""
    from alexnet.lrn_triton import lrn_triton

    torch.manual_seed(4)
    out = {}
    for big in (1e8, 2e19):
        x = torch.rand(2, 16, 3, 3) * 10 + 1
        x[:, 0] = x[:, 8] = big  # the first channel of each tower (groups=2)
        xt, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        g = torch.randn_like(x)
        lrn_triton(xt, 5, 1e-4, 0.75, 2.0, False, 2).backward(g)
        ref = lrn_float64(xr, 5, 1e-4, 0.75, 2.0, False, 2)
        ref.backward(g.double())
        with torch.no_grad():
            y = lrn_triton(x, 5, 1e-4, 0.75, 2.0, False, 2)
        later_y = [c for c in range(16) if c % 8 >= 3]  # windows [c - 2, c + 2] without it
        later_g = [c for c in range(16) if c % 8 >= 5]  # ... nor do the windows of their windows
        out[f"{big:g}"] = {
            "y": errors(y[:, later_y], ref[:, later_y]),
            "grad": errors(xt.grad[:, later_g], xr.grad[:, later_g]),
        }
    return out


def specialisation_keys() -> list[list]:
    """What Triton compiles a kernel for (its specialisation key), for several batch and image sizes
    and both layouts, computed as JITFunction.run does before looking up its cache."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    from alexnet import lrn_triton as lt

    keys = []
    for kernel, make in (
        (lt._lrn_fwd_kernel, lambda x: lt.forward_launch(x, torch.empty_like(x), 5, 1e-4, 0.75, 2.0, True, 2)),
        (
            lt._lrn_bwd_kernel,
            lambda x: lt.backward_launch(x, torch.randn_like(x), torch.empty_like(x), 5, 1e-4, 0.75, 2.0, True, 2),
        ),
    ):
        # The list the kernel was decorated with (the interpreter keeps the decorator's arguments),
        # not the module's constant: a decorator that lost it must fail here.
        dns = kernel.kwargs.get("do_not_specialize") if hasattr(kernel, "kwargs") else kernel.do_not_specialize
        jit = JITFunction(kernel.fn, do_not_specialize=dns or [])  # the interpreter wraps the same function
        binder = create_function_from_signature(jit.signature, jit.params, BaseBackend)
        per_kernel = []
        for shape, fmt in itertools.product(
            [(2, 96, 55, 55), (3, 96, 55, 55), (128, 96, 27, 27), (1, 96, 13, 16)],
            [torch.contiguous_format, torch.channels_last],
        ):
            _, args, meta = make(torch.randn(shape).contiguous(memory_format=fmt))
            per_kernel.append(repr(binder(*args, **meta)[1]))
        keys.append(per_kernel)
    return keys


def worker() -> None:
    """Run every interpreted check and print the results as one JSON line."""
    try:
        import triton
    except ImportError as e:
        print(json.dumps({"skip": f"triton not importable: {e}"}))
        return
    from _triton_probe import interpreter_problem  # beside this file, run as a script

    problem = interpreter_problem()
    if problem:
        print(json.dumps({"skip": problem}))
        return
    results = {case_id(c): run_case(**c) for c in CASES}
    try:  # Triton internals (seen in Triton 3.6 and 3.8): other releases may bind arguments otherwise
        keys = specialisation_keys()
    except (ImportError, TypeError, AttributeError) as e:
        keys = f"Triton {triton.__version__} binds arguments otherwise ({type(e).__name__}: {e})"
    out = {"cases": results, "strided": run_strided(), "large": run_large(), "double_backward": run_double_backward(), "keys": keys}
    print(json.dumps(out))


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    env = dict(
        os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=src_pythonpath(), OMP_NUM_THREADS="1"
    )
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_interpreted_matches_float64(interpreted, case):
    r = interpreted["cases"][case_id(case)]
    tol = TOL[case["dtype"]]
    assert r["normalised"]  # the denominator matters at these values: a no-op would fail
    assert r["layout_kept"] and r["dtype_kept"]
    for what in ("y", "grad"):
        assert r[what]["finite"], what
        assert r[what]["elementwise"] <= tol, (what, r[what])


@needs_triton
def test_interpreted_strided_input_and_expanded_gradient(interpreted):
    r = interpreted["strided"]
    assert r["y"]["elementwise"] <= TOL["float32"] and r["grad"]["elementwise"] <= TOL["float32"], r
    assert r["untouched"] == 0.0
    for name in ("channels_cl_step2", "batch_step2"):
        assert r[name]["y"]["elementwise"] <= TOL["float32"] and r[name]["grad"]["elementwise"] <= TOL["float32"], (name, r[name])


@needs_triton
def test_interpreted_second_derivative(interpreted):
    """Its once_differentiable backward refused create_graph on CUDA (the CPU operator took it)."""
    r = interpreted["double_backward"]
    assert "error" not in r, r
    assert r["finite"] and r["elementwise"] <= 1e-4, r


@needs_triton
def test_interpreted_forgets_a_large_value_that_left_the_window(interpreted):
    for big, r in interpreted["large"].items():
        for what in ("y", "grad"):
            assert r[what]["finite"] and r[what]["elementwise"] <= TOL["float32"], (big, what, r[what])


@needs_triton
def test_batch_and_image_size_do_not_recompile(interpreted):
    """Triton compiles once per specialisation key: it must not change with N, H, W or the layout."""
    if isinstance(interpreted["keys"], str):
        pytest.skip(interpreted["keys"])
    for per_kernel in interpreted["keys"]:
        assert len(set(per_kernel)) == 1, per_kernel


def test_importing_lrn_does_not_import_the_kernels():
    """The kernels' module (and Triton with it) is imported at the first CUDA call, not with the package."""
    code = "import sys, alexnet, alexnet.lrn; print('alexnet.lrn_triton' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=src_pythonpath())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


@needs_triton
def test_which_tensors_the_kernels_take(monkeypatch):
    from alexnet import lrn

    monkeypatch.delenv("ALEXNET_TRITON_LRN", raising=False)
    cuda = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)  # stands for a CUDA tensor: only these are read
    assert lrn._triton_lrn(cuda).__name__ == "alexnet.lrn_triton"
    assert lrn._triton_lrn(SimpleNamespace(is_cuda=True, dtype=torch.float64)) is None  # eager float64
    assert lrn._triton_lrn(torch.zeros(1, 3, 2, 2)) is None  # CPU tensors: the C kernel
    monkeypatch.setenv("ALEXNET_TRITON_LRN", "0")
    assert lrn._triton_lrn(cuda) is None


@needs_triton
def test_a_backward_kernel_that_fails_to_build_falls_back_to_plain_ops(monkeypatch):
    """The forward kernel built, the backward's did not (a Triton that cannot compile it for this
    GPU): training goes on with PyTorch ops and one warning, as when the forward's fails."""
    from alexnet import lrn
    from alexnet import lrn_triton as lt

    def no_kernel(*args):
        raise RuntimeError("PTX .version 9.9 does not support .target sm_99")

    monkeypatch.setattr(lt, "lrn_forward", lambda x, *params: lrn_float64(x.double(), *params).float())  # "built"
    monkeypatch.setattr(lt, "lrn_backward", no_kernel)
    monkeypatch.setattr(lrn, "_triton_state", {})
    torch.manual_seed(6)
    x = (torch.randn(2, 8, 3, 4) * 20).requires_grad_()
    g = torch.randn_like(x)
    with pytest.warns(UserWarning, match="Triton LRN kernel unavailable .*sm_99.*using PyTorch ops"):
        lt.lrn_triton(x, 5, 1e-3, 0.75, 2.0, True, 2).backward(g)
    x64 = x.detach().double().requires_grad_()
    lrn_float64(x64, 5, 1e-3, 0.75, 2.0, True, 2).backward(g.double())
    assert errors(x.grad, x64.grad)["elementwise"] <= 1e-5


# -- the real CUDA path ------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_module_matches_float64(dtype, layout, monkeypatch):
    from alexnet import lrn

    monkeypatch.delenv("ALEXNET_TRITON_LRN", raising=False)
    torch.manual_seed(7)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for relu, groups, shape in ((False, 1, (3, 96, 27, 27)), (True, 2, (2, 256, 13, 13))):
        m = LocalResponseNorm(5, 1e-3, 0.75, 2.0, "sum", groups)
        x = (torch.randn(shape, device="cuda") * 20).to(getattr(torch, dtype)).contiguous(memory_format=fmt)
        g = torch.randn(shape, device="cuda").to(x.dtype).contiguous(memory_format=fmt)
        xi = x.clone().requires_grad_()
        y = m(xi, relu=relu)
        y.backward(g)
        assert lrn._triton_lrn(x) is not None and lrn._triton_state.get("ran")
        x64 = x.double().requires_grad_()
        ref = lrn_float64(x64, 5, 1e-3, 0.75, 2.0, relu, groups)
        ref.backward(g.double())
        tol = TOL_CUDA[dtype]
        assert errors(y, ref)["elementwise"] <= tol
        assert errors(xi.grad, x64.grad)["elementwise"] <= tol
        assert y.is_contiguous(memory_format=fmt)


@pytest.mark.cuda
@needs_triton
def test_cuda_new_batch_size_reuses_the_kernel():
    from alexnet import lrn_triton as lt

    def compiled() -> int:  # kernels in Triton's in-memory caches (one per specialisation)
        kernels = (lt._lrn_fwd_kernel, lt._lrn_bwd_kernel)
        return sum(len(cache[0]) for kernel in kernels for cache in kernel.device_caches.values())

    m = LocalResponseNorm()
    counts = []
    for n, hw in ((2, 27), (3, 27), (5, 13)):
        x = torch.randn(n, 96, hw, hw, device="cuda", requires_grad=True)
        m(x).sum().backward()
        counts.append(compiled())
    assert counts[0] >= 2 and counts == counts[:1] * 3


if __name__ == "__main__":
    worker()


@pytest.mark.cuda
@needs_triton
def test_cuda_compiled_model_runs_the_triton_kernels(monkeypatch):
    """Under torch.compile on a GPU, LRN is the Triton kernels inside the alexnet::lrn operator
    (one graph), and the compiled model's outputs and gradients are the eager model's."""
    from alexnet import create_model, lrn_triton

    monkeypatch.delenv("ALEXNET_TRITON_LRN", raising=False)
    calls = []
    for name in ("lrn_forward", "lrn_backward"):
        original = getattr(lrn_triton, name)
        monkeypatch.setattr(lrn_triton, name, lambda *a, _f=original, _n=name, **kw: calls.append(_n) or _f(*a, **kw))
    torch.manual_seed(11)
    model = create_model("alexnet_paper", num_classes=5, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0)
    model = model.cuda().to(memory_format=torch.channels_last)
    x = (torch.randn(2, 3, 67, 67, device="cuda") * 50).contiguous(memory_format=torch.channels_last)
    model(x).square().sum().backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls.clear()
    y = torch.compile(model, fullgraph=True)(x)
    y.square().sum().backward()
    assert calls.count("lrn_forward") == 2 and calls.count("lrn_backward") == 2
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-3, atol=1e-5 * float(eager[name].abs().max()), msg=name)

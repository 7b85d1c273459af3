"""LRN against the paper's formula written out independently in float64."""

import functools

import numpy as np
import pytest
import torch

from alexnet import LocalResponseNorm


def lrn_float64(a: np.ndarray, n: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """The paper's equation, term by term: b_i = a_i / (k + alpha * sum_j a_j^2)^beta over channels
    j = max(0, i - n//2) .. min(N-1, i + n//2)."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = (a[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


def lrn_torch64(a: torch.Tensor, n: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Same loop in float64 torch ops, so autograd gives an independent reference gradient."""
    channels = a.shape[1]
    outs = []
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        outs.append(a[:, i] / (k + alpha * s) ** beta)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("convention", ["sum", "mean"])
@pytest.mark.parametrize("k,alpha", [(2.0, 1e-4), (1.0, 1e-4), (2.0, 0.05)])
def test_forward_matches_formula(convention, k, alpha):
    torch.manual_seed(0)
    x = torch.randn(2, 13, 5, 4) * 20  # large values so the denominator matters
    lrn = LocalResponseNorm(5, alpha, 0.75, k, convention)
    sum_alpha = alpha if convention == "sum" else alpha / 5
    ref = lrn_float64(x.numpy(), 5, sum_alpha, 0.75, k)
    got = lrn(x).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    assert np.abs(ref - x.numpy()).max() > 1e-3  # the normalisation is not a no-op here


@pytest.mark.parametrize("convention", ["sum", "mean"])
def test_backward_matches_formula(convention):
    torch.manual_seed(1)
    x = torch.randn(3, 11, 4, 3) * 30
    g = torch.randn_like(x)
    lrn = LocalResponseNorm(5, 1e-3, 0.75, 2.0, convention)
    sum_alpha = 1e-3 if convention == "sum" else 1e-3 / 5
    x64 = x.double().requires_grad_()
    lrn_torch64(x64, 5, sum_alpha, 0.75, 2.0).backward(g.double())
    x32 = x.clone().requires_grad_()
    lrn(x32).backward(g)
    ref = x64.grad.numpy()
    np.testing.assert_allclose(x32.grad.double().numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_float64_input_is_exact():
    torch.manual_seed(2)
    x = (torch.randn(2, 8, 3, 3, dtype=torch.float64) * 10).requires_grad_()
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 2.0)
    assert torch.autograd.gradcheck(lambda t: lrn(t), (x,), eps=1e-6, atol=1e-8)
    np.testing.assert_allclose(lrn(x).detach().numpy(), lrn_float64(x.detach().numpy(), 5, 1e-4, 0.75, 2.0), rtol=1e-12)


def test_mean_convention_equals_torch():
    torch.manual_seed(3)
    x = torch.randn(2, 96, 7, 7) * 10
    ours = LocalResponseNorm(5, 5e-4, 0.75, 2.0, "mean")(x)
    theirs = torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # The paper's alpha=1e-4 (sum) is torch's alpha=5e-4 (mean).
    torch.testing.assert_close(LocalResponseNorm(5, 1e-4, 0.75, 2.0, "sum")(x), theirs, rtol=1e-6, atol=1e-6)


def test_even_size_matches_torch():
    x = torch.randn(2, 10, 3, 3) * 10
    torch.testing.assert_close(
        LocalResponseNorm(4, 1e-2, 0.75, 1.0, "mean")(x), torch.nn.LocalResponseNorm(4, 1e-2, 0.75, 1.0)(x)
    )


@pytest.mark.parametrize("kwargs,named", [
    ({"convention": "avg"}, "LRN convention"), ({"size": 0}, "LRN size"), ({"size": 5.0}, "LRN size"),
    ({"size": "5"}, "LRN size"), ({"groups": 0}, "LRN groups"), ({"beta": "a"}, "LRN beta"),
    ({"alpha": -1.0}, "LRN alpha"), ({"k": 0.0}, "LRN k"), ({"k": float("nan")}, "LRN k"), ({"alpha": True}, "LRN alpha"),
])
def test_bad_arguments(kwargs, named):
    """Refused when built, naming the argument; they were met later as the custom operator's schema
    error (size=5.0), a TypeError (size="5") or NaN outputs (k=0, alpha<0)."""
    with pytest.raises(ValueError, match=f"^{named} must be"):
        LocalResponseNorm(**kwargs)


def test_arguments_taken_as_numbers():
    """numpy's numbers are taken (a config can come from numpy), stored as Python's."""
    m = LocalResponseNorm(np.int64(5), np.float32(1e-4), 0.75, 2, "sum", np.int64(2))
    assert (type(m.size), type(m.groups), type(m.alpha), type(m.k)) == (int, int, float, float)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(m(x), LocalResponseNorm(5, float(np.float32(1e-4)), 0.75, 2.0, "sum", 2)(x))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.6), (3, 1.0)])
def test_kernel_forward_backward_match_float64(layout, size, beta):
    """The C kernel (both layouts, a partial 64-wide block, pow and rsqrt paths) against float64."""
    _needs_kernel()
    torch.manual_seed(4)
    x = torch.randn(2, 13, 9, 11) * 30  # inner = 99: one full and one partial block
    g = torch.randn_like(x)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x32 = x.contiguous(memory_format=fmt).requires_grad_()
    lrn = LocalResponseNorm(size, 1e-3, beta, 2.0, "mean")
    y = lrn(x32)
    y.backward(g.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    x64 = x.detach().double().requires_grad_()
    ref_y = lrn_torch64_even(x64, size, 1e-3 / size, beta, 2.0)
    ref_y.backward(g.double())
    np.testing.assert_allclose(y.detach().double().numpy(), ref_y.detach().numpy(), rtol=1e-5, atol=1e-6)
    ref = x64.grad.numpy()
    np.testing.assert_allclose(x32.grad.double().numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    with torch.no_grad():  # the inference path is the same kernel
        torch.testing.assert_close(lrn(x32), y.detach(), rtol=0, atol=0)


def lrn_torch64_even(a: torch.Tensor, n: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """As lrn_torch64, with torch's window for even n: n//2 channels before, (n-1)//2 after."""
    channels = a.shape[1]
    outs = []
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + (n - 1) // 2)
        outs.append(a[:, i] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(dim=1)) ** beta)
    return torch.stack(outs, dim=1)


def test_kernel_bfloat16_close_to_float32():
    _needs_kernel()
    torch.manual_seed(5)
    x = (torch.randn(2, 16, 10, 10) * 20).bfloat16().requires_grad_()
    g = torch.randn(2, 16, 10, 10).bfloat16()
    y = LocalResponseNorm(5, 1e-3, 0.75, 2.0)(x)
    y.backward(g)
    assert y.dtype == x.grad.dtype == torch.bfloat16
    x64 = x.detach().double().requires_grad_()
    ref = lrn_torch64(x64, 5, 1e-3, 0.75, 2.0)
    ref.backward(g.double())
    # bf16 keeps 8 significant bits: 2^-8 relative error of the stored result, computed in float32.
    np.testing.assert_allclose(y.detach().double().numpy(), ref.detach().numpy(), rtol=2**-7, atol=1e-2)
    np.testing.assert_allclose(x.grad.double().numpy(), x64.grad.numpy(), rtol=2**-7, atol=2**-7 * x64.grad.abs().max().item())


def test_no_kernel_falls_back(monkeypatch):
    """Without a compiler the pure-PyTorch Function gives the same numbers."""
    from alexnet import lrn as lrn_mod

    torch.manual_seed(6)
    x = (torch.randn(2, 12, 5, 5) * 20).requires_grad_()
    y_kernel = LocalResponseNorm(5, 1e-3)(x)
    monkeypatch.setattr(lrn_mod, "kernel_available", lambda t=None: False)
    y_torch = LocalResponseNorm(5, 1e-3)(x)
    assert y_torch.grad_fn is not None and "Kernel" not in type(y_torch.grad_fn).__name__
    torch.testing.assert_close(y_kernel, y_torch, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_relu_matches_relu_then_formula(layout):
    """LRN(x, relu=True) == LRN(ReLU(x)), values and gradient, against float64 ops."""
    torch.manual_seed(7)
    x = torch.randn(2, 10, 9, 8) * 30
    x[0, 0, 0, 0] = 0.0  # ReLU'(0) = 0, as torch.relu
    g = torch.randn_like(x)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x32 = x.contiguous(memory_format=fmt).requires_grad_()
    y = LocalResponseNorm(5, 1e-3, 0.75, 2.0)(x32, relu=True)
    y.backward(g.contiguous(memory_format=fmt))
    x64 = x.detach().double().requires_grad_()
    ref_y = lrn_torch64(torch.relu(x64), 5, 1e-3, 0.75, 2.0)
    ref_y.backward(g.double())
    np.testing.assert_allclose(y.detach().double().numpy(), ref_y.detach().numpy(), rtol=1e-5, atol=1e-6)
    ref = x64.grad.numpy()
    np.testing.assert_allclose(x32.grad.double().numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert (x32.grad[x < 0] == 0).all()


def test_model_with_fused_relu_lrn_matches_plain_ops(monkeypatch):
    """A model with LRN gives the same outputs and gradients with and without the C kernel."""
    from alexnet import create_model
    from alexnet import lrn as lrn_mod

    torch.manual_seed(8)
    model = create_model("alexnet_small", num_classes=10, dropout=0.0)
    x = torch.randn(2, 1, 28, 28)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), model.conv1.weight.grad.clone()

    fused = run()
    monkeypatch.setattr(lrn_mod, "kernel_available", lambda t=None: False)
    plain = run()
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-4, atol=1e-6)


def test_kernel_build_without_compiler_falls_back(monkeypatch, tmp_path):
    """No compiler: load() warns once and returns None; the module still computes the formula."""
    from alexnet import _kernels

    monkeypatch.delenv("ALEXNET_NO_KERNELS", raising=False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("ALEXNET_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_kernels, "_LIBS", {})
    with pytest.warns(UserWarning, match="unavailable"):
        assert _kernels.load("lrn") is None
    x = torch.randn(2, 7, 3, 3) * 20
    ref = lrn_float64(x.numpy(), 5, 1e-4, 0.75, 2.0)
    np.testing.assert_allclose(LocalResponseNorm()(x).double().numpy(), ref, rtol=1e-6)


def test_kernel_builds_with_a_cc_command_line(monkeypatch, tmp_path):
    """$CC is a command line ("ccache gcc", "gcc -m64"), as make and setuptools read it: the kernel
    is built with it and runs the float64 formula, not refused as "no working C compiler"."""
    import shutil

    from alexnet import _kernels

    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler on PATH")
    monkeypatch.delenv("ALEXNET_NO_KERNELS", raising=False)
    monkeypatch.setenv("CC", f"{compiler} -w")  # a compiler and one harmless flag of the user's
    monkeypatch.setenv("ALEXNET_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_kernels, "_LIBS", {})
    lib = _kernels.load("lrn")
    assert lib is not None and [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so"]
    x = torch.randn(2, 7, 3, 3) * 20
    ref = lrn_float64(x.numpy(), 5, 1e-4, 0.75, 2.0)
    np.testing.assert_allclose(LocalResponseNorm()(x).double().numpy(), ref, rtol=1e-6)


def test_a_killed_compiles_temporary_is_swept_and_a_live_ones_kept(monkeypatch, tmp_path):
    """A compile killed outright (SIGKILL while gcc ran) left its temporary tmpXXXXXXXX.so in the
    kernel cache for good, and every later such kill another. The next compile removes those older
    than any live compile's (which another process, compiling now, still writes) and leaves no new one."""
    import os
    import shutil
    import time

    from alexnet import _kernels

    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on PATH")
    cache = tmp_path / "cache"
    monkeypatch.delenv("ALEXNET_NO_KERNELS", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("ALEXNET_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(_kernels, "_LIBS", {})
    assert _kernels.load("lrn") is not None
    built = sorted(p.name for p in cache.iterdir())
    (cache / built[0]).unlink()  # so that the next load compiles again
    killed = [cache / "tmpk1ll3d0.so", cache / f".{built[0]}.k1ll3d.tmp"]  # as the old and this version name them
    live = cache / f".{built[0]}.l1ve00.tmp"
    live.write_bytes(b"being written")
    hour_ago = time.time() - 3600
    for path in killed:
        path.write_bytes(b"half a library")
        os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(_kernels, "_LIBS", {})
    assert _kernels.load("lrn") is not None
    assert sorted(p.name for p in cache.iterdir()) == sorted([*built, live.name])


def test_kernel_cache_follows_alexnet_cache(monkeypatch, tmp_path):
    """$ALEXNET_CACHE moves alexnet's cache (README: e.g. a read-only home): the compiled kernels go
    to its kernels/ folder too, not to ~/.cache, which may not be writable."""
    from alexnet import _kernels

    monkeypatch.delenv("ALEXNET_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _kernels.cache_dir() == tmp_path / "cache" / "kernels"
    monkeypatch.delenv("ALEXNET_CACHE")
    assert _kernels.cache_dir() == tmp_path / "xdg" / "alexnet" / "kernels"  # the default, as before
    monkeypatch.setenv("ALEXNET_KERNEL_CACHE", str(tmp_path / "own"))
    assert _kernels.cache_dir() == tmp_path / "own"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("groups,size,relu", [(2, 5, True), (3, 4, False), (2, 3, False)])
def test_grouped_lrn_normalises_each_group_alone(layout, groups, size, relu):
    """groups=g (the paper's towers): each group's channels against the float64 formula on their
    own, forward and backward; the kernel's own channels_last grouping and the views agree."""
    torch.manual_seed(9)
    x = torch.randn(2, 6 * groups, 7, 5) * 30
    g = torch.randn_like(x)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x32 = x.contiguous(memory_format=fmt).requires_grad_()
    y = LocalResponseNorm(size, 1e-3, 0.75, 2.0, "mean", groups=groups)(x32, relu=relu)
    y.backward(g.contiguous(memory_format=fmt))
    x64 = x.detach().double().requires_grad_()
    a = torch.relu(x64) if relu else x64
    ref_y = torch.cat([lrn_torch64_even(part, size, 1e-3 / size, 0.75, 2.0) for part in a.chunk(groups, dim=1)], dim=1)
    ref_y.backward(g.double())
    np.testing.assert_allclose(y.detach().double().numpy(), ref_y.detach().numpy(), rtol=1e-5, atol=1e-6)
    ref = x64.grad.numpy()
    np.testing.assert_allclose(x32.grad.double().numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _needs_kernel(x: torch.Tensor | None = None) -> None:
    """Skip where the C kernel does not run (no C compiler, or ALEXNET_NO_KERNELS=1): what it checks
    is the kernel's; the plain ops' path is tested beside."""
    from alexnet.lrn import kernel_available

    if not kernel_available(x):
        pytest.skip("the C kernel is not available here (no C compiler, or ALEXNET_NO_KERNELS)")


def _counting_kernel(monkeypatch) -> list[str]:
    """Record each run of the C kernel (its direction) from here on."""
    from alexnet import lrn as lrn_mod

    calls, run = [], lrn_mod._run_kernel

    def counted(direction, *args):
        calls.append(direction)
        return run(direction, *args)

    monkeypatch.setattr(lrn_mod, "_run_kernel", counted)
    return calls


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel"])
def test_operator_matches_float64_with_and_without_its_kernel(kernel, monkeypatch):
    """lrn_op (what eager CPU calls and compiled graphs run): grouped channels_last with the fused
    ReLU, and plain NCHW, forward and backward against the float64 loop; without the C kernel
    (no compiler) the operator computes the same with plain ops."""
    from alexnet import lrn as lrn_mod

    if not kernel:
        monkeypatch.setattr(lrn_mod, "kernel_available", lambda t=None: False)
    else:
        _needs_kernel()
    calls = _counting_kernel(monkeypatch)
    torch.manual_seed(10)
    for layout, groups, relu in (("channels_last", 2, True), ("nchw", 1, False)):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(2, 6 * groups, 7, 5) * 30
        g = torch.randn_like(x)
        x32 = x.contiguous(memory_format=fmt).requires_grad_()
        y = lrn_mod.lrn_op(x32, 5, 1e-3, 0.75, 2.0, relu, groups)
        assert y.is_contiguous(memory_format=fmt)
        y.backward(g.contiguous(memory_format=fmt))
        x64 = x.detach().double().requires_grad_()
        a = torch.relu(x64) if relu else x64
        ref = torch.cat([lrn_torch64(part, 5, 1e-3, 0.75, 2.0) for part in a.chunk(groups, dim=1)], dim=1)
        ref.backward(g.double())
        np.testing.assert_allclose(y.detach().double().numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
        want = x64.grad.numpy()
        np.testing.assert_allclose(x32.grad.double().numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert (sorted(set(calls)) == ["backward", "forward"]) if kernel else not calls


def test_compiled_model_keeps_the_kernel(monkeypatch):
    """Under torch.compile LRN stays the fused C kernel, an opaque operator in the graph (the plain
    ops compiled in its place made the CPU training step 3x slower: benchmarks/README.md), in one
    graph; the compiled model's outputs and gradients are the eager model's."""
    from alexnet import create_model

    _needs_kernel()
    torch.manual_seed(11)
    model = create_model("alexnet_paper", num_classes=5, widths=(8, 8, 8, 8, 8), fc_width=16, input_size=67, dropout=0.0)
    model = model.to(memory_format=torch.channels_last)
    x = (torch.randn(2, 3, 67, 67) * 50).contiguous(memory_format=torch.channels_last)
    model(x).square().sum().backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = _counting_kernel(monkeypatch)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    assert calls.count("forward") == 2 and calls.count("backward") == 2  # LRN after conv1 and conv2
    with torch.no_grad():
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-3, atol=1e-5 * float(eager[name].abs().max()), msg=name)


@pytest.mark.parametrize("broken", ["lrn_forward", "lrn_backward"])
def test_operator_falls_back_when_triton_cannot_build(broken, monkeypatch):
    """A Triton that imports but cannot build a kernel (a GPU it does not support): the operator,
    which compiled graphs call, warns once, turns Triton off and computes LRN without it; forward
    and backward match the float64 loop. A stand-in module plays the GPU's Triton."""
    from alexnet import lrn as lrn_mod

    def forward(x, size, alpha, beta, k, relu, groups):  # a working kernel: the float64 formula
        return lrn_torch64(x.double(), size, alpha, beta, k).to(x.dtype)

    def fails(*args):
        raise RuntimeError("triton: unsupported GPU architecture")

    fails.__name__ = broken
    triton = type("StandIn", (), {})()
    triton.lrn_forward = fails if broken == "lrn_forward" else forward
    triton.lrn_backward = fails
    monkeypatch.setattr(lrn_mod, "_triton_state", {"module": triton})
    monkeypatch.setattr(lrn_mod, "_triton_lrn", lambda x: lrn_mod._triton_state["module"])
    torch.manual_seed(12)
    x = torch.randn(2, 8, 5, 5) * 30
    g = torch.randn_like(x)
    x32 = x.clone().requires_grad_()
    with pytest.warns(UserWarning, match="Triton LRN kernel unavailable .RuntimeError: triton: unsupported"):
        y = lrn_mod.lrn_op(x32, 5, 1e-3, 0.75, 2.0, False, 1)
        y.backward(g)
    assert lrn_mod._triton_state["module"] is None  # off for the rest of the process: one warning
    x64 = x.double().requires_grad_()
    ref = lrn_torch64(x64, 5, 1e-3, 0.75, 2.0)
    ref.backward(g.double())
    np.testing.assert_allclose(y.detach().double().numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    want = x64.grad.numpy()
    np.testing.assert_allclose(x32.grad.double().numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("name", ["lrn_op", "lrn_backward_op"])
def test_operator_schema_is_its_signature(name):
    """The operators' schemas are written out (torch < 2.5 cannot read this module's string
    annotations); they must say what torch infers from the functions' signatures where it can."""
    from alexnet import lrn as lrn_mod

    op = getattr(lrn_mod, name)
    infer = getattr(torch.library, "infer_schema", None)
    if infer is None:
        pytest.skip(f"torch {torch.__version__} has no torch.library.infer_schema")
    written = str(op._opoverload._schema)
    assert written == op._opoverload._schema.name + infer(op._init_fn, mutates_args=())


@pytest.mark.parametrize("path", ["kernel", "plain"])
def test_double_backward(path, monkeypatch):
    """Second derivatives (gradient penalties, Hessian-vector products): autograd said 'no autograd
    formula was registered' for alexnet::lrn_backward. Checked by gradgradcheck (finite differences
    of the first derivative) in float64, on the C kernel's operator and on the plain-op Function."""
    import alexnet.lrn as lrn_module

    if path == "plain":
        monkeypatch.setattr(lrn_module, "kernel_available", lambda x=None: False)
    else:
        _needs_kernel(torch.zeros(1, 4, 2, 2, dtype=torch.float64))
    torch.manual_seed(0)
    for relu, groups in ((False, 1), (True, 2)):
        norm = LocalResponseNorm(5, 0.3, 0.75, 1.0, "sum", groups)  # a large alpha: the window matters
        x = (torch.randn(2, 8, 3, 3, dtype=torch.float64) * 2).requires_grad_()
        fn = functools.partial(norm, relu=relu)
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_a_compiled_kernel_has_the_umasks_mode_so_others_sharing_the_cache_can_load_it(monkeypatch, tmp_path):
    """The compiler wrote into a mkstemp file (mode 0600) and the library came out 0711: in a cache
    shared by several users ($ALEXNET_CACHE on a cluster) the others could not load it and fell back
    to the slower PyTorch LRN. It has the mode any file the compiler makes has: 0755 under umask 022."""
    import os
    import shutil

    from alexnet import _kernels

    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on PATH")
    monkeypatch.delenv("ALEXNET_NO_KERNELS", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("ALEXNET_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_kernels, "_LIBS", {})
    old = os.umask(0o022)
    try:
        assert _kernels.load("lrn") is not None
    finally:
        os.umask(old)
    [built] = (tmp_path / "cache").iterdir()
    assert oct(built.stat().st_mode & 0o777) == oct(0o755), built.name


@pytest.mark.parametrize("path", ["kernel", "plain"])
def test_torch_func_transforms_and_forward_mode(path, monkeypatch):
    """torch.func.grad and jacrev said 'In order to use an autograd.Function with functorch transforms
    ... it must override the setup_context staticmethod', and forward mode (torch.func.jvp,
    torch.autograd.forward_ad) gave a zero tangent without a word. Checked in float64 against the
    formula's autograd (lrn_torch64) and central differences, with the ReLU and two groups."""
    from torch.autograd import forward_ad
    from torch.func import grad, jacrev, jvp

    import alexnet.lrn as lrn_module

    if path == "plain":
        monkeypatch.setattr(lrn_module, "kernel_available", lambda x=None: False)
    norm = LocalResponseNorm(5, 0.3, 0.75, 1.0, "sum", groups=2)
    torch.manual_seed(0)
    x, v = torch.randn(2, 8, 3, 3, dtype=torch.float64) * 2, torch.randn(2, 8, 3, 3, dtype=torch.float64)

    def reference(t: torch.Tensor) -> torch.Tensor:
        r = t.clamp(min=0)
        return torch.cat([lrn_torch64(part, 5, 0.3, 0.75, 1.0) for part in r.split(4, dim=1)], dim=1)

    fn = functools.partial(norm, relu=True)
    eps = 1e-6
    central = (reference(x + eps * v) - reference(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(jvp(fn, (x,), (v,))[1], central, rtol=1e-6, atol=1e-8)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(fn(forward_ad.make_dual(x, v))).tangent
    torch.testing.assert_close(tangent, central, rtol=1e-6, atol=1e-8)
    x64 = x.clone().requires_grad_()
    (reference(x64) * v).sum().backward()
    torch.testing.assert_close(grad(lambda t: (fn(t) * v).sum())(x), x64.grad)
    torch.testing.assert_close(jacrev(fn)(x[:1, :, :1, :1]), torch.autograd.functional.jacobian(reference, x[:1, :, :1, :1]))

"""LRN forward+backward: ours (alexnet.LocalResponseNorm) against torch.nn.LocalResponseNorm.

The shape is conv1's output of the paper's net at batch 32 (32x96x55x55) on the CPU, 128 on CUDA.
Both compute the same function (torch's alpha is the paper's times n); the accuracy of ours against
the paper's formula in float64 is printed beside the timings: the reference is torch's
``local_response_norm`` in float64 (code independent of ours), for the plain LRN and for the
model's use, LRN per tower (groups=2) of relu(x) with the ReLU fused into ours.

On CUDA ours is the Triton kernel (alexnet.lrn_triton), timed against torch's in the same dtype and
layout (fp32, bf16 and fp16, NCHW and channels_last: a RESULT line each); the first call's latency
(compiling the kernels) is measured in fresh processes, with an empty Triton cache and with the one
the first left behind, and the first of these reported against its 5 s target (lrn_first_call_seconds).
A dtype and layout torch's LRN cannot run (bf16 on the CPU in several releases) is said, with
torch's reason, and has no RESULT line.

    python benchmarks/lrn.py [--batch-size 32] [--quick] [--device cuda]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

import _common  # also puts src/ on the path
import torch
import torch.nn.functional as F
from _common import base_parser, child_env, interleaved, median, result, setup, whole

from alexnet.lrn import LocalResponseNorm, kernel_available


def fwd_bwd(module, x: torch.Tensor, g: torch.Tensor, calls: int = 1):
    def run() -> None:
        for _ in range(calls):
            xi = x.detach().requires_grad_()
            module(xi).backward(g)

    return run


def reference(x64: torch.Tensor, groups: int = 1, relu: bool = False) -> torch.Tensor:
    """The paper's LRN (n=5, alpha=1e-4 on the *sum* of squares, beta=0.75, k=2) of ``x64``, or of
    ``relu(x64)``, each of ``groups`` channel groups on its own, by torch's own
    ``local_response_norm``: code independent of alexnet.lrn (not its ``_split``/``_window_sum``).
    torch averages the squares over the window, so its alpha is ours times n; its window for an even
    n (n//2 channels before, (n-1)//2 after) is ours too (checked against a loop over windows)."""
    x64 = torch.relu(x64) if relu else x64
    return torch.cat([F.local_response_norm(t, 5, 1e-4 * 5, 0.75, 2.0) for t in x64.chunk(groups, dim=1)], dim=1)


def worst_error(x: torch.Tensor, g: torch.Tensor, module, relu: bool = False) -> tuple[float, float]:
    """Largest error of y and dL/dx of ``module(x, relu=relu)`` against :func:`reference` in float64
    (with ``module.groups``), relative to the largest float64 value of each."""
    x64 = x.detach().double().contiguous().requires_grad_()
    y64 = reference(x64, module.groups, relu)
    y64.backward(g.double().contiguous())
    xi = x.detach().requires_grad_()
    y = module(xi, relu=relu)
    y.backward(g)
    ey = ((y.double() - y64).abs().max() / y64.abs().max()).item()
    eg = ((xi.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item()
    return ey, eg


def towers_error(x: torch.Tensor, g: torch.Tensor) -> float:
    """The model's use: LRN per tower (groups=2) of relu(x), fused; worst error of NCHW and channels_last."""
    towers = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    errs = {}
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        errs[layout] = worst_error(x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt), towers, relu=True)
        print(f"groups=2, fused ReLU, fp32 {layout}; ours vs float64 per-tower reference of relu(x): "
              f"max error y {errs[layout][0]:.2e}, grad {errs[layout][1]:.2e}")
    return max(max(e) for e in errs.values())


def peer_refusal(peer, x: torch.Tensor, g: torch.Tensor) -> str | None:
    """Why torch's LRN cannot run fwd+bwd on ``x``'s dtype and layout here, or None if it can."""
    try:
        fwd_bwd(peer, x[:1], g[:1])()
    except (NotImplementedError, RuntimeError) as e:  # e.g. no bf16 CPU kernel: "avg_pool3d_out_frame" not implemented
        return str(e).splitlines()[0][:80]
    return None


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def speedup_name(dt: str, layout: str) -> str:
    """lrn_fwd_bwd_speedup (fp32 NCHW), lrn_fwd_bwd_bf16_channels_last_speedup, ..."""
    return "lrn_fwd_bwd" + ("" if dt == "fp32" else f"_{dt}") + ("_channels_last" if layout == "channels_last" else "") + "_speedup"


def time_pairs(ours, peer, x, g, dtypes: tuple[str, ...], args, device: torch.device, calls: int = 1) -> dict[str, float]:
    """Seconds per fwd+bwd call of ours and of torch's LRN in each dtype and layout, interleaved; a
    dtype and layout the peer cannot run is said (with torch's reason) and has no peer entry."""
    fns = {}
    for dt in dtypes:
        for layout, fmt in LAYOUTS.items():
            xd, gd = (t.to(DTYPES[dt]).contiguous(memory_format=fmt) for t in (x, g))
            fns[f"ours {dt} {layout}"] = fwd_bwd(ours, xd, gd, calls)
            why = peer_refusal(peer, xd, gd)
            if why is None:
                fns[f"peer {dt} {layout}"] = fwd_bwd(peer, xd, gd, calls)
            else:
                print(f"peer torch LRN cannot run {dt} {layout} here ({why}): no RESULT {speedup_name(dt, layout)}")
    for fn in fns.values():
        fn()  # warm-up (and the one-time kernel compile)
    return {k: median(v) / calls for k, v in interleaved(fns, args.repeats, device).items()}


def speedup_results(secs: dict[str, float], dtypes: tuple[str, ...]) -> None:
    """A RESULT line (calls/s, ours against the peer) for each dtype and layout both ran."""
    for dt in dtypes:
        for layout in LAYOUTS:
            if f"peer {dt} {layout}" in secs:
                result(speedup_name(dt, layout), 1 / secs[f"ours {dt} {layout}"], 1 / secs[f"peer {dt} {layout}"], "calls/s")


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=whole(1), default=None, help="default: 32 on the CPU, 128 on CUDA")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats = 2, 1
    device = setup(args)
    if device.type == "cuda":
        return cuda_main(args, device)
    print(f"fused C kernel: {'yes' if kernel_available() else 'no (PyTorch fallback)'}")
    torch.manual_seed(0)
    shape = (args.batch_size or 32, 96, 55, 55)
    x = torch.relu(torch.randn(shape, device=device) * 30)  # post-ReLU activations, as after conv1
    g = torch.randn(shape, device=device)
    ours, peer = LocalResponseNorm(5, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    ey, eg = worst_error(x, g, ours)
    print(f"shape {shape}; ours vs float64 formula: max error y {ey:.2e}, grad {eg:.2e} (relative to max |value|)")
    e_towers = towers_error(torch.randn(shape, device=device) * 30, g)  # pre-ReLU conv1 outputs
    dtypes = ("fp32", "bf16")  # torch's LRN has no bf16 CPU kernel on several releases: then no bf16 RESULT lines
    speedup_results(time_pairs(ours, peer, x, g, dtypes, args, device), dtypes)
    result("lrn_max_rel_error", max(ey, eg), 1e-5, "relative", ref=True)
    result("lrn_groups2_relu_max_rel_error", e_towers, 1e-5, "relative", ref=True)


# One LRN forward+backward in a fresh process: seconds from the call to its completion (CUDA set
# up beforehand), i.e. what compiling and loading the kernels adds to a training run's first step.
FIRST_CALL = """
import sys, time, torch
from alexnet.lrn import LocalResponseNorm
peer = sys.argv[1] == "peer"
m = torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0) if peer else LocalResponseNorm(5, 1e-4, 0.75, 2.0)
x = torch.randn(8, 96, 55, 55, device="cuda").requires_grad_()
torch.cuda.synchronize()
t0 = time.perf_counter()
y = m(torch.relu(x)) if peer else m(x, relu=True)  # ours fuses the ReLU before it
y.sum().backward()
torch.cuda.synchronize()
print(time.perf_counter() - t0)
"""


FIRST_CALL_TARGET_S = 5.0  # the first LRN fwd+bwd of a process, compiling the Triton kernels


def first_call_seconds(which: str, cache_dir: str) -> float:
    """Latency of the first LRN fwd+bwd of a new process, ``which`` = "ours" or "peer"."""
    env = child_env(TRITON_CACHE_DIR=cache_dir)
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, which], capture_output=True, text=True, env=env, timeout=600
    )
    if proc.returncode:
        raise RuntimeError(f"first-call subprocess failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def cuda_main(args, device: torch.device) -> None:
    """Ours (Triton) against torch's LRN, each in fp32, bf16 and fp16, NCHW and channels_last; the first call."""
    from alexnet import lrn

    torch.manual_seed(0)
    shape = (args.batch_size or 128, 96, 55, 55)
    x = torch.relu(torch.randn(shape, device=device) * 30)  # post-ReLU activations, as after conv1
    g = torch.randn(shape, device=device)
    ours, peer = LocalResponseNorm(5, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    print(f"Triton kernel: {'yes' if lrn._triton_lrn(x) is not None else 'no (eager PyTorch ops)'}")
    errs = {}
    for dt in ("fp32", "bf16", "fp16"):
        xd, gd = x.to(DTYPES[dt]), g.to(DTYPES[dt])
        errs[dt] = worst_error(xd, gd, ours)  # bf16, fp16: against float64 of the rounded input
        print(f"shape {shape} {dt}; ours vs float64 formula: max error y {errs[dt][0]:.2e}, grad {errs[dt][1]:.2e}")
    e_towers = towers_error(torch.randn(shape, device=device) * 30, g)  # pre-ReLU conv1 outputs
    calls = 1 if args.quick else 10  # per timed round: one call takes about a millisecond
    dtypes = ("fp32", "bf16", "fp16")
    secs = time_pairs(ours, peer, x, g, dtypes, args, device, calls)
    with tempfile.TemporaryDirectory() as cache:
        cold = first_call_seconds("ours", cache)
        warm = first_call_seconds("ours", cache)  # the kernels the first process compiled, from disk
        peer_first = first_call_seconds("peer", cache)
    print(f"first fwd+bwd in a fresh process: ours {cold:.2f} s (empty Triton cache), {warm:.2f} s (cached); "
          f"peer {peer_first:.3g} s")
    speedup_results(secs, dtypes)
    result("lrn_first_call_seconds", cold, FIRST_CALL_TARGET_S, "s", ref=True)  # empty cache; target <= 5 s
    result("lrn_max_rel_error", max(errs["fp32"]), 1e-5, "relative", ref=True)
    result("lrn_groups2_relu_max_rel_error", e_towers, 1e-5, "relative", ref=True)


if __name__ == "__main__":
    _common.run(main)

"""LRN forward+backward: ours (alexnet.LocalResponseNorm) against torch.nn.LocalResponseNorm.

The shape is conv1's output of the paper's net at batch 32 (32x96x55x55). Both compute the same
function (torch's alpha is the paper's times n); the accuracy of ours against the paper's formula
in float64 is printed beside the timings.

    python benchmarks/lrn.py [--batch-size 32] [--quick]
"""

from __future__ import annotations

import _common  # noqa: F401  (puts src/ on the path)
import torch
from _common import base_parser, interleaved, median, result, setup

from alexnet.lrn import LocalResponseNorm, kernel_available, lrn_reference


def fwd_bwd(module, x: torch.Tensor, g: torch.Tensor):
    def run() -> None:
        xi = x.detach().requires_grad_()
        module(xi).backward(g)

    return run


def worst_error(x: torch.Tensor, g: torch.Tensor, module) -> tuple[float, float]:
    """Largest error of y and dL/dx, relative to the largest float64 value of each."""
    x64 = x.detach().double().requires_grad_()
    y64 = lrn_reference(x64, 5, 1e-4, 0.75, 2.0)  # float64 plain ops: an independent computation
    y64.backward(g.double())
    xi = x.detach().requires_grad_()
    y = module(xi)
    y.backward(g)
    ey = ((y.double() - y64).abs().max() / y64.abs().max()).item()
    eg = ((xi.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item()
    return ey, eg


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats = 2, 1
    device = setup(args)
    print(f"fused C kernel: {'yes' if kernel_available() else 'no (PyTorch fallback)'}")
    torch.manual_seed(0)
    shape = (args.batch_size, 96, 55, 55)
    x = torch.relu(torch.randn(shape, device=device) * 30)  # post-ReLU activations, as after conv1
    g = torch.randn(shape, device=device)
    ours, peer = LocalResponseNorm(5, 1e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    xcl, gcl = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    xbf, gbf = x.bfloat16(), g.bfloat16()
    ey, eg = worst_error(x, g, ours)
    print(f"shape {shape}; ours vs float64 formula: max error y {ey:.2e}, grad {eg:.2e} (relative to max |value|)")
    fns = {
        "peer torch LRN fp32": fwd_bwd(peer, x, g),
        "ours fp32 NCHW": fwd_bwd(ours, x, g),
        "ours fp32 channels_last": fwd_bwd(ours, xcl, gcl),
        "ours bf16 NCHW": fwd_bwd(ours, xbf, gbf),
    }
    for fn in fns.values():
        fn()  # warm-up (and the one-time kernel compile)
    secs = {k: median(v) for k, v in interleaved(fns, args.repeats, device).items()}
    peer_s = secs["peer torch LRN fp32"]
    result("lrn_fwd_bwd_speedup", 1 / secs["ours fp32 NCHW"], 1 / peer_s, "calls/s")
    result("lrn_fwd_bwd_channels_last_speedup", 1 / secs["ours fp32 channels_last"], 1 / peer_s, "calls/s")
    result("lrn_fwd_bwd_bf16_speedup", 1 / secs["ours bf16 NCHW"], 1 / peer_s, "calls/s")
    result("lrn_max_rel_error", max(ey, eg), 1e-5, "relative")


if __name__ == "__main__":
    main()

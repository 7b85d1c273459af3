"""Training throughput: the paper's net (ours, alexnet_paper) against torchvision's alexnet.

Both take SGD steps (momentum 0.9, weight decay 5e-4, as in the paper) on the same random batch
with the same batch size, precision (autocast), memory format, compile setting and (on CUDA)
cudnn.benchmark, timed in interleaved rounds. The ratio is normalised by the multiply-accumulates
of a training step per image: forward, weight gradients and input gradients (3x the forward, less
the first layer's input gradient, which no one needs), counted by alexnet.summary.layer_table on
our net and on alexnet_owt, which torchvision's weights load into unchanged (checked here), so the
count is of the peer's own architecture.

    python benchmarks/train_step.py [--batch-size 64] [--amp bf16] [--compile] [--profile] [--quick]
"""

from __future__ import annotations

import _common  # noqa: F401  (puts src/ on the path)
import torch
import torchvision
from _common import (
    base_parser,
    conv_gflops,
    interleaved,
    matmul_gflops,
    median,
    paired_ratio,
    result,
    settings,
    setup_with_amp,
    sync,
    training_macs,
)
from torch import nn

from alexnet.model import create_model
from alexnet.runtime import autocast
from alexnet.summary import layer_table


def macs_per_image(model: nn.Module, peer: nn.Module | None = None) -> tuple[int, int]:
    """(forward, training step) multiply-accumulates of one 224 px image; with ``peer``, ``model``
    is first given its weights (a strict load: the same layers and shapes, so the count is the peer's)."""
    if peer is not None:
        model.load_state_dict(peer.state_dict(), strict=True)
    rows = layer_table(model, 224)
    return sum(r.macs for r in rows), training_macs(rows)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp, steps: int,
              compile: bool = False):
    """``steps`` SGD steps of ``model`` (through ``torch.compile`` if asked) as one callable."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(model) if compile else model

    def run() -> None:
        for _ in range(steps):
            with autocast(device, amp):
                loss = loss_fn(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)

    return run


def profile(step, label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"--- profile: {label} (one timed call) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def parse(argv: list[str] | None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1, help="SGD steps per timed round")
    p.add_argument("--amp", default="none", help="none, bf16 or fp16 (autocast, both nets), or auto")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="auto: on for CPU and CUDA (both run convs faster in NHWC)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (the first steps compile)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step of each")
    p.set_defaults(repeats=11)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.repeats = 2, 1, 1
    if min(args.batch_size, args.steps, args.repeats) < 1:
        p.error("--batch-size, --steps and --repeats must be positive")
    return args


def build(args, device: torch.device, amp) -> tuple[dict, tuple[int, int], tuple[int, int]]:
    """Both nets at the same settings as step callables, and their (forward, training) MACs per image."""
    torch.manual_seed(0)
    ours = create_model("alexnet_paper").to(device).train()
    peer = torchvision.models.alexnet(weights=None).to(device).train()
    macs_ours, macs_peer = macs_per_image(ours), macs_per_image(create_model("alexnet_owt"), peer)
    fmt = torch.channels_last if args.channels_last != "off" else torch.contiguous_format
    ours, peer = ours.to(memory_format=fmt), peer.to(memory_format=fmt)
    x = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    steps = {
        "ours (alexnet_paper)": make_step(ours, x, y, device, amp, args.steps, args.compile),
        "peer (torchvision alexnet)": make_step(peer, x, y, device, amp, args.steps, args.compile),
    }
    return steps, macs_ours, macs_peer


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device, amp = setup_with_amp(args)
    steps, (fwd_ours, macs_ours), (fwd_peer, macs_peer) = build(args, device, amp)
    print(f"MACs per image, forward: ours {fwd_ours / 1e6:.1f} M, peer {fwd_peer / 1e6:.1f} M; training step "
          f"(forward + both gradients): ours {macs_ours / 1e6:.1f} M, peer {macs_peer / 1e6:.1f} M")
    for fn in steps.values():  # warm-up: allocator, oneDNN primitives, cuDNN autotuning, compilation
        fn()
    if args.profile:
        for label, fn in steps.items():
            profile(fn, label)
    times = interleaved(steps, args.repeats, device)
    t_ours, t_peer = times["ours (alexnet_paper)"], times["peer (torchvision alexnet)"]
    n = args.batch_size * args.steps
    ips_ours, ips_peer = n / median(t_ours), n / median(t_peer)
    speed = paired_ratio(t_peer, t_ours)  # ours images/s over the peer's, per back-to-back pair
    # A training step's MACs (forward, grad wrt inputs, grad wrt weights); a MAC is 2 FLOPs.
    gf_ours, gf_peer = 2 * macs_ours * ips_ours / 1e9, 2 * macs_peer * ips_peer / 1e9
    dtype = amp or torch.float32
    roof = matmul_gflops(device, 512 if args.quick else 2048, dtype=dtype)
    conv_roof = conv_gflops(device, dtype=dtype, quick=args.quick)
    best = max(roof, conv_roof)
    print(f"images/s: ours {ips_ours:.1f}, peer {ips_peer:.1f}")
    print(f"achieved GFLOP/s: ours {gf_ours:.1f}, peer {gf_peer:.1f}; large {dtype} matmul "
          f"{roof:.1f} GFLOP/s, large 3x3 convolution {conv_roof:.1f} GFLOP/s")
    print(f"model FLOP utilisation against the faster of the two: ours {gf_ours / best:.1%}, peer {gf_peer / best:.1%}")
    print(f"median of per-round ratios (ours/peer images/s): {speed:.4f}; MAC-normalised {speed * macs_ours / macs_peer:.4f}")
    settings(device=device, batch=args.batch_size, steps_per_round=args.steps, amp=amp or "none",
             channels_last=args.channels_last != "off", compile=args.compile,
             optimizer="torch SGD momentum 0.9 wd 5e-4", rounds=args.repeats,
             macs="training step (forward + weight and input gradients)")
    result("train_images_per_s", ips_ours, ips_peer, "images/s")
    result("train_macs_normalised", ips_ours * macs_ours, ips_peer * macs_peer, "MAC/s")
    result("train_gflops_vs_matmul", gf_ours, roof, "GFLOP/s")


if __name__ == "__main__":
    main()

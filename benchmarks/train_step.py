"""Training throughput: the paper's net (ours, alexnet_paper) against torchvision's alexnet.

Both take SGD steps (momentum 0.9, weight decay 5e-4, as in the paper) on the same random batch
with the same batch size, precision (autocast), memory format, compile setting and (on CUDA)
cudnn.benchmark, timed in interleaved rounds. The ratio is normalised by the multiply-accumulates
of a training step per image: forward, weight gradients and input gradients (3x the forward, less
the first layer's input gradient, which no one needs), counted by alexnet.summary.layer_table on
our net and on alexnet_owt, which torchvision's weights load into unchanged (checked here), so the
count is of the peer's own architecture.

    python benchmarks/train_step.py [--batch-size 64] [--amp bf16] [--compile] [--profile] [--ablate] [--quick]

``--ablate`` also times variants of ours that each change one suspect of a gap to the peer (no
LRN, one tower, each tower as its own dense convolution, no dropout, the paper's SGD), in the same
interleaved rounds, so one run says which part of the network costs the time (issue 12, item 3).
"""

from __future__ import annotations

import _common  # also puts src/ on the path
import torch
import torch.nn.functional as F
import torchvision
from _common import (
    base_parser,
    conv_gflops,
    interleaved,
    macs_per_image,
    matmul_gflops,
    median,
    paired_ratio,
    result,
    settings,
    setup_with_amp,
    sync,
)
from torch import nn

from alexnet.model import create_model
from alexnet.optim import PaperSGD, make_optimizer
from alexnet.runtime import autocast


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp, steps: int,
              compile: str | None = None, paper_sgd: bool = False, as_train: str | None = None):
    """``steps`` SGD steps of ``model`` (through ``torch.compile`` in mode ``compile`` if given) as one callable; torch's
    SGD (as the peer) unless ``paper_sgd`` (:class:`alexnet.optim.PaperSGD`, the default of ``alexnet train``);
    ``as_train``: the optimizer ``alexnet train --optimizer AS_TRAIN`` builds (for ``sgd``, torch's fused where it has one)."""
    if as_train is not None:
        opt = make_optimizer(as_train, [{"params": list(model.parameters())}], 1e-3, 0.9, 5e-4)
    else:
        sgd = PaperSGD if paper_sgd else torch.optim.SGD
        opt = sgd(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    forward = torch.compile(model, mode=compile) if compile else model

    def run() -> None:
        for _ in range(steps):
            with autocast(device, amp):
                loss = loss_fn(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)

    return run


def split_towers(model: nn.Module) -> nn.Module:
    """Run each tower of conv2, conv4 and conv5 as its own dense convolution (slices of the same
    weights, outputs concatenated) instead of one grouped convolution: an implementation idea to
    measure, since convolution libraries do not always tune grouped kernels as well as dense ones."""
    for conv in (model.conv2, model.conv4, model.conv5):
        g = conv.groups

        def forward(x: torch.Tensor, conv: nn.Conv2d = conv, g: int = g) -> torch.Tensor:
            parts = zip(x.chunk(g, 1), conv.weight.chunk(g), conv.bias.chunk(g))
            return torch.cat([F.conv2d(xi, wi, bi, conv.stride, conv.padding) for xi, wi, bi in parts], 1)

        conv.forward = forward
    return model


# --ablate: ours with one suspect changed each (name -> create_model overrides, split towers, paper SGD).
ABLATIONS: dict[str, tuple[dict, bool, bool]] = {
    "ours, no LRN": ({"lrn": False}, False, False),
    "ours, one tower": ({"towers": 1}, False, False),
    "ours, towers as dense convs": ({}, True, False),
    "ours, no dropout": ({"dropout": 0.0}, False, False),
    "ours, paper SGD": ({}, False, True),
}


def profile(step, label: str, device: torch.device) -> None:
    """torch.profiler tables of one call of ``step``: by self time on the device (CPU time on a CPU),
    then grouped by input shape, which tells the layers' convolutions apart."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        step()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- profile: {label} (one timed call), by {key} ---")
    print(prof.key_averages().table(sort_by=key, row_limit=20))
    print(f"--- profile: {label}, by input shape ---")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=25, max_name_column_width=40))


def parse(argv: list[str] | None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1, help="SGD steps per timed round")
    p.add_argument("--amp", default="none", help="none, bf16 or fp16 (autocast, both nets), or auto")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="auto: on for CPU and CUDA (both run convs faster in NHWC)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile both models in this mode (default: 'default'; 'reduce-overhead' replays "
                        "CUDA graphs); the first steps compile")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step of each")
    p.add_argument("--ablate", action="store_true",
                   help="also time variants of ours, one suspect of the gap changed in each (see the docstring)")
    p.set_defaults(repeats=11)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.repeats = 2, 1, 1
    if min(args.batch_size, args.steps, args.repeats) < 1:
        p.error("--batch-size, --steps and --repeats must be positive")
    return args


OURS, PEER = "ours (alexnet_paper)", "peer (torchvision alexnet)"


def build(args, device: torch.device, amp) -> tuple[dict, dict[str, tuple[int, int]]]:
    """Both nets (and with ``--ablate`` the variants of ours) at the same settings as step
    callables, and each one's (forward, training) MACs per image."""
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last != "off" else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    peer = torchvision.models.alexnet(weights=None).to(device).train()
    macs = {PEER: macs_per_image(create_model("alexnet_owt"), peer)}
    variants = {OURS: ({}, False, False)} | (ABLATIONS if args.ablate else {})
    steps = {}
    for name, (overrides, split, paper_sgd) in variants.items():
        model = create_model("alexnet_paper", **overrides).to(device).train()
        macs[name] = macs_per_image(model)
        model = split_towers(model) if split else model
        steps[name] = make_step(model.to(memory_format=fmt), x, y, device, amp, args.steps, args.compile, paper_sgd)
    steps[PEER] = make_step(peer.to(memory_format=fmt), x, y, device, amp, args.steps, args.compile)
    return steps, macs


def report_ablation(times: dict[str, list[float]], macs: dict[str, tuple[int, int]], n: int) -> None:
    """One row per variant: images/s, and against the peer (paired rounds) per image and per MAC."""
    print(f"{'variant':<30} {'images/s':>10} {'vs peer':>8} {'per MAC':>8}  (training MACs/image)")
    for name, ts in times.items():
        ratio = paired_ratio(times[PEER], ts)
        per_mac = ratio * macs[name][1] / macs[PEER][1]
        print(f"{name:<30} {n / median(ts):>10.1f} {ratio:>8.3f} {per_mac:>8.3f}  ({macs[name][1] / 1e6:.1f} M)")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device, amp = setup_with_amp(args)
    steps, macs = build(args, device, amp)
    (fwd_ours, macs_ours), (fwd_peer, macs_peer) = macs[OURS], macs[PEER]
    print(f"MACs per image, forward: ours {fwd_ours / 1e6:.1f} M, peer {fwd_peer / 1e6:.1f} M; training step "
          f"(forward + both gradients): ours {macs_ours / 1e6:.1f} M, peer {macs_peer / 1e6:.1f} M")
    for fn in steps.values():  # warm-up: allocator, oneDNN primitives, cuDNN autotuning, compilation
        fn()
    times = interleaved(steps, args.repeats, device)
    if args.profile:  # after the timed rounds: a profiler (CUPTI on CUDA) may stay attached and slow later calls
        for label in (OURS, PEER):
            profile(steps[label], label, device)
    t_ours, t_peer = times[OURS], times[PEER]
    n = args.batch_size * args.steps
    if args.ablate:
        report_ablation(times, macs, n)
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
             channels_last=args.channels_last != "off", compile=args.compile or False,
             optimizer="torch SGD momentum 0.9 wd 5e-4", rounds=args.repeats,
             macs="training step (forward + weight and input gradients)")
    result("train_images_per_s", ips_ours, ips_peer, "images/s")
    result("train_macs_normalised", ips_ours * macs_ours, ips_peer * macs_peer, "MAC/s")
    result("train_gflops_vs_roofline", gf_ours, best, "GFLOP/s", ref=True)  # the faster of matmul and conv


if __name__ == "__main__":
    _common.run(main)

"""Inference throughput: our fastest path against torchvision's alexnet in eager fp32 (the peer).

Both run torchvision's architecture with the same weights (torchvision's random initialisation
under a fixed seed, loaded into our alexnet_owt) on the centre crops of real images
(imagewoof-mini/val). Candidate paths of ours (channels_last fp32, channels_last bf16 autocast,
optionally torch.compile) are timed interleaved with the peer; the fastest whose top-1
predictions agree with the peer's on >= 99 % of the images is reported. Then the paper's 10-crop
evaluation (4 corners + centre, and their mirrors; softmax averaged) is timed against a
centre-crop evaluation on the same path.

    python benchmarks/inference.py [--data DIR] [--compile] [--quick]
"""

from __future__ import annotations

import _common
import torch
import torchvision
from _common import base_parser, interleaved, matmul_gflops, median, paired_ratio, result, setup
from torchvision.transforms.functional import ten_crop

from alexnet.data.folder import ImageFolderDataset
from alexnet.infer import predictor
from alexnet.model import create_model
from alexnet.runtime import cpu_supports_bf16, progress
from alexnet.summary import layer_table

DEFAULT_DATA = _common.ROOT.parent / "shared" / "data" / "imagewoof-mini" / "val"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255  # torchvision's ImageNet statistics
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
MIN_AGREEMENT = 0.99
CLASSIFIER = ("fc6", "fc7", "fc8")


def load_images(root, limit: int) -> torch.Tensor:
    """uint8 (N, 3, 256, 256): shorter side 256, central square, decoded once up front."""
    ds = ImageFolderDataset(root, resize=256, size=256)
    n = min(len(ds), limit) if limit else len(ds)
    items = [ds[i] for i in progress(range(n), total=n, desc="decode", unit="img")]
    return torch.stack([it[0] for it in items if it is not None])


def normalise(views: torch.Tensor, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 crops -> normalised float in ``fmt`` (the layout is chosen on the uint8 copy, a quarter
    of a float one). Ours runs channels_last; the peer gets plain NCHW, as torchvision's users do."""
    return (views.contiguous(memory_format=fmt).float() - MEAN) / STD


def centre(images: torch.Tensor, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return normalise(images[..., 16:240, 16:240], fmt)


def predict_all(fn, images: torch.Tensor, batch: int, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return torch.cat([fn(centre(images[i : i + batch], fmt)).argmax(1) for i in range(0, len(images), batch)])


def evaluate_centre(fn, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(centre(images[i : i + batch])).softmax(1) for i in range(0, len(images), batch)])


def evaluate_ten_crop(fn, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Softmax averaged over the 10 views of each image. A forward takes the views of batch // 8
    images, about as many views as the centre-crop batch, so each view costs what a centre crop
    does (quiet machine: 11.0x with the views of batch // 2 images per forward, whose activations
    no longer stay in cache)."""
    out = []
    step = max(1, batch // 8)
    for i in range(0, len(images), step):
        x = images[i : i + step]
        views = torch.stack(ten_crop(x, [224, 224]), dim=1).flatten(0, 1)  # (B*10, 3, 224, 224) uint8
        probs = fn(normalise(views)).softmax(1)
        out.append(probs.view(len(x), 10, -1).mean(1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ImageFolder tree of real images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=0, help="agreement over at most this many images (0: all)")
    p.add_argument("--time-images", type=int, default=128, help="images per timed round (the first ones)")
    p.add_argument("--ten-crop-images", type=int, default=64, help="images per timed 10-crop/centre-crop round")
    p.add_argument("--compile", action="store_true", help="also try torch.compile paths (slow first call)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.images, args.repeats, args.time_images, args.ten_crop_images = 2, 4, 1, 4, 2
    device = setup(args)
    images = load_images(args.data, args.images)
    print(f"{len(images)} images from {args.data}, batch {args.batch_size}")

    torch.manual_seed(0)
    peer = torchvision.models.alexnet(weights=None).to(device).eval()

    def ours_model():
        m = create_model("alexnet_owt")
        m.load_state_dict(peer.state_dict())  # identical weights (and a check that it is the same net)
        return m

    bf16 = device.type == "cuda" or cpu_supports_bf16()
    candidates = {"ours fp32 channels_last": predictor(ours_model(), device, amp="none")}
    if bf16:
        candidates["ours bf16 channels_last"] = predictor(ours_model(), device, amp="bf16")
        candidates["ours bf16, fp32 fc6-fc8"] = predictor(ours_model(), device, amp="bf16", fp32_layers=CLASSIFIER)
    if args.compile:
        candidates["ours fp32 compiled"] = predictor(ours_model(), device, amp="none", compile=True)
        if bf16:
            candidates["ours bf16 compiled"] = predictor(
                ours_model(), device, amp="bf16", compile=True, fp32_layers=CLASSIFIER
            )

    def peer_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return peer(x.to(device))

    reference = predict_all(peer_fn, images, args.batch_size, torch.contiguous_format)
    agreement = {}
    for name, fn in candidates.items():  # also the warm-up (and the compile) of each path
        agreement[name] = (predict_all(fn, images, args.batch_size) == reference).float().mean().item()
        print(f"  {name:<28} top-1 agreement with the peer {agreement[name]:.2%}")
    timed = images[: args.time_images]
    fns = {"peer fp32 eager": lambda: predict_all(peer_fn, timed, args.batch_size, torch.contiguous_format)}
    fns.update({k: (lambda f=f: predict_all(f, timed, args.batch_size)) for k, f in candidates.items()})
    times = interleaved(fns, args.repeats, device)
    secs = {k: median(v) for k, v in times.items()}
    good = [k for k in candidates if agreement[k] >= MIN_AGREEMENT] or list(candidates)
    best = min(good, key=secs.get)
    ips_best, ips_peer = len(timed) / secs[best], len(timed) / secs["peer fp32 eager"]
    speed = paired_ratio(times["peer fp32 eager"], times[best])
    print(f"fastest path with >= {MIN_AGREEMENT:.0%} agreement: {best}")
    macs = sum(r.macs for r in layer_table(ours_model(), 224))
    roof = matmul_gflops(device, 512 if args.quick else 2048, dtype=torch.bfloat16 if "bf16" in best else torch.float32)
    gflops = 2 * macs * ips_best / 1e9
    print(f"images/s: ours {ips_best:.1f}, peer {ips_peer:.1f}; ours {gflops:.1f} GFLOP/s, "
          f"{'bf16' if 'bf16' in best else 'fp32'} matmul {roof:.1f} GFLOP/s -> model FLOP utilisation {gflops / roof:.1%}")

    fn, few = candidates[best], images[: args.ten_crop_images]
    evaluate_centre(fn, few, args.batch_size), evaluate_ten_crop(fn, few, args.batch_size)  # warm-up: new shapes
    cost_times = interleaved(
        {"centre crop": lambda: evaluate_centre(fn, few, args.batch_size),
         "10 crops": lambda: evaluate_ten_crop(fn, few, args.batch_size)},
        args.repeats, device,
    )
    cost = {k: median(v) for k, v in cost_times.items()}
    ten_x = paired_ratio(cost_times["10 crops"], cost_times["centre crop"])
    print(f"10-crop evaluation costs {ten_x:.2f}x a centre-crop evaluation (median of paired rounds)")
    print(f"median of per-round speed ratios (ours/peer): {speed:.4f}")
    result("inference_images_per_s", ips_best, ips_peer, "images/s")
    result("inference_top1_agreement", agreement[best], 1.0, "fraction")
    result("ten_crop_cost", cost["10 crops"], cost["centre crop"], "s")


if __name__ == "__main__":
    main()

"""Inference throughput: our paths against torchvision's alexnet at the same settings.

Both run torchvision's architecture (ours: alexnet_owt) with the same weights on the centre crops
of real images (imagewoof-mini/val). Each path of ours (channels_last fp32; bf16 autocast; bf16
with fc6-fc8 in fp32; with --compile also torch.compile'd) is timed against the peer run the same
way (same dtype, memory format, compile setting and fp32 classifier, through the same wrapper),
interleaved round by round. Reported: among the paths whose top-1 predictions agree with the fp32
reference (the peer, eager fp32 NCHW) on >= 99 % of the images, the one whose pair is fastest
(ours + peer: choosing by ours' time alone would let noise in ours' favour pick it), ours against
the peer there; then the paper's 10-crop evaluation (4 corners + centre and their mirrors; softmax
averaged) against a centre-crop evaluation, both by the code of ``alexnet evaluate [--ten-crop]``
(``predict.model_log_probs``) at the reported path's amp.

The paper's own net (alexnet_paper: LRN, two towers, 96 conv1 filters; random weights) is timed too,
in the same interleaved rounds, against torchvision's alexnet at the same settings (bf16 autocast
where the device has it, channels_last, eager, the same batch): a different architecture, so the
ratio is normalised by each net's forward multiply-accumulates per image
(inference_paper_macs_normalised; the issue's target: >= 1.0).

Weights: torchvision's trained ImageNet weights when a file is at hand (--peer-weights, or the
torch hub cache); else a seeded random initialisation, whose top-1 agreement says little (tiny
margins; a constant prediction already agrees with many images): it is printed beside the constant
baseline but not reported as a RESULT. With trained weights and ImageNet-synset folders
(Imagenette, Imagewoof) both models' top-1 accuracy is reported. --checkpoint (a model of ours,
trained e.g. on Imagenette) with --ckpt-data labelled by its classes reports its top-1 on the fast
path and in fp32, and the two paths' agreement beside a constant prediction's; a checkpoint of
torchvision's architecture (alexnet_owt, 224 px) is also loaded into torchvision's alexnet and run
on the same fast path: both models' top-1 and their agreement.

Without --data and without the shared imagewoof-mini/val beside the checkout, the timings run on
synthetic 256x256 images (speed does not depend on the pixels) and no agreement or accuracy is
reported: that needs photos.

    python benchmarks/inference.py [--data DIR] [--peer-weights FILE] [--checkpoint CKPT --ckpt-data DIR]
                                   [--compile] [--quick]
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import _common
import torch
import torchvision
from _common import base_parser, interleaved, macs_per_image, matmul_gflops, median, paired_ratio, result, settings, setup

from alexnet.data.folder import ImageFolderDataset
from alexnet.data.imagenette import SYNSETS
from alexnet.data.loaders import model_input
from alexnet.errors import CheckpointError, DataError
from alexnet.infer import predictor
from alexnet.interop import torchvision_recipe
from alexnet.model import create_model
from alexnet.predict import model_log_probs
from alexnet.runtime import cpu_supports_bf16, progress
from alexnet.summary import layer_table

DEFAULT_DATA = _common.ROOT.parent / "shared" / "data" / "imagewoof-mini" / "val"
TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1 weights, as the hub caches them
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255  # torchvision's ImageNet statistics
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
MIN_AGREEMENT = 0.99
CLASSIFIER = ("fc6", "fc7", "fc8")
PEER_CLASSIFIER = ("classifier",)  # torchvision's fc6-fc8 (with their ReLUs and dropouts)
REFERENCE = "peer fp32 eager NCHW (reference)"
PAPER = "alexnet_paper"  # the timing keys of the paper pair: "ours alexnet_paper", "peer alexnet_paper"


def load_images(root, limit: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 (N, 3, 256, 256) (shorter side 256, central square, decoded once up front), the
    labels and the class folder names; ``limit`` images spread evenly over the class-sorted folder
    (its first ones were one class: a top-1 and a constant prediction's agreement of that class alone)."""
    ds = ImageFolderDataset(root, resize=256, size=256)
    n = min(len(ds), limit) if limit else len(ds)
    chosen = [i * len(ds) // n for i in range(n)]  # distinct, evenly spaced; all of them when n == len(ds)
    items = [ds[i] for i in progress(chosen, total=n, desc="decode", unit="img")]
    items = [it for it in items if it is not None]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]), list(ds.folders)


def synthetic_images(n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` uint8 (3, 256, 256) images of smooth seeded noise, as :func:`load_images` returns them,
    one unnamed class: for timings when no photos are at hand."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8).float()
    images = torch.nn.functional.interpolate(coarse, size=256, mode="bilinear").round().to(torch.uint8)
    return images, torch.zeros(n, dtype=torch.int64), ["synthetic"]


def normalise(views: torch.Tensor, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 crops -> normalised float in ``fmt`` (the layout is chosen on the uint8 copy, a quarter
    of a float one), on the images' device."""
    return (views.contiguous(memory_format=fmt).float() - MEAN.to(views.device)) / STD.to(views.device)


def centre(images: torch.Tensor, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return normalise(images[..., 16:240, 16:240], fmt)


def predict_all(fn, images: torch.Tensor, batch: int, fmt: torch.memory_format = torch.channels_last) -> torch.Tensor:
    return torch.cat([fn(centre(images[i : i + batch], fmt)).argmax(1).cpu() for i in range(0, len(images), batch)])


def evaluate_ours(model: torch.nn.Module, images: torch.Tensor, batch: int, ten_crop: bool, amp: torch.dtype | None) -> torch.Tensor:
    """Log-probabilities (the softmax averaged over the 10 views with ``ten_crop``) as ``alexnet evaluate`` computes them:
    :func:`alexnet.predict.model_log_probs` on batches of ``batch`` images (ten crops: 10 forwards of
    ``batch`` views each, cut and normalised from the uint8 batch by ``model_input``)."""
    return torch.cat([model_log_probs(model, images[i : i + batch], model.preprocess, ten_crop, amp, channels_last=True)
                      for i in range(0, len(images), batch)])


def peer_weights(path: str | None) -> tuple[dict | None, str]:
    """torchvision's trained weights from ``path`` or the hub cache, else (None, why not)."""
    candidates = [Path(path)] if path else [Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE]
    for file in candidates:
        if file.is_file():
            try:
                return torch.load(file, map_location="cpu", weights_only=True), f"trained: {file}"
            except Exception as e:  # a bad file given on purpose: say which and stop
                raise CheckpointError(f"--peer-weights {file}: not a readable state dict ({type(e).__name__})") from None
        if path:
            raise CheckpointError(f"--peer-weights {file}: file not found")
    return None, f"random (seed 0): no trained weights offline (looked for {candidates[0]})"


def paths(device: torch.device, compile: bool) -> dict[str, dict]:
    """Our candidate paths, each a set of predictor settings the peer is given too."""
    bf16 = device.type == "cuda" or cpu_supports_bf16()
    out = {"fp32 channels_last": dict(amp="none")}
    if bf16:
        out["bf16 channels_last"] = dict(amp="bf16")
        out["bf16, fp32 fc6-fc8"] = dict(amp="bf16", fp32=True)
    if compile:
        out["fp32 compiled"] = dict(amp="none", compile=True)
        if bf16:
            out["bf16, fp32 fc6-fc8, compiled"] = dict(amp="bf16", fp32=True, compile=True)
    return out


def build(peer: torch.nn.Module, device: torch.device, compile: bool) -> tuple[dict, dict]:
    """{path: (ours, peer)} callables at identical settings, and the reference (peer fp32 eager NCHW)."""
    def ours_model() -> torch.nn.Module:
        m = create_model("alexnet_owt")
        m.load_state_dict(peer.state_dict())  # identical weights (and a check that it is the same net)
        return m

    pairs = {}
    for name, s in paths(device, compile).items():
        common = dict(amp=s["amp"], channels_last=True, compile=s.get("compile", False))
        pairs[name] = (
            predictor(ours_model(), device, fp32_layers=CLASSIFIER if s.get("fp32") else (), **common),
            predictor(copy.deepcopy(peer), device, fp32_layers=PEER_CLASSIFIER if s.get("fp32") else (), **common),
        )
    reference = predictor(copy.deepcopy(peer), device, amp="none", channels_last=False)
    return pairs, {"reference": reference, "ours_model": ours_model}


def agreements(pairs: dict, reference: Callable, images: torch.Tensor, batch: int) -> tuple[dict, torch.Tensor]:
    """Top-1 agreement of every callable with the reference (also the warm-up, and the compile)."""
    ref = predict_all(reference, images, batch, torch.contiguous_format)
    out = {}
    for name, (ours, peer) in pairs.items():
        out[name] = tuple((predict_all(f, images, batch) == ref).float().mean().item() for f in (ours, peer))
        print(f"  {name:<30} top-1 agreement with the reference: ours {out[name][0]:.2%}, peer {out[name][1]:.2%}")
    return out, ref


def paper_pair(peer: torch.nn.Module, device: torch.device) -> tuple[str, tuple[Callable, Callable], tuple[int, int]]:
    """The paper's net (ours, ``alexnet_paper``: LRN, two towers, 96-filter conv1; seeded random
    weights) and torchvision's alexnet through the same predictor at the same settings (bf16 autocast
    where the device has it, else fp32; channels_last; eager), with their forward MACs per image
    (``_common.macs_per_image``, as train_step.py counts them): a different architecture from the
    peer's, so its speed is compared per MAC."""
    amp = "bf16" if device.type == "cuda" or cpu_supports_bf16() else "none"
    torch.manual_seed(0)
    ours = create_model(PAPER)
    macs = macs_per_image(ours)[0], macs_per_image(create_model("alexnet_owt"), peer)[0]
    common = dict(amp=amp, channels_last=True)
    return amp, (predictor(ours, device, **common), predictor(copy.deepcopy(peer), device, **common)), macs


def time_paths(pairs: dict, reference: Callable, images: torch.Tensor, args, device) -> dict[str, list[float]]:
    fns = {REFERENCE: lambda: predict_all(reference, images, args.batch_size, torch.contiguous_format)}
    for name, (ours, peer) in pairs.items():
        fns[f"ours {name}"] = lambda f=ours: predict_all(f, images, args.batch_size)
        fns[f"peer {name}"] = lambda f=peer: predict_all(f, images, args.batch_size)
    return interleaved(fns, args.repeats, device)


def constant_baseline(ref: torch.Tensor) -> float:
    """Agreement with ``ref`` of always predicting its most frequent class."""
    return ref.bincount().max().item() / len(ref)


def labelled_top1(pairs: dict, best: str, reference, images, labels, folders, batch: int) -> tuple[float, float, float] | None:
    """Top-1 accuracy (ImageNet-1k outputs) of ours and of the peer on ``best``, and of the fp32
    reference, when the folders are ImageNet synsets whose index is known; else None."""
    if any(f not in SYNSETS for f in folders):
        return None
    target = torch.tensor([SYNSETS[f][0] for f in folders])[labels]
    ours, peer = ((predict_all(fn, images, batch) == target).float().mean().item() for fn in pairs[best])
    ref = (predict_all(reference, images, batch, torch.contiguous_format) == target).float().mean().item()
    return ours, peer, ref


def ten_crop_cost(model: torch.nn.Module, amp: torch.dtype | None, images: torch.Tensor, args, device) -> dict[str, list[float]]:
    """Our 10-crop evaluation against our centre-crop one (``alexnet evaluate [--ten-crop]``'s code),
    the same model, amp and batch of images, interleaved."""
    for ten in (False, True):  # warm-up: new shapes
        evaluate_ours(model, images, args.batch_size, ten, amp)
    return interleaved(
        {"centre crop": lambda: evaluate_ours(model, images, args.batch_size, False, amp),
         "10 crops": lambda: evaluate_ours(model, images, args.batch_size, True, amp)},
        args.repeats, device,
    )


def checkpoint_check(path: str, data: str, device: torch.device, batch: int, ckpt_data_given: bool = True) -> dict[str, float]:
    """A trained checkpoint of ours on labelled ``data`` (its own preprocessing): top-1 on the fast
    path and in fp32 eager NCHW, the two paths' top-1 agreement and a constant prediction's (the
    fp32 path's most frequent class). Trained weights have real margins, so this agreement, unlike
    random weights', says whether the fast path keeps the predictions."""
    import alexnet
    from alexnet.data.loaders import load_eval_data

    fast_model, ref_model = alexnet.load(path), alexnet.load(path)
    loader, classes, *_ = load_eval_data(data, ref_model.preprocess, batch)
    known = list(ref_model.classes or [])
    if (known and list(classes) != known) or len(classes) != ref_model.config.num_classes:
        option = "--ckpt-data" if ckpt_data_given else "--data"
        raise DataError(f"{option} {data}: its classes ({', '.join(classes[:4])}...) are not those "
                 f"--checkpoint {path} was trained on ({', '.join(known[:4]) or ref_model.config.num_classes}...)")
    amp = "bf16" if device.type == "cuda" or cpu_supports_bf16() else "none"
    fp32 = tuple(n for n in CLASSIFIER if hasattr(fast_model, n))
    fns = {"fast": predictor(fast_model, device, amp=amp, fp32_layers=fp32),
           "fp32": predictor(ref_model, device, amp="none", channels_last=False)}
    twin = torchvision_twin(ref_model)
    if twin is not None:  # the same trained weights in torchvision's alexnet, on the same fast path
        fns["peer"] = predictor(twin, device, amp=amp, fp32_layers=PEER_CLASSIFIER)
    preds, labels = {k: [] for k in fns}, []
    for b in loader:
        if b is None:  # every image of the batch was unreadable
            continue
        images, y = b[0].to(device), b[1]
        index = torch.zeros(len(y), dtype=torch.int64, device=device)  # unused at test time
        x = model_input(images, index, ref_model.preprocess, False)
        for k, fn in fns.items():
            preds[k].append(fn(x).argmax(1).cpu())
        labels.append(y.cpu())
    fast, ref, y = torch.cat(preds["fast"]), torch.cat(preds["fp32"]), torch.cat(labels)
    out = {"top1_fast": (fast == y).float().mean().item(), "top1_fp32": (ref == y).float().mean().item(),
           "agreement": (fast == ref).float().mean().item(), "constant": constant_baseline(ref), "images": len(y)}
    if twin is not None:
        peer = torch.cat(preds["peer"])
        out |= {"top1_peer": (peer == y).float().mean().item(), "agreement_peer": (fast == peer).float().mean().item()}
    return out


def torchvision_twin(model: torch.nn.Module) -> torch.nn.Module | None:
    """torchvision's alexnet holding ``model``'s weights if ``model`` has its layers (alexnet_owt), else None."""
    from alexnet.errors import ConfigError
    from alexnet.export import torchvision_state_dict

    try:
        state = torchvision_state_dict(model)
    except ConfigError:
        return None
    twin = torchvision.models.alexnet(num_classes=model.config.num_classes)
    twin.load_state_dict(state)
    return twin.eval()


def parse(argv: list[str] | None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", help=f"ImageFolder tree of real images (default: {DEFAULT_DATA} if there, else synthetic ones)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=0, help="agreement over at most this many images (0: all)")
    p.add_argument("--time-images", type=int, default=128, help="images per timed round (the first ones)")
    p.add_argument("--ten-crop-images", type=int, default=64, help="images per timed 10-crop/centre-crop round")
    p.add_argument("--compile", action="store_true", help="also try torch.compile paths, ours and the peer's (slow first call)")
    p.add_argument("--peer-weights", help=f"torchvision alexnet state dict (default: {TORCHVISION_FILE} in the torch hub cache)")
    p.add_argument("--checkpoint", help="a trained checkpoint of ours: its top-1 on --ckpt-data, fast path vs fp32")
    p.add_argument("--ckpt-data", help="labelled data for --checkpoint (its classes; default: --data)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.images, args.repeats, args.time_images, args.ten_crop_images = 2, 4, 1, 4, 2
    if min(args.batch_size, args.repeats, args.time_images, args.ten_crop_images) < 1 or args.images < 0:
        p.error("--batch-size, --repeats, --time-images and --ten-crop-images must be positive")
    if args.data is None and DEFAULT_DATA.is_dir():
        args.data = str(DEFAULT_DATA)
    if args.data is not None and not Path(args.data).is_dir():
        p.error(f"--data: folder not found: {args.data}")
    if args.data is None and args.checkpoint and not args.ckpt_data:
        p.error("--checkpoint needs labelled photos: give --ckpt-data DIR (or --data DIR)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = setup(args)
    state, weights = peer_weights(args.peer_weights)
    ckpt = (checkpoint_check(args.checkpoint, args.ckpt_data or args.data, device, args.batch_size, bool(args.ckpt_data))
            if args.checkpoint else None)
    if args.data is None:
        images, labels, folders = synthetic_images(args.images or 256)
        print(f"NOTE: no photos ({DEFAULT_DATA} is absent; --data DIR gives some): timings on {len(images)} synthetic "
              "images, no agreement or accuracy reported")
    else:
        images, labels, folders = load_images(args.data, args.images)
    images = images.to(device)  # decoded once; crops are cut and normalised where the model runs, for both sides
    print(f"{len(images)} images from {args.data or 'synthetic noise'}, batch {args.batch_size}; weights {weights}")
    torch.manual_seed(0)
    peer = torchvision.models.alexnet(weights=None)
    if state is not None:
        peer.load_state_dict(state)
    pairs, extra = build(peer.eval(), device, args.compile)
    agree, ref = agreements(pairs, extra["reference"], images, args.batch_size)
    baseline = constant_baseline(ref)
    print(f"  a constant prediction (the reference's most frequent class) agrees on {baseline:.2%}")
    if state is None:
        print("  NOTE: random weights: top-1 agreement is nearly meaningless here (margins are tiny), so no RESULT "
              "line reports it; compare it with the constant baseline, and give --peer-weights FILE (torchvision's) "
              "or --checkpoint CKPT (a model of ours, trained) for an agreement of trained weights")
    paper_amp, paper, paper_macs = paper_pair(peer, device)
    for fn in paper:  # warm-up: cuDNN autotuning, oneDNN primitives
        predict_all(fn, images[: args.batch_size], args.batch_size)
    times = time_paths(pairs | {PAPER: paper}, extra["reference"], images[: args.time_images], args, device)
    secs = {k: median(v) for k, v in times.items()}
    best = choose_path(pairs, agree, secs)
    n = len(images[: args.time_images])
    ips_ours, ips_peer, ips_ref = n / secs[f"ours {best}"], n / secs[f"peer {best}"], n / secs[REFERENCE]
    speed = paired_ratio(times[f"peer {best}"], times[f"ours {best}"])
    report_speed(best, ips_ours, ips_peer, ips_ref, speed, extra["ours_model"](), device, args.quick)
    paper_ips = n / secs[f"ours {PAPER}"], n / secs[f"peer {PAPER}"]
    paper_speed = paired_ratio(times[f"peer {PAPER}"], times[f"ours {PAPER}"])
    print(f"alexnet_paper ({paper_macs[0] / 1e6:.1f} M MACs/image) against torchvision alexnet ({paper_macs[1] / 1e6:.1f} M), "
          f"{paper_amp} autocast, channels_last, eager: images/s ours {paper_ips[0]:.1f}, peer {paper_ips[1]:.1f}; "
          f"median of per-round ratios {paper_speed:.4f}, per MAC {paper_speed * paper_macs[0] / paper_macs[1]:.4f}")
    top1 = labelled_top1(pairs, best, extra["reference"], images, labels, folders, args.batch_size) if state else None
    if ckpt is not None:
        print(f"checkpoint {args.checkpoint} on {ckpt['images']} images: top-1 {ckpt['top1_fast']:.2%} on the fast path, "
              f"{ckpt['top1_fp32']:.2%} in fp32 eager NCHW; the two agree on {ckpt['agreement']:.2%} "
              f"(a constant prediction: {ckpt['constant']:.2%})")
        if "top1_peer" in ckpt:
            print(f"  torchvision's alexnet with the checkpoint's weights on the same path: top-1 {ckpt['top1_peer']:.2%}; "
                  f"ours agrees with it on {ckpt['agreement_peer']:.2%}")
    evaluator = extra["ours_model"]().to(device).eval().to(memory_format=torch.channels_last)
    evaluator.preprocess = torchvision_recipe()
    amp = torch.bfloat16 if paths(device, args.compile)[best]["amp"] == "bf16" else None
    with torch.no_grad():
        cost_times = ten_crop_cost(evaluator, amp, images[: args.ten_crop_images], args, device)
    cost = {k: median(v) for k, v in cost_times.items()}
    print(f"10-crop evaluation costs {paired_ratio(cost_times['10 crops'], cost_times['centre crop']):.2f}x a "
          "centre-crop evaluation (median of paired rounds)")
    settings(device=device, path=best, peer="torchvision alexnet through the same predictor", batch=args.batch_size,
             timed_images=n, rounds=args.repeats, weights=weights.split(":")[0], agreement_images=len(images),
             paper_pair=f"alexnet_paper vs torchvision alexnet, amp {paper_amp}, channels_last, eager, per forward MAC")
    result("inference_images_per_s", ips_ours, ips_peer, "images/s")
    result("inference_paper_images_per_s", paper_ips[0], paper_ips[1], "images/s")
    result("inference_paper_macs_normalised", paper_ips[0] * paper_macs[0], paper_ips[1] * paper_macs[1], "MAC/s")
    if state is not None and args.data is not None:  # random weights' (or noise images') agreement says nothing
        result("inference_top1_agreement", agree[best][0], baseline, "fraction", ref=True)
    if top1 is not None:  # the peer on ours' path (the rule of every peer= figure); the fp32 reference printed
        print(f"top-1 on the {best} path: ours {top1[0]:.2%}, peer {top1[1]:.2%}; fp32 eager NCHW reference {top1[2]:.2%}")
        result("inference_top1_accuracy", top1[0], top1[1], "fraction")
    if ckpt is not None:
        result("inference_checkpoint_top1", ckpt["top1_fast"], ckpt["top1_fp32"], "fraction", ref=True)
        result("inference_checkpoint_agreement", ckpt["agreement"], ckpt["constant"], "fraction", ref=True)
        if "top1_peer" in ckpt:  # both models' top-1 with the same trained weights, and their agreement
            result("inference_checkpoint_top1_vs_torchvision", ckpt["top1_fast"], ckpt["top1_peer"], "fraction")
            result("inference_checkpoint_agreement_torchvision", ckpt["agreement_peer"], ckpt["constant"], "fraction", ref=True)
    result("ten_crop_cost", cost["10 crops"], cost["centre crop"], "s", ref=True)


def choose_path(pairs: dict, agree: dict, secs: dict) -> str:
    """The path to report: among those where ours agrees with the reference on >= MIN_AGREEMENT of
    the images, the one whose pair (ours and the peer, the same net) is fastest together -- chosen
    by ours' time alone, noise in ours' favour would pick the path and inflate the ratio."""
    good = [k for k in pairs if agree[k][0] >= MIN_AGREEMENT]
    if not good:
        print(f"  WARNING: no path of ours agrees with the reference on >= {MIN_AGREEMENT:.0%} of the images; "
              "reporting the fastest pair of all paths")
        good = list(pairs)
    return min(good, key=lambda k: secs[f"ours {k}"] + secs[f"peer {k}"])

def report_speed(best: str, ips_ours: float, ips_peer: float, ips_ref: float, speed: float, model, device, quick: bool) -> None:
    print(f"path (>= {MIN_AGREEMENT:.0%} agreement, fastest pair): {best}; the peer at the same settings")
    macs = sum(r.macs for r in layer_table(model, 224))
    dtype = torch.bfloat16 if "bf16" in best else torch.float32
    # The roof is the faster of a large matmul and a large 3x3 convolution, as in train_step.py:
    # oneDNN's convolutions outrun the matmul on some CPUs (against the matmul alone: 101.3 %).
    roof = max(matmul_gflops(device, 512 if quick else 2048, dtype=dtype), _common.conv_gflops(device, dtype=dtype, quick=quick))
    gflops = 2 * macs * ips_ours / 1e9
    print(f"images/s: ours {ips_ours:.1f}, peer {ips_peer:.1f} (median of per-round ratios {speed:.4f}); "
          f"peer in fp32 eager NCHW, torchvision's default use: {ips_ref:.1f} (ours {ips_ours / ips_ref:.2f}x that)")
    print(f"ours {gflops:.1f} GFLOP/s; the faster of a large {dtype} matmul and 3x3 convolution {roof:.1f} GFLOP/s -> "
          f"model FLOP utilisation {gflops / roof:.1%}")


if __name__ == "__main__":
    _common.run(main)

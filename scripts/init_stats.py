"""Measure AlexNet at initialisation on real photos: the init tables of docs/training.md.

    python scripts/init_stats.py --data ~/data/imagenette --table all
    python scripts/init_stats.py --data DIR --table c --photos 64 --json init.json

Why a script: whether the image still matters at fc7, and how large fc8's first step is, decide
whether a recipe can learn (docs/training.md); the figures must describe what ``alexnet train``
does, so every network here is built and fed by train's own code: the preset (``resolve_config``),
the data loading and preprocessing (``load_data``: the training set's mean image and pixel std;
``model_input``: the mean image subtracted, then divided by the data preset's std: 1 for ``paper``,
the pixels' per-channel std for ``photos``) and the model (``seed_everything(--seed)`` then
``build_model``, as train does: the weights of ``alexnet train --seed N`` before its first step).

One forward pass of ``--photos`` training photos (``DIR/CLASS/*.jpg``, or ``DIR/train``), chosen at
random by ``--seed``, each at the centre crop validation uses, in eval mode (no dropout) and float32;
the statistics are taken in float64. Columns:

  ‖fc7‖²        mean over the photos of ‖h‖², h = fc7's output (after its ReLU): fc8's input
  cosine        mean over every pair of two different photos of cos(h_i, h_j); 1.000 means the network
                gives every photo the same h: it does not see the image
  lr·‖h‖²/C     the preset's lr times ‖fc7‖² over C classes (C = 10, 1000): the curvature of the loss
                along fc8's first step times lr; plain SGD overshoots above 2 (3.8 with momentum 0.9)
  logit std     the std across the photos of each of fc8's outputs, averaged over the outputs

Tables (``--table``):

  a  the inits: paper (biases 1), paper with biases 0.1 (``--preset paper``), caffe (bvlc_alexnet's
     fillers, ``--model-option init=caffe``) and kaiming (``--preset photos``); each fed the pixels of
     its preset (``paper``: raw centred; ``photos``: divided by their std) unless ``--data-preset``
  b  the paper init (biases 1 and 0.1) fed pixels divided by their std (``--data-preset photos``)
     and raw centred pixels (``--preset paper``'s own)
  c  ``--preset paper`` at input sizes ``--sizes`` (default 224, 112, 63; a folder's photos are
     resized to keep the paper's 224-of-256 crop, as train does)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet.config import TrainConfig, resolve_config
from alexnet.data.folder import collate
from alexnet.data.loaders import Batches, DataBundle, load_data, model_input
from alexnet.errors import AlexNetError, DataError
from alexnet.finetune import build_model
from alexnet.model import AlexNet, model_config
from alexnet.runtime import seed_everything, set_threads

PHOTOS = {"a": 32, "b": 32, "c": 64}  # the docs' counts
TITLES = {
    "a": "| init | input | ‖fc7 output‖² | mean cosine between two images' fc7 vectors | lr · ‖h‖² / C, C = 10 | same, C = 1000 |\n"
         "|---|---|---:|---:|---:|---:|",
    "b": "| input | biases | ‖fc7‖² | cosine of two images' fc7 | logit std across images |\n|---|---|---:|---:|---:|",
    "c": "| input size | logit std across images | cosine of two images' fc7 | ‖fc7‖² |\n|---:|---:|---:|---:|",
}
PIXELS = {"paper": "raw centred pixels", "photos": "÷ pixel std"}  # what a data preset feeds (alexnet.data.presets)


@dataclass(frozen=True)
class Row:
    """One network and its input: a training preset, model options on top, the data preset."""

    label: str
    preset: str
    options: dict[str, Any] = field(default_factory=dict)
    data_preset: str | None = None  # None: the preset's own


def rows_for(table: str, size: int, sizes: list[int], data_preset: str | None) -> list[Row]:
    """The rows of ``table``, as docs/training.md has them."""
    at = {} if size == 224 else {"input_size": size}
    if table == "a":
        return [Row("paper (biases 1)", "paper", {**at, "init_bias": 1.0}, data_preset),
                Row("paper, biases 0.1 (Caffe's; --preset paper)", "paper", at, data_preset),
                Row("caffe (bvlc_alexnet fillers)", "paper", {**at, "init": "caffe"}, data_preset),
                Row("kaiming (He, biases 0; --preset photos)", "photos", at, data_preset)]
    if table == "b":
        return [Row(f"{pixels}, biases {bias:g}", "paper", {**at, "init_bias": bias}, pixels)
                for pixels in ("photos", "paper") for bias in (1.0, 0.1)]
    return [Row(f"{s} px", "paper", {} if s == 224 else {"input_size": s}, data_preset) for s in sizes]


def config(row: Row, data: str, seed: int) -> TrainConfig:
    """The run's configuration, as ``alexnet train --preset P --model-option ... [--data-preset D]``."""
    overrides = {"data": data, "seed": seed, "model_options": dict(row.options), "data_preset": row.data_preset}
    return resolve_config(row.preset, overrides)


class Photos:
    """The data (``load_data``, as train opens it) per data preset and input size, opened once each,
    and the same seeded choice of training photos from each."""

    def __init__(self, data: str, seed: int) -> None:
        self.data, self.seed, self.opened = data, seed, {}

    def bundle(self, preset: str | None, input_size: int) -> DataBundle:
        key = (preset, input_size)
        if key not in self.opened:
            self.opened[key] = load_data(self.data, 128, input_size, seed=self.seed, preset=preset, show_progress=False)
        return self.opened[key]

    def batch(self, preset: str | None, input_size: int, n: int) -> tuple[torch.Tensor, DataBundle]:
        """``n`` training photos as the network's input (the centre crop validation takes, normalised
        by ``data.preprocess``) and the data they come from; the same photos for every preset and size."""
        data = self.bundle(preset, input_size)
        if not isinstance(data.train, Batches):  # Fashion-MNIST or CIFAR, held in memory
            raise DataError(f"--data {self.data}: {data.source} is not a photo folder (DIR/CLASS/*.jpg or DIR/train)")
        subset = data.train.loader.dataset  # the training images, the unreadable left out
        if n > len(subset):
            raise DataError(f"--photos {n}: {self.data} has only {len(subset)} readable training images")
        pick = torch.randperm(len(subset), generator=torch.Generator().manual_seed(self.seed))[:n]
        got = collate([subset[int(i)] for i in pick])
        read = 0 if got is None else len(got[0])
        if read < n:
            raise DataError(f"--data {self.data}: {n - read} of the {n} photos chosen (seed {self.seed}) cannot be read")
        return model_input(got[0], got[2], data.preprocess, train=False), data


def network(cfg: TrainConfig, data: DataBundle) -> AlexNet:
    """The network ``alexnet train`` starts from with ``cfg`` on ``data``, in eval mode."""
    arch = dataclasses.replace(model_config(cfg.model, **cfg.model_options), in_chans=data.preprocess.channels)
    seed_everything(cfg.seed)  # as train: after the data is loaded, just before the model is built
    return build_model(cfg, arch, data.classes, None, log=lambda _: None).eval()


def statistics(h: torch.Tensor, logits: torch.Tensor, lr: float) -> dict[str, float]:
    """The columns (the module's docstring) of fc7 outputs ``h`` and ``logits`` of two or more photos, in float64."""
    h, logits, n = h.double(), logits.double(), len(h)
    sq = (h * h).sum(1)
    unit = h / sq.sqrt().unsqueeze(1)  # a photo whose h is all 0 has no direction: NaN
    pairs = (unit @ unit.T).sum() - (unit * unit).sum()  # every i != j
    mean_sq = float(sq.mean())
    return {"fc7_sq_norm": mean_sq, "fc7_cosine": float(pairs) / (n * (n - 1)), "step_c10": lr * mean_sq / 10,
            "step_c1000": lr * mean_sq / 1000, "logit_std": float(logits.std(0).mean())}


@torch.no_grad()
def measure(row: Row, photos: Photos, n: int, data_dir: str) -> dict[str, Any]:
    """One row: the network of ``row`` and ``n`` photos fed as its data preset feeds them."""
    cfg = config(row, data_dir, photos.seed)
    size = model_config(cfg.model, **cfg.model_options).input_size
    x, data = photos.batch(cfg.data_preset, size, n)
    model = network(cfg, data)
    out = statistics(model.forward_fc7(x), model(x), cfg.lr)
    bias = model.config.init_bias if model.config.init == "paper" else None  # the other inits set their own
    return {"row": row.label, "preset": cfg.preset, "data_preset": data.preprocess.preset, "init": model.config.init, "init_bias": bias,
            "input_size": size, "photos": n, "classes": len(data.classes), "lr": cfg.lr, **out}


def markdown(table: str, results: list[dict[str, Any]]) -> str:
    """``results`` as the table of docs/training.md they stand for."""
    lines = [TITLES[table]]
    for r in results:
        if table == "a":
            pixels = PIXELS.get(r["data_preset"], r["data_preset"])
            lines.append(f"| {r['row']} | {pixels} | {r['fc7_sq_norm']:,.0f} | {r['fc7_cosine']:.3f} | "
                         f"{r['step_c10']:.2f} | {r['step_c1000']:.3f} |")
        elif table == "b":
            pixels = PIXELS.get(r["data_preset"], r["data_preset"]) + (" (the paper)" if r["data_preset"] == "paper" else "")
            lines.append(f"| {pixels} | {r['init_bias']:g} | {r['fc7_sq_norm']:,.0f} | {r['fc7_cosine']:.4f} | {r['logit_std']:.4f} |")
        else:
            lines.append(f"| {r['input_size']} | {r['logit_std']:#.2g} | {r['fc7_cosine']:.5f} | {r['fc7_sq_norm']:,.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a photo folder: DIR/CLASS/*.jpg, or DIR/train and DIR/val")
    p.add_argument("--table", choices=("a", "b", "c", "all"), default="all")
    p.add_argument("--photos", type=int, help="photos per table (default: the docs' 32 for a and b, 64 for c)")
    p.add_argument("--seed", type=int, default=0, help="the photos' choice and the weights' (train's --seed)")
    p.add_argument("--size", type=int, default=224, help="input size of tables a and b (--model-option input_size)")
    p.add_argument("--sizes", default="224,112,63", help="input sizes of table c, comma-separated")
    p.add_argument("--data-preset", choices=("paper", "photos"),
                   help="the pixels of tables a and c for every network (default: each preset's own; b shows both)")
    p.add_argument("--json", metavar="FILE", help="also write every row's figures to FILE")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: whole numbers separated by commas, got {args.sizes!r}")
    if args.photos is not None and args.photos < 2:
        p.error(f"--photos: at least 2 (a cosine needs two photos), got {args.photos}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: at least 1, got {args.threads}")
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data}: no such folder")
    if args.json and not Path(args.json).resolve().parent.is_dir():  # said now, not after the measuring
        p.error(f"--json {args.json}: no folder {Path(args.json).resolve().parent}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    photos, every = Photos(args.data, args.seed), {}
    try:
        for table in ("a", "b", "c") if args.table == "all" else (args.table,):
            n = args.photos or PHOTOS[table]
            rows = rows_for(table, args.size, args.sizes, args.data_preset)
            every[table] = [measure(row, photos, n, args.data) for row in rows]
            print(f"table {table}: {n} photos of {args.data} (seed {args.seed})\n{markdown(table, every[table])}\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(every, indent=1) + "\n")
    except AlexNetError as e:  # the data or an option: one line, as alexnet says it
        print(f"init_stats.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"init_stats.py: error: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Trace the first steps of a training recipe: loss, logits and every layer's ReLUs, step by step.

    python scripts/trace_steps.py --data ~/data/imagenette-packed --steps 50 --out trace.jsonl
    python scripts/trace_steps.py --data DIR --preset paper --model-option init=caffe

Uses the package's own data pipeline, model, optimiser and schedule (``alexnet.config`` presets),
so what it shows is what ``alexnet train`` does. Prints one line per step and writes a JSON line per
step (and, with matplotlib, a PNG beside it). docs/training.md's trace of the first steps comes from it
(its init tables from scripts/init_stats.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.cli.common import _key_values
from alexnet.config import resolve_config
from alexnet.data.loaders import load_data, model_input
from alexnet.epoch import _set_lr
from alexnet.finetune import build_model
from alexnet.health import WATCHED, LayerProbe
from alexnet.model import model_config
from alexnet.optim import make_optimizer, param_groups
from alexnet.runtime import seed_everything, set_threads


def trace(cfg, steps: int) -> list[dict]:
    torch.set_num_threads(torch.get_num_threads())
    arch = model_config(cfg.model, **cfg.model_options)
    data = load_data(cfg.data, cfg.batch_size, arch.input_size, workers=0, seed=cfg.seed, preset=cfg.data_preset)
    seed_everything(cfg.seed)
    arch = dataclasses.replace(arch, in_chans=data.preprocess.channels)
    model = build_model(cfg, arch, data.classes, None, log=lambda s: None)
    groups = param_groups(model, cfg.lr_mult, cfg.bias_decay)
    opt = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    probe = LayerProbe(model)
    probe.armed = True
    rows, step = [], 0
    model.train()
    while step < steps:
        for images, labels, index in data.train:
            x = model_input(images, index, data.preprocess, True, cfg.seed, 0)
            _set_lr(opt, cfg, step, len(data.train), 1.0)  # train's own rule (schedule, warm-up, layer multipliers)
            logits = model(x)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            probe.collect()  # the hooks' statistics of this forward pass, into probe.seen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = {n: float(getattr(model, n).weight.grad.norm()) for n in (*WATCHED, "fc8")}
            before = {n: getattr(model, n).weight.detach().clone() for n in (*WATCHED, "fc8")}
            opt.step()
            row = {
                "step": step + 1,
                "lr": opt.param_groups[0]["lr"],
                "loss": float(loss.detach()),
                "logit_std": float(logits.detach().float().std()),
                "logit_max": float(logits.detach().float().abs().max()),
                "dead": {n: round(life.dead_fraction, 4) for n, life in probe.seen.items()},
                "pre_mean": {n: round(life.mean, 4) for n, life in probe.seen.items()},
                "pre_std": {n: round(life.std, 4) for n, life in probe.seen.items()},
                "grad_norm": grads,
                "update_ratio": {n: float((getattr(model, n).weight.detach() - w).norm() / w.norm()) for n, w in before.items()},
            }
            rows.append(row)
            dead = " ".join(f"{n}:{row['dead'][n]:.2f}" for n in WATCHED if n in row["dead"])
            print(f"step {row['step']:3d}  loss {row['loss']:9.3f}  |logit| max {row['logit_max']:9.2f}  "
                  f"fc8 update/w {row['update_ratio']['fc8']:.3f}  dead {dead}", flush=True)
            step += 1
            if step >= steps or not math.isfinite(row["loss"]):
                return rows
    return rows


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in rows]
    a.semilogy(steps, [max(r["loss"], 1e-3) for r in rows])
    a.set(xlabel="step", ylabel="training loss (log scale)", title="loss")
    for n in WATCHED:
        b.plot(steps, [r["dead"].get(n, float("nan")) for r in rows], label=n)
    b.set(xlabel="step", ylabel="fraction of units dead on the batch", title="dead ReLUs", ylim=(-0.02, 1.02))
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="paper")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON lines (a PNG is written beside it)")
    p.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    args = p.parse_args()
    if args.threads:
        set_threads(args.threads)
    cfg = resolve_config(args.preset, {"data": args.data, "lr": args.lr, "seed": args.seed,
                                       "model_options": _key_values(args.model_option, "--model-option")})
    rows = trace(cfg, args.steps)
    if args.out:
        out = Path(args.out)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()

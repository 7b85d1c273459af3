"""Per-layer summary: output shapes, neurons, parameters and multiply-accumulates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .lrn import LocalResponseNorm
from .model import LAYER_NAMES, AlexNet
from .runtime import eval_mode

# Section 3.5 of the paper: "the number of neurons in the network's remaining layers is given by
# 253,440-186,624-64,896-64,896-43,264-4096-4096-1000" (conv1..fc8).
PAPER_NEURONS = dict(zip(LAYER_NAMES, (253_440, 186_624, 64_896, 64_896, 43_264, 4_096, 4_096, 1_000)))
# The output shapes of the paper's network (224 px RGB, 1000 classes, the paper's widths): its
# neuron counts and their erratum describe this network only.
PAPER_SHAPES = dict(zip(LAYER_NAMES, ((96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13), (4096,), (4096,), (1000,))))


@dataclass
class LayerRow:
    """One row of :func:`layer_table`: a layer's name, type, output shape ((C, H, W) or (F,)), neurons,
    parameters and multiply-accumulates, for one image."""
    name: str
    kind: str
    output_shape: tuple[int, ...]
    neurons: int
    params: int
    macs: int


def layer_table(model: AlexNet, input_size: int | None = None) -> list[LayerRow]:
    """Run one image through ``model`` and record every conv, LRN, pool and FC layer."""
    cfg = model.config
    size = input_size or cfg.input_size
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_children():
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, LocalResponseNorm)):
            continue

        def hook(mod, inputs, output, name=name):
            out = tuple(output.shape[1:])
            params = sum(p.numel() for p in mod.parameters())
            if isinstance(mod, nn.Conv2d):
                macs = output.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            elif isinstance(mod, nn.Linear):
                macs = mod.in_features * mod.out_features
            else:
                macs = 0
            kind = type(mod).__name__
            neurons = output.numel() if isinstance(mod, (nn.Conv2d, nn.Linear)) else 0
            rows.append(LayerRow(name, kind, out, neurons, params, macs))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(model):
            p = next(model.parameters())
            model(torch.zeros(1, cfg.in_chans, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_summary(model: AlexNet, name: str = "", input_size: int | None = None) -> str:
    """The summary table as text, with totals and a comparison to the paper's neuron counts."""
    rows = layer_table(model, input_size)
    record = summary_record(model, name, input_size, rows)
    same = paper_layers(rows)  # the layers whose outputs are the paper network's: their counts compare
    head = f"{'layer':<8} {'type':<18} {'output':>14} {'neurons':>12} {'params':>12} {'MACs':>14}"
    if same:
        head += f" {'paper neurons':>14}"
    lines = [f"{record['model']}: input {'x'.join(map(str, record['input']))}, {record['num_classes']} classes", head, "-" * len(head)]
    for r in rows:
        line = f"{r.name:<8} {r.kind:<18} {'x'.join(map(str, r.output_shape)):>14} "
        line += f"{r.neurons or '':>12} {r.params or '':>12} {r.macs or '':>14}"
        line = line.replace("  0 ", "    ")
        if r.name in same:
            line += f" {PAPER_NEURONS[r.name]:>14,}"
        lines.append(line)
    total_params, total_macs, neurons = record["params"], record["macs"], record["neurons"]
    conv_macs = sum(r.macs for r in rows if r.kind == "Conv2d")
    lines.append("-" * len(head))
    lines.append(f"total parameters:          {total_params:,}")
    lines.append(f"total multiply-accumulates: {total_macs:,} per image ({100 * conv_macs / max(1, total_macs):.0f} % in conv layers)")
    lines.append(f"total neurons (conv1..fc8): {neurons:,}")
    lines += paper_notes([r for r in rows if r.name in same])
    other = [r for r in rows if r.name in PAPER_SHAPES and r.name not in same]
    if other:
        shapes = ", ".join(f"{r.name} {'x'.join(map(str, r.output_shape))} against {'x'.join(map(str, PAPER_SHAPES[r.name]))}"
                           for r in other)
        lines.append(f"neuron counts of {', '.join(r.name for r in other)}: not compared with the paper's (their outputs "
                     f"are shaped otherwise by design: {shapes})")
    return "\n".join(lines)


def summary_record(model: AlexNet, name: str = "", input_size: int | None = None,
                   rows: list[LayerRow] | None = None) -> dict:
    """The summary as JSON-ready data (``alexnet summary --json``; :func:`format_summary`'s table prints
    it): the model, its input, each layer (name, type, output shape, neurons, parameters,
    multiply-accumulates) and the totals. ``rows``: :func:`layer_table`'s, where already computed."""
    rows = layer_table(model, input_size) if rows is None else rows
    size = input_size or model.config.input_size
    layers = [{"name": r.name, "type": r.kind, "output": list(r.output_shape), "neurons": r.neurons, "params": r.params,
               "macs": r.macs} for r in rows]
    return {"model": name or "model", "input": [model.config.in_chans, size, size], "num_classes": model.config.num_classes,
            "layers": layers, "params": sum(p.numel() for p in model.parameters()), "macs": sum(r.macs for r in rows),
            "neurons": sum(r.neurons for r in rows)}


def paper_layers(rows: list[LayerRow]) -> set[str]:
    """The layers whose output shape is the paper network's (its counts describe those only)."""
    return {r.name for r in rows if PAPER_SHAPES.get(r.name) == tuple(r.output_shape)}


def paper_notes(rows: list[LayerRow]) -> list[str]:
    """Lines comparing the neuron counts of ``rows`` (layers shaped as the paper's) with its figures."""
    if not rows:
        return []
    disagree = [r for r in rows if r.neurons != PAPER_NEURONS[r.name]]
    if not disagree:
        if len(rows) == len(PAPER_NEURONS):
            return ["neuron counts: every layer matches the paper"]
        return [f"neuron counts of {', '.join(r.name for r in rows)}: as in the paper"]
    lines = [
        f"note: the paper gives {PAPER_NEURONS[r.name]:,} neurons for {r.name}; its output "
        f"{'x'.join(map(str, r.output_shape))} has {r.neurons:,} (a known erratum of the paper)"
        for r in disagree
    ]
    agree = [r.name for r in rows if r.neurons == PAPER_NEURONS[r.name]]
    if agree:
        lines.append(f"      the counts of {', '.join(agree)} match the paper")
    return lines

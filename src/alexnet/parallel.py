"""The paper's model parallelism: each tower of AlexNet on its own device (SPEC section 1, figure 2).

:class:`TowerSplit` is built from a grouped :class:`~alexnet.model.AlexNet` (``towers=2``) and
computes the same function with the same weights. Every layer is cut along its outputs:

- conv1: each device computes half of the kernels from the whole image;
- conv2, conv4, conv5: each device holds its own group (these see only their tower's maps);
- conv3 and fc6, fc7, fc8: each device computes half of the outputs from *both* towers' inputs.

So activations cross between the devices only into conv3 and into each fully connected layer, as
the paper says ("the GPUs communicate only in certain layers"). A layer's halves are
``layer[0]`` (tower 0) and ``layer[1]`` (tower 1), so parameter names keep the layer first
(``conv1.0.weight``): freezing and per-layer learning rates work unchanged. Checkpoints hold the
grouped layout (:meth:`TowerSplit.grouped_state_dict`), so a run can move between one device,
two devices and many processes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .distributed import DistInfo
from .errors import ConfigError, rank_own
from .lrn import LocalResponseNorm
from .model import LAYER_NAMES, AlexNet


def _halves(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``layer`` cut along its outputs into two layers of the same kind (grouped convs: one group each)."""
    out = []
    for t in range(2):
        half = copy.deepcopy(layer)
        for name in ("weight", "bias"):
            full = getattr(layer, name)
            setattr(half, name, nn.Parameter(full.detach().tensor_split(2, dim=0)[t].clone(), full.requires_grad))
        if isinstance(half, nn.Conv2d):
            if half.groups == 2:  # one group of a grouped conv is an ordinary conv on half the inputs
                half.in_channels //= 2
                half.groups = 1
            half.out_channels = half.weight.shape[0]
        else:
            half.out_features = half.weight.shape[0]
        out.append(half)
    return out[0], out[1]


class TowerSplit(nn.Module):
    """A two-tower AlexNet with tower ``t`` on ``devices[t]`` (outputs on ``devices[0]``)."""

    def __init__(self, model: AlexNet, devices: tuple[str | torch.device, str | torch.device]) -> None:
        """``model``'s weights, copied and cut in two; ConfigError unless it has two towers and, where it
        has LRN, one per tower."""
        super().__init__()
        c = model.config
        if c.towers != 2:
            raise ConfigError(f"--towers: the model has towers={c.towers}; splitting over two devices needs towers=2")
        if c.lrn and not c.lrn_per_tower and isinstance(model.norm1, LocalResponseNorm):
            raise ConfigError(
                "--towers: this model normalises (LRN) across both towers (lrn_per_tower=false), which the "
                "two-device split cannot do without extra traffic; use lrn_per_tower=true (the paper's net)"
            )
        self.config = c
        self.devices = tuple(torch.device(d) for d in devices)
        for name in LAYER_NAMES:
            a, b = _halves(getattr(model, name))
            setattr(self, name, nn.ModuleList([a.to(self.devices[0]), b.to(self.devices[1])]))
        # Parameter-free parts are shared by both towers.
        self.act = model.act
        # Each device holds one tower's maps: its LRN is the grouped model's with a single group.
        self.norm1, self.norm2 = (_one_group(n) for n in (model.norm1, model.norm2))
        self.pool1, self.pool2, self.pool5, self.avgpool = model.pool1, model.pool2, model.pool5, model.avgpool
        self.drop6, self.drop7 = model.drop6, model.drop7

    def _stage(self, x: torch.Tensor, conv: nn.Module, norm: nn.Module, pool: nn.Module) -> torch.Tensor:
        x = self.act(conv(x))
        return pool(norm(x)) if self.config.norm_order == "norm_pool" else norm(pool(x))

    def _both(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each device gets both towers' activations (the only traffic between the devices)."""
        return [torch.cat([x.to(d, non_blocking=True) for x in xs], dim=1) for d in self.devices]

    def _fc(self, xs: list[torch.Tensor], layer: str, drop: nn.Module | None, act: bool) -> list[torch.Tensor]:
        if drop is not None and self.config.dropout_position == "before":
            xs = [drop(x) for x in xs]
        xs = [half(x) for half, x in zip(getattr(self, layer), self._both(xs))]
        if act:
            xs = [self.act(x) for x in xs]
        if drop is not None and self.config.dropout_position == "after":
            xs = [drop(x) for x in xs]
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) on ``devices[0]`` of a batch ``x`` on any device: the grouped model's function."""
        xs = [x.to(d, non_blocking=True) for d in self.devices]
        xs = [self._stage(x, conv, self.norm1, self.pool1) for x, conv in zip(xs, self.conv1)]
        xs = [self._stage(x, conv, self.norm2, self.pool2) for x, conv in zip(xs, self.conv2)]
        xs = [self.act(conv(x)) for x, conv in zip(self._both(xs), self.conv3)]
        xs = [self.act(conv(x)) for x, conv in zip(xs, self.conv4)]
        xs = [torch.flatten(self.avgpool(self.pool5(self.act(conv(x)))), 1) for x, conv in zip(xs, self.conv5)]
        # Channel-major flattening: tower 0's features then tower 1's, as in the grouped model.
        xs = self._fc(xs, "fc6", self.drop6, True)
        xs = self._fc(xs, "fc7", self.drop7, True)
        xs = self._fc(xs, "fc8", None, False)
        return torch.cat([xs[0], xs[1].to(self.devices[0])], dim=1)

    # -- the grouped layout, for checkpoints ------------------------------------------------------
    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as the grouped model names and shapes them (on the CPU)."""
        out = {}
        for name in LAYER_NAMES:
            a, b = getattr(self, name)
            for p in ("weight", "bias"):
                out[f"{name}.{p}"] = torch.cat([getattr(a, p).detach().cpu(), getattr(b, p).detach().cpu()], dim=0)
        return out

    @torch.no_grad()
    def load_grouped_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a grouped model's weights into the two halves."""
        for name in LAYER_NAMES:
            for half, part in zip(getattr(self, name), range(2)):
                for p in ("weight", "bias"):
                    getattr(half, p).copy_(state[f"{name}.{p}"].tensor_split(2, dim=0)[part])


def _grouped_name(split_name: str) -> tuple[str, int]:
    """``conv1.1.weight`` -> (``conv1.weight``, 1)."""
    layer, tower, param = split_name.split(".")
    return f"{layer}.{param}", int(tower)


def grouped_optimizer_state(split: TowerSplit, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` of a split model, renumbered and joined as for the grouped model.

    Per-parameter tensors (momentum) are joined along dim 0, like the weights; so a checkpoint's
    optimizer state loads into the grouped model's optimizer, and back with :func:`split_optimizer_state`.
    """
    names = {id(p): n for n, p in split.named_parameters()}
    sd = optimizer.state_dict()
    flat = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    grouped_order = list(dict.fromkeys(_grouped_name(n)[0] for n in flat))
    index = {n: i for i, n in enumerate(grouped_order)}
    halves: dict[str, dict[int, dict]] = {}
    for i, n in enumerate(flat):
        g, t = _grouped_name(n)
        halves.setdefault(g, {})[t] = sd["state"].get(i, {})
    state = {}
    for g, parts in halves.items():
        joined = {}
        for key, v in parts.get(0, {}).items():
            other = parts.get(1, {}).get(key)
            joined[key] = torch.cat([v, other.to(v.device)], 0) if torch.is_tensor(v) and v.dim() > 0 else v
        if joined:
            state[index[g]] = joined
    groups = []
    for g, pg in zip(sd["param_groups"], optimizer.param_groups):
        members = list(dict.fromkeys(_grouped_name(names[id(p)])[0] for p in pg["params"]))
        groups.append({**g, "params": [index[m] for m in members]})
    return {"state": state, "param_groups": groups}


def split_optimizer_state(split: TowerSplit, optimizer: torch.optim.Optimizer, grouped: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`grouped_optimizer_state`, for ``optimizer`` over ``split``'s parameters."""
    names = {id(p): n for n, p in split.named_parameters()}
    flat = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    grouped_order = list(dict.fromkeys(_grouped_name(n)[0] for n in flat))
    state = {}
    for i, n in enumerate(flat):
        g, t = _grouped_name(n)
        src = grouped["state"].get(grouped_order.index(g))
        if src:
            state[i] = {k: v.tensor_split(2, dim=0)[t].clone() if torch.is_tensor(v) and v.dim() > 0 else v for k, v in src.items()}
    groups, start = [], 0
    for g, pg in zip(grouped["param_groups"], optimizer.param_groups):
        groups.append({**g, "params": list(range(start, start + len(pg["params"])))})
        start += len(pg["params"])
    return {"state": state, "param_groups": groups}


# -- which devices ----------------------------------------------------------------------------------
def tower_devices(spec: list[str], info: DistInfo) -> tuple[torch.device, torch.device] | None:
    """The two devices of this process's towers, from ``--towers`` (None: no split).

    ``auto`` (or ``cuda,cuda``) gives rank ``r`` of a machine ``cuda:2r`` and ``cuda:2r+1``, so data
    parallelism across processes and machines combines with the split inside each process.
    """
    if not spec or list(spec) in (["none"], ["off"]):
        return None
    typed = ",".join(spec)  # messages name what the user typed (auto, not cuda,cuda)
    if list(spec) == ["auto"]:
        spec = ["cuda", "cuda"]
    if len(spec) != 2:
        raise ConfigError(f"--towers: expected two devices DEV0,DEV1 (e.g. cuda:0,cuda:1 or cpu,cpu), got {typed!r}")
    try:
        devices = [torch.device(s.strip()) for s in spec]
    except RuntimeError:
        raise ConfigError(f"--towers: unknown device in {typed!r} (use cpu, cuda or cuda:N)") from None
    for d in devices:
        if d.type not in ("cpu", "cuda"):
            raise ConfigError(f"--towers: {d} is not supported; use cpu or cuda devices")
    if devices[0].type != devices[1].type:  # one autocast and one gradient scaler serve both towers
        raise ConfigError(f"--towers {typed}: both towers must be on the same kind of device")
    if any(d.type == "cuda" for d in devices):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--towers {typed}: no CUDA device is available on this machine")
        if all(d.index is None for d in devices if d.type == "cuda"):
            base = 2 * info.local_rank
            devices = [torch.device("cuda", base + t) if d.type == "cuda" else d for t, d in enumerate(devices)]
        elif info.local_world > 1:
            raise ConfigError(
                f"--towers {typed}: with {info.local_world} processes per machine use --towers auto "
                "(process r takes cuda:2r and cuda:2r+1)"
            )
        for d in devices:
            if d.type == "cuda" and d.index >= count:
                per = f" ({info.local_world} processes x 2 towers)" if info.local_world > 1 else ""
                raise rank_own(ConfigError(  # this rank's devices: the ranks below it have theirs
                    f"--towers: rank {info.rank} needs {d} but this machine has {count} CUDA device(s){per}; "
                    "the two-device split needs two GPUs per process"
                ))
    return devices[0], devices[1]


def _one_group(norm: nn.Module) -> nn.Module:
    if isinstance(norm, LocalResponseNorm) and norm.groups > 1:
        norm = copy.copy(norm)
        norm.groups = 1
    return norm

"""Training health: notice, with one line that says what to do, a run that diverged or died.

Two failures look alike from the outside (the loss sits at ln(classes), accuracy at chance) and
are silent without a check:

* **divergence**: the loss shoots far above ln(classes), the loss of a uniform guess. A network
  that starts at chance and learns never goes there; one whose steps are too large does (the
  paper's initialisation with lr 0.01 reaches loss 30-80 within ten steps on Imagenette: see
  docs/training.md).
* **dead ReLUs**: every unit of a layer outputs zero for every input of a batch. Then no gradient
  reaches the layers below it, the output is the same for every image, and it stays so forever.

:class:`HealthMonitor` watches both on the training model: the loss every step (it is computed
anyway), the layers every ``every`` steps through forward hooks (one max-reduction per layer).
``--health stop`` (default) ends the run with one line, ``warn`` reports and goes on, ``off``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .errors import TrainingError

# Layers whose output goes through a ReLU (fc8's does not).
WATCHED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class UnhealthyRun(TrainingError):
    """The run diverged or a layer died; the message names what happened and the remedy."""

    every_rank = True  # judged on the losses and flags that all ranks share


@dataclass(frozen=True)
class LayerLife:
    """One layer on one batch: how many of its units (channels, or neurons) a ReLU lets through."""

    name: str
    units: int
    live: int  # units positive for at least one input (and position) of the batch
    mean: float  # of the pre-activation
    std: float

    @property
    def dead_fraction(self) -> float:
        """The share of the layer's units that no input of the batch made positive (0 to 1)."""
        return 1.0 - self.live / max(1, self.units)


def _life_stats(out: torch.Tensor) -> torch.Tensor:
    """(live units, mean, std) of a pre-activation ``out`` (N, C, H, W) or (N, C), left on its device."""
    out = out.detach().float()
    peak = out.amax(dim=[0] + list(range(2, out.dim())))
    return torch.stack([(peak > 0).sum().float(), out.mean(), out.std()])


def layer_life(name: str, out: torch.Tensor) -> LayerLife:
    """Statistics of a layer's pre-activation ``out`` (N, C, H, W) or (N, C)."""
    live, mean, std = _life_stats(out).tolist()
    return LayerLife(name, out.shape[1], int(live), mean, std)


class LayerProbe:
    """Forward hooks on ``layers`` of ``model`` that record :class:`LayerLife` while armed."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...] = WATCHED) -> None:
        self.armed = False
        self.seen: dict[str, LayerLife] = {}
        self._pending: dict[str, tuple[int, torch.Tensor]] = {}  # read by collect(): one wait for the device
        self.names: list[str] = []
        self._handles = []
        for name in layers:
            layer = getattr(model, name, None)
            if isinstance(layer, nn.Module):
                self.names.append(name)
                self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args, out: torch.Tensor) -> None:
            if self.armed:
                self._pending[name] = (out.shape[1], _life_stats(out))

        return hook

    def collect(self) -> None:
        """The statistics recorded since the last call, into :attr:`seen`."""
        if self._pending:
            first = next(iter(self._pending.values()))[1].device  # the towers may lie on two devices
            values = torch.stack([stats.to(first) for _, stats in self._pending.values()]).tolist()
            for (name, (units, _)), (live, mean, std) in zip(self._pending.items(), values):
                self.seen[name] = LayerLife(name, units, int(live), mean, std)
            self._pending.clear()

    def __bool__(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Remove the forward hooks from the model; the probe records nothing after."""
        for h in self._handles:
            h.remove()
        self._handles = []


class HealthMonitor:
    """Watches the loss and the layers of a training run; ``action`` says what a failure does.

    ``"stop"`` raises :class:`UnhealthyRun`, ``"warn"`` reports each kind of failure once through
    ``warn``, ``"off"`` does nothing. The loss check fires when the mean over the last ``window``
    steps exceeds ln(classes) + ``margin`` nats: the right class then gets on average under
    e^-margin (1/55) of a uniform guess's probability. The layer check arms the probe every
    ``every`` steps. Per step: :meth:`before_step`, the forward pass, :meth:`dead_flags`, then
    :meth:`check` with the (rank-averaged) loss and (rank-summed) flags.
    """

    def __init__(
        self,
        model: nn.Module | None,
        num_classes: int,
        action: Literal["stop", "warn", "off"] = "stop",
        every: int = 20,
        window: int = 10,
        margin: float = 4.0,
        warn: Callable[[str], None] = print,
        remedies: tuple[str, ...] = ("lower --lr (e.g. by 10)",),
    ) -> None:
        self.action, self.every, self.warn = action, every, warn
        self.remedies = remedies  # what the run could change: see train.health_remedies
        self.chance = math.log(num_classes)
        self.limit = self.chance + margin
        self.num_classes = num_classes
        self.losses: deque[float] = deque(maxlen=window)
        self.probe = LayerProbe(model) if model is not None and action != "off" else None
        self.warned: set[str] = set()
        self.step = 0
        self.first: float | None = None  # the run's first loss, before any update
        self.started_here = True  # False once a resumed run's state is loaded: its step 1 is not the run's

    def before_step(self) -> None:
        """Call before the forward pass: arms the layer probe on checking steps."""
        if self.probe:
            self.probe.armed = self.step % self.every == 0
            self.probe.seen.clear()

    def dead_flags(self) -> list[float]:
        """After the forward pass: 1.0 for each watched layer whose units were all dead, else 0.0."""
        if not self.probe:
            return []
        self.probe.armed = False
        self.probe.collect()
        return [float(name in self.probe.seen and self.probe.seen[name].live == 0) for name in self.probe.names]

    def check(self, loss: float, dead: list[float], where: str) -> None:
        """Record a step's loss and dead flags; ``where`` names the moment ("epoch 1, step 7")."""
        self.step += 1
        if self.step == 1 and self.started_here:
            self.first = loss
        if self.action == "off":
            return
        self.losses.append(loss)
        if len(self.losses) == self.losses.maxlen:
            self._check_loss(where)
        for name, flag in zip(self.probe.names if self.probe else (), dead):
            if flag > 0:
                units = self.probe.seen[name].units if name in self.probe.seen else "its"
                self._fail(
                    f"dead:{name}",
                    f"every ReLU of {name} is dead at {where} (all {units} units output 0 for a whole batch): the network "
                    f"gives every image the same answer and cannot recover; {_either(self.remedies)}",
                )

    def end_epoch(self, where: str) -> None:
        """At an epoch's end, before its checkpoint: the loss check on the steps there were, when
        fewer than the window (a short run of a few steps is judged too)."""
        if self.action != "off" and 0 < len(self.losses) < self.losses.maxlen:
            self._check_loss(where)

    def _check_loss(self, where: str) -> None:
        mean = sum(self.losses) / len(self.losses)
        if mean > self.limit:
            # Far off before any update: no learning rate did that; the weights do not fit the inputs.
            cause = (f"it was {self.first:.1f} at the first step, before any update, so the learning rate is not the "
                     "cause: the starting weights do not fit these inputs (weights made for another preprocessing, e.g. "
                     "--init-from with another --data-preset; a checkpoint that had diverged itself; or an "
                     "initialisation that saturates)"
                     if self.first is not None and self.first > self.limit else _either(self.remedies))
            n = len(self.losses)
            self._fail(
                "diverged",
                f"the training loss diverged at {where}: {mean:.1f} over the last {f'{n} steps' if n > 1 else 'step'}, far above "
                f"ln({self.num_classes}) = {self.chance:.2f} (a uniform guess); {cause}",
            )

    def _fail(self, key: str, message: str) -> None:
        if self.action == "stop":
            raise UnhealthyRun(message)  # the run folder adds what it keeps
        if key not in self.warned:
            self.warned.add(key)
            self.warn(f"warning: {message}")

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to judge as the uninterrupted one would: the step count (the
        layer check's rhythm), the recent losses (the loss check's window) and what it warned of."""
        return {"step": self.step, "losses": list(self.losses), "warned": sorted(self.warned), "first": self.first}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (a resumed run); None or empty (an older checkpoint):
        start afresh, with the run's first loss unknown."""
        self.started_here = False  # an older checkpoint holds no state: its first loss is unknown
        if state:  # checkpoints of older versions hold none: the monitor starts afresh, as it did
            self.step = int(state["step"])
            self.losses.clear()
            self.losses.extend(float(x) for x in state["losses"])
            self.warned = set(state.get("warned", ()))
            self.first = state.get("first")

    def close(self) -> None:
        """Remove the layer probe's hooks from the model."""
        if self.probe:
            self.probe.remove()


def _either(remedies: tuple[str, ...]) -> str:
    return remedies[0] if len(remedies) == 1 else ", ".join(remedies[:-1]) + ", or " + remedies[-1]

"""The paper's optimiser and learning-rate schedules (section 5 of the paper; SPEC section 2)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .errors import ConfigError
from .model import expand_lr_mult


class PaperSGD(torch.optim.Optimizer):
    """SGD exactly as the paper writes it::

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    The learning rate sits *inside* the velocity: when lr drops by 10, the velocity already built
    up keeps its size. ``torch.optim.SGD`` keeps ``v <- momentum * v + grad + wd * w`` and applies
    ``lr * v``, so there a drop of lr shrinks the step at once. The two agree while lr is constant.

    The update is one pass over each parameter (PyTorch's fused SGD kernel, given the gradients
    scaled by lr and the signs that make its buffer the paper's v) where that kernel takes the
    parameters and computes the rule on a probe (:func:`_fused_matches`), else four multi-tensor
    passes: about 2x faster on 61 M parameters on a CPU. The state ``velocity`` is v either way.
    The fused pass leaves each ``p.grad`` multiplied by lr (the kernel scales the gradients in place,
    as torch's fused optimisers unscale them for a GradScaler): read gradients before ``step()``.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient, by the paper's rule; ``closure`` (which
        recomputes the loss) runs first, with gradients on, and its loss is returned (else None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            # torch's fused kernel takes no momentum buffers when momentum is 0 (it raises)
            fused = lr > 0 and mu > 0 and all(_fused_matches(p.device, p.dtype) for p in params)
            (_paper_update_fused if fused else _paper_update)(params, [p.grad for p in params], velocities, lr, mu, wd)
        return loss


def _paper_update(params: list, grads: list, velocities: list, lr: float, mu: float, wd: float) -> None:
    """The paper's rule in multi-tensor ops: a handful of kernel launches, four passes."""
    torch._foreach_mul_(velocities, mu)
    if wd:
        torch._foreach_add_(velocities, params, alpha=-wd * lr)
    torch._foreach_add_(velocities, grads, alpha=-lr)
    torch._foreach_add_(params, velocities)


def _paper_update_fused(params: list, grads: list, velocities: list, lr: float, mu: float, wd: float) -> None:
    """The paper's rule in one pass: torch's fused SGD computes ``g' = -grad / s + wd' * w`` (maximize),
    ``b <- mu * b + g'`` and ``w <- w - lr' * b``; with ``s = 1 / lr``, ``wd' = -wd * lr`` and ``lr' = -1``
    that is ``b <- mu * b - lr * grad - wd * lr * w = v`` and ``w <- w + v``. It rescales the
    gradients in place (they are spent)."""
    for device_params, device_grads, device_velocities, scale in _by_device_and_dtype(params, grads, velocities, lr):
        torch._fused_sgd_(
            device_params, device_grads, device_velocities, weight_decay=-wd * lr, momentum=mu, lr=-1.0, dampening=0.0,
            nesterov=False, maximize=True, is_first_step=False, grad_scale=scale, found_inf=None,
        )


def _by_device_and_dtype(params: list, grads: list, velocities: list, lr: float):
    """(params, grads, velocities, 1/lr as a float32 tensor) per device and dtype: one fused call each."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list, list]] = {}
    for p, g, v in zip(params, grads, velocities):
        for part, t in zip(groups.setdefault((p.device, p.dtype), ([], [], [])), (p, g, v)):
            part.append(t)
    for (device, _), (ps, gs, vs) in groups.items():
        yield ps, gs, vs, torch.full((), 1.0 / lr, dtype=torch.float32, device=device)


_FUSED: dict[tuple[str, torch.dtype], bool] = {}


def _fused_matches(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused update computes the paper's rule for ``dtype`` parameters on ``device``:
    tried once on a probe against the multi-tensor passes. float64 keeps the exact passes (the
    kernel's 1/lr is a float32)."""
    key = (device.type, dtype)
    if key not in _FUSED:
        _FUSED[key] = False
        if dtype in (torch.float32, torch.bfloat16, torch.float16) and hasattr(torch, "_fused_sgd_"):
            gen = torch.Generator().manual_seed(0)
            w, g, v = (torch.randn(64, generator=gen).to(device, dtype) for _ in range(3))
            w2, g2, v2 = w.clone(), g.clone(), v.clone()
            rule = (0.1, 0.9, 1.0)  # lr, momentum, weight decay: every term of the rule weighs ~0.1 or more
            try:
                _paper_update_fused([w], [g], [v], *rule)
            except (RuntimeError, NotImplementedError, TypeError):
                return False
            _paper_update([w2], [g2], [v2], *rule)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            _FUSED[key] = bool(torch.allclose(w, w2, rtol=tol, atol=tol) and torch.allclose(v, v2, rtol=tol, atol=tol))
    return _FUSED[key]


class PlateauSchedule:
    """Divide the learning rate by ``factor`` when the validation error has not improved for
    ``patience`` epochs; after ``max_reductions`` reductions, the next plateau ends training.

    The paper: "divide the learning rate by 10 when the validation error rate stopped improving
    with the current learning rate ... reduced three times prior to termination".
    """

    def __init__(self, patience: int = 5, factor: float = 0.1, max_reductions: int = 3, threshold: float = 0.0) -> None:
        if patience < 1:
            raise ConfigError(f"plateau patience must be >= 1, got {patience}")
        self.patience, self.factor, self.max_reductions, self.threshold = patience, factor, max_reductions, threshold
        self.best = math.inf
        self.bad_epochs = 0
        self.reductions = 0
        self.scale = 1.0
        self.stop = False

    def step(self, val_error: float) -> str | None:
        """Record one epoch's validation error. Returns "reduce", "stop" or None."""
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return None
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return None
        self.bad_epochs = 0
        if self.reductions >= self.max_reductions:
            self.stop = True
            return "stop"
        self.reductions += 1
        self.scale *= self.factor
        # Measure improvement afresh at the new rate.
        self.best = val_error
        return "reduce"

    def state_dict(self) -> dict[str, Any]:
        """The schedule's progress (best error, bad epochs, reductions, scale, stop), for a checkpoint."""
        return {k: getattr(self, k) for k in ("best", "bad_epochs", "reductions", "scale", "stop")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (a resumed run)."""
        for k, v in state.items():
            setattr(self, k, v)


def step_lr_factor(
    schedule: str, step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float, step_size: int, gamma: float
) -> float:
    """The step-wise part of the learning-rate multiplier (warm-up, onecycle, cosine, step).

    The plateau schedule's epoch-wise scale multiplies this.
    """
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return min(1.0, (step + 1) / warm)  # a warm-up of a fractional number of steps must not overshoot
    if schedule == "onecycle":
        return max(0.0, (total - step) / max(1.0, total - warm))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))
    if schedule == "step":
        return gamma ** (step // (max(1, step_size) * steps_per_epoch))
    return 1.0  # constant, plateau


def param_groups(
    model: torch.nn.Module, lr_mult: dict[str, float] | None = None, bias_decay: bool = True
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by layer multiplier (``{"fc8": 10.0}``, ``{"features": 0.1}``:
    :func:`~alexnet.model.expand_lr_mult`); frozen ones left out.
    ``bias_decay=False`` puts the biases in groups of their own with ``weight_decay`` 0."""
    lr_mult = expand_lr_mult(lr_mult or {})
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = bias_decay or not name.endswith("bias")
            groups.setdefault((lr_mult.get(name.split(".")[0], 1.0), decays), []).append(p)
    if not groups:
        raise ConfigError("every layer is frozen: nothing to train")
    return [{"params": ps, "lr_mult": m, **({} if decays else {"weight_decay": 0.0})}
            for (m, decays), ps in sorted(groups.items())]


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum buffer, velocity) its parameter's memory format.

    A checkpoint keeps its buffers in the layout the run saved them in; a resume may change
    ``--channels-last`` (the conv weights change layout, their loaded buffers do not). The fused
    SGD kernels (torch's, and :class:`PaperSGD`'s fused pass) pair parameter and buffer element by
    element in memory, not by index: with NCHW buffers on NHWC weights each conv weight was updated
    with another element's momentum, silently (4e-3 off the uninterrupted run in 6 steps)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, t in optimizer.state.get(p, {}).items():
                if torch.is_tensor(t) and t.shape == p.shape and t.stride() != p.stride():
                    # empty_like keeps p's strides (dense, non-overlapping); copy_ moves by index
                    optimizer.state[p][key] = torch.empty_like(p, dtype=t.dtype).copy_(t)


def make_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float, weight_decay: float, nesterov: bool = False
) -> torch.optim.Optimizer:
    """``paper`` (:class:`PaperSGD`) or ``sgd`` (torch's, fused where this torch has it)."""
    if name == "paper":
        return PaperSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name != "sgd":
        raise ConfigError(f"optimizer must be 'paper' or 'sgd', got {name!r}")
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    try:
        # One fused kernel for the whole update instead of several passes over 61 M parameters
        # (a tenth of a CPU training step otherwise).
        return torch.optim.SGD(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.SGD(groups, **kwargs)

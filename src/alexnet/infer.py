"""Fast inference: the fastest forward this machine offers, as one callable.

:func:`predictor` wraps a model for inference: evaluation mode, no autograd, channels_last
memory (oneDNN's and cuDNN's fast layout for convolutions), bf16 autocast where the hardware has
bf16 arithmetic (AVX512-BF16/AMX CPUs, recent GPUs) and optionally ``torch.compile``. Logits come
back as float32 whatever the compute precision.

bf16 keeps 8 significant bits. Where the top-1 margins are small (an untrained or barely trained
net: margins of ~1/20 of the logits' spread), rounding the classifier flips a few per cent of the
predictions; ``fp32_layers=("fc6", "fc7", "fc8")`` keeps those ~8 % of the multiply-adds in
float32 and the convolutions in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .runtime import autocast, device_argument, resolve_amp


def predictor(
    model: nn.Module,
    device: torch.device | str,
    amp: str | torch.dtype | None = "auto",
    channels_last: bool = True,
    compile: bool = False,
    fp32_layers: tuple[str, ...] = (),
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images (N, C, H, W) -> float32 logits running ``model`` the fast way.

    ``model`` itself is made ready, not a copy (``Module.to`` works in place; a copy would cost the
    model's memory again, 244 MB for AlexNet): the caller's model is moved to ``device``, put in eval
    mode and, with ``channels_last``, its weights are stored NHWC (the same values; ``.view`` of a conv
    weight then needs ``.reshape``). Pass ``copy.deepcopy(model)`` to keep yours as it was.

    Args:
        model: Any image classifier; it is moved to ``device``, put in eval mode and (``channels_last``)
            its weights converted to NHWC, in place.
        device: Where to run.
        amp: ``auto`` (bf16 where supported), ``bf16``, ``fp16`` (GPU) or ``none``; or a dtype (None: float32).
        channels_last: Convert the model and every input to NHWC memory format.
        compile: Run through ``torch.compile`` (needs a C++ compiler on CPU, Triton on GPU; the
            first call compiles).
        fp32_layers: Names of direct sub-modules that run in float32 under autocast. They are
            wrapped in place, so ``model`` is changed (its state-dict keys included).
    """
    for name in fp32_layers:
        if not isinstance(getattr(model, name, None), nn.Module):
            raise ValueError(f"fp32_layers: {type(model).__name__} has no sub-module {name!r}")
        setattr(model, name, _Float32(getattr(model, name)))
    device = device_argument(device, "predictor")  # "cpu" or "cuda:1" as well; one that is not here named
    dtype = resolve_amp(amp, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).eval().to(memory_format=fmt)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model

    def run(x: torch.Tensor) -> torch.Tensor:
        """float32 logits of images ``x`` (N, C, H, W), moved to the model's device, without autograd."""
        with torch.inference_mode(), autocast(device, dtype):
            return forward(x.to(device, non_blocking=True).contiguous(memory_format=fmt)).float()

    return run


class _Float32(nn.Module):
    """Runs ``inner`` in float32 with autocast off, whatever precision the rest runs in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.inner(x.float())

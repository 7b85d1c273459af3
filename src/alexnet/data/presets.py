"""Named preprocessing recipes: how images are normalised and augmented.

Each preset says where the subtracted mean and the divisor come from (``"image"``: the training
set's mean image; ``"pixels"``: the training set's per-channel mean / std; a list: fixed values on
the 0-255 scale), whether the paper's PCA colour noise is added (``pca_alpha_std`` > 0), the zero
padding before random crops, and mirroring. The resolved recipe is the ``preprocess`` dict that
:func:`alexnet.data.loaders.load_data` returns and checkpoints store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

# torchvision's per-channel statistics of ImageNet, on the 0-255 scale.
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

PRESETS: dict[str, dict[str, Any]] = {
    # SPEC section 3: mean image subtracted, random 224 crops of 256x256 and mirrors, fancy PCA with
    # alpha ~ N(0, 0.1). Raw centred pixels (0-255 scale, no division), as the paper feeds them: its
    # N(0, 0.01^2) weights and LRN constants (k=2, alpha=1e-4) are set for inputs of that size; with
    # pixels divided by their std (~70) the image's signal fades layer by layer and a run sits at
    # chance (docs/training.md).
    "paper": {"mean": "image", "std": [1.0, 1.0, 1.0], "pca_alpha_std": 0.1, "padding": 0, "flip": True},
    # The default for photos (training preset "photos"): the paper's recipe, but pixels divided by
    # their per-channel std (inputs of order 1, as He init expects) and each training crop covering
    # a random 35-100 % of the stored image's area at a random aspect (3/4 to 4/3), resized to 224:
    # 9,469 Imagenette photos are few for 57 M parameters; scale augmentation is what later nets used.
    "photos": {"mean": "image", "std": "pixels", "pca_alpha_std": 0.1, "padding": 0, "flip": True, "scale": [0.35, 1.0]},
    # torchvision's normalisation, for the alexnet_owt weights trained with it; crops and mirrors only.
    "torchvision": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pca_alpha_std": 0.0, "padding": 0, "flip": True},
    # Small images: per-channel standardisation and mirrors. No random crops of a padded image: in
    # the 5-epoch default run they cost accuracy (0.814 vs 0.848 test accuracy after 300 steps).
    "fashion_mnist": {"mean": "pixels", "std": "pixels", "pca_alpha_std": 0.0, "padding": 0, "flip": True},
    "cifar": {"mean": "pixels", "std": "pixels", "pca_alpha_std": 0.0, "padding": 4, "flip": True},
}


def get_preset(name: str) -> dict[str, Any]:
    """The recipe called ``name``; a ConfigError lists the choices."""
    if name not in PRESETS:
        raise ConfigError(f"data preset: unknown preset {name!r}; choose from: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def needs_stats(name: str) -> bool:
    """Whether the preset needs a pass over the training set (mean image, pixel statistics or PCA)."""
    p = get_preset(name)
    return p["mean"] in ("image", "pixels") or p["std"] == "pixels" or p["pca_alpha_std"] > 0


def resolve(name: str, stats: dict[str, Any] | None, base: dict[str, Any]) -> dict[str, Any]:
    """The ``preprocess`` dict: ``base`` (sizes, data set) plus the preset's normalisation and noise
    filled in from ``stats`` (see :mod:`alexnet.data.stats`)."""
    p = get_preset(name)
    if needs_stats(name) and stats is None:
        raise ConfigError(f"data preset {name!r} needs training-set statistics")
    out = dict(base, preset=name, padding=p["padding"], flip=p["flip"])
    if p.get("scale"):
        out["scale"] = list(p["scale"])
    out["mean"] = list(stats["pixel_mean"]) if p["mean"] in ("image", "pixels") else list(p["mean"])
    out["std"] = list(stats["pixel_std"]) if p["std"] == "pixels" else list(p["std"])
    out["std"] = [s if s > 1e-6 else 1.0 for s in out["std"]]
    if p["mean"] == "image":
        out["mean_image"] = stats["mean_image"]
    if p["pca_alpha_std"] > 0 and stats.get("eigvals") is not None:
        out["pca"] = {
            "eigvals": list(stats["eigvals"]),
            "eigvecs": [list(r) for r in stats["eigvecs"]],
            "alpha_std": p["pca_alpha_std"],
            "pixel_scale": "[0,1]",  # eigen-statistics of pixels/255; the noise is x255 on the uint8 scale
        }
    return out


# -- the recipe in files --------------------------------------------------------------------------
# The mean image (3 x 256 x 256 floats) is a tensor, not JSON: checkpoints hold it as a tensor,
# safetensors files (exports, feature indexes) under this key beside the weights or features, and
# their JSON metadata (and config.json) hold a summary in its place.
MEAN_IMAGE_KEY = "preprocess.mean_image"


def mean_image_tensor(preprocess: dict[str, Any]) -> torch.Tensor | None:
    """The recipe's mean image as a float32 (C, H, W) tensor, whatever form it is in (a tensor, a
    nested list, a .npy path), or None when the recipe subtracts a per-channel mean."""
    m = preprocess.get("mean_image")
    if m is None:
        return None
    if isinstance(m, dict):
        raise DataError(f"the preprocessing recipe holds only a summary of its mean image ({MEAN_IMAGE_KEY} is missing)")
    if isinstance(m, (str, Path)):
        try:
            m = np.load(m)
        except (OSError, ValueError) as e:
            raise DataError(f"mean image {m} (named by the preprocessing recipe) cannot be read: {e}") from None
    t = torch.as_tensor(np.asarray(m, dtype=np.float32) if not isinstance(m, torch.Tensor) else m, dtype=torch.float32)
    if t.dim() != 3 or t.shape[0] != len(preprocess.get("mean", [])):
        raise DataError(f"the preprocessing recipe's mean image has shape {tuple(t.shape)}, not (channels, height, width)")
    return t.contiguous()


def to_json(preprocess: dict[str, Any]) -> dict[str, Any]:
    """The recipe with its mean image replaced by a summary (shape, per-channel mean): JSON-safe."""
    out = dict(preprocess)
    m = None if isinstance(out.get("mean_image"), dict) else mean_image_tensor(preprocess)
    if m is not None:
        summary = {"shape": list(m.shape), "channel_mean": m.double().mean((1, 2)).tolist(), "stored_as": MEAN_IMAGE_KEY}
        if isinstance(preprocess["mean_image"], (str, Path)):
            summary["file"] = str(preprocess["mean_image"])
        out["mean_image"] = summary
    return out


def from_json(preprocess: dict[str, Any], mean_image: torch.Tensor | None, source: str) -> dict[str, Any]:
    """Undo :func:`to_json`: put the stored ``mean_image`` tensor back in place of its summary."""
    out = dict(preprocess)
    summary = out.get("mean_image")
    if isinstance(summary, dict):
        if mean_image is None:
            raise DataError(f"{source}: the preprocessing recipe subtracts a mean image, but the file holds no {MEAN_IMAGE_KEY!r}")
        if list(mean_image.shape) != summary.get("shape"):
            raise DataError(f"{source}: its mean image is {list(mean_image.shape)}, its metadata says {summary.get('shape')}")
        out["mean_image"] = mean_image.to(torch.float32)
    return out

"""torch.hub entry points: ``torch.hub.load(REPO_DIR, "alexnet_paper", source="local")``.

``pretrained=True`` (or torchvision's ``weights="DEFAULT"``) gives ``alexnet_owt`` torchvision's
ImageNet weights and ``alexnet_caffe`` BVLC's (downloaded once into torch.hub's cache); the paper's own were never published. Pass
``checkpoint=FILE`` to load a ``.pt`` or ``.safetensors`` file written by ``alexnet train``,
``alexnet import`` or ``alexnet export``.
"""

import sys as _sys
from pathlib import Path as _Path  # torch.hub.list lists every public callable: only the models are public

dependencies = ["torch", "numpy", "PIL"]

_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in _sys.path:  # a plain clone is not installed: make its package importable
    _sys.path.insert(0, _SRC)

from alexnet import create_model as _create_model  # noqa: E402
from alexnet import load as _load  # noqa: E402
from alexnet.model import describe_model as _describe_model  # noqa: E402
from alexnet.model import differences as _differences  # noqa: E402
from alexnet.model import model_family as _model_family  # noqa: E402


def _entry(name):
    def build(num_classes=None, checkpoint=None, pretrained=False, weights=None, **overrides):
        if checkpoint is None:
            return _create_model(name, num_classes=num_classes, pretrained=pretrained, weights=weights, **overrides)
        if num_classes is not None or overrides or pretrained or weights is not None:  # the file fixes the network
            given = ", ".join(
                ["num_classes"] * (num_classes is not None) + ["pretrained"] * bool(pretrained)
                + ["weights"] * (weights is not None) + sorted(overrides)
            )
            raise ValueError(f"{name}: {given} cannot change a network loaded from checkpoint={checkpoint}")
        model = _load(checkpoint)
        held, differs = _model_family(model.config)  # also a network built with options (input_size=112)
        if held != name and len(differs) < len(_differences(model.config, name)):
            raise ValueError(f"{checkpoint} holds {_describe_model(model.config)}, not {name}: load it with "
                             f"torch.hub.load(..., {held!r}, checkpoint=...)")
        return model

    build.__name__ = name
    build.__doc__ = (
        f"The {name} network (see 'alexnet models'). Args: num_classes, pretrained (the published ImageNet "
        "weights, where there are some; or torchvision's weights='DEFAULT'), checkpoint (a file to load, which fixes the architecture), "
        "**overrides (any AlexNetConfig field, e.g. lrn=False)."
    )
    return build


alexnet_paper = _entry("alexnet_paper")
alexnet_paper_1gpu = _entry("alexnet_paper_1gpu")
alexnet_owt = _entry("alexnet_owt")
alexnet_caffe = _entry("alexnet_caffe")
alexnet_small = _entry("alexnet_small")

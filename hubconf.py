"""torch.hub entry points: ``torch.hub.load(REPO_DIR, "alexnet_paper", source="local")``.

No weights are downloaded (none are published); pass ``checkpoint=FILE`` to load a ``.pt`` or
``.safetensors`` file written by ``alexnet train``, ``alexnet import`` or ``alexnet export``.
"""

import sys
from pathlib import Path

dependencies = ["torch", "numpy", "PIL"]

_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:  # a plain clone is not installed: make its package importable
    sys.path.insert(0, _SRC)

from alexnet import create_model as _create_model  # noqa: E402
from alexnet import load as _load  # noqa: E402


def _entry(name):
    def build(num_classes=1000, checkpoint=None, **overrides):
        if checkpoint is not None:
            return _load(checkpoint)
        return _create_model(name, num_classes=num_classes, **overrides)

    build.__name__ = name
    build.__doc__ = (
        f"The {name} network (see 'alexnet models'). Args: num_classes, checkpoint (a file to load, "
        "which fixes the architecture), **overrides (any AlexNetConfig field, e.g. lrn=False)."
    )
    return build


alexnet_paper = _entry("alexnet_paper")
alexnet_owt = _entry("alexnet_owt")
alexnet_caffe = _entry("alexnet_caffe")
alexnet_small = _entry("alexnet_small")

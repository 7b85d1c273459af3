"""The versions a result depends on, read without importing torch: one rule for what ``alexnet --version``
says and what run folders, packed data, feature indexes and exports record."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from importlib import metadata

from . import __version__

# What a result depends on, by the name its distribution is installed under, and the module it imports as
# (Pillow's is PIL): torch, and what decodes and resizes photos.
_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pillow": "PIL"}


def version_of(distribution: str, module: str | None = None) -> str | None:
    """The version of ``distribution`` as its module says it (torch's 2.14.1+cu130, the build that PyPI's
    metadata leaves out), None where it is not installed. From the module where it is imported; else from
    its version file (``version.py``, ``_version.py``), read without importing it, which would cost torch
    seconds; else from the installed metadata."""
    module = module or distribution
    loaded = getattr(sys.modules.get(module), "__version__", None)
    if isinstance(loaded, str):
        return str(loaded)  # torch's is a str subclass (TorchVersion): recorded as plain text
    try:
        spec = importlib.util.find_spec(module)
        if spec is None:
            return None
        for name in ("version.py", "_version.py") if spec.origin else ():
            if found := _literal_version(os.path.join(os.path.dirname(spec.origin), name)):
                return found
    except (ImportError, ValueError):  # a module that cannot be found (a broken __spec__): its metadata's
        pass
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _literal_version(path: str) -> str | None:
    """The string a version file assigns to ``__version__``; None where it has none written as a literal
    (numpy's ``__version__ = version``), or no such file, or one that cannot be read or decoded."""
    try:
        with open(path, encoding="utf-8") as f:
            found = re.search(r"^__version__\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    except (OSError, ValueError):
        return None
    return found.group(1) if found else None


def versions() -> dict[str, str]:
    """The versions a result depends on: this package, torch, what decodes and resizes photos
    (torchvision, Pillow, numpy) and Python; "none" for a package that is not installed."""
    found = {name: version_of(name, module) or "none" for name, module in _PACKAGES.items()}
    return {"alexnet": __version__, **found, "python": platform.python_version()}

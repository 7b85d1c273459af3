"""Unpickling that runs no code: numpy arrays, numbers, strings, lists and dicts only.

Pickles from outside (CIFAR's python batches, the ``.npy`` dicts of the TensorFlow AlexNet ports)
would otherwise run whatever their ``REDUCE`` opcodes name, e.g. ``os.system``.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

# The globals numpy's own pickles of arrays and scalars name (numpy 1 and 2 spellings), and how
# Python 3 pickles bytes at protocol 2. None of them runs code chosen by the file.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_BYTES = {("builtins", "bytes"), ("__builtin__", "bytes")}  # b"" at protocol 2 is bytes()
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _bytes(*args: Any) -> bytes:
    """``bytes`` for what pickles of bytes call it with; ``bytes(10**12)`` (an allocation) refused."""
    if args and isinstance(args[0], int):
        raise pickle.UnpicklingError("refused to unpickle bytes(<size>)")
    return bytes(*args)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds arrays, dicts, lists and strings only: any other global is refused, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        """The global a pickle names, where it is one of the few that build numpy arrays, scalars and
        bytes (``bytes`` of a size refused); else pickle.UnpicklingError."""
        if (module, name) in _ALLOWED:
            if _NUMPY_2:  # numpy 2 renamed numpy.core to numpy._core
                module = module.replace("numpy.core.", "numpy._core.")
            return super().find_class(module, name)
        if (module, name) in _BYTES:
            return _bytes
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}")


def load_plain(f: IO[bytes]) -> Any:
    """Unpickle ``f`` with :class:`NumpyOnlyUnpickler`; Python 2 strings are read as latin-1.

    Raises:
        pickle.UnpicklingError: the pickle names anything but numpy arrays and plain containers.
    """
    return NumpyOnlyUnpickler(f, encoding="latin1").load()

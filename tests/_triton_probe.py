"""Whether Triton's interpreter can run the LRN kernels' constructs on this machine: a store to a CPU
tensor (Triton 3.0's, with torch 2.4, leaves CPU tensors untouched) in a loop to a runtime bound
(Triton 3.6's, with torch 2.11, turns that bound into a Python int in a way numpy >= 2.4 refuses).
Imported only where Triton is; a module of its own because a jitted function must see
``triton.language`` among its globals."""

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _fill(p, n):
    for i in range(n):
        tl.store(p + i, 1.0)


def interpreter_problem() -> str | None:
    """None if the interpreter runs :func:`_fill` right, else why not (a skip reason)."""
    t = torch.zeros(3)
    versions = f"Triton {triton.__version__} with numpy {np.__version__}"
    try:
        _fill[(1,)](t, 2)
    except Exception as e:  # noqa: BLE001  (the interpreter's own failure, reported as the reason)
        return f"{versions}: the interpreter cannot run a loop to a runtime bound ({type(e).__name__}: {e})"
    if t.tolist() != [1.0, 1.0, 0.0]:
        return f"{versions}: the interpreter does not write CPU tensors"
    return None

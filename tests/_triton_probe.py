"""Whether Triton's interpreter writes a kernel's stores back to CPU tensors: Triton 3.0's (torch 2.4)
leaves them untouched, so the interpreted LRN checks cannot run there. Imported only where Triton is;
a module of its own because a jitted function must see ``triton.language`` among its globals."""

import torch
import triton
import triton.language as tl


@triton.jit
def _store_one(p):
    tl.store(p, 1.0)


def interpreter_writes_cpu_tensors() -> bool:
    t = torch.zeros(1)
    _store_one[(1,)](t)
    return t.item() == 1.0

"""An example kernel plugin: exact attention computed over blocks of keys with an online softmax.

Run it with:

    harness kernels --plugin examples/plugins/my_kernel.py          # what it registers
    harness run --devices local --matrix examples/plugins/sweep.yaml

A plugin is a Python file (or a package folder) outside the harness. It imports only the public kernel API
(`kernels.registry`) and what a device has: the standard library, numpy, psutil, torch, onnxruntime, plus
the modules it declares in `requires.modules` (import those inside `build`, so a device without them skips
the case with the reason instead of failing to load the whole plugin).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from kernels.registry import Built, Knob, Requires, register


def _check(case: Mapping[str, Any]) -> None:
    """A whole-case check: raise ValueError for a combination the kernel cannot run (exit 2, file and line)."""
    if case["key_block"] > case["seq_len"]:
        raise ValueError(f"key_block {case['key_block']} is longer than seq_len {case['seq_len']}")


@register("blocked_dense", "fp32", "torch", reference="dense", requires=Requires(modules=("torch",)),
          knobs={"key_block": Knob(64, minimum=1, help="keys per block of the online softmax")}, check=_check)
def build(case: Mapping[str, Any], inputs: Any, ctx: Any) -> Built:
    """Dense attention over blocks of `key_block` keys with an online (running max) softmax, fp32."""
    q, k, v = (t.to(ctx.device) for t in (inputs.q, inputs.k, inputs.v))  # [B, H, L, D] float32
    block = case["key_block"]
    scale = 1.0 / math.sqrt(q.shape[-1])

    def fn() -> torch.Tensor:
        # Everything a real call does is in here: it is what the timing protocol times.
        running_max = torch.full(q.shape[:-1] + (1,), -math.inf)
        total = torch.zeros(q.shape[:-1] + (1,))
        out = torch.zeros_like(q)
        for start in range(0, k.shape[-2], block):
            scores = (q @ k[..., start:start + block, :].transpose(-1, -2)) * scale
            new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
            correction = torch.exp(running_max - new_max)
            p = torch.exp(scores - new_max)
            total = total * correction + p.sum(dim=-1, keepdim=True)
            out = out * correction + p @ v[..., start:start + block, :]
            running_max = new_max
        return out / total

    return Built(fn=fn, compute=f"fp32 Q K^T and P V over blocks of {block} keys, online softmax",
                 bytes={}, meta={"key_block": block})

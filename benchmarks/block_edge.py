"""The published edge configuration: one head, scope block, model_dim 768, head_dim 64, L=128, batch 1.

int8 (and int4) blocks against the faster fp32 block (torch or onnxruntime), medians of interleaved calls,
output cosine against float64. Run: python benchmarks/block_edge.py
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels.benchtools import accuracy_pair, build, interleaved_medians  # noqa: E402
from kernels.caps import local_caps  # noqa: E402

EDGE = dict(scope="block", batch=1, heads=1, head_dim=64, model_dim=768, seq_len=128)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=400)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = local_caps()
    print(f"machine: {caps['arch']} isa={','.join(caps['isa'])} threads={args.threads}")
    variants = {"torch fp32": dict(precision="fp32"), "onnxruntime fp32": dict(precision="fp32", backend="onnxruntime"),
                "torch int8": dict(precision="int8"), "onnxruntime int8": dict(precision="int8", backend="onnxruntime"),
                "onnxruntime int4": dict(precision="int4", backend="onnxruntime")}
    inputs = None
    built = {}
    for label, raw in variants.items():
        case, inputs, b = build(dict(EDGE, **raw), inputs)
        built[label] = (case, b)
    med = interleaved_medians({label: b.fn for label, (_, b) in built.items()}, args.rounds)
    base = min(med["torch fp32"], med["onnxruntime fp32"])
    print(f"baseline (faster fp32 block): {base * 1e3:.0f} us")
    for label, (case, b) in built.items():
        own, _ = accuracy_pair(case, inputs, b.fn())
        print(f"  {label:18s} {med[label] * 1e3:7.0f} us  speedup {base / med[label]:5.2f}x  cos {own['cos_sim']:.6f}  "
              f"weights {b.bytes.get('weights', 0)} B  | {b.compute}")
    print("target: int8 >= 3x the fp32 block with cos >= 0.999 (reported on a Cortex-A78)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

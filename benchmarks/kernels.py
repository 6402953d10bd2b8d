"""Speedups of the catalogue's targets against the faster fp32 baseline, measured in one run on this machine.

B=1, H=8, d=64. Baselines: torch SDPA fp32 and onnxruntime MultiHeadAttention fp32; every ratio uses the
faster of the two at the same L, timed in the same interleaved rounds. Run: python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels.benchtools import accuracy_pair, build, interleaved_medians  # noqa: E402
from kernels.caps import local_caps  # noqa: E402

BASE = dict(batch=1, heads=8, head_dim=64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--texts", type=int, default=120, help="corpus texts for the model-level metric")
    ap.add_argument("--only", default="", help="comma-separated variants (e.g. sliding_window,lowrank,topk): "
                    "time only those targets and skip the memory and model-level sections")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = local_caps()
    print(f"machine: {caps['arch']} isa={','.join(caps['isa'])} threads={args.threads} "
          f"torch {torch.__version__} qengine={torch.backends.quantized.engine}")

    only = {v.strip() for v in args.only.split(",") if v.strip()}
    rows = []
    for n, targets in ((2048, [("dense int8 torch (_int_mm)", dict(variant="dense", precision="int8"), 2.0),
                                ("dense int8 onnxruntime (MatMulInteger)",
                                 dict(variant="dense", precision="int8", backend="onnxruntime"), 2.0)]),
                       (4096, [("sliding_window w256", dict(variant="sliding_window", window=256), 8.0),
                               ("lowrank rank256", dict(variant="lowrank", rank=256), 8.0),
                               ("topk block64 top8", dict(variant="topk", block_size=64, topk=8), 4.0)])):
        if only:
            targets = [t for t in targets if t[1]["variant"] in only]
            if not targets:
                continue
        case, inputs, sdpa = build(dict(BASE, seq_len=n))
        _, _, ortb = build(dict(BASE, seq_len=n, backend="onnxruntime"), inputs)
        built = {label: build(dict(BASE, seq_len=n, **raw), inputs) for label, raw, _ in targets}
        fns = {"sdpa": sdpa.fn, "ort": ortb.fn, **{label: b[2].fn for label, b in built.items()}}
        med = interleaved_medians(fns, args.rounds)
        base = min(med["sdpa"], med["ort"])
        print(f"\nL={n}: torch SDPA fp32 {med['sdpa']:.1f} ms, onnxruntime MHA fp32 {med['ort']:.1f} ms "
              f"-> baseline {base:.1f} ms")
        for label, _, target in targets:
            c, inp, b = built[label]
            own, dense = accuracy_pair(c, inp, b.fn())
            speed = base / med[label]
            rows.append((label, n, speed, target))
            print(f"  {label:40s} {med[label]:8.1f} ms  speedup {speed:5.2f}x (target >= {target:.0f}x)  "
                  f"cos {own['cos_sim']:.6f} rel {own['rel_err']:.4f}  vs dense cos {dense['cos_sim']:.4f}")

    if only:
        return 0
    print("\nK/V bytes against fp32 (L=4096):")
    fp32_kv = 2 * 8 * 4096 * 64 * 4
    for prec, target in (("int8", 4.0), ("int4", 7.0)):
        _, _, b = build(dict(BASE, seq_len=4096, precision=prec))
        print(f"  {prec}: {b.bytes['kv']} B, {fp32_kv / b.bytes['kv']:.2f}x smaller (target {target:.0f}x)")

    from kernels import minilm
    from workloads.spec import canonical_case

    texts = minilm.corpus()[: args.texts]
    print(f"\nMiniLM-L6 model level ({len(texts)} corpus texts, kernel in all 6 attention layers):")
    dense = minilm.model_metrics(canonical_case(dict(variant="dense")), texts)
    for label, raw in (("dense int8 torch", dict(variant="dense", precision="int8")),
                       ("topk block8 top2", dict(variant="topk", block_size=8, topk=2)),
                       ("topk block8 top3", dict(variant="topk", block_size=8, topk=3)),
                       ("topk block4 top4", dict(variant="topk", block_size=4, topk=4))):
        m = minilm.model_metrics(canonical_case(raw), texts)
        keep = m["top10_agreement"] / dense["top10_agreement"]
        print(f"  {label:22s} embedding cos mean {m['embedding_cos_mean']:.5f} min {m['embedding_cos_min']:.5f}  "
              f"top-10 agreement {m['top10_agreement']:.3f} ({keep:.1%} of dense fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

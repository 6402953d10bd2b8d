"""Sweep matrices: GitHub Actions semantics, defaults, canonical cases, and errors that name file/line/key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads.errors import ConfigError
from workloads.matrix import expand, load_matrix, parse_matrix
from workloads.spec import canonical_case, case_hash


def test_expand_is_the_cartesian_product_in_key_order():
    combos = expand({"a": [1, 2], "b": ["x", "y", "z"]})
    assert combos == [{"a": a, "b": b} for a, b in itertools.product([1, 2], ["x", "y", "z"])]


def test_exclude_drops_combinations_matching_every_given_key():
    combos = expand({"a": [1, 2], "b": ["x", "y"]}, exclude=[{"a": 1, "b": "y"}])
    assert {"a": 1, "b": "y"} not in combos and len(combos) == 3


def test_include_merges_into_matching_combinations_without_overwriting_matrix_values():
    combos = expand({"variant": ["dense", "sliding_window"], "L": [1, 2]},
                    include=[{"variant": "sliding_window", "window": 256}])
    assert [c.get("window") for c in combos] == [None, None, 256, 256]


def test_include_that_contradicts_matrix_values_adds_a_new_case():
    combos = expand({"a": [1, 2]}, include=[{"a": 3, "extra": True}])
    assert combos[-1] == {"a": 3, "extra": True} and len(combos) == 3


def test_include_values_added_by_an_earlier_include_may_be_overwritten():
    combos = expand({"a": [1]}, include=[{"color": "red"}, {"a": 1, "color": "blue"}])
    assert combos == [{"a": 1, "color": "blue"}]


def test_include_only_matrix_yields_just_the_includes():
    assert expand({}, include=[{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcd"), st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
                       min_size=1, max_size=4),
       st.lists(st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3), min_size=1, max_size=2), max_size=3))
def test_expansion_properties(matrix, exclude):
    combos = expand(matrix, exclude=exclude)
    full = expand(matrix)
    n = 1
    for values in matrix.values():
        n *= len(values)
    assert len(full) == n
    assert all(set(c) == set(matrix) for c in full)
    # Exclude removes exactly the combinations a rule matches, and keeps the order of the rest.
    assert combos == [c for c in full if not any(all(c.get(k) == v for k, v in r.items()) for r in exclude)]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from("abc"), st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
                       min_size=1, max_size=3),
       st.lists(st.dictionaries(st.sampled_from("abcxy"), st.integers(0, 3), min_size=1, max_size=3), max_size=3))
def test_include_never_changes_an_original_matrix_value_and_never_drops_a_case(matrix, include):
    base = expand(matrix)
    combos = expand(matrix, include=include)
    assert len(combos) >= len(base)
    for before, after in zip(base, combos):
        assert all(after[k] == v for k, v in before.items())
    # Every include appears somewhere: merged into a case, or added as its own.
    for rule in include:
        assert any(all(c.get(k) == v for k, v in rule.items()) for c in combos) or any(
            all(c.get(k) == v for k, v in rule.items() if k in matrix) for c in base)


def test_canonical_case_fills_defaults_and_drops_knobs_that_do_not_apply():
    case = canonical_case({"precision": "int8", "window": 64})
    assert case["variant"] == "dense" and "window" not in case and case["quant"] == "per_token"
    assert case_hash(case) == case_hash(canonical_case({"precision": "int8", "quant": "per_token"}))


def test_shipped_matrices_expand(tmp_path):
    root = Path(__file__).resolve().parent.parent / "sweeps"
    for path in root.glob("*.yaml"):
        sweep = load_matrix(path)
        assert sweep.cases, path


def test_spec_example_expands_with_includes_applied():
    text = """
name: attn
defaults: {batch: 1, heads: 8, head_dim: 64, backend: torch}
matrix:
  precision: [fp32, int8, int4]
  seq_len: [128, 512, 2048]
  variant: [dense, sliding_window, lowrank]
exclude:
  - {precision: int4, variant: lowrank}
include:
  - {variant: sliding_window, window: 64}
  - {variant: lowrank, rank: 64}
measure: {warmup_s: 0.5, min_time_s: 1.0, min_samples: 10, max_time_s: 30, timeout_s: 120}
"""
    sweep = parse_matrix(text, "attn.yaml")
    assert len(sweep.cases) == 27 - 3
    assert all(c["window"] == 64 for c in sweep.cases if c["variant"] == "sliding_window")
    assert all(c["rank"] == 64 for c in sweep.cases if c["variant"] == "lowrank")


@pytest.mark.parametrize("body, line, key, words", [
    ("matrix:\n  precision: [fp32, int3]\n", 2, "precision", "allowed: fp32"),
    ("matrix:\n  precision: [fp32]\n  seq_len: [128, -4]\n", 3, "seq_len", "positive"),
    ("matrix:\n  precison: [fp32]\n", 2, "precison", "did you mean 'precision'"),
    ("matrix:\n  precision: [fp32\n  seq_len: [1]\n", 3, None, "not valid YAML"),
    ("defaults: {heads: 0}\nmatrix:\n  seq_len: [8]\n", 1, "heads", "positive"),
    ("matrix:\n  seq_len: [8]\nmeasure:\n  min_tme_s: 1\n", 4, "measure.min_tme_s", "did you mean 'min_time_s'"),
    ("matrix:\n  seq_len: [8]\nsweep: {}\n", 3, "sweep", "allowed"),
    ("matrix:\n  variant: [sliding_window]\n  seq_len: [64]\ninclude:\n  - {variant: sliding_window, window: 128}\n",
     5, "window", "longer than seq_len"),
])
def test_bad_matrix_errors_name_file_line_and_key(tmp_path, body, line, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    err = info.value
    assert err.file == str(path)
    assert err.line == line, str(err)
    assert err.key == key
    assert words in str(err)


def test_missing_matrix_file_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_matrix(tmp_path / "nope.yaml")

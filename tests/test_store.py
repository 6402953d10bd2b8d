"""The results store: schema, idempotent writes, migrations."""

from __future__ import annotations

from sqlalchemy import inspect

from results.models import SCHEMA_REVISION, Case
from results.store import Store, measurement_columns
from workloads.spec import CASE_KEYS, canonical_case


def test_every_case_key_is_a_real_column():
    columns = set(Case.__table__.columns.keys())
    missing = [k for k in CASE_KEYS if k not in columns]
    assert not missing, f"case keys without a column (add them with an Alembic migration): {missing}"


def test_a_new_database_is_migrated_to_the_head_revision(db_url):
    store = Store(db_url)
    assert store.current_revision() == SCHEMA_REVISION
    assert {"runs", "devices", "run_devices", "cases", "measurements", "samples"} <= set(
        inspect(store.engine).get_table_names())
    migrated = {c["name"] for c in inspect(store.engine).get_columns("cases")}
    assert set(Case.__table__.columns.keys()) == migrated


def test_add_result_stores_each_run_device_case_once(db_url):
    store = Store(db_url)
    run_id = store.create_run(matrix_name="m", matrix_text="", measure={}, devices=["local"])
    case = canonical_case({"seq_len": 64})
    record = {"status": "ok", "samples_ms": [1.0, 2.0, 3.0]}
    assert store.add_result(run_id, "local", case, record).stored
    assert not store.add_result(run_id, "local", case, record).stored
    assert store.status_counts(run_id) == {"ok": 1}


def test_measurement_columns_derive_summaries_and_keep_absent_values_empty():
    cols = measurement_columns({"status": "ok", "samples_ms": [1.0, 2.0, 3.0, 4.0],
                                "accuracy": {"cos_sim": float("nan"), "rel_err": 0.01}})
    assert cols["latency_ms_p50"] == 2.5 and cols["n_samples"] == 4
    assert cols["cos_sim"] is None and cols["details"]["accuracy"]["cos_sim"] != cols["details"]["accuracy"]["cos_sim"]
    assert cols["energy_mj_per_inf"] is None and cols["power_w_avg"] is None and cols["is_estimate"] is None

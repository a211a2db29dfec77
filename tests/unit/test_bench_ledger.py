"""``inos bench ledger --quick``: the report's shape (no timing assertions)."""

from __future__ import annotations

from inos_node.bench.ledger import run_ledger

KEYS = (
    "apply_transfer_per_s", "ed25519_verify_per_s", "decode_apply_transfer_per_s",
    "durable_append_p50_us", "durable_append_trio_p50_us", "sqlite_commit_p50_us",
    "durable_append_full_p50_us", "sqlite_commit_full_p50_us", "thread_handoff_rtt_p50_us",
    "group_commit_appends_per_s", "group_commit_mean_batch", "settle_cpu_us",
)


def test_quick_report_has_every_figure_and_its_baseline() -> None:
    report = run_ledger(quick=True, progress=False)
    for key in KEYS:
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["transfers"] == 2000 and report["settles"] == 300
    assert "remote_paid_rtt_p50_us" not in report, "the paid remote round trip belongs to bench mesh"
    ratios = report["ratios"]
    assert set(ratios) == {"apply_transfer/ed25519_verify", "durable_append/sqlite_commit",
                           "durable_append_trio/sqlite_commit", "durable_append_full/sqlite_commit_full"}
    assert all(isinstance(v, float) and v > 0 for v in ratios.values())
    assert list(report)[-1] == "ratios"

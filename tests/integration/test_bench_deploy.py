"""``inos bench deploy`` as a smoke run: every key is there with a plausible value, the testnet is
counted right and nothing it started is left (no wall-clock thresholds: this machine is shared)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inos_node.bench.deploy import DeployBenchError, run_deploy
from inos_node.cli import build_parser

pytestmark = pytest.mark.integration

_POSITIVE = ("node_start_to_api_ready_ms", "node_start_to_api_ready_max_ms", "node_ready_line_ms",
             "node_stop_ms", "python_start_ms", "python_import_node_ms", "python_import_node_full_ms",
             "python_idle_rss_mb", "python_import_node_rss_mb", "testnet_up_s", "testnet_down_s",
             "idle_rss_mb_per_node", "idle_rss_mb_per_node_max", "idle_rss_node_mb", "idle_pss_mb_per_node")


def _alive_under(path: Path) -> list[int]:
    """Live processes whose command line names ``path`` (node processes carry their data dir)."""
    needle = str(path).encode()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if needle in cmdline and state != "Z":
                out.append(int(entry))
    return out


def test_quick_run_reports_every_figure_and_leaves_nothing(tmp_path: Path) -> None:
    report = run_deploy(quick=True, nodes=2, progress=False, workdir=tmp_path)

    json.dumps(report)  # the CLI prints it as one JSON object
    assert [k for k in _POSITIVE if not (isinstance(report[k], int | float) and report[k] > 0)] == []
    assert report["runs"] == 3
    assert report["node_start_to_api_ready_max_ms"] >= report["node_start_to_api_ready_ms"]
    assert report["idle_rss_mb_per_node_max"] >= report["idle_rss_mb_per_node"]
    assert report["idle_rss_mb_per_node"] >= report["idle_rss_node_mb"]
    # an idle node runs no worker process: they start with the first job that needs one
    assert report["workers_per_node"] == 0 and report["idle_rss_workers_mb"] == 0
    assert (report["testnet_nodes"], report["testnet_healthy"], report["testnet_peers_min"]) == (2, 2, 1)
    assert report["left_processes"] == [] and report["left_shm"] == []
    assert report["meets_targets"]["testnet_up_s_10_nodes"] is None  # the target is for 10 nodes
    assert set(report["targets"]) == set(report["meets_targets"])
    assert all(isinstance(v, float) and v > 0 for v in report["ratios"].values())
    # every node of the starts and of the testnet ran with a data dir under tmp_path
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("start")] == ["start0", "start0.log", "start1", "start1.log",
                                                          "start2", "start2.log"]
    assert (tmp_path / "testnet0" / "testnet.json").exists()  # testnet1.. only if a port was taken meanwhile
    assert _alive_under(tmp_path) == []


def test_nodes_out_of_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(DeployBenchError, match=r"--nodes must be in \[1, 100\], got 0"):
        run_deploy(quick=True, nodes=0, progress=False, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_wiring() -> None:
    args = build_parser().parse_args(["bench", "deploy", "--json", "--quick", "--nodes", "4"])
    assert (args.json, args.quick, args.nodes) == (True, True, 4)
    assert args.fn.__name__ == "cmd_bench_deploy"
    assert build_parser().parse_args(["bench", "deploy"]).nodes is None  # run_deploy picks 10 (or 3)

"""The benchmark's smoke run (`python -m bench --quick`): every section runs and reports numbers.

Nothing here asserts a timing: the machine running the tests is shared, and the figures are the
benchmark's business, not the test's. The quick run always uses the asyncio load generator, so
it takes the same path on a machine without wrk.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("direct", "floor", "relay")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def run_quick(out: Path) -> tuple[int, str]:
    """The quick benchmark to completion; on a timeout, SIGTERM lets it stop its servers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail("the quick benchmark took over 120 s:\n" + output[-3000:])
    return process.returncode, output


def test_quick_benchmark_fills_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    returncode, output = run_quick(out)
    assert returncode == 0, output[-3000:]
    result = json.loads(out.read_text())

    assert is_number(result["machine"]["cpus"])
    assert result["generator"]["throughput"].startswith("asyncio")
    for section in ("small_json", "sse"):
        assert [row["connections"] for row in result[section]] == [1, 16, 64]
        for row in result[section]:
            for name in NAMES:
                assert row[name]["requests"] > 0, (section, row)
                assert all(is_number(row[name][k]) for k in ("rps", "p50_ms", "p99_ms"))
    for section in ("small_json_latency", "sse_latency"):
        for name in NAMES:
            figures = result[section][name]
            assert all(is_number(figures[kind]["p99_ms"]) for kind in ("total", "first_byte"))
        for name in ("floor", "relay"):
            added = result[section][name]["added"]
            assert all(is_number(added[kind][p]) for kind in added for p in ("p50_ms", "p99_ms"))
    for name in NAMES:
        assert is_number(result["cpu"][name]["us_per_request"])

    ramp = result["ramp"]
    assert ramp["held"]["relay"] > 0
    assert is_number(ramp["kib_per_stream"])
    for step in ramp["steps"]:
        for run in (step["relay"], step.get("floor"), step.get("direct")):
            if run is not None:
                assert run["errors"] == 0, run["error_kinds"]
                assert run["lost_frames"] == run["out_of_order_frames"] == 0, run

    scaling = result["workers"]
    assert is_number(scaling["ratio"])
    assert all(is_number(scaling[f"workers_{n}"]["rps"]) for n in (1, 2))
    assert result["targets"]
    assert all(is_number(target["measured"]) for target in result["targets"])


def test_quick_stack_layers_each_hold_their_streams() -> None:
    """`python -m bench.stacks --quick`: every layer serves its streams and reports memory."""
    process = subprocess.run(
        [sys.executable, "-m", "bench.stacks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [line.split() for line in process.stdout.splitlines() if "KiB/stream" in line]
    assert [row[0] for row in rows] == ["uvicorn", "transport", "floor", "relay"]
    for row in rows:
        assert is_number(float(row[1])), row
        assert row[-3:] == ["20", "streams", "clean"], row


def test_instruction_count_reports_floor_and_relay() -> None:
    """`python -m bench.instructions` under valgrind, a few requests: both servers counted."""
    process = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "5", "--warm", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, (process.stdout + process.stderr)[-3000:]
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in process.stdout.splitlines()
        if "M instructions per" in line
    }
    assert set(counts) == {"floor", "relay"}
    assert all(count > 0 for count in counts.values()), counts

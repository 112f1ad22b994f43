"""The benchmark's smoke run (`python -m bench --quick`): every section runs and reports numbers.

Nothing here asserts a timing: the machine running the tests is shared, and the figures are the
benchmark's business, not the test's. The quick run always uses the asyncio load generator, so
it takes the same path on a machine without wrk.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.processes import Children, machine_ticks, parse_cpus

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


# -- where the benchmark's processes run ---------------------------------------------------------


def allowed_cpus(pid: int) -> str:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line.split(":")[1].strip() for line in lines if "Cpus_allowed_list" in line)


def test_each_role_runs_on_the_cpus_it_was_given() -> None:
    first = min(os.sched_getaffinity(0))
    children = Children({"server": frozenset({first})})
    try:
        # The relay is a supervisor and its workers: what the server starts runs there too.
        pinned = children.start(["sh", "-c", "sleep 30 & wait"], role="server")
        anywhere = children.start(["sleep", "30"], role="load")
        for _ in range(100):
            kids = Path(f"/proc/{pinned.pid}/task/{pinned.pid}/children").read_text().split()
            if kids:
                break
            time.sleep(0.02)
        assert allowed_cpus(pinned.pid) == allowed_cpus(int(kids[0])) == str(first)
        assert allowed_cpus(anywhere.pid) == allowed_cpus(os.getpid())
    finally:
        children.close()


def test_cpu_lists_are_read_as_the_kernel_writes_them() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert parse_cpus(str(cpus[0])) == {cpus[0]}
    assert parse_cpus(f"{cpus[0]}-{cpus[0]}") == {cpus[0]}
    assert parse_cpus(",".join(map(str, cpus))) == set(cpus)
    for bad in ("", "a", "1-b", "-1", str(max(cpus) + 1)):
        with pytest.raises(ValueError):
            parse_cpus(bad)


def test_a_cpus_ticks_are_a_share_of_the_machines() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    busy, total = machine_ticks({cpus[0]})
    all_busy, all_total = machine_ticks()
    assert 0 <= busy <= total <= all_total
    assert busy <= all_busy
    if len(cpus) > 1 and len(cpus) == os.cpu_count():
        assert total < all_total

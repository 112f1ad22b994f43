"""`relay.server.gcsettings.settle`, in a process of its own (it changes the collector of the whole
process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.server.gcsettings import THRESHOLDS

pytestmark = pytest.mark.sqlite


def test_settle_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    code = (
        "import gc; from relay.server import gcsettings; "
        "assert gc.get_freeze_count() == 0; gcsettings.settle(); "
        "print(gc.get_threshold(), gc.get_freeze_count() > 1000)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == f"{THRESHOLDS} True"

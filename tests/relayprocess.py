"""A relay as a real process (`python -m relay serve`), as production and PaaS hosts run it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx


def clean_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any relay setting, plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return {**keep, **extra}


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m relay ARGS` to completion, in `cwd`, with only `env` configured."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class RelayProcess:
    def __init__(
        self,
        cwd: Path,
        env: Mapping[str, str],
        *args: str,
        files: tuple[int, int] | None = None,
    ) -> None:
        """`files`: the (soft, hard) limit on open files the process starts with."""
        self.lines: list[str] = []

        def limit_files() -> None:
            if files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, files)

        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", "0", *args],
            cwd=cwd,
            env=clean_env(**env),
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit_files if files is not None else None,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout=30) or not self.url:
            self.stop()
            raise AssertionError("relay did not start:\n" + "".join(self.lines))

    url = ""

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "Uvicorn running on" in line and not self.url:
                self.url = line.split("Uvicorn running on ")[1].split(" ")[0]
                self._ready.set()
        self._ready.set()

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()

    def wait_for(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never logged:\n" + "".join(self.lines))

"""The benchmark's child processes, and what /proc says about them.

Every child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
orchestrator, which then ends each child's whole process group (a relay's workers included) by
its id. Each child also asks the kernel for SIGTERM should the orchestrator die without
cleaning up (`PR_SET_PDEATHSIG`), so no server outlives a killed run.

CPU time and resident memory are read from /proc for a process and all its descendants: a relay
started with `--workers N` is a supervisor plus N worker processes.

Each child plays a role: a server under test (the relay, the floor) or the load (the generators
and the mock upstream). A run may pin each role to CPUs of its own (`Placement`), so that on a
machine with cores to spare the servers do not share theirs with what measures them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Final, Literal

__all__ = [
    "Children",
    "Placement",
    "Role",
    "cpu_by_process",
    "cpu_seconds",
    "die_with_parent",
    "free_port",
    "machine_ticks",
    "open_fds",
    "parse_cpus",
    "raise_file_limit",
    "rss_bytes",
    "wait_http",
]

PR_SET_PDEATHSIG: Final = 1
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

Role = Literal["server", "load"]
Placement = Mapping[Role, frozenset[int]]  # the CPUs a role's processes run on; absent: any


def parse_cpus(text: str) -> frozenset[int]:
    """`"0,2-3"` as {0, 2, 3}; every CPU must be one this process may run on."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (say 0,1 or 0-1)")
        cpus.update(range(int(first), int(last or first) + 1))
    unknown = cpus - os.sched_getaffinity(0)
    if not cpus or unknown:
        raise ValueError(f"no such CPUs here: {sorted(unknown) or text!r}")
    return frozenset(cpus)


def die_with_parent() -> None:
    """Ask for SIGTERM when the parent process dies (Linux only; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: thousands of sockets are held."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot report the one they bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Children:
    """The processes this run started, each on its role's CPUs (`placement`); `close()` ends
    those still running, newest first."""

    def __init__(self, placement: Placement | None = None) -> None:
        self.placement: Placement = placement or {}
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: Sequence[str],
        *,
        role: Role = "load",
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        cpus = self.placement.get(role)

        def prepare() -> None:  # in the child, before exec: its own children inherit both
            die_with_parent()
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        process = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=prepare,  # safe: the orchestrator runs no threads
        )
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout`; then whatever is left of it."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a worker its supervisor left behind
        if process in self._started:
            self._started.remove(process)

    def close(self) -> None:
        for process in reversed(list(self._started)):
            self.stop(process)


def wait_http(process: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    """Wait until 127.0.0.1:`port` answers an HTTP request (any status) or `process` exits."""
    request = b"GET /version HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(request)
                if sock.recv(16).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f} s")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def cpu_by_process(root: int) -> dict[int, float]:
    """User plus system CPU seconds of `root` and of each descendant, reaped children included
    (in their parent's figure)."""
    seconds = {}
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            fields = _stat(pid)  # utime stime cutime cstime
            seconds[pid] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
    return seconds


def cpu_seconds(root: int) -> float:
    """User plus system CPU seconds of `root` and all its descendants."""
    return sum(cpu_by_process(root).values())


def machine_ticks(cpus: Collection[int] | None = None) -> tuple[int, int]:
    """(busy, total) CPU ticks since boot of the whole machine, or of `cpus`, from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if cpus is None:
            wanted = name == "cpu"  # the machine's total
        else:
            wanted = name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus
        if wanted:
            fields = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(fields) - fields[3] - fields[4]
            total += sum(fields)
    return busy, total


def open_fds(root: int) -> int:
    """File descriptors (sockets included) held open by `root` and its descendants."""
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def rss_bytes(root: int) -> int:
    """Resident memory of `root` and its descendants (the sum of their VmRSS)."""
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total

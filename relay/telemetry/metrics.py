"""The relay's Prometheus metrics, and their exposition for `GET /metrics`.

Names follow OpenTelemetry's semantic conventions where one exists (HTTP server request duration;
GenAI client token usage, operation duration and time to first chunk) as their Prometheus
translation spells them (dots as underscores, the unit as a suffix); the relay's own are
`relay_*`. No label holds a user, a token, a key or an app, and every label's values are bounded:
route templates, the provider table, outcomes, the statuses HTTP names (any other is `other`:
an upstream a client names may answer any three digits), and at most `MAX_MODELS` model names
per provider, a name taking a place only once a provider the operator chose accepted it (else
it counts as `other`), so a client naming models or upstreams at random cannot grow the
exposition or crowd the real ones out. A request's figures are tallied in plain numbers and
handed to prometheus_client once per scrape (`_Tally`): its values take a lock at every change.

With `PROMETHEUS_MULTIPROC_DIR` set (`byok-relay serve` sets a fresh one for two workers or more)
every process writes its figures into files there and a scrape of any one of them sums the
group's. The gauges are each process's own figures, summed over the processes alive.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import http
import math
import os
import re
from collections.abc import Iterable
from typing import Final

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    multiprocess,
)
from starlette.types import Scope

from relay.telemetry.access import Access

__all__ = [
    "CONTENT_TYPE",
    "FILE_KINDS",
    "MAX_MODELS",
    "MULTIPROCESS_DIR",
    "clear_folder",
    "exposition",
    "multiprocess_dir",
    "observe",
    "sample",
]

MULTIPROCESS_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
MAX_MODELS: Final = 100
"""Model names per provider shown as label values; the rest are `other`."""
_MAX_MODEL_CHARS: Final = 128

# Every counter's `_created` series would double the exposition for a figure no alert reads.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
_REGISTRY: Final = CollectorRegistry()
# The process's own figures (CPU, memory, open files, collections): one process's only, so
# served without PROMETHEUS_MULTIPROC_DIR.
prometheus_client.ProcessCollector(registry=_REGISTRY)
prometheus_client.GCCollector(registry=_REGISTRY)

# Buckets as the conventions advise: HTTP's defaults, GenAI's powers of two and four.
_HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_GENAI_SECONDS: Final = tuple(0.01 * 2**i for i in range(14))  # 0.01 .. 81.92
_TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))  # 1 .. 67,108,864
_STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Each histogram's upper bounds as its series hold them (prometheus_client adds +Inf): what the
# tally buckets by.
_BOUNDS: Final[dict[Histogram, tuple[float, ...]]] = {}


def _histogram(
    name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
) -> Histogram:
    histogram = Histogram(name, documentation, labels, buckets=buckets, registry=_REGISTRY)
    _BOUNDS[histogram] = (*buckets, math.inf)
    return histogram


HTTP_DURATION: Final = _histogram(
    "http_server_request_duration_seconds",
    "Requests served, by method, route template and status, and how long each took.",
    ["http_request_method", "http_route", "http_response_status_code"],
    _HTTP_BUCKETS,
)
RELAYED: Final = Counter(
    "relay_relayed_requests",
    "Requests relayed to a provider, by provider, model, status and how the exchange ended.",
    ["provider", "model", "status", "outcome"],
    registry=_REGISTRY,
)
OPERATION_DURATION: Final = _histogram(
    "gen_ai_client_operation_duration_seconds",
    "Relayed requests, from their arrival to the end of the provider's answer.",
    ["gen_ai_provider_name", "gen_ai_request_model"],
    _GENAI_SECONDS,
)
FIRST_CHUNK: Final = _histogram(
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "Streamed relayed requests, from their arrival to the answer's first bytes sent.",
    ["gen_ai_provider_name", "gen_ai_request_model"],
    _GENAI_SECONDS,
)
TOKENS: Final = _histogram(
    "gen_ai_client_token_usage",
    "Tokens per relayed request as the provider reported them (the sum: tokens in all).",
    ["gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
    _TOKEN_BUCKETS,
)
OPEN_EXCHANGES: Final = Gauge(
    "relay_open_exchanges",
    "Relayed exchanges in progress (streams open).",
    registry=_REGISTRY,
    multiprocess_mode="livesum",
)
UPSTREAM_CONNECTIONS: Final = Gauge(
    "relay_upstream_connections",
    "Connections to providers, in use or idle in the pool.",
    ["state"],
    registry=_REGISTRY,
    multiprocess_mode="livesum",
)
STORE_DURATION: Final = _histogram(
    "relay_store_call_duration_seconds",
    "Calls to the key store (past the cache), by operation.",
    ["operation"],
    _STORE_BUCKETS,
)
STORE_ERRORS: Final = Counter(
    "relay_store_call_errors",
    "Key store calls that failed: unavailable (down, frozen, refused at once while known "
    "down) or error (it answered with one).",
    ["operation", "error"],
    registry=_REGISTRY,
)
RATE_LIMITED: Final = Counter(
    "relay_rate_limited_requests",
    "Requests refused by a rate limit (429), or refused because the limit's counter was "
    "unavailable (503), by limit.",
    ["limit", "status"],
    registry=_REGISTRY,
)

_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))
# Status 0: no answer began (the client left first).
_STATUSES: Final = {0: "0"} | {int(status): str(int(status)) for status in http.HTTPStatus}


class _ModelNames:
    """The model label's values: at most `limit` names per provider, each taken once the
    provider accepted a request naming it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: dict[str, set[str]] = {}

    def label(self, provider: str, model: str | None, accepted: bool) -> str:
        if model is None:
            return "unknown"
        known = self._known.setdefault(provider, set())
        if model in known:
            return model
        if accepted and len(known) < self._limit and len(model) <= _MAX_MODEL_CHARS:
            known.add(model)
            return model
        return "other"


_MODELS: Final = _ModelNames(MAX_MODELS)


def observe(scope: Scope, access: Access, ended: float) -> None:
    """Count a request that has ended (an access sink: `relay.telemetry.access`)."""
    seconds = ended - access.started
    method = scope["method"]
    status = _STATUSES.get(access.status, "other")
    method = method if method in _METHODS else "_OTHER"
    _TALLY.observe(HTTP_DURATION, (method, access.route_of(scope), status), seconds)
    provider, outcome = access.provider, access.outcome
    if provider is None or outcome is None:  # not relayed
        return
    accepted = 0 < access.status < 400 and not access.client_upstream
    model = _MODELS.label(provider, access.model, accepted)
    _TALLY.count(RELAYED, (provider, model, status, outcome))
    _TALLY.observe(OPERATION_DURATION, (provider, model), seconds)
    if access.streamed and access.first_byte:
        _TALLY.observe(FIRST_CHUNK, (provider, model), access.first_byte - access.started)
    if access.input_tokens is not None:
        _TALLY.observe(TOKENS, (provider, model, "input"), access.input_tokens)
    if access.output_tokens is not None:
        _TALLY.observe(TOKENS, (provider, model, "output"), access.output_tokens)


_Key = tuple[Histogram, tuple[str, ...]]


class _Tally:
    """What requests observed since the last `apply`, in plain numbers: a request adds to a list
    (a bisect, no lock), and prometheus_client's values, whose every change takes a lock and,
    with several workers, writes a file, take each series' sums once per `apply` (before a
    scrape, and every second with several workers). Used on the loop's thread only."""

    def __init__(self) -> None:
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._histograms: dict[_Key, tuple[list[float], list[int]]] = {}

    def count(self, metric: Counter, labels: tuple[str, ...]) -> None:
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        key = (metric, labels)
        pending = self._histograms.get(key)
        if pending is None:
            pending = self._histograms[key] = ([0.0], [0] * len(_BOUNDS[metric]))
        pending[0][0] += value
        pending[1][bisect.bisect_left(_BOUNDS[metric], value)] += 1

    def apply(self) -> None:
        counts, self._counts = self._counts, {}
        histograms, self._histograms = self._histograms, {}
        for (counter, labels), n in counts.items():
            counter.labels(*labels).inc(n)
        for (histogram, labels), (total, buckets) in histograms.items():
            child = histogram.labels(*labels)
            child._sum.inc(total[0])
            for bucket, n in zip(child._buckets, buckets, strict=True):
                if n:
                    bucket.inc(n)


_TALLY: Final = _Tally()


def sample(open_exchanges: int, connections: int, idle: int) -> None:
    """Bring this process's figures up to date: what requests observed, and the gauges now."""
    _TALLY.apply()
    OPEN_EXCHANGES.set(open_exchanges)
    UPSTREAM_CONNECTIONS.labels("active").set(connections - idle)
    UPSTREAM_CONNECTIONS.labels("idle").set(idle)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR) or None


def exposition() -> bytes:
    """The text format of every figure: this process's, or the process group's."""
    path = multiprocess_dir()
    if path is None:
        return prometheus_client.generate_latest(_REGISTRY)
    _forget_dead(path)
    registry = CollectorRegistry()
    registry.register(_Files(path))
    return prometheus_client.generate_latest(registry)


FILE_KINDS: Final = ("counter", "gauge", "histogram", "summary")
"""The files prometheus_client writes in the folder: `<kind>_<pid>.db`, a gauge's with its mode."""


def clear_folder(path: str) -> None:
    """Remove an earlier run's files from `path`, and nothing else."""
    for file in _files(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)


def _files(path: str) -> list[str]:
    return [f for kind in FILE_KINDS for f in glob.glob(os.path.join(path, f"{kind}_*.db"))]


class _Files:
    """The process group's figures, merged from its files alone: the folder may hold others
    (an operator's `PROMETHEUS_MULTIPROC_DIR` beside the SQLite store, say), which
    prometheus_client's own collector would try to read as its own."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        merge = multiprocess.MultiProcessCollector.merge
        return merge(_files(self._path), accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


_LIVE_FILE: Final = re.compile(r"gauge_live\w+?_(\d+)\.db")


def _forget_dead(path: str) -> None:
    """Drop the gauges of worker processes that have exited (a worker restarted, say): their
    counters stay in the sums, their gauges would count what no process holds."""
    for pid in _pids(glob.glob(os.path.join(path, "gauge_live*_*.db"))):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            # A scrape beside this one may have removed them first.
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, as another user
            pass


def _pids(files: Iterable[str]) -> set[int]:
    pids = set()
    for file in files:
        match = _LIVE_FILE.fullmatch(os.path.basename(file))
        if match:
            pids.add(int(match.group(1)))
    return pids

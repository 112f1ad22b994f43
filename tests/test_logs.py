"""The JSON-lines handler: lines logged in one round of an event loop go out in one write at its
end, in order; lines logged off a loop at once, after those waiting; none held past the round or
past `logging.shutdown`; the access line's short way writes what a record would."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from relay.telemetry import logs


class Recorder:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for text in self.writes for line in text.splitlines()]


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    monkeypatch.setattr("sys.stderr", recorder)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure_logging("info")
    try:
        yield recorder
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        monkeypatch.setattr(logs, "_ONLY", None)


def test_lines_of_one_round_go_out_together_at_its_end(stream: Recorder) -> None:
    log = logging.getLogger("relay.test")

    async def main() -> None:
        for i in range(5):
            log.info("line %d", i)
        logs.write_fields(logging.getLogger("relay.access"), "request", {"status": 200})
        assert stream.writes == []  # held for the round's end
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(stream.writes) == 1
        log.warning("next round")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert len(stream.writes) == 2
    lines = stream.lines()
    assert [line["message"] for line in lines] == [
        *(f"line {i}" for i in range(5)),
        "request",
        "next round",
    ]
    assert lines[5] == {
        "time": lines[5]["time"],
        "level": "info",
        "logger": "relay.access",
        "message": "request",
        "status": 200,
    }


def test_a_line_off_the_loop_is_written_at_once_after_those_waiting(stream: Recorder) -> None:
    log = logging.getLogger("relay.test")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logs.JSONLines)

    async def hold_one() -> None:
        log.info("from the loop")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(hold_one())  # the round that would write it never comes
    finally:
        loop.close()
    log.info("from a thread without a loop")
    assert [line["message"] for line in stream.lines()] == [
        "from the loop",
        "from a thread without a loop",
    ]


def test_what_waits_is_written_by_logging_shutdown(stream: Recorder) -> None:
    async def main() -> None:
        logging.getLogger("relay.test").info("last words")
        logging.getLogger().handlers[0].flush()  # what logging.shutdown does at exit

    asyncio.run(main())
    assert [line["message"] for line in stream.lines()] == ["last words"]


def test_a_long_round_is_written_before_its_end(stream: Recorder) -> None:
    async def main() -> None:
        for _ in range(200):
            logging.getLogger("relay.test").info("x" * 1000)
        assert stream.writes  # past the bound: written without waiting

    asyncio.run(main())
    assert len(stream.lines()) == 200


def test_the_short_way_is_not_taken_past_another_handler(stream: Recorder) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    access = logging.getLogger("relay.access")
    keep = Keep()
    access.addHandler(keep)
    try:
        logs.write_fields(access, "request", {"status": 201})
    finally:
        access.removeHandler(keep)
    assert len(seen) == 1
    assert getattr(seen[0], "fields", None) == {"status": 201}
    assert stream.lines()[0]["status"] == 201  # and still the root's line, as a record

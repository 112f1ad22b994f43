"""Bodies the relay reads: found and edited at C speed whatever their shape, refused clearly
past the parse limit or in hostile forms, and held once, within the process's budget.

The stall checks time a concurrent request while a hostile body is read: the bound is ten times
what the relay takes and a tenth of what walking the body in Python took. The stall target
itself (50 ms) is the bench's (`bench.stalls`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from bench.stalls import worst_wait
from relay.proxy.jsonedit import (
    Repeated,
    TooDeep,
    cut,
    find_members,
    member_value,
    replace_value,
)
from relay.proxy.modelname import MAX_PARTS
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env

pytestmark = pytest.mark.sqlite

SIZE = 9_400_000  # just under the default body limit


def many_members(model: str) -> bytes:
    """About SIZE bytes of top-level members, the model last."""
    members = ",".join(f'"k{i}":{i}' for i in range(SIZE // 17))
    return ("{" + members + f',"model":"{model}"}}').encode()


def multipart(parts: int, model: str = "eleven_english_sts_v2") -> bytes:
    """A form of `parts` small fields, then the model (ElevenLabs calls it `model_id`)."""
    fields = [
        b'--B\r\nContent-Disposition: form-data; name="x%d"\r\n\r\na\r\n' % i for i in range(parts)
    ]
    fields.append(
        b'--B\r\nContent-Disposition: form-data; name="model_id"\r\n\r\n%b\r\n' % model.encode()
    )
    return b"".join(fields) + b"--B--\r\n"


# ---------------------------------------------------------------------------------------------
# Finding and editing members


def test_members_are_found_where_they_are_and_edits_keep_every_other_byte() -> None:
    body = b'{ "a" : {"model": "inner"} , "model" :"openai/gpt-4o",\n"stream" : true }'
    found = find_members(body, ("model", "stream"))
    assert found["model"].value(str) == "openai/gpt-4o"
    assert found["stream"].value(bool) is True
    replaced = bytearray(body)
    replace_value(replaced, found["model"], "gpt-4o")
    assert replaced == b'{ "a" : {"model": "inner"} , "model" :"gpt-4o",\n"stream" : true }'
    cut(edited := bytearray(body), list(found.values()))
    assert edited == b'{ "a" : {"model": "inner"}  }'


@pytest.mark.parametrize(
    ("body", "left"),
    [
        (b'{"model":"m"}', b"{}"),
        (b'{"model":"m","stream":true,"x":1}', b'{"x":1}'),
        (b'{"x":1,"model":"m","stream":true}', b'{"x":1}'),
        (b'{"model":"m","x":1,"stream":true}', b'{"x":1}'),
        (b'{"stream":false, "x":[1,2],  "model":"m"}', b'{ "x":[1,2]}'),
    ],
)
def test_members_are_cut_with_one_comma(body: bytes, left: bytes) -> None:
    edited = bytearray(body)
    cut(edited, list(find_members(body, ("model", "stream")).values()))
    assert edited == left
    json.loads(left)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"a","model":"b"}',
        b'{"model":"a","mod\\u0065l":"b"}',  # the same key, spelled with an escape
        b'{"mo\\u0064el":"a","x":{"model":"n"},"model":"b"}',
    ],
)
def test_a_member_given_twice_is_refused_however_it_is_spelled(body: bytes) -> None:
    with pytest.raises(Repeated):
        find_members(body, ("model",))
    with pytest.raises(Repeated):  # read without its place, as a check reads it
        member_value(body, "model", str)


def test_nested_and_quoted_lookalikes_are_not_members() -> None:
    body = b'{"k":"\\"model\\":\\"x\\"","t":{"model":"n"},"model":"m","mo\\"del":1}'
    assert find_members(body, ("model",))["model"].value(str) == "m"
    assert find_members(b'{"mo\\u0064el":"m"}', ("model",))["model"].value(str) == "m"
    assert find_members(b'{"x":1}', ("model",)) == {}
    assert member_value(body, "model", str) == "m"
    assert member_value(b'{"mo\\u0064el":"m"}', "model", str) == "m"
    assert member_value(b'{"x":1}', "model", str) is None
    assert member_value(b'{"model":1}', "model", str) is None


# Both readers of a member refuse what is not one JSON object alike.
READERS: Final = [
    pytest.param(lambda body: find_members(body, ("model",)), id="find_members"),
    pytest.param(lambda body: member_value(body, "model", str), id="member_value"),
]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("body", [b"[1]", b'"s"', b"{", b'{"model":"a"} x', b"\xff", b""])
def test_anything_but_one_json_object_is_refused(
    read: Callable[[bytes], object], body: bytes
) -> None:
    with pytest.raises(ValueError):
        read(body)


@pytest.mark.parametrize("read", READERS)
def test_deep_nesting_is_its_own_refusal(read: Callable[[bytes], object]) -> None:
    with pytest.raises(TooDeep):
        read(b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}")


# ---------------------------------------------------------------------------------------------
# Through a real relay


@pytest.fixture(scope="module")
def relays(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RelayProcess]]:
    """Relay processes by their extra settings, started once each for this module."""
    started: dict[tuple[tuple[str, str], ...], RelayProcess] = {}
    tmp_path = tmp_path_factory.mktemp("bodies")

    def relay(**env: str) -> RelayProcess:
        key = tuple(sorted(env.items()))
        if key not in started:
            db = tmp_path / f"relay-{len(started)}.db"
            started[key] = RelayProcess(tmp_path, relay_env(db, mock.url, LOG_LEVEL="info", **env))
        return started[key]

    yield relay
    for process in started.values():
        process.stop()
        assert not [line for line in process.lines if "Traceback" in line], "".join(process.lines)


def user_of(relay: RelayProcess) -> str:
    with relay.client() as client:
        token = str(client.post("/users", json={"app_id": "bodies"}).json()["token"])
        for provider in ("openai", "google", "elevenlabs"):
            response = client.post(
                f"/keys/{provider}",
                json={"key": f"test-{provider}-key-{uuid.uuid4().hex}"},
                headers={"x-relay-token": token},
            )
            assert response.status_code == 200, response.text
    return token


def worst_stall(
    relay: RelayProcess, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, float]:
    """`send()`'s answer, and the longest a `GET /version` waited meanwhile (asked by a process
    of its own: the mock provider, in this one, parses bodies too and holds the GIL)."""
    return worst_wait(relay.url, send)


STALL_BOUND = 0.5  # seconds; walking these bodies in Python took 2.7 to 10.6


@pytest.mark.parametrize("model", ["gpt-4o-mini", "google/gemini-1.5-flash"])
def test_a_body_of_many_members_is_routed_without_stalling_the_relay(
    relays: Callable[..., RelayProcess], mock: MockProvider, model: str
) -> None:
    relay = relays()
    token = user_of(relay)
    body = many_members(model)
    with relay.client(timeout=60) as client:
        response, stall = worst_stall(
            relay,
            lambda: client.post(
                "/relay",
                content=body,
                headers={"x-relay-token": token, "content-type": "application/json"},
            ),
        )
    assert response.status_code == 200, response.text
    assert stall < STALL_BOUND, f"other requests waited {stall:.2f} s"
    sent = mock.last().body
    if model.startswith("google/"):  # the model went into the path, the rest as it was
        assert sent == body.removesuffix(f',"model":"{model}"}}'.encode()) + b"}"
    else:
        assert sent == body


def test_a_multipart_body_is_read_for_its_model_without_stalling_the_relay(
    relays: Callable[..., RelayProcess], mock: MockProvider
) -> None:
    relay = relays(ALLOWED_MODELS="eleven_*")
    token = user_of(relay)
    headers = {"x-relay-token": token, "content-type": "multipart/form-data; boundary=B"}
    path = "/relay/elevenlabs/v1/speech-to-speech/voice1"
    with relay.client(timeout=60) as client:
        allowed = client.post(path, content=multipart(MAX_PARTS - 1), headers=headers)
        assert allowed.status_code == 200, allowed.text
        forbidden = client.post(path, content=multipart(3, "other_model"), headers=headers)
        assert forbidden.status_code == 403
        response, stall = worst_stall(
            relay, lambda: client.post(path, content=multipart(60_000), headers=headers)
        )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "too_many_parts"
    assert stall < STALL_BOUND, f"other requests waited {stall:.2f} s"
    assert [r.path for r in mock.requests] == ["/v1/speech-to-speech/voice1"]


def test_a_deeply_nested_body_is_a_400_not_a_500(
    relays: Callable[..., RelayProcess], mock: MockProvider
) -> None:
    relay = relays()
    token = user_of(relay)
    deep = b'{"model":"gpt-4o-mini","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with relay.client() as client:
        response = client.post(
            "/relay",
            content=deep,
            headers={"x-relay-token": token, "content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_json"
    assert mock.requests == []


def test_a_body_past_the_parse_limit_is_refused_with_413(
    relays: Callable[..., RelayProcess], mock: MockProvider
) -> None:
    relay = relays(RELAY_PARSE_LIMIT_BYTES="100000", ALLOWED_MODELS="gpt-*")
    token = user_of(relay)
    body = json.dumps({"model": "gpt-4o-mini", "pad": "x" * 200_000}).encode()
    headers = {"x-relay-token": token, "content-type": "application/json"}
    with relay.client() as client:
        routed = client.post("/relay", content=body, headers=headers)
        checked = client.post("/relay/openai/v1/chat/completions", content=body, headers=headers)

        def chunked() -> Iterator[bytes]:
            yield body[:50_000]
            yield body[50_000:]

        streamed = client.post("/relay", content=chunked(), headers=headers)
    for response in (routed, checked, streamed):
        assert response.status_code == 413, response.text
        assert "RELAY_PARSE_LIMIT_BYTES" in response.json()["error"]
    assert mock.requests == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_bodies_waiting_on_a_slow_provider_are_held_once_and_within_the_budget(
    relays: Callable[..., RelayProcess], mock: MockProvider
) -> None:
    """Eight 9 MB bodies at once for a provider that takes 3 s to answer, with room for five:
    five are held (one copy each) and answered, the other three refused at once with 503."""
    relay = relays(REQUEST_BODY_MEMORY_BYTES=str(5 * SIZE + SIZE // 2))
    token = user_of(relay)
    body = json.dumps({"model": "openai/mock-slow_headers", "pad": "x" * (SIZE - 60)}).encode()
    headers = {"x-relay-token": token, "content-type": "application/json"}
    answers: list[httpx.Response] = []
    before = _rss_kib(relay.process.pid)
    peak = before

    def send() -> None:
        with relay.client(timeout=30) as client:
            answers.append(client.post("/relay", content=body, headers=headers))

    senders = [threading.Thread(target=send) for _ in range(8)]
    for sender in senders:
        sender.start()
    while any(sender.is_alive() for sender in senders):
        peak = max(peak, _rss_kib(relay.process.pid))
        time.sleep(0.05)
    statuses = sorted(response.status_code for response in answers)
    assert statuses == [200] * 5 + [503] * 3, [r.text[:100] for r in answers]
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["code"] == "relay_busy"
    assert busy.headers["retry-after"] == "1"
    per_body = (peak - before) * 1024 / 5 / SIZE
    assert per_body < 1.3, f"{per_body:.2f} copies of each body held"

"""Payload encryption (dealflow/codec.py) and the codec server
(dealflow/api/routes/codec_server.py).

The first half is the codec itself: round trip, random nonces, rotation, tamper
detection, key configuration. The second half runs a real deal on the dev
server — through the loan contract, so the repayment bank account is in its
history — and proves that the server's own store holds none of the fixture
customer's personal data in clear (read without the codec, by the Temporal CLI
and by a plain client), nor do workflow ids, search attributes, the worker's
and API's logs or /metrics; then drives the codec endpoint exactly as the
Temporal UI and CLI do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from dealflow import client as deals
from dealflow import codec
from dealflow.api.security import mint_token
from dealflow.audit.histories import RunHistory, export_json, fetch_deal
from dealflow.audit.payloads import decode_events
from dealflow.config import Settings
from dealflow.logs import JsonFormatter
from dealflow.models import DealInput, Stage
from dealflow.samples import example_action, example_deal
from dealflow.storage.documents import LocalDirectoryStore
from tests.support.back_office import Desk
from tests.support.stack import BIN, ROOT, TEST_CODEC_KEYS, Stack, deal_worker

UI_ORIGIN = "http://localhost:8233"


def ring(*ids: str) -> codec.Keyring:
    return codec.keyring_from_spec(",".join(codec.generate_key_spec(i) for i in ids))


def plain(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


# --------------------------------------------------------------------------- the codec


async def test_round_trip_with_key_id_in_metadata_and_a_fresh_nonce_each_time() -> None:
    c = codec.AesGcmCodec(ring("k1"))
    p = plain({"full_name": "Wang Fang"})
    [e1] = await c.encode([p])
    [e2] = await c.encode([p])
    assert e1.metadata["encoding"] == b"binary/encrypted"
    assert e1.metadata["encryption-key-id"] == b"k1"
    assert e1.metadata["encryption-cipher"] == b"AES-256-GCM"
    assert b"Wang Fang" not in e1.SerializeToString()
    assert e1.data[:12] != e2.data[:12] and e1.data != e2.data  # random nonce
    assert await c.decode([e1, e2]) == [p, p]
    # Unencrypted payloads (search attributes, pre-encryption histories) pass through.
    assert await c.decode([p]) == [p]


async def test_rotation_new_key_encrypts_old_keys_still_decrypt() -> None:
    old_spec, new_spec = codec.generate_key_spec("2024"), codec.generate_key_spec("2025")
    before = codec.AesGcmCodec(codec.keyring_from_spec(old_spec))
    after = codec.AesGcmCodec(codec.keyring_from_spec(f"{new_spec},{old_spec}"))
    p = plain({"id_number": "110105198803120014"})
    [old] = await before.encode([p])
    [new] = await after.encode([p])
    assert new.metadata["encryption-key-id"] == b"2025"
    assert await after.decode([old, new]) == [p, p]
    with pytest.raises(codec.UnknownKeyId) as err:
        await before.decode([new])
    assert "'2025'" in str(err.value) and "2024" in str(err.value)
    assert "DEALFLOW_CODEC_KEYS" in str(err.value)


async def test_altered_ciphertext_or_key_id_is_detected() -> None:
    c = codec.AesGcmCodec(ring("a", "b"))
    [e] = await c.encode([plain("x")])
    flipped = Payload()
    flipped.CopyFrom(e)
    flipped.data = e.data[:-1] + bytes([e.data[-1] ^ 1])
    with pytest.raises(codec.CodecError, match="altered"):
        await c.decode([flipped])
    moved = Payload()
    moved.CopyFrom(e)
    moved.metadata["encryption-key-id"] = b"b"  # the key id is authenticated data
    with pytest.raises(codec.CodecError, match="failed authentication"):
        await c.decode([moved])
    short = Payload(metadata=dict(e.metadata), data=e.data[:10])
    with pytest.raises(codec.CodecError, match="truncated"):
        await c.decode([short])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no keys"),
        ("k1", "KEY_ID=BASE64_KEY"),
        ("k1=not*base64", "not valid base64"),
        (f"k1={base64.b64encode(b'short').decode()}", "5 bytes"),
        # Fixed keys, not generated ones: test ids must be the same in every
        # process that collects them (pytest-xdist compares them).
        (
            f"k1={base64.b64encode(bytes(range(32))).decode()},"
            f"k1={base64.b64encode(bytes(range(1, 33))).decode()}",
            "appears twice",
        ),
        (f"bad id={base64.b64encode(bytes(32)).decode()}", "not valid"),
    ],
)
def test_bad_key_configuration_is_a_clear_error_without_key_material(
    spec: str, message: str
) -> None:
    with pytest.raises(codec.CodecKeyError, match=message) as err:
        codec.keyring_from_spec(spec)
    for item in spec.split(","):
        secret = item.partition("=")[2]
        if len(secret) > 8:
            assert secret not in str(err.value)


def test_keys_from_a_file_and_the_development_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "keys"
    f.write_text(
        "# rotated 2025-01\n"
        + codec.generate_key_spec("new")
        + "\n"
        + codec.generate_key_spec("old")
        + "\n"
    )
    assert codec.load_keyring(f"file:{f}").key_ids == ["new", "old"]
    with pytest.raises(codec.CodecKeyError, match="cannot read"):
        codec.load_keyring(f"file:{tmp_path / 'missing'}")
    caplog.set_level(logging.WARNING, logger="dealflow.codec")
    codec._warned_dev_key = False
    dev = codec.load_keyring("")
    assert dev.key_ids == [codec.DEV_KEY_ID]
    assert "PUBLIC development key" in caplog.text
    # The committed test key is that development key: every process of the
    # suite agrees with every other, configured or not.
    assert TEST_CODEC_KEYS.keys == dev.keys
    out = subprocess.run(
        [sys.executable, "-m", "dealflow.codec", "new-key", "prod-2025"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.strip()
    assert codec.keyring_from_spec(out).key_ids == ["prod-2025"]


async def test_data_converter_encrypts_models_and_failure_messages() -> None:
    dc = codec.data_converter(TEST_CODEC_KEYS)
    deal = example_deal()
    [p] = await dc.encode([deal])
    assert codec.is_encrypted(p) and b"Wang Fang" not in p.SerializeToString()
    assert await dc.decode([p], [DealInput]) == [deal]
    # Exception texts may quote a customer: message and stack trace are encrypted too.
    failure = Failure()
    dc.failure_converter.to_failure(
        ApplicationError("lender refused Wang Fang", type="LenderRejected"),
        dc.payload_converter,
        failure,
    )
    assert dc.payload_codec is not None
    await dc.payload_codec.encode_failure(failure)
    assert b"Wang Fang" not in failure.SerializeToString()
    assert failure.application_failure_info.type == "LenderRejected"  # types stay readable
    await dc.payload_codec.decode_failure(failure)
    err = dc.failure_converter.from_failure(failure, dc.payload_converter)
    assert "Wang Fang" in str(err)


# --------------------------------------------------------------------------- on the server


def pii(deal: DealInput) -> dict[str, str]:
    a, s = deal.customer.applicant, deal.customer.spouse
    assert s is not None
    return {
        "applicant name": a.full_name,
        "applicant ID number": a.id_number,
        "applicant phone": a.phone,
        "applicant phone digits": a.phone.replace(" ", "")[3:],
        "spouse name": s.full_name,
        "spouse ID number": s.id_number,
        "spouse phone": s.phone,
        "repayment bank account": example_action("record-repayment-account")["account_no"],
    }


def leaks(blob: bytes | str, values: dict[str, str]) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [what for what, v in values.items() if v.encode() in data]


class Capture(logging.Handler):
    """Every log line DealFlow's processes would write, formatted as they write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The lender simulator plays the lender, who holds the application by right.
        if not record.name.startswith("sim.lender"):
            self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def log_capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what the processes log at (dealflow.logs.setup)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class Ran:
    desk: Desk
    deal_id: str
    workflow_id: str
    address: str


@pytest.fixture(scope="module")
async def ran(
    dev_stack: Stack, database_url: str, store: LocalDirectoryStore, log_capture: Capture
) -> AsyncIterator[Ran]:
    """A deal through the loan contract (bank account recorded) and disbursement."""
    async with deal_worker(dev_stack.env.client, database_url, dev_stack.lenders, store) as tq:
        desk = Desk(dev_stack, tq)
        await desk.start()
        await desk.through_disbursement()
        await desk.wait_stage(Stage.REGISTRATION)
        yield Ran(
            desk,
            desk.deal_id,
            deals.workflow_id(desk.deal_id),
            dev_stack.env.client.service_client.config.target_host,
        )
        await desk.close()


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def _cli(address: str, *args: str) -> Done:
    """The Temporal CLI, without blocking the loop that serves the API it may call."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "temporal"),
        *args,
        "--address",
        address,
        "--disable-config-file",
        "--disable-config-env",
        "--command-timeout",
        "20s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return Done(proc.returncode or 0, out.decode(), err.decode())


def _payload_bytes(obj: Any) -> Iterator[bytes]:
    """The base64 `data` of every payload in a CLI JSON history, decoded."""
    if isinstance(obj, dict):
        if isinstance(obj.get("data"), str) and "metadata" in obj:
            yield base64.b64decode(obj["data"])
        for v in obj.values():
            yield from _payload_bytes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _payload_bytes(v)


async def test_no_personal_data_in_clear_on_the_server(ran: Ran, log_capture: Capture) -> None:
    values = pii(ran.desk.deal)
    # 1. The Temporal CLI, which has no key: the history as the server stores it.
    shown = await _cli(ran.address, "workflow", "show", "-w", ran.workflow_id, "--output", "json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert len(doc["events"]) > 50
    assert not leaks(shown.stdout, values)
    decoded_bytes = list(_payload_bytes(doc))
    assert len(decoded_bytes) > 50
    assert not [w for b in decoded_bytes for w in leaks(b, values)]
    # 2. A plain SDK client without the codec: every byte of every event.
    plain_client = await Client.connect(ran.address)
    raw = await plain_client.get_workflow_handle(ran.workflow_id).fetch_history()
    everything = b"".join(e.SerializeToString() for e in raw.events)
    assert not leaks(everything, values)
    # ...while the same history decrypted with the key holds every one of them:
    # the check above would have caught them.
    decoded, _ = decode_events(raw.events, TEST_CODEC_KEYS)
    found_decoded = set(leaks(b"".join(e.SerializeToString() for e in decoded), values))
    assert set(values) - {"applicant phone digits"} <= found_decoded
    # 3. Workflow ids and search attributes, as the visibility store indexes them.
    found = [wf async for wf in plain_client.list_workflows(f'WorkflowId = "{ran.workflow_id}"')]
    assert found
    for wf in found:
        indexed = json.dumps(
            {
                "id": wf.id,
                "sa": {k.name: v for k, v in wf.typed_search_attributes},
                "memo": str(wf.raw_info.memo),
            },
            default=str,
        )
        assert not leaks(indexed, values), indexed
    # 4. The worker's and the API's logs.
    assert log_capture.lines, "nothing was logged: the capture is broken"
    bad = [line for line in log_capture.lines if leaks(line, values)]
    assert not bad, bad[:3]
    # 5. /metrics.
    async with httpx.AsyncClient(trust_env=False) as http:
        metrics = (await http.get(f"{ran.desk.stack.api_url}/metrics")).text
    assert "dealflow_" in metrics and not leaks(metrics, values)


# --------------------------------------------------------------------------- the endpoint


def token(*roles: str, ttl: int = 600) -> str:
    return mint_token(Settings().jwt_secret, f"{roles[0]}-07", list(roles), ttl=ttl)


async def _encrypted_start_input(ran: Ran) -> dict[str, Any]:
    """The encrypted workflow input, as the UI holds it: protobuf JSON of a Payload."""
    history = await ran.desk.handle.fetch_history()
    first = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert codec.is_encrypted(first)
    return {
        "metadata": {k: base64.b64encode(v).decode() for k, v in first.metadata.items()},
        "data": base64.b64encode(first.data).decode(),
    }


async def test_codec_endpoint_answers_the_temporal_ui(ran: Ran) -> None:
    api = ran.desk.stack.api_url
    body = json.dumps({"payloads": [await _encrypted_start_input(ran)]})
    async with httpx.AsyncClient(base_url=api, trust_env=False) as http:
        # The browser's preflight for the UI's fetch (custom headers, JSON body).
        pre = await http.options(
            "/codec/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == UI_ORIGIN
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "POST" in pre.headers["access-control-allow-methods"]
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= {
            h.strip() for h in allowed.split(",")
        }
        evil = await http.options(
            "/codec/decode",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in evil.headers

        ui_headers = {
            "Content-Type": "application/json",
            "X-Namespace": "default",
            "Origin": UI_ORIGIN,
        }
        # No token: 401, with CORS headers so the UI can tell.
        r = await http.post("/codec/decode", content=body, headers=ui_headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        # Staff of other roles: 403.
        for role in ("sales", "credit", "finance"):
            r = await http.post(
                "/codec/decode",
                content=body,
                headers={**ui_headers, "Authorization": f"Bearer {token(role)}"},
            )
            assert r.status_code == 403, (role, r.text)
            assert "auditor" in r.json()["detail"]
        # Expired or forged tokens: 401.
        expired = mint_token(Settings().jwt_secret, "aud-1", ["auditor"], now=time.time() - 7200)
        forged = mint_token("not-the-secret-" * 4, "aud-1", ["auditor"])
        for bad in (expired, forged, "garbage"):
            r = await http.post(
                "/codec/decode",
                content=body,
                headers={**ui_headers, "Authorization": f"Bearer {bad}"},
            )
            assert r.status_code == 401
        # Auditors and admins get plain text.
        for role in ("auditor", "admin"):
            r = await http.post(
                "/codec/decode",
                content=body,
                headers={**ui_headers, "Authorization": f"Bearer {token(role)}"},
            )
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == UI_ORIGIN
            [p] = r.json()["payloads"]
            assert base64.b64decode(p["metadata"]["encoding"]) == b"json/plain"
            start = json.loads(base64.b64decode(p["data"]))
            assert start["deal_id"] == ran.deal_id
            assert start["deal"]["customer"]["applicant"]["full_name"] == "Wang Fang"
        # Encode (the UI's and CLI's other direction, admin only) round-trips
        # through decode.
        auditor = {**ui_headers, "Authorization": f"Bearer {token('auditor')}"}
        admin = {**ui_headers, "Authorization": f"Bearer {token('admin')}"}
        clear = {
            "payloads": [
                {
                    "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                    "data": base64.b64encode(b'"hello"').decode(),
                }
            ]
        }
        assert (await http.post("/codec/encode", json=clear, headers=auditor)).status_code == 403
        enc = (await http.post("/codec/encode", json=clear, headers=admin)).json()
        [e] = enc["payloads"]
        assert base64.b64decode(e["metadata"]["encryption-key-id"]) == b"dev-insecure"
        back = (await http.post("/codec/decode", json=enc, headers=auditor)).json()
        assert back == clear
        assert (
            await http.post("/codec/decode", json={"payloads": []}, headers=auditor)
        ).json() == {"payloads": []}
        # A payload under a key we do not hold: a clear 422, not garbage.
        alien = codec.AesGcmCodec(ring("other-2019"))
        [a] = await alien.encode([plain("x")])
        r = await http.post(
            "/codec/decode",
            headers=auditor,
            json={
                "payloads": [
                    {
                        "metadata": {
                            k: base64.b64encode(v).decode() for k, v in a.metadata.items()
                        },
                        "data": base64.b64encode(a.data).decode(),
                    }
                ]
            },
        )
        assert r.status_code == 422 and "other-2019" in r.json()["detail"]
        r = await http.post("/codec/decode", headers=auditor, content=b'{"payloads": 7}')
        assert r.status_code == 422
        keys = (await http.get("/codec/keys", headers=auditor)).json()
        assert keys == {"current": "dev-insecure", "key_ids": ["dev-insecure"]}


async def test_ui_sign_in_cookie_lets_the_browser_decode(ran: Ran) -> None:
    """The dev server's UI has no login, hence no token to pass: the auditor signs
    in at /codec/login and the UI sends the cookie ("include credentials")."""
    api = ran.desk.stack.api_url
    body = {"payloads": [await _encrypted_start_input(ran)]}
    async with httpx.AsyncClient(base_url=api, trust_env=False) as browser:
        page = await browser.get("/codec/login")
        assert page.status_code == 200 and "<form" in page.text
        refused = await browser.post("/codec/login", data={"token": token("sales")})
        assert refused.status_code == 403 and "dealflow_codec_session" not in refused.cookies
        ok = await browser.post("/codec/login", data={"token": token("auditor")})
        assert ok.status_code == 200 and "Signed in as" in ok.text
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/codec" in cookie
        r = await browser.post(
            "/codec/decode", json=body, headers={"X-Namespace": "default", "Origin": UI_ORIGIN}
        )
        assert r.status_code == 200, r.text
        await browser.post("/codec/logout")
        r = await browser.post("/codec/decode", json=body, headers={"X-Namespace": "default"})
        assert r.status_code == 401


async def test_temporal_cli_decodes_through_the_endpoint(ran: Ran) -> None:
    """`temporal workflow show --codec-endpoint --codec-auth` shows exactly what
    `dealflow-audit export --decode` writes; without a token it cannot."""
    endpoint = f"{ran.desk.stack.api_url}/codec"
    await ran.desk.quiet_history()
    base = [
        "workflow",
        "show",
        "-w",
        ran.workflow_id,
        "--output",
        "json",
        "--no-json-shorthand-payloads",
        "--codec-endpoint",
        endpoint,
    ]
    shown = await _cli(ran.address, *base, "--codec-auth", f"Bearer {token('auditor')}")
    assert shown.returncode == 0, shown.stderr
    assert "Wang Fang" in json.dumps(
        [
            base64.b64decode(b).decode("utf-8", "replace")
            for b in [x for x in _b64_data(json.loads(shown.stdout))]
        ]
    )
    runs = await fetch_deal(ran.desk.client, ran.deal_id)
    # The deal is idle in REGISTRATION: the history cannot grow between the reads.
    decoded = [RunHistory(r.workflow_id, decode_events(r.events, TEST_CODEC_KEYS)[0]) for r in runs]
    assert json.loads(shown.stdout) == json.loads(export_json(decoded))
    refused = await _cli(ran.address, *base)
    assert refused.returncode != 0 or "Wang Fang" not in refused.stdout


def _b64_data(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if isinstance(obj.get("data"), str) and "metadata" in obj:
            yield obj["data"]
        for v in obj.values():
            yield from _b64_data(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _b64_data(v)

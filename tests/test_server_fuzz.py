"""Property-based fuzzing of the JSON API against a real server: no input gives a 500.

Hypothesis sends arbitrary bytes, arbitrary JSON, mutated statements (any field replaced
by any JSON value), correctly signed statements with arbitrary bodies, arbitrary query
strings and arbitrary tile paths. Every answer must be one of the documented statuses,
and every error a JSON object with ``error`` and ``detail``. Afterwards the server's log
must be intact: its checkpoint verifies and every entry parses as a statement.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import LogServer, Trainer

from ledger.merkle import leaf_hash
from ledger.note import open_checkpoint
from ledger.statement import JSON, build_statement, canonical_json, parse_statement

FUZZ = settings(max_examples=int(os.environ.get("POTD_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
WRITE_STATUSES = {200, 400, 401, 403, 409, 413}
READ_STATUSES = {200, 400, 404}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogServer]:
    s = LogServer(tmp_path_factory.mktemp("fuzz"), "--open-registration",
                  "--max-request-bytes", "200000").start()
    yield s
    crashed = "internal error" in s.stderr()
    s.stop()
    assert not crashed, s.stderr()


@pytest.fixture(scope="module")
def http(server: LogServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def trainer(http: httpx.Client) -> Trainer:
    t = Trainer()
    assert http.post("/add", content=t.opened).status_code == 200
    return t


def check(r: httpx.Response, allowed: set[int]) -> None:
    assert r.status_code in allowed, (r.status_code, r.text)
    if r.status_code != 200:
        err = r.json()
        assert isinstance(err["error"], str) and isinstance(err["detail"], str), err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@FUZZ
@given(body=st.binary(max_size=300), path=st.sampled_from(["/add", "/add-batch"]))
def test_arbitrary_bytes(http: httpx.Client, body: bytes, path: str) -> None:
    check(http.post(path, content=body), WRITE_STATUSES)


@FUZZ
@given(value=json_values, path=st.sampled_from(["/add", "/add-batch"]))
def test_arbitrary_json(http: httpx.Client, value: Any, path: str) -> None:
    check(http.post(path, content=json.dumps(value).encode()), WRITE_STATUSES)


FIELDS = ["body", "kind", "run", "seq", "sig", "signer", "v"]


@FUZZ
@given(data=st.data())
def test_mutated_statements(http: httpx.Client, trainer: Trainer, data: st.DataObject) -> None:
    d = json.loads(trainer.statements[-1] if data.draw(st.booleans()) else trainer.opened)
    for name in data.draw(st.lists(st.sampled_from(FIELDS + ["body.prev", "body.step"]),
                                   min_size=1, max_size=3)):
        target, key = (d.get("body"), name[5:]) if name.startswith("body.") else (d, name)
        if isinstance(target, dict):
            if data.draw(st.booleans()):
                target[key] = data.draw(canonical_values)
            else:
                target.pop(key, None)
    try:
        raw = canonical_json(d)
    except Exception:
        raw = json.dumps(d).encode()
    batch = data.draw(st.booleans())
    r = http.post("/add-batch" if batch else "/add", content=b"[" + raw + b"]" if batch else raw)
    check(r, WRITE_STATUSES - {200})


@FUZZ
@given(body=st.dictionaries(st.text(max_size=10), canonical_values, max_size=6),
       kind=st.sampled_from(["step", "run.close"]))
def test_signed_statements_with_arbitrary_bodies(http: httpx.Client, trainer: Trainer,
                                                 body: dict[str, JSON], kind: str) -> None:
    if kind == "run.close":  # a close ends its run: give it a run of its own
        trainer = Trainer()
        assert http.post("/add", content=trainer.opened).status_code == 200
    seq = len(trainer.statements)
    full: dict[str, JSON] = {"step": seq - 1, "batch_root": "00" * 32, **body,
                             "prev": leaf_hash(trainer.statements[-1]).hex()}
    try:
        raw = build_statement(kind, trainer.run, seq, full, trainer.signer)
    except Exception:
        return  # the builder refused it; nothing to send
    r = http.post("/add", content=raw)
    check(r, {200, 400, 409})
    if r.status_code == 200:
        trainer.statements.append(raw)


@FUZZ
@given(path=st.sampled_from(["/proof/inclusion", "/proof/consistency", "/entries"]),
       params=st.dictionaries(st.sampled_from(["index", "size", "leaf_hash", "from", "to",
                                               "start", "end", "x"]),
                              st.one_of(st.integers(-5, 10**20).map(str), st.text(max_size=70),
                                        st.binary(min_size=32, max_size=32).map(bytes.hex)),
                              max_size=3))
def test_read_queries(http: httpx.Client, path: str, params: dict[str, str]) -> None:
    check(http.get(path, params=params), READ_STATUSES)


@FUZZ
@given(rest=st.text(alphabet="0123456789x./pentris-", max_size=30))
def test_tile_paths(http: httpx.Client, rest: str) -> None:
    r = http.get("/tile/" + rest)
    assert r.status_code in READ_STATUSES | {405}, (rest, r.status_code, r.text)


@FUZZ
@given(run=st.text(max_size=70))
def test_run_ids(http: httpx.Client, run: str) -> None:
    r = http.get("/runs/" + urllib.parse.quote(run, safe=""))
    assert r.status_code in READ_STATUSES, r.text


def test_log_is_intact_after_fuzzing(server: LogServer, http: httpx.Client) -> None:
    cp = open_checkpoint(http.get("/checkpoint").text, server.vkey)
    entries = http.get("/entries", params={"start": 0, "end": cp.size}).json()["entries"]
    for e in entries:
        parse_statement(base64.b64decode(e))

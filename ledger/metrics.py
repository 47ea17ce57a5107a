"""Prometheus metrics of a log frontend: ``GET /metrics`` (prometheus-client).

:class:`Metrics` wraps the log server's ASGI app: it counts every HTTP response by
status, every refused write by its error code, and answers ``GET /metrics`` itself;
gauges (pending statements, checkpoint size and age, witness lag, storage failure) are
read from the server at scrape time, and the sequencer reports each integration round
(batch size and latency). Each app has its own registry, so several apps in one
process never share counters. Metric names (all prefixed ``potd_``):

* ``statements_accepted_total`` - statements this frontend integrated;
* ``submissions_refused_total{reason}`` - refused ``/add`` and ``/add-batch`` requests
  by error code (a refused batch counts once);
* ``integration_batch_size`` and ``integration_seconds`` - histograms per round;
* ``pending_statements``, ``checkpoint_size``, ``checkpoint_age_seconds``,
  ``witness_lag_entries`` (tree size minus the newest witnessed size), ``storage_failed``;
* ``http_responses_total{status}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WRITE_PATHS = ("/add", "/add-batch")


class _State(Collector):
    """Gauges read from the server when scraped."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        seq = self.app.sequencer
        log = seq.log
        c = CounterMetricFamily("potd_statements_accepted", "Statements integrated by this "
                                "frontend.")
        c.add_metric([], seq.flushed)
        yield c
        yield GaugeMetricFamily("potd_pending_statements", "Statements waiting to be "
                                "sequenced.", value=seq.pending)
        cp = log.checkpoint()
        yield GaugeMetricFamily("potd_checkpoint_size", "Tree size of the latest checkpoint "
                                "this frontend serves.", value=cp.size)
        created = _created_ms(log.store, cp.size)
        age = max(0.0, time.time() - created / 1000) if created is not None else 0.0
        yield GaugeMetricFamily("potd_checkpoint_age_seconds", "Seconds since the latest "
                                "checkpoint was signed.", value=age)
        pub = self.app.publisher
        if pub is not None:
            witnessed = pub.published.size if pub.published is not None else 0
            yield GaugeMetricFamily("potd_witness_lag_entries", "Tree size minus the size of "
                                    "the newest checkpoint the witness quorum cosigned.",
                                    value=max(0, cp.size - witnessed))
        yield GaugeMetricFamily("potd_storage_failed", "1 while the last commit failed.",
                                value=1 if seq.storage_error is not None else 0)


def _created_ms(store: Any, size: int) -> int | None:
    try:
        rows = store.checkpoints(size, 1)
    except Exception:  # a scrape never fails because the database does
        return None
    return int(rows[0][2]) if rows and rows[0][0] == size else None


class Metrics:
    """ASGI wrapper: counts responses, answers ``GET /metrics``, delegates the rest."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter("potd_http_responses", "HTTP responses by status.",
                                 ["status"], registry=self.registry)
        self.refused = Counter("potd_submissions_refused", "Refused write requests by "
                               "error code.", ["reason"], registry=self.registry)
        self.batch = Histogram("potd_integration_batch_size", "Statements per integration "
                               "round.", buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
                               registry=self.registry)
        self.latency = Histogram("potd_integration_seconds", "Duration of an integration "
                                 "round (verify, sequence, commit, prove).",
                                 buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 1, 5),
                                 registry=self.registry)
        self.registry.register(_State(app))
        app.sequencer.on_round = self.round

    def round(self, statements: int, seconds: float) -> None:
        self.batch.observe(statements)
        self.latency.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            body = generate_latest(self.registry)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE.encode()),
                                    (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": body})
            self.responses.labels("200").inc()
            return
        write = scope["method"] == "POST" and scope["path"] in WRITE_PATHS
        status = [0]

        async def counting(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = int(msg["status"])
                self.responses.labels(str(status[0])).inc()
            elif (write and msg["type"] == "http.response.body" and status[0] != 200
                  and status[0]):
                self.refused.labels(_reason(msg.get("body", b""))).inc()
                status[0] = 0
            await send(msg)

        await self.app(scope, receive, counting)


def _reason(body: bytes) -> str:
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) and len(code) < 40 else "unknown"

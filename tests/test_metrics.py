"""``GET /metrics`` of a real log server, scraped: the counters move as expected."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from server_helpers import LogServer, Trainer, batch_body


def scrape(server: LogServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with server.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_counters_move(tmp_path: Path) -> None:
    with LogServer(tmp_path, "--open-registration") as server:
        before = scrape(server)
        assert before[("potd_statements_accepted_total", ())] == 0
        assert before[("potd_checkpoint_size", ())] == 0
        t = Trainer()
        with server.client() as c:
            assert c.post("/add", content=t.opened).status_code == 200
            assert c.post("/add-batch", content=batch_body(t.steps(5))).status_code == 200
            assert c.post("/add", content=t.statements[2]).status_code == 409  # duplicate
            assert c.post("/add", content=b"{not json").status_code == 400
            assert c.get("/checkpoint").status_code == 200
        m = scrape(server)
    assert m[("potd_statements_accepted_total", ())] == 6
    assert m[("potd_checkpoint_size", ())] == 6
    assert m[("potd_pending_statements", ())] == 0
    assert m[("potd_storage_failed", ())] == 0
    assert 0 <= m[("potd_checkpoint_age_seconds", ())] < 60
    assert m[("potd_submissions_refused_total", (("reason", "duplicate"),))] == 1
    assert m[("potd_submissions_refused_total", (("reason", "malformed"),))] == 1
    assert m[("potd_integration_batch_size_count", ())] == 2
    assert m[("potd_integration_batch_size_sum", ())] == 6
    assert m[("potd_integration_seconds_count", ())] == 2
    assert m[("potd_http_responses_total", (("status", "200"),))] >= 4  # + the first scrape
    assert m[("potd_http_responses_total", (("status", "409"),))] == 1
    assert m[("potd_http_responses_total", (("status", "400"),))] == 1

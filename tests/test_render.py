"""Rendering of audit reports: terminal summary (rich) and the self-contained HTML page."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from auditor.render import render_terminal
from auditor.render_html import plot_images, render_html, write_html

EXAMPLE = Path(__file__).resolve().parents[1] / "auditor" / "report_example.json"
EVIL = '<script>alert("pwned")</script>'


def example() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return report


def passing() -> dict[str, Any]:
    r = example()
    r["verdict"] = "pass"
    for c in r["checks"]:
        c["status"] = "pass"
    for s in r["replay"]["segments"]:
        s.update(match=True, first_mismatch_step=None, distance=0.0)
    for s in r["memorization"]["segments"]:
        s["flagged"] = False
    r["memorization"]["flagged"] = 0
    return r


def inconclusive_empty() -> dict[str, Any]:
    """What the auditor emits when it stops early: nothing replayed, tested or plotted."""
    r = example()
    r["verdict"] = "inconclusive"
    r["checks"][-2].update(status="skip", summary="no segments to replay", evidence={})
    r["replay"] = {"samples": 0, "segments": []}
    r["memorization"] = {"segments": [], "flagged": 0}
    r["losses"] = []
    return r


def tolerance_run() -> dict[str, Any]:
    """A longer run compared under tolerance: 12 segments, one too far, one error."""
    r = example()
    r["verdict"] = "fail"
    r["losses"] = [[t, 2.3 * math.exp(-t / 60) + 0.08 + 0.03 * math.sin(t / 3)]
                   for t in range(240)]
    segs = []
    for i, start in enumerate(range(5, 240, 20)):
        d: float | None = 3e-8 * (1 + (i % 4))
        seg: dict[str, Any] = {"start": start, "end": start + 4, "match": True,
                               "first_mismatch_step": None, "distance": d, "tolerance": 1e-6,
                               "seconds": 0.2 + i / 100, "error": None}
        if i == 4:
            seg.update(match=False, distance=0.012)
        if i == 8:
            seg.update(match=False, distance=None, error="evidence file missing")
        if i == 10:
            seg["distance"] = 0.0
        segs.append(seg)
    r["replay"].update(mode="tolerance", samples=len(segs), segments=segs, segments_total=47,
                       detection_probability={"0.01": 0.1136, "0.05": 0.4596, "0.1": 0.7176,
                                              "0.25": 0.9683, "0.5": 0.9998})
    r["memorization"]["segments"] = [
        {"start": s["start"], "end": s["end"], "train_drop": 0.3 / (1 + j),
         "heldout_drop": 0.2 / (1 + j), "statistic": 0.1 / (1 + j), "z": 3.0 - j,
         "flagged": j == 3} for j, s in enumerate(segs[:4])]
    r["memorization"].update(flagged=1, threshold_z=1.0)
    return r


def terminal(report: dict[str, Any], **kw: Any) -> str:
    console = Console(record=True, width=100, no_color=True, **kw)
    render_terminal(report, console)
    return console.export_text()


def count_plots(page: str) -> int:
    return len(re.findall(r'<svg[^>]*class="plot"', page))


# -- terminal ------------------------------------------------------------------------------


def test_terminal_example_content() -> None:
    r = example()
    out = terminal(r)
    assert out.startswith(" FAIL ")
    for c in r["checks"]:
        assert c["name"] in out
    assert "run 3f1c9a...e2" in out and "digits-mlp" in out and "potd.example/log1" in out
    assert "at size 97" in out
    assert "✗ fail" in out and "! warn" in out and "✓ pass" in out
    assert "10..14" in out and "0.031 > 0" in out
    assert "a fraction f of the segments is caught with probability" in out
    assert "f=1% → 2.97%" in out and "f=25% → 57.8%" in out
    assert "Memorization: 1 of 2 segments flagged (30..34)" in out
    assert "\x1b" not in out  # no colour codes asked for, none given


@pytest.mark.parametrize(("make", "word"), [(example, "FAIL"), (passing, "PASS"),
                                            (inconclusive_empty, "INCONCLUSIVE"),
                                            (tolerance_run, "FAIL")])
def test_terminal_verdicts(make: Any, word: str) -> None:
    out = terminal(make())
    assert out.splitlines()[0].strip().startswith(word)


def test_terminal_empty_sections() -> None:
    out = terminal(inconclusive_empty())
    assert "Replay: no segments replayed" in out
    assert "caught with probability" not in out
    assert "Memorization: no segments tested" in out
    assert "Losses: none recorded" in out
    assert "– skip" in out


def test_terminal_minimal_report() -> None:
    minimal: dict[str, Any] = {"checks": [], "replay": None, "memorization": {}, "losses": None}
    out = terminal(minimal)
    assert "UNKNOWN" in out and "Checks: none recorded" in out
    page = render_html(minimal)
    assert "<h1>UNKNOWN</h1>" in page and "No checks recorded." in page
    assert count_plots(page) == 0


def test_terminal_tolerance_mode() -> None:
    out = terminal(tolerance_run())
    assert "3e-08 ≤ 1e-06" in out and "0.012 > 1e-06" in out
    assert "error: evidence file missing" in out
    assert "12 of 47 segments" in out and "tolerance mode" in out


def test_terminal_colour_and_ascii() -> None:
    r = example()
    r["recipe"] = "digits-mlp-é"
    console = Console(record=True, width=100, force_terminal=True, color_system="standard")
    render_terminal(example(), console)
    styled = console.export_text(styles=True)
    assert "\x1b[" in styled  # coloured when the console supports it
    ascii_out = terminal(r, legacy_windows=False, force_terminal=False,
                         file=open("/dev/null", "w", encoding="ascii"))  # noqa: SIM115
    assert "x fail" in ascii_out and "0.031 > 0" in ascii_out and "f=1% -> 2.97%" in ascii_out
    assert "digits-mlp-\\xe9" in ascii_out
    assert ascii_out.isascii()


def test_terminal_neutralises_markup_and_escapes() -> None:
    r = example()
    r["recipe"] = "[bold red]fake[/bold red] \x1b[2J\u202eevil"
    r["checks"][0]["summary"] = "[link=http://x]click[/link]"
    console = Console(record=True, width=100, force_terminal=True)
    render_terminal(r, console)
    out = console.export_text()
    assert "[bold red]fake[/bold red]" in out  # shown literally, not interpreted
    assert "[link=http://x]click[/link]" in out
    assert "\\x1b[2J" in out and "\\u202e" in out
    assert "\x1b[2J" not in console.export_text(styles=True)


# -- HTML ----------------------------------------------------------------------------------


def test_html_example(tmp_path: Path) -> None:
    r = example()
    page = render_html(r)
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="banner v-fail"' in page and "<h1>FAIL</h1>" in page
    for c in r["checks"]:
        assert f"<code>{c['name']}</code>" in page
    assert "<details><summary>evidence</summary><pre>{\n  &quot;runs&quot;" in page
    assert "caught with probability f=1% → 2.97%" in page
    assert count_plots(page) == 3
    # self-contained: no scripts, no external fetches
    assert "<script" not in page.lower()
    assert not re.search(r'(?:src|href)="(?!data:|#)', page)  # only in-page references
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)) > 0  # the three inline SVGs do not share ids
    assert "Content-Security-Policy" in page
    # saved for eyeballing in a browser
    out = write_html(r, "/tmp/potd-report-example.html")
    assert out.read_text(encoding="utf-8") == page
    assert write_html(r, tmp_path / "r.html").stat().st_size == len(page.encode())


def test_html_is_deterministic() -> None:
    assert render_html(example()) == render_html(example())


@pytest.mark.parametrize(("make", "verdict", "plots"),
                         [(passing, "pass", 3), (inconclusive_empty, "inconclusive", 0),
                          (tolerance_run, "fail", 3)])
def test_html_variants(make: Any, verdict: str, plots: int) -> None:
    report = make()
    before = copy.deepcopy(report)
    page = render_html(report)
    terminal(report)
    assert report == before  # rendering never mutates the report
    assert f'class="banner v-{verdict}"' in page
    assert count_plots(page) == plots


def test_html_empty_sections() -> None:
    page = render_html(inconclusive_empty())
    assert "No segments were replayed." in page
    assert "No segments were tested." in page
    assert "No losses recorded." in page
    assert "caught with probability" not in page


def test_html_partial_plots() -> None:
    r = example()
    r["losses"] = []
    r["memorization"]["segments"] = []
    assert count_plots(render_html(r)) == 1


def test_html_escapes_attacker_strings() -> None:
    r = example()
    r["recipe"] = EVIL
    r["run"] = f'"><img src=x onerror=alert(1)>{EVIL}'
    r["signer"] = EVIL
    r["log"]["origin"] = EVIL
    r["checks"][0].update(name=EVIL, summary=EVIL, evidence={"x": EVIL, EVIL: [EVIL]})
    r["checks"][1]["status"] = f'pass" onmouseover="{EVIL}'
    r["replay"]["mode"] = EVIL
    r["replay"]["segments"][1]["error"] = EVIL
    r["memorization"]["note"] = EVIL
    r["verdict"] = EVIL
    page = render_html(r)
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert 'class="banner v-unknown"' in page
    assert '" onmouseover' not in page  # no attribute break-out


def test_html_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    page = render_html(example())
    assert count_plots(page) == 0
    assert "matplotlib is not installed" in page


def test_plot_png_saved() -> None:
    images = plot_images(tolerance_run(), "png")
    assert set(images) == {"loss", "replay", "memorization"}
    assert all(b.startswith(b"\x89PNG") for b in images.values())
    Path("/tmp/potd-plot.png").write_bytes(images["loss"])
    assert plot_images(inconclusive_empty(), "png") == {}


def test_a_segment_not_replayed_is_not_shown_as_a_mismatch() -> None:
    """A segment whose replay could not be carried out (evidence server gone, worker
    lost: ``unavailable``) is inconclusive in both reports, not "no"/"differs"."""
    rep = copy.deepcopy(example())
    segs = rep["replay"]["segments"]
    segs[0].update(match=False, unavailable=True, error="cannot fetch evidence")
    out = terminal(rep)
    row = next(line for line in out.splitlines() if "not replayed" in line)
    assert "✗" not in row and "?" in row
    page = render_html(rep)
    assert '<span class="pill s-inconclusive">not replayed</span>' in page
    # a segment that was replayed and differs still shows as a mismatch
    segs[0].update(unavailable=False)
    assert '<span class="pill s-fail">differs</span>' in render_html(rep)
    assert "not replayed" not in terminal(rep)

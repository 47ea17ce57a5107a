"""The terminal rendering of an audit report (``potd-audit-report-v1``), and the helpers
it shares with the HTML page (:mod:`auditor.render_html`).

:func:`render_terminal` prints a summary with ``rich``; :func:`auditor.render_html.render_html`
builds one self-contained HTML page (inline CSS, plots as inline SVG, no JavaScript, no
external resources) and :func:`auditor.render_html.write_html` saves it.

Every string in a report may come from the audited party (recipe names, signer, check
evidence copied from log entries), so nothing from the report is trusted as markup:

* terminal: values are wrapped in :class:`rich.text.Text` (never parsed as rich markup) and
  control / format characters (ANSI escapes, bidi overrides) are shown as ``\\xNN`` escapes;
* HTML: the same cleaning, then :func:`html.escape`; plots contain only numbers; and the page
  carries a Content-Security-Policy that forbids scripts as a second line of defence.

matplotlib is imported lazily, by the HTML page's plots only.
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["render_terminal"]

# -- shared helpers ------------------------------------------------------------------------

_VERDICT_STYLE = {"pass": "bold white on green", "fail": "bold white on red",
                  "inconclusive": "bold black on yellow"}
_STATUS_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "bold yellow",
                 "warn": "yellow", "skip": "dim"}
_SYMBOLS_UTF = {"pass": "✓", "fail": "✗", "inconclusive": "?", "warn": "!", "skip": "–",
                "le": "≤", "arrow": "→", "dot": "·", "dash": "—"}
_SYMBOLS_ASCII = {"pass": "+", "fail": "x", "inconclusive": "?", "warn": "!", "skip": "-",
                  "le": "<=", "arrow": "->", "dot": "|", "dash": "-"}
_VERDICT_MEANING = {"pass": "every check passed",
                    "fail": "evidence of a false claim",
                    "inconclusive": "something could not be checked; no evidence against "
                                    "the claim"}
_SPARKS = "▁▂▃▄▅▆▇█"

# colours shared by the HTML page and the plots
_GREEN, _RED, _AMBER, _BLUE, _GREY = "#2e7d32", "#c62828", "#f9a825", "#1565c0", "#9e9e9e"
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


def _clean(value: Any, multiline: bool = False) -> str:
    """``str(value)`` with control and format characters made visible as escapes.

    Keeps ``\\n`` (and ``\\t``) only when ``multiline``; everything else in the Unicode
    categories Cc, Cf, Cs, Co, Zl, Zp (ANSI escapes, carriage returns, bidi overrides...)
    becomes ``\\xNN`` / ``\\uNNNN`` so it can neither drive a terminal nor reorder text.
    """
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if multiline and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000
                       else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _e(value: Any, multiline: bool = False) -> str:
    """Cleaned and HTML-escaped text (safe in element content and quoted attributes)."""
    return html.escape(_clean(value, multiline), quote=True)


def _is_num(x: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, digits: int = 3) -> str:
    """A compact number: ``—``-free (callers choose the placeholder) ``.3g`` formatting."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.{digits}g}"
    return _clean(x)


def _opt(x: Any, placeholder: str = "—", digits: int = 3) -> str:
    return placeholder if x is None or x == "" else _num(x, digits)


def _dict(x: Any) -> dict[str, Any]:
    return dict(x) if isinstance(x, Mapping) else {}


def _list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, str | bytes) else []


def _dicts(x: Any) -> list[dict[str, Any]]:
    return [dict(i) for i in _list(x) if isinstance(i, Mapping)]


def _steps(seg: Mapping[str, Any], sep: str = "..") -> str:
    return f"{_opt(seg.get('start'), '?')}{sep}{_opt(seg.get('end'), '?')}"


def _losses(report: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``(step, loss)`` pairs with both parts finite numbers, in step order."""
    pts = []
    for item in _list(report.get("losses")):
        pair = _list(item)
        if len(pair) >= 2 and _is_num(pair[0]) and _is_num(pair[1]):
            pts.append((float(pair[0]), float(pair[1])))
    return sorted(pts)


def _detection(replay: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``(fraction, probability)`` from ``detection_probability``, by fraction."""
    out = []
    for k, v in _dict(replay.get("detection_probability")).items():
        try:
            f = float(k)
        except ValueError:
            continue
        if _is_num(v) and math.isfinite(f):
            out.append((f, float(v)))
    return sorted(out)


def _seconds(x: Any) -> str:
    return f"{x:.2f}" if _is_num(x) else "—"


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


def _detection_sentence(replay: Mapping[str, Any], arrow: str = "→") -> str | None:
    probs = _detection(replay)
    if not probs:
        return None
    parts = ", ".join(f"f={_pct(f)} {arrow} {_pct(p)}" for f, p in probs)
    steps = replay.get("steps_drawn")
    r = steps if _is_num(steps) else replay.get("samples")
    unit = "steps drawn" if _is_num(steps) else "sampled segments"
    tail = f" (1 − (1 − f)^R with R = {_num(r)} {unit})" if _is_num(r) else ""
    if arrow != "→":
        tail = tail.replace("−", "-")
    what = "steps" if _is_num(steps) else "segments"
    return (f"A forger of a fraction f of the {what} is caught with probability "
            f"{parts}{tail}.")


def _model_sentence(report: Mapping[str, Any]) -> str | None:
    """What the report says about the final model: the certified weights hash and the
    evidence object holding it (certified only by a passing audit)."""
    m = _dict(report.get("model"))
    if not m:
        return None
    if not m.get("certified"):
        return "no certified model: the run's final checkpoint does not certify one"
    alg = _clean(m.get("algorithm", "?"))
    what = (f"{alg} {_clean(m.get('weights_hash'))} (evidence objects/"
            f"{_clean(m.get('evidence'))}, step {_clean(m.get('step'))})")
    f = _dict(m.get("file"))
    if f:
        what += (f"; model file {_clean(f.get('path'))} "
                 + ("matches" if f.get("match") else "DOES NOT match"))
    if _verdict(report) == "pass":
        return f"certified model {what}"
    return f"model named by the run {what}, not certified (verdict {_verdict(report)})"


def _verdict(report: Mapping[str, Any]) -> str:
    v = report.get("verdict")
    return v if isinstance(v, str) and v in _VERDICT_STYLE else "unknown"


def _warnings(report: Mapping[str, Any]) -> list[str]:
    """The warnings a verdict carries: ``name: summary`` of every check that warned."""
    return [f"{_clean(c.get('name', '?'))}: {_clean(c.get('summary', ''))}"
            for c in _dicts(report.get("checks")) if _status(c) == "warn"]


def _banner(report: Mapping[str, Any]) -> str:
    """``PASS``, ``PASS with 2 warnings``, ``FAIL``, ``INCONCLUSIVE``: a pass never hides
    a warning (under the other verdicts the warnings are listed, not counted)."""
    verdict = _verdict(report)
    n = len(_warnings(report)) if verdict == "pass" else 0
    return verdict.upper() + (f" with {n} warning{'s' if n != 1 else ''}" if n else "")


def _policy_lines(report: Mapping[str, Any]) -> list[str]:
    """The header's policy and options: what the verdict was judged by."""
    pol, opt = _dict(report.get("policy")), _dict(report.get("options"))
    out = []
    if pol:
        ws = _list(pol.get("witnesses"))
        parts = [f"--max-abandoned {_opt(pol.get('max_abandoned'), '?')}",
                 f"--require-drand {'on' if pol.get('require_drand') else 'off'}",
                 f"witnesses {len(ws)}, quorum {_opt(pol.get('quorum'), '0')}",
                 f"--max-model-bytes {_opt(pol.get('max_model_bytes'), '?')}",
                 f"{_clean(pol.get('challenge', '?'))} challenge"]
        if pol.get("beacon_chain"):
            parts.append(f"drand chain {_clean(pol['beacon_chain'])[:16]}…")
        out.append("policy: " + ", ".join(parts))
    head = f"potd {_clean(report['potd_version'])}" if report.get("potd_version") else ""
    if opt:
        names = ("samples", "memorization_segments", "replay_mode", "tolerance", "workers",
                 "recipe", "evidence", "model", "beacon_url")
        shown = [f"--{k.replace('_', '-')} {_clean(opt[k])}" for k in names
                 if opt.get(k) is not None and opt.get(k) != ""]
        out.append((head + "; " if head else "") + "options: " + ", ".join(shown))
    elif head:
        out.append(head)
    return out


def _status(check: Mapping[str, Any]) -> str:
    s = check.get("status")
    return s if isinstance(s, str) and s in _STATUS_STYLE else "unknown"


def _distance_vs_tolerance(seg: Mapping[str, Any], mode: Any, le: str) -> str:
    d, t = seg.get("distance"), seg.get("tolerance")
    if not _is_num(d):
        return "—"
    if not _is_num(t):
        return f"{_num(d)} (exact)" if mode == "exact" else _num(d)
    return f"{_num(d)} {le if d <= t else '>'} {_num(t)}"


def segment_status(seg: Mapping[str, Any]) -> str:
    """The status of a replayed segment for its table row: a segment that could not be
    replayed (``unavailable``: evidence server gone, worker lost) is inconclusive, never
    shown as a mismatch."""
    if seg.get("match") is True:
        return "pass"
    return "inconclusive" if seg.get("unavailable") is True else "fail"


def _first_mismatch(seg: Mapping[str, Any]) -> str:
    if seg.get("error"):
        return f"error: {_clean(seg['error'])}"
    return _opt(seg.get("first_mismatch_step"))


def _sparkline(values: Sequence[float], width: int = 40) -> str:
    if not values:
        return ""
    if len(values) > width:  # bucket means, so long runs still fit on one line
        n = len(values)
        values = [sum(values[i * n // width:(i + 1) * n // width])
                  / max(1, (i + 1) * n // width - i * n // width) for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(_SPARKS[min(len(_SPARKS) - 1, int((v - lo) / span * len(_SPARKS)))]
                   for v in values)


# -- terminal ------------------------------------------------------------------------------


def render_terminal(report: dict[str, Any], console: Console | None = None) -> None:
    """Print a summary of ``report``: verdict header, checks, replay, memorization, losses.

    Works on any console: without a TTY or with ``no_color`` the status symbols and words
    still carry the meaning; on a non-UTF-8 console ASCII symbols are used.
    """
    console = console or Console()
    utf = console.encoding.lower().replace("-", "").startswith("utf")
    sym = _SYMBOLS_UTF if utf else _SYMBOLS_ASCII
    dot = f" {sym['dot']} "

    def enc(text: str) -> str:
        """``text`` in the console's encoding (ASCII look-alikes, else backslash escapes)."""
        if utf:
            return text
        for a, b in (("—", "-"), ("−", "-"), ("→", "->"), ("≤", "<="), ("–", "-")):
            text = text.replace(a, b)
        codec = console.encoding or "ascii"
        return text.encode(codec, "backslashreplace").decode(codec)

    def txt(text: str = "", style: str = "") -> Text:
        return Text(enc(text), style=style)

    # header
    verdict = _verdict(report)
    log = _dict(report.get("log"))
    head = txt()
    head.append(enc(f" {_banner(report)} "), style=_VERDICT_STYLE.get(verdict, "bold reverse"))
    head.append(enc("  audit of run "))
    head.append(enc(_clean(report.get("run", "?"))), style="bold")
    head.append(enc(dot + "recipe "))
    head.append(enc(_clean(report.get("recipe", "?"))), style="bold")
    head.append(enc(dot + "log "))
    head.append(enc(_clean(log.get("origin", "?"))), style="bold")
    head.append(enc(f" at size {_opt(log.get('checkpoint_size'), '?')}"))
    console.print(head)
    if verdict in _VERDICT_MEANING:
        console.print(txt(f"{verdict}: {_VERDICT_MEANING[verdict]}", style="dim"))
    for w in _warnings(report):
        console.print(txt(f"{sym['warn']} warning: {w}", style="yellow"))
    model = _model_sentence(report)
    if model:
        console.print(txt(_clean(model), style="bold"))
    for policy in _policy_lines(report):
        console.print(txt(policy, style="dim"))
    sub = []
    if report.get("signer"):
        sub.append(f"signer {_clean(report['signer'])}")
    if report.get("generated_at"):
        sub.append(f"generated {_clean(report['generated_at'])}")
    if log.get("url"):
        sub.append(f"log url {_clean(log['url'])}")
    if sub:
        console.print(txt(dot.join(sub), style="dim"))

    # checks
    checks = _dicts(report.get("checks"))
    counts: dict[str, int] = {}
    for c in checks:
        counts[_status(c)] = counts.get(_status(c), 0) + 1
    console.print()
    console.print(txt(
        "Checks" + (" (" + dot.join(f"{n} {s}" for s, n in counts.items()) + ")"
                    if counts else ": none recorded"), style="bold"))
    if checks:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        t.add_column("check", no_wrap=True)
        t.add_column("status", no_wrap=True)
        t.add_column("summary", overflow="fold")
        for c in checks:
            s = _status(c)
            t.add_row(txt(_clean(c.get("name", "?"))),
                      txt(f"{sym.get(s, '?')} {s}", style=_STATUS_STYLE.get(s, "")),
                      txt(_clean(c.get("summary", ""))))
        console.print(t)

    # replay
    replay = _dict(report.get("replay"))
    segs = _dicts(replay.get("segments"))
    mode = replay.get("mode")
    console.print()
    if segs:
        total = replay.get("segments_total")
        desc = f"{len(segs)}" + (f" of {_num(total)}" if _is_num(total) else "") + " segments"
        extra = [desc]
        if mode:
            extra.append(f"{_clean(mode)} mode")
        challenge = _dict(replay.get("challenge"))
        if challenge.get("kind"):
            seed = f", seed {_clean(challenge['seed'])}" if challenge.get("seed") else ""
            extra.append(f"{_clean(challenge['kind'])} challenge{seed}")
        console.print(txt("Replay (" + dot.join(extra) + ")", style="bold"))
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        t.add_column("steps", no_wrap=True)
        t.add_column("match", no_wrap=True)
        t.add_column("first mismatch", overflow="fold")
        t.add_column(f"distance {sym['le']} tolerance", no_wrap=True)
        t.add_column("seconds", justify="right", no_wrap=True)
        for seg in segs:
            status = segment_status(seg)
            label = {"pass": "yes", "fail": "no"}.get(status, "not replayed")
            t.add_row(txt(_steps(seg)),
                      txt(f"{sym[status]} {label}", style=_STATUS_STYLE[status]),
                      txt(_first_mismatch(seg)),
                      txt(_distance_vs_tolerance(seg, mode, sym["le"])),
                      txt(_seconds(seg.get("seconds"))))
        console.print(t)
    else:
        console.print(txt("Replay: no segments replayed", style="bold"))
    sentence = _detection_sentence(replay, sym["arrow"]) if segs else None
    if sentence:
        console.print(txt(sentence if utf else sentence.replace("−", "-")))

    # memorization
    mem = _dict(report.get("memorization"))
    msegs = _dicts(mem.get("segments"))
    console.print()
    if msegs:
        flagged = [s for s in msegs if s.get("flagged") is True]
        line = txt(f"Memorization: {len(flagged)} of {len(msegs)} segments flagged",
                    style="bold")
        if flagged:
            line.append(enc(" (" + ", ".join(_steps(s) for s in flagged) + ")"), style="red")
        console.print(line)
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in ("steps", "train drop", "held-out drop", "statistic", "z", "flagged"):
            t.add_column(col, no_wrap=True, justify="left" if col == "steps" else "right")
        for ms in msegs:
            fl = ms.get("flagged") is True
            t.add_row(txt(_steps(ms)), txt(_opt(ms.get("train_drop"))),
                      txt(_opt(ms.get("heldout_drop"))), txt(_opt(ms.get("statistic"))),
                      txt(_opt(ms.get("z"))),
                      txt(f"{sym['warn']} yes" if fl else "no", style="yellow" if fl else ""))
        console.print(t)
        if mem.get("note"):
            console.print(txt(f"note: {_clean(mem['note'])}", style="dim"))
    else:
        console.print(txt("Memorization: no segments tested", style="bold"))

    # losses and timing
    pts = _losses(report)
    if pts:
        line = txt(f"Losses: {len(pts)} steps, {_num(pts[0][1])} at step {_num(pts[0][0])} "
                    f"{sym['arrow']} {_num(pts[-1][1])} at step {_num(pts[-1][0])}")
        if utf:
            line.append(enc("  " + _sparkline([p[1] for p in pts])), style="cyan")
        console.print(line)
    else:
        console.print(txt("Losses: none recorded"))
    timing = _dict(report.get("timing"))
    names = {"total_seconds": "total", "replay_seconds": "replay",
             "train_seconds_committed": "committed training"}
    parts = [f"{names.get(k, _clean(k))} {_num(v)} s" for k, v in timing.items() if _is_num(v)]
    if parts:
        console.print(txt("Timing: " + dot.join(parts), style="dim"))

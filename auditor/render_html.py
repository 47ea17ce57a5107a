"""The HTML rendering of an audit report (``potd-audit-report-v1``): :func:`render_html`
builds one self-contained page (inline CSS, plots as inline SVG, no JavaScript, no
external resources), :func:`write_html` saves it, :func:`plot_images` gives the plots
alone. The terminal rendering and the helpers both share are in :mod:`auditor.render`.

Nothing from the report is trusted as markup (every string may come from the audited
party): values are cleaned as for the terminal (control and format characters shown as
``\\xNN``), then :func:`html.escape`d; plots contain only numbers; and the page carries
a Content-Security-Policy that forbids scripts as a second line of defence.

matplotlib is imported lazily and drives the Agg canvas directly, without pyplot or
global backend state. When it is not installed the page says so instead of showing plots.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .jsonout import report_json
from .render import (
    _AMBER,
    _BLUE,
    _GREEN,
    _GREY,
    _RED,
    _banner,
    _clean,
    _detection_sentence,
    _dict,
    _dicts,
    _e,
    _first_mismatch,
    _is_num,
    _list,
    _losses,
    _model_sentence,
    _num,
    _opt,
    _policy_lines,
    _seconds,
    _status,
    _steps,
    _verdict,
    _warnings,
    segment_status,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_images", "render_html", "write_html"]

# -- plots ---------------------------------------------------------------------------------


def _style_axes(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="y", color="#e0e0e0", linewidth=0.8)
    ax.set_axisbelow(True)


def _segment_ticks(ax: Any, labels: list[str], colours: list[str] | None = None) -> None:
    n = len(labels)
    every = max(1, math.ceil(n / 24))
    idx = list(range(0, n, every))
    ax.set_xticks(idx)
    ax.set_xticklabels([labels[i] for i in idx], rotation=0 if n <= 8 else 45,
                       ha="center" if n <= 8 else "right")
    if colours:
        for tick, i in zip(ax.get_xticklabels(), idx, strict=True):
            tick.set_color(colours[i])
            if colours[i] != "black":
                tick.set_fontweight("bold")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("segment (steps)")


def _legend(ax: Any, handles: list[Any]) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize="small", borderaxespad=0)


def _bar_width(n: int, full: float = 0.7) -> float:
    """Bars stay slim when there are only a few segments."""
    return min(full, 0.12 * n + 0.1) if n < 5 else full


def _new_figure(height: float = 3.2) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _loss_figure(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pts = _losses(report)
    if not pts:
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    handles: list[Any] = []
    spans: dict[str, bool] = {}
    failing: list[tuple[float, float]] = []
    for seg in _dicts(_dict(report.get("replay")).get("segments")):
        a, b = seg.get("start"), seg.get("end")
        if not (_is_num(a) and _is_num(b)):
            continue
        ok = seg.get("match") is True
        if not ok:
            failing.append((float(a), float(b)))
        ax.axvspan(a - 0.5, b + 0.5, color=_GREEN if ok else _RED, alpha=0.13 if ok else 0.22,
                   linewidth=0, zorder=0)
        spans["match" if ok else "mismatch"] = True
        m = seg.get("first_mismatch_step")
        if not ok and _is_num(m):
            ax.axvline(m, color=_RED, linewidth=1.6, linestyle="--", zorder=3)
            spans["first"] = True
    ax.plot(xs, ys, color=_BLUE, linewidth=1.6, zorder=2,
            marker="o" if len(xs) <= 60 else None, markersize=3.5)
    handles.append(Line2D([], [], color=_BLUE, linewidth=1.6, label="committed loss"))
    # the committed losses inside failing segments, drawn over the curve in red
    red = [(x, y) for x, y in pts if any(a <= x <= b for a, b in failing)]
    if red:
        ax.plot([p[0] for p in red], [p[1] for p in red], linestyle="none", marker="o",
                markersize=3.5, color=_RED, zorder=4)
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=3.5,
                              color=_RED, label="loss in a failing segment"))
    if spans.get("match"):
        handles.append(Patch(color=_GREEN, alpha=0.25, label="replayed: matches"))
    if spans.get("mismatch"):
        handles.append(Patch(color=_RED, alpha=0.35, label="replayed: differs"))
    if spans.get("first"):
        handles.append(Line2D([], [], color=_RED, linestyle="--", label="first mismatch"))
    lo, hi = min(ys), max(ys)
    if lo > 0 and hi / lo > 30:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss as committed in the log, with the replayed segments",
                 loc="left", fontsize="medium")
    _legend(ax, handles)
    _style_axes(ax)
    return fig


def _replay_figure(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    replay = _dict(report.get("replay"))
    segs = _dicts(replay.get("segments"))
    if not segs:
        return None
    n = len(segs)
    labels = [_steps(s, "–") for s in segs]
    ok = [s.get("match") is True for s in segs]
    colours = [_GREEN if m else _RED for m in ok]
    dists = [s.get("distance") for s in segs]
    tols = [s.get("tolerance") for s in segs]
    exact = replay.get("mode") == "exact" or not any(_is_num(t) and t > 0 for t in tols)
    vertical = n > 10
    fig = _new_figure(2.4 if exact and not vertical else 3.2)
    ax = fig.add_subplot()
    width = _bar_width(n)
    if exact:
        ax.bar(range(n), [1] * n, color=colours, width=width)
        for i, s in enumerate(segs):
            if s.get("error"):
                txt = "error"
            elif ok[i]:
                txt = "match"
            else:
                m = s.get("first_mismatch_step")
                txt = f"differs\nfrom step {_num(m)}" if _is_num(m) else "differs"
                d = dists[i]
                if _is_num(d) and d > 0:
                    txt += f"\nd = {_num(d)}"
            ax.text(i, 0.5, txt, ha="center", va="center", color="white", fontweight="bold",
                    fontsize="small" if n <= 16 else "x-small",
                    rotation=90 if vertical else 0)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.spines[["left"]].set_visible(False)
        ax.set_title("Replay (exact mode): does each replayed segment reproduce the committed "
                     "weights bit for bit?", loc="left", fontsize="medium")
    else:
        positive = [float(x) for x in dists + tols if _is_num(x) and x > 0]
        floor = min(positive) / 10 if positive else 1e-12
        heights = [float(d) if _is_num(d) and d > 0 else floor for d in dists]
        ax.bar(range(n), heights, color=colours, width=width)
        for i, t in enumerate(tols):
            if _is_num(t):
                ax.hlines(t, i - width * 0.65, i + width * 0.65, color="black", linewidth=2,
                          zorder=3)
        for i, s in enumerate(segs):
            note = "error" if s.get("error") else "0" if _is_num(dists[i]) and dists[i] == 0 \
                else None
            if note:
                ax.text(i, floor * 1.3, note, ha="center", va="bottom", fontsize="small")
        ax.set_yscale("log")
        ax.set_ylabel("relative distance")
        ax.set_title("Replay: distance of the replayed weights from the committed ones, "
                     "against the tolerance", loc="left", fontsize="medium")
        _legend(ax, [Patch(color=_GREEN, label="within tolerance"),
                     Patch(color=_RED, label="exceeds tolerance\nor error"),
                     Line2D([], [], color="black", linewidth=2, label="tolerance")])
        _style_axes(ax)
        ax.spines[["top", "right"]].set_visible(False)
    if exact:
        ax.spines[["top", "right"]].set_visible(False)
    _segment_ticks(ax, labels, [c if c == _RED else "black" for c in colours])
    return fig


def _memorization_figure(report: Mapping[str, Any]) -> Figure | None:
    from matplotlib.patches import Patch

    segs = _dicts(_dict(report.get("memorization")).get("segments"))
    if not segs:
        return None
    n = len(segs)
    fig = _new_figure(3.0)
    ax = fig.add_subplot()
    train = [float(s["train_drop"]) if _is_num(s.get("train_drop")) else 0.0 for s in segs]
    held = [float(s["heldout_drop"]) if _is_num(s.get("heldout_drop")) else 0.0 for s in segs]
    flagged = [s.get("flagged") is True for s in segs]
    w = _bar_width(n, 0.72) / 2
    for i, f in enumerate(flagged):
        if f:
            ax.axvspan(i - w - 0.1, i + w + 0.1, color=_AMBER, alpha=0.25, linewidth=0, zorder=0)
    ax.bar([i - w / 2 for i in range(n)], train, width=w, color=_BLUE, zorder=2)
    ax.bar([i + w / 2 for i in range(n)], held, width=w, color=_GREY, zorder=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("loss drop over segment")
    ax.set_title("Memorization: loss drop on the segment's own examples vs. held-out examples",
                 loc="left", fontsize="medium")
    handles = [Patch(color=_BLUE, label="own (train) examples"),
               Patch(color=_GREY, label="held-out examples")]
    if any(flagged):
        handles.append(Patch(color=_AMBER, alpha=0.5, label="flagged: no learning signal"))
    _legend(ax, handles)
    top = max([*train, *held, 0.0])
    bottom = min([*train, *held, 0.0])
    pad = (top - bottom or 1.0) * 0.3
    ax.set_ylim(bottom - (pad * 0.3 if bottom < 0 else 0), top + pad)
    _style_axes(ax)
    _segment_ticks(ax, [_steps(s, "–") for s in segs],
                   ["#b26a00" if f else "black" for f in flagged])
    return fig


_PLOTS = (("loss", _loss_figure), ("replay", _replay_figure),
          ("memorization", _memorization_figure))


def plot_images(report: dict[str, Any], fmt: Literal["svg", "png"] = "svg") -> dict[str, bytes]:
    """The report's plots as image bytes, keyed ``loss`` / ``replay`` / ``memorization``.

    A plot without data (no losses, no replayed or tested segments) is left out. Raises
    ``ImportError`` when matplotlib is not installed.
    """
    import io

    import matplotlib

    out: dict[str, bytes] = {}
    for key, make in _PLOTS:
        # a fixed hash salt makes the SVG ids (and so the page) deterministic
        with matplotlib.rc_context({"svg.hashsalt": f"potd-{key}", "svg.fonttype": "path",
                                    "font.size": 9.5}):
            fig = make(report)
            if fig is None:
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, facecolor="white",
                        metadata={"Date": None} if fmt == "svg" else {"Software": None})
        out[key] = buf.getvalue()
    return out


_SVG_SIZE = re.compile(r'\s(?:width|height)="[^"]*"')


_SVG_ID = re.compile(r'(\bid="|href="#|url\(#)([^"\)]+)')


def _inline_svg(svg: bytes, key: str, label: str) -> str:
    """matplotlib's SVG document as an element to inline in HTML5 (scaling with the page).

    Its ids (glyphs, clip paths, markers) get the prefix ``key-`` so that several plots
    on one page cannot collide.
    """
    text = _SVG_ID.sub(lambda m: f"{m.group(1)}{key}-{m.group(2)}", svg.decode("utf-8"))
    start = text.index("<svg")
    end = text.index(">", start)
    tag = _SVG_SIZE.sub("", text[start:end])
    return (f'{tag} class="plot" role="img" aria-label="{_e(label)}"'
            + text[end:].rstrip())


# -- HTML ----------------------------------------------------------------------------------

_CSS = """
:root { --green: #2e7d32; --red: #c62828; --amber: #f9a825; --grey: #757575; }
* { box-sizing: border-box; }
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #212121; background: #fafafa; margin: 0; }
main, .wrap { max-width: 1100px; margin: 0 auto; padding: 0 20px 40px; }
.wrap { padding-bottom: 0; }
.banner { padding: 18px 24px; color: white; margin-bottom: 20px; }
.banner h1 { margin: 0; font-size: 26px; letter-spacing: 0.02em; }
.banner p { margin: 4px 0 0; opacity: 0.95; }
.v-pass { background: var(--green); } .v-fail { background: var(--red); }
.v-inconclusive { background: var(--amber); color: #212121; }
.v-unknown { background: var(--grey); }
section { background: white; border: 1px solid #e0e0e0; border-radius: 6px;
          padding: 14px 20px; margin: 16px 0; }
h2 { font-size: 18px; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { font-weight: 600; color: #555; border-bottom: 2px solid #ddd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta th { width: 190px; border: none; font-weight: 500; }
.meta td { border: none; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
                   font-size: 13px; overflow-wrap: anywhere; }
pre { background: #f5f5f5; padding: 8px 10px; border-radius: 4px; white-space: pre-wrap;
      margin: 6px 0; max-height: 400px; overflow: auto; }
details summary { cursor: pointer; color: #1565c0; font-size: 13px; }
.pill { display: inline-block; min-width: 64px; padding: 1px 8px; border-radius: 10px;
        font-size: 13px; font-weight: 600; text-align: center; }
.s-pass { background: #e8f5e9; color: var(--green); }
.s-fail { background: #ffebee; color: var(--red); }
.s-warn { background: #fff8e1; color: #8d6e00; }
.s-inconclusive { background: #fff3cd; color: #6d4c00; }
.s-skip, .s-unknown { background: #eeeeee; color: var(--grey); }
tr.bad td { background: #fff5f5; } tr.flag td { background: #fffbea; }
.note { color: #666; font-size: 14px; }
.detect { margin: 10px 0 4px; }
svg.plot { width: 100%; height: auto; display: block; margin: 8px 0; }
footer { color: #888; font-size: 12px; text-align: center; }
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _pill(status: str, text: str | None = None) -> str:
    return f'<span class="pill s-{_e(status)}">{_e(text or status)}</span>'


def _meta_rows(report: Mapping[str, Any]) -> str:
    log = _dict(report.get("log"))
    replay = _dict(report.get("replay"))
    timing = _dict(report.get("timing"))
    challenge = _dict(replay.get("challenge"))
    rows: list[tuple[str, Any, bool]] = [
        ("run", report.get("run"), True), ("recipe", report.get("recipe"), False),
        ("signer", report.get("signer"), True),
        ("generated at", report.get("generated_at"), False),
        ("log origin", log.get("origin"), False), ("log url", log.get("url"), True),
        ("checkpoint size", log.get("checkpoint_size"), False),
        ("checkpoint root", log.get("checkpoint_root"), True),
    ]
    if "witnesses" in log:
        rows.append(("witnesses", len(_list(log.get("witnesses"))), False))
    model = _dict(report.get("model"))
    if model.get("certified"):
        rows.append(("model weights hash", f"{_clean(model.get('algorithm', '?'))} "
                     f"{_clean(model.get('weights_hash'))}", True))
        rows.append(("model evidence", f"objects/{_clean(model.get('evidence'))}", True))
    if replay.get("mode"):
        rows.append(("replay mode", replay.get("mode"), False))
    if challenge:
        kind = challenge.get("kind")
        seed = challenge.get("seed")
        rows.append(("challenge", f"{_clean(kind or '?')}" + (f", seed {_clean(seed)}"
                                                               if seed else ""), True))
    cal = _dict(report.get("calibration"))
    if cal:
        rows.append(("tolerance calibration",
                     f"noise {_opt(cal.get('noise'))}, tolerance {_opt(cal.get('tolerance'))}"
                     + (f" ({_clean(cal['method'])})" if cal.get("method") else "")
                     + (f"; {_clean(cal['reason'])}" if cal.get("reason") else ""), False))
    if replay.get("mode_reason"):
        rows.append(("replay mode reason", replay.get("mode_reason"), False))
    for text in _policy_lines(report):
        policy = text.startswith("policy: ")
        rows.append(("policy" if policy else "version and options",
                     text.removeprefix("policy: "), False))
    names = {"total_seconds": "total", "replay_seconds": "replay",
             "train_seconds_committed": "committed training"}
    t = ", ".join(f"{names.get(k, _clean(k))} {_num(v)} s" for k, v in timing.items()
                  if _is_num(v))
    if t:
        rows.append(("timing", t, False))
    rows.append(("report format", report.get("format"), False))
    out = []
    for name, value, mono in rows:
        if value is None or value == "":
            continue
        cls = ' class="mono"' if mono else ""
        out.append(f"<tr><th>{_e(name)}</th><td{cls}>{_e(_num(value))}</td></tr>")
    return "\n".join(out)


def _checks_html(report: Mapping[str, Any]) -> str:
    checks = _dicts(report.get("checks"))
    if not checks:
        return '<p class="note">No checks recorded.</p>'
    rows = []
    for c in checks:
        s = _status(c)
        ev = c.get("evidence")
        if ev not in (None, {}, [], ""):
            dumped = report_json(ev, indent=2, ensure_ascii=False)
            ev_html = (f"<details><summary>evidence</summary><pre>{_e(dumped, True)}</pre>"
                       "</details>")
        else:
            ev_html = ""
        cls = ' class="bad"' if s == "fail" else ""
        rows.append(f"<tr{cls}><td><code>{_e(c.get('name', '?'))}</code></td>"
                    f"<td>{_pill(s)}</td><td>{_e(c.get('summary', ''))}{ev_html}</td></tr>")
    return ("<table><thead><tr><th>check</th><th>status</th><th>summary</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _replay_html(report: Mapping[str, Any], plot: str) -> str:
    replay = _dict(report.get("replay"))
    segs = _dicts(replay.get("segments"))
    if not segs:
        return '<p class="note">No segments were replayed.</p>'
    mode = replay.get("mode")
    total = replay.get("segments_total")
    intro = (f"{len(segs)}" + (f" of {_e(_num(total))}" if _is_num(total) else "")
             + " segments replayed" + (f" in <b>{_e(mode)}</b> mode" if mode else "") + ".")
    rows = []
    for s in segs:
        status = segment_status(s)
        label = {"pass": "match", "fail": "differs"}.get(status, "not replayed")
        cls = ' class="bad"' if status == "fail" else ""
        rows.append(
            f"<tr{cls}><td>{_e(_steps(s))}</td>"
            f"<td>{_pill(status, label)}</td>"
            f"<td>{_e(_first_mismatch(s))}</td>"
            f'<td class="num">{_e(_opt(s.get("distance")))}</td>'
            f'<td class="num">{_e(_opt(s.get("tolerance")))}</td>'
            f'<td class="num">{_e(_seconds(s.get("seconds")))}</td></tr>')
    sentence = _detection_sentence(replay)
    detect = f'<p class="detect">{_e(sentence)}</p>' if sentence else ""
    return (f"<p>{intro}</p>{detect}{plot}<table><thead><tr><th>steps</th><th>result</th>"
            '<th>first mismatch</th><th class="num">distance</th>'
            '<th class="num">tolerance</th><th class="num">seconds</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _memorization_html(report: Mapping[str, Any], plot: str) -> str:
    mem = _dict(report.get("memorization"))
    segs = _dicts(mem.get("segments"))
    if not segs:
        return '<p class="note">No segments were tested.</p>'
    flagged = [s for s in segs if s.get("flagged") is True]
    intro = f"<b>{len(flagged)}</b> of {len(segs)} tested segments flagged"
    if flagged:
        intro += " (steps " + ", ".join(_e(_steps(s)) for s in flagged) + ")"
    thr = mem.get("threshold_z")
    if _is_num(thr):
        intro += f"; a segment is flagged when z &lt; {_e(_num(thr))}"
    note = f'<p class="note">{_e(mem["note"])}</p>' if mem.get("note") else ""
    rows = []
    for s in segs:
        fl = s.get("flagged") is True
        cells = "".join(f'<td class="num">{_e(_opt(s.get(k)))}</td>'
                        for k in ("train_drop", "heldout_drop", "statistic", "z"))
        cls = ' class="flag"' if fl else ""
        rows.append(f"<tr{cls}><td>{_e(_steps(s))}</td>{cells}"
                    f"<td>{_pill('warn', 'flagged') if fl else _pill('pass', 'ok')}</td></tr>")
    return (f"<p>{intro}.</p>{note}{plot}<table><thead><tr><th>steps</th>"
            '<th class="num">train drop</th><th class="num">held-out drop</th>'
            '<th class="num">statistic</th><th class="num">z</th><th>flagged</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    verdict = _verdict(report)
    plot_note = ""
    try:
        images = plot_images(report, "svg")
    except ImportError:
        images = {}
        plot_note = '<p class="note">Plots unavailable: matplotlib is not installed.</p>'
    labels = {"loss": "training loss curve with replayed segments",
              "replay": "replay distance against tolerance per segment",
              "memorization": "memorization loss drops per segment"}
    plots = {k: _inline_svg(v, k, labels[k]) for k, v in images.items()}

    log = _dict(report.get("log"))
    pts = _losses(report)
    title = (f"potd audit: {_banner(report)} {_clean(report.get('recipe', '?'))} run "
             f"{_clean(report.get('run', '?'))}")
    counts: dict[str, int] = {}
    for c in _dicts(report.get("checks")):
        counts[_status(c)] = counts.get(_status(c), 0) + 1
    count_text = ", ".join(f"{n} {s}" for s, n in counts.items())
    if pts:
        loss_body = plots.get("loss", "") or plot_note
        loss_body += (f'<p class="note">{len(pts)} steps; loss {_e(_num(pts[0][1]))} at step '
                      f"{_e(_num(pts[0][0]))} → {_e(_num(pts[-1][1]))} at step "
                      f"{_e(_num(pts[-1][0]))}.</p>")
    else:
        loss_body = '<p class="note">No losses recorded.</p>'
    raw = report_json(report, indent=2, ensure_ascii=False)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header class="banner v-{verdict}">
<div class="wrap">
<h1>{_e(_banner(report))}</h1>
{"".join(f'<p class="warning">warning: {_e(w)}</p>' for w in _warnings(report))}
<p>Audit of run <code>{_e(report.get("run", "?"))}</code>, recipe <b>{_e(
        report.get("recipe", "?"))}</b>, log <b>{_e(log.get("origin", "?"))}</b> at size
{_e(_opt(log.get("checkpoint_size"), "?"))}.</p>
{"".join(f'<p class="policy">{_e(x)}</p>' for x in _policy_lines(report))}
{f'<p class="model mono">{_e(_model_sentence(report))}</p>' if _model_sentence(report) else ""}
</div>
</header>
<main>
<section><h2>Metadata</h2><table class="meta">{_meta_rows(report)}</table></section>
<section><h2>Checks{f" ({_e(count_text)})" if count_text else ""}</h2>
{_checks_html(report)}</section>
<section><h2>Replay</h2>{_replay_html(report, plots.get("replay", plot_note))}</section>
<section><h2>Training loss</h2>{loss_body}</section>
<section><h2>Memorization</h2>{_memorization_html(report, plots.get("memorization", plot_note))}
</section>
<section><details><summary>Full report (JSON)</summary><pre>{_e(raw, True)}</pre></details>
</section>
<footer>Generated by the potd auditor from a {_e(report.get("format", "?"))} report.</footer>
</main>
</body>
</html>
"""


def write_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_html` of ``report`` to ``path`` (UTF-8); returns the path."""
    p = Path(path)
    p.write_text(render_html(report), encoding="utf-8")
    return p

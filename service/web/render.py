"""HTML building blocks of the dashboard: the page layout, tables, metric formatting and the inline SVG charts.
Every value from the database or a user is escaped here (``esc``)."""
from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable

FORMATS = ("safetensors", "pt", "torchscript", "onnx")
METRIC_LABELS = {"latency_ms": "latency (ms)", "macs": "MACs", "params": "parameters",
                 "peak_memory_bytes": "peak memory (bytes)"}


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt_metric(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("accuracy", "predicted_accuracy") or key.startswith("measured_acc"):
        return f"{100 * float(v):.2f} %"
    if key == "latency_ms":
        return f"{float(v):.3f} ms"
    v = float(v)
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.2f} {unit}"
    return f"{v:g}"


def json_script(element_id: str, data: Any) -> str:
    """Data for the page's script, safe inside <script> (no '</' can close it)."""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def _inline_css() -> str:
    """The style sheet, inlined so that the first paint waits for no second request (4-5 kB)."""
    import os
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "app.css")) as f:
        return f.read()


CSS = _inline_css()
NAV = (("/", "Devices"), ("/ui/specialize", "Specialize"), ("/ui/jobs", "Jobs"), ("/ui/upload", "Upload"),
       ("/docs", "API docs"))


def layout(title: str, body: str, active: str = "/") -> str:
    nav = "".join(f'<a href="{h}"{" aria-current=page" if h == active else ""}>{esc(t)}</a>' for h, t in NAV)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} - OFA specialization</title>
<style>{CSS}</style><link rel="icon" href="/static/docs/favicon.png">
<script src="/static/web/app.js" defer></script></head>
<body><a class="skip" href="#main">Skip to content</a>
<header><strong class="brand">OFA specialization</strong><nav aria-label="main">{nav}</nav>
<label class="apikey">API key <input id="api-key" type="password" autocomplete="off" placeholder="for uploads"
 aria-describedby="api-key-help"></label><span id="api-key-help" class="sr-only">kept in this browser only;
 sent as X-API-Key with uploads</span></header>
<main id="main" tabindex="-1"><h1>{esc(title)}</h1>
{body}</main>
<div id="toast" role="status" aria-live="polite"></div></body></html>"""


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], caption: str = "", cls: str = "") -> str:
    """rows hold HTML already escaped by the caller."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def status_badge(status: str) -> str:
    return f'<span class="badge {esc(status)}">{esc(status)}</span>'


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t, out = math.ceil(lo / step) * step, []
    while t <= hi + 1e-12:
        out.append(t)
        t += step
    return out


def scatter_svg(points: list[dict[str, Any]], x: str, y: str = "accuracy", chart_id: str = "", w: int = 460,
                h: int = 300) -> str:
    """A Pareto front as inline SVG: one focusable point per sub-network (the script makes them clickable)."""
    pad_l, pad_r, pad_t, pad_b = 58, 14, 12, 42
    xs = [float(p[x]) for p in points]
    ys = [float(p[y]) for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    dx, dy = (x1 - x0) or abs(x0) or 1.0, (y1 - y0) or 0.01
    x0, x1, y0, y1 = x0 - 0.04 * dx, x1 + 0.04 * dx, y0 - 0.08 * dy, y1 + 0.08 * dy
    sx = lambda v: pad_l + (v - x0) / (x1 - x0) * (w - pad_l - pad_r)  # noqa: E731
    sy = lambda v: h - pad_b - (v - y0) / (y1 - y0) * (h - pad_t - pad_b)  # noqa: E731
    grid = []
    for t in _ticks(x0, x1):
        grid.append(f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{pad_t}" y2="{h - pad_b}"/>'
                    f'<text class="tick" x="{sx(t):.1f}" y="{h - pad_b + 16}" text-anchor="middle">'
                    f'{esc(fmt_metric(x, t).replace(" ms", ""))}</text>')
    for t in _ticks(y0, y1):
        grid.append(f'<line class="grid" x1="{pad_l}" x2="{w - pad_r}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                    f'<text class="tick" x="{pad_l - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{100 * t:.1f}</text>')
    order = sorted(range(len(points)), key=lambda i: xs[i])
    line = " ".join(f"{sx(xs[i]):.1f},{sy(ys[i]):.1f}" for i in order) if x == "latency_ms" else ""  # the front's axis
    dots = "".join(
        f'<circle class="pt" data-i="{i}" cx="{sx(xs[i]):.1f}" cy="{sy(ys[i]):.1f}" r="5" tabindex="0" role="button" '
        f'aria-label="sub-network {i + 1}: accuracy {esc(fmt_metric(y, ys[i]))}, {esc(METRIC_LABELS[x])} '
        f'{esc(fmt_metric(x, xs[i]))}"><title>{esc(fmt_metric(y, ys[i]))} at {esc(fmt_metric(x, xs[i]))}</title>'
        f'</circle>' for i in range(len(points)))
    label = f"predicted accuracy against {METRIC_LABELS[x]}"
    return (f'<figure class="chart"><svg id="{esc(chart_id)}" class="front" viewBox="0 0 {w} {h}" role="group" '
            f'aria-label="{esc(label)}">{"".join(grid)}'
            f'<polyline class="frontline" points="{line}"/>{dots}'
            f'<text class="axis" x="{(w + pad_l) / 2}" y="{h - 6}" text-anchor="middle">{esc(METRIC_LABELS[x])}</text>'
            f'<text class="axis" transform="translate(14 {(h - pad_b) / 2}) rotate(-90)" text-anchor="middle">'
            f'predicted accuracy (%)</text></svg><figcaption>{esc(label)}</figcaption></figure>')


def subnet_card(result: dict[str, Any], has_weights: bool, heading: str = "Result") -> str:
    """The chosen sub-network: metrics, configuration, downloads in every format and its net.config."""
    sid = result["subnet_id"]
    metrics = [("predicted accuracy", fmt_metric("accuracy", result.get("predicted_accuracy")))]
    metrics += [(METRIC_LABELS[k], fmt_metric(k, result.get(k if k != "latency_ms" else "predicted_latency_ms")))
                for k in METRIC_LABELS]
    metrics += [(k.replace("_", " "), fmt_metric(k, v) if k.startswith("measured_acc") else esc(v))
                for k, v in result.items()
                if k.startswith("measured") and v is not None and not isinstance(v, (dict, list))]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(a)}</dd></div>" for k, a in metrics)
    if result.get("bn_calibrated") is not None:
        dl += (f"<div><dt>BN statistics</dt><dd>{'recalibrated' if result['bn_calibrated'] else 'pending'}"
               f"</dd></div>")
    cfg = result.get("config", {})
    if has_weights:
        buttons = "".join(f'<a class="button dl" data-format="{f}" href="/subnets/{esc(sid)}/checkpoint?format={f}" '
                          f'download>{f}</a>' for f in FORMATS)
    else:
        buttons = ('<p class="note">This supernet has no weights loaded, so checkpoints cannot be cut '
                   '(the API answers 409 naming the file to configure).</p>')
    return f"""<section class="card" id="result-card" data-subnet="{esc(sid)}" aria-labelledby="card-h">
<h2 id="card-h">{esc(heading)}: sub-network <code>{esc(sid)}</code></h2>
<dl class="metrics">{dl}</dl>
<p><strong>resolution</strong> {esc(cfg.get("r"))} &middot; <strong>depths</strong> {esc(cfg.get("d"))}</p>
<details><summary>configuration (kernel sizes, expand ratios)</summary><pre>{esc(json.dumps(cfg))}</pre></details>
<div class="downloads" role="group" aria-label="downloads">{buttons}
<a class="button secondary" href="/subnets/{esc(sid)}/net.config" download>net.config</a>
<a class="button secondary" href="/subnets/{esc(sid)}">JSON</a></div></section>"""

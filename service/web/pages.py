"""Dashboard pages: devices, a device's front, the specialize form, jobs, uploads. Server-rendered from the same
services the API uses; the page script (static/app.js) talks to the JSON API for actions."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from service.db.session import SessionDep
from service.deps import StoreDep
from service.devices import repository as device_repo
from service.devices import service as device_service
from service.errors import DeviceNotFound
from service.jobs import service as job_service
from service.supernets.store import SupernetStore
from .render import METRIC_LABELS, esc, fmt_metric, json_script, layout, scatter_svg, status_badge, subnet_card, table

router = APIRouter(include_in_schema=False)
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _page(title: str, body: str, active: str = "/", status: int = 200) -> HTMLResponse:
    return HTMLResponse(layout(title, body, active), status_code=status,
                        headers={"Cache-Control": "no-store"})


def _not_found(what: str) -> HTMLResponse:
    return _page("Not found", f'<p class="error">{esc(what)}</p><p><a href="/">Back to the devices</a></p>',
                 status=404)


def agreement_text(prov: dict[str, Any]) -> str:
    """How well the table predicts whole networks, from whatever its provenance recorded."""
    check = (prov.get("environment") or {}).get("check") or prov.get("check")
    if isinstance(check, dict) and check.get("n"):
        return (f'{100 * check.get("share_within", 0):.0f}% within &plusmn;{100 * check.get("tolerance", 0.1):.0f}% '
                f'(n={int(check["n"])}, median error {100 * check.get("median_abs_rel_err", 0):.1f}%)')
    cv = prov.get("cv")
    if isinstance(cv, dict) and cv.get("n") and cv.get("share_within_10") is not None:
        return (f'{100 * cv["share_within_10"]:.0f}% within &plusmn;10% (cross-validated, n={int(cv["n"])}, '
                f'median error {100 * cv.get("median_abs_rel_err", 0):.1f}%)')
    if prov.get("mean_rel_error_after") is not None:
        return f'mean error {100 * float(prov["mean_rel_error_after"]):.1f}% after calibration (n={prov.get("n_timings")})'
    return '<span class="muted">not measured</span>'


def provenance_text(version) -> str:
    prov = version.provenance or {}
    bits = [esc(version.source)]
    if prov.get("imported_from"):
        bits.append(f'from <code>{esc(prov["imported_from"])}</code>')
    if prov.get("based_on_version"):
        bits.append(f'on v{esc(prov["based_on_version"])}')
    env = prov.get("environment") or {}
    if env.get("cpu") or env.get("processor"):
        bits.append(esc(env.get("cpu") or env.get("processor")))
    return " ".join(bits)


def _job_rows(jobs) -> list[list[str]]:
    rows = []
    for j in jobs:
        c = ", ".join(f"{esc(k)} &le; {esc(fmt_metric(k, v))}" for k, v in (j.request.get("constraints") or {}).items())
        res = j.result or {}
        rows.append([f'<a href="/ui/jobs/{esc(j.id)}"><code>{esc(j.id[:12])}</code></a>', status_badge(j.status),
                     f'<a href="/ui/devices/{esc(j.device.name)}">{esc(j.device.name)}</a>', c,
                     esc(fmt_metric("accuracy", res.get("predicted_accuracy"))), esc(j.source),
                     esc(j.created_at.strftime("%Y-%m-%d %H:%M:%S"))])
    return rows


JOB_HEADERS = ("job", "status", "device", "constraints", "predicted accuracy", "answered by", "created (UTC)")


@router.get("/", response_class=HTMLResponse)
def dashboard(s: SessionDep, store: StoreDep):
    devices, total = device_repo.list_devices(s, 0, 200, None, None, None)
    rows, known = [], device_repo.overview(s, devices)
    for d in devices:
        cur, n_points = known.get(d.id, (None, None))
        rows.append([f'<a href="/ui/devices/{esc(d.name)}">{esc(d.name)}</a>', esc(d.kind), esc(d.supernet.name),
                     f"v{d.current_version} &middot; " + (provenance_text(cur) if cur else "-"),
                     agreement_text(cur.provenance or {}) if cur else "-",
                     f"{n_points} points" if n_points is not None else '<span class="muted">computing</span>'])
    jobs, _ = job_service.list_jobs(s, 0, 8, None, None)
    sn = "".join(f"<li><code>{esc(n)}</code>: {'weights' if e.has_weights else 'no weights'}, "
                 f"{'predictor' if e.search_ready else 'no predictor'}</li>" for n, e in sorted(store.engines.items()))
    body = (f'<section aria-labelledby="dev-h"><h2 id="dev-h">Devices ({total})</h2>'
            + (table(("device", "kind", "supernet", "latency table", "calibration agreement", "Pareto front"), rows,
                     cls="devices") if rows else '<p>No devices yet: <a href="/ui/upload">upload a latency table</a>.</p>')
            + f'</section><section aria-labelledby="jobs-h"><h2 id="jobs-h">Recent jobs</h2>'
            + (table(JOB_HEADERS, _job_rows(jobs)) if jobs else "<p>No jobs yet.</p>")
            + f'<p><a class="button" href="/ui/specialize">Specialize a sub-network</a> <a href="/ui/jobs">all jobs</a>'
            + f'</p></section><section><h2>Supernets</h2><ul>{sn}</ul></section>')
    return _page("Dashboard", body, "/")


def _front_section(points: list[dict[str, Any]] | None, device: str, search_ready: bool, supernet: str) -> str:
    if not points and not search_ready:
        return (f'<p class="note" id="front-pending">Supernet <code>{esc(supernet)}</code> has no accuracy predictor, '
                f'so there is no front and no search yet: register one with <code>ofa register-predictor '
                f'{esc(supernet)} FILE</code> (a running service picks it up).</p>')
    if not points:
        return ('<p class="muted" id="front-pending">The Pareto front of this table is being computed by a worker; '
                'reload in a moment.</p>')
    return (f'<div class="charts">{scatter_svg(points, "latency_ms", chart_id="front-latency")}'
            f'{scatter_svg(points, "macs", chart_id="front-macs")}</div>'
            f'<p class="hint">Click or press Enter on a point to see that sub-network.</p>'
            f'{json_script("front-data", {"device": device, "points": points})}'
            f'<div id="point-card" aria-live="polite"></div>')


@router.get("/ui/devices/{name}", response_class=HTMLResponse)
def device_page(name: str, s: SessionDep, store: StoreDep):
    d = device_repo.get_by_name(s, name)
    if d is None:
        return _not_found(f"unknown device {name!r}")
    out = device_service.device_out(s, d, detail=True)
    versions = [[f"v{v.version}", esc(v.source), str(v.n_entries), esc(", ".join(map(str, v.resolutions))),
                 agreement_text(v.provenance or {}), f"<code>{esc(v.sha256[:12])}</code>",
                 f'<a href="/devices/{esc(name)}/latency-table?version={v.version}&amp;format=yaml">yaml</a> '
                 f'<a href="/devices/{esc(name)}/latency-table?version={v.version}&amp;format=json">json</a>']
                for v in reversed(out.versions or [])]
    body = (f'<p>{esc(d.description)}</p><p>kind <strong>{esc(d.kind)}</strong> &middot; supernet '
            f'<code>{esc(out.supernet)}</code> &middot; table version <strong>v{out.current_version}</strong> &middot; '
            f'<a href="/ui/specialize?device={esc(name)}">specialize for this device</a> &middot; '
            f'<a href="/ui/jobs?device={esc(name)}">its jobs</a></p>'
            f'<section aria-labelledby="front-h"><h2 id="front-h">Pareto front (table v{out.current_version})</h2>'
            f'{_front_section(out.pareto_front, name, _search_ready(store, out.supernet), out.supernet)}</section>'
            f'<section><h2>Table versions</h2>'
            + table(("version", "source", "operators", "resolutions", "calibration agreement", "sha256", "download"),
                    versions) + "</section>"
            + _timings_form(name))
    return _page(f"Device {name}", body, "/")


def _timings_form(device: str | None, devices: list[str] | None = None) -> str:
    pick = (f'<input type="hidden" name="device" value="{esc(device)}">' if device else
            '<label>device <select name="device" required>' + "".join(
                f'<option>{esc(n)}</option>' for n in devices or []) + "</select></label>")
    return f"""<section aria-labelledby="tim-h"><h2 id="tim-h">Calibrate from measured timings</h2>
<form id="timings-form" class="stack">{pick}
<p class="hint">JSON: <code>{{"timings": [{{"config": {{"ks": [...], "e": [...], "d": [...], "r": 32}},
"latency_ms": 1.9}}, ...]}}</code>, whole networks timed on the device.</p>
<p class="hint">Which sub-networks to time: {'<a href="/devices/' + esc(device) + '/timings/suggest">suggestions</a>'
 if device else "<code>GET /devices/NAME/timings/suggest</code>"}.</p>
<label>timings file <input type="file" name="file" accept=".json,application/json"></label>
<label>or paste them <textarea name="text" rows="4" spellcheck="false"></textarea></label>
<button type="submit">Post timings</button><output name="result" aria-live="polite"></output></form></section>"""


@router.get("/ui/specialize", response_class=HTMLResponse)
def specialize_page(s: SessionDep, store: StoreDep, device: str | None = None):
    devices, _ = device_repo.list_devices(s, 0, 500, None, None, None)
    opts = "".join(f'<option value="{esc(d.name)}"{" selected" if d.name == device else ""}>{esc(d.name)} '
                   f'({esc(d.supernet.name)})</option>' for d in devices)
    rows = "".join(
        f'<fieldset class="constraint"><legend>{esc(label)}</legend>'
        f'<label>budget <input name="{k}" inputmode="decimal" {"value=1.5" if k == "latency_ms" else ""} '
        f'aria-describedby="mode-help"></label>'
        f'<label>meaning <select name="{k}_mode"><option value="times_min">times the smallest achievable</option>'
        f'<option value="fraction_of_range">fraction of the range (0-1)</option>'
        f'<option value="absolute">absolute value</option></select></label></fieldset>'
        for k, label in METRIC_LABELS.items())
    body = f"""<form id="specialize-form" class="stack" novalidate>
<label>device <select name="device" required>{opts}</select></label>
<p id="mode-help" class="hint">Leave a budget empty to not constrain it. Relative budgets fit any device:
<code>times_min</code> 1.5 means 1.5&times; the fastest (smallest) sub-network; <code>fraction_of_range</code> 0.3 means
30% of the way from the smallest to the largest sub-network.</p>
<div class="constraints">{rows}</div>
<label>accuracy floor (0-1, optional: then the fastest sub-network reaching it) <input name="accuracy_floor"
 inputmode="decimal"></label>
<details><summary>search options</summary><div class="row">
<label>population <input name="population" type="number" min="4" max="1000" placeholder="default"></label>
<label>generations <input name="generations" type="number" min="1" max="2000" placeholder="default"></label>
<label>seed <input name="seed" type="number" min="0" value="0"></label>
<label><input name="use_pareto" type="checkbox" checked> answer from the stored front when it can</label>
</div></details>
<button type="submit">Specialize</button><output name="result" aria-live="polite"></output></form>"""
    return _page("Specialize", body, "/ui/specialize")


@router.get("/ui/jobs", response_class=HTMLResponse)
def jobs_page(s: SessionDep, status: str | None = Query(None), device: str | None = None,
              offset: int = Query(0, ge=0, le=1_000_000)):
    status = status if status in STATUSES else None
    try:
        jobs, total = job_service.list_jobs(s, offset, 50, status, device)
    except DeviceNotFound as e:
        return _not_found(e.message)
    dev = f"&amp;device={esc(device)}" if device else ""
    links = " ".join(f'<a href="/ui/jobs?status={st}{dev}"{" aria-current=true" if st == status else ""}>{st}</a>'
                     for st in STATUSES)
    more = (f'<p><a href="/ui/jobs?offset={offset + 50}{"&amp;status=" + status if status else ""}{dev}">older</a></p>'
            if offset + 50 < total else "")
    scope = f' of <a href="/ui/devices/{esc(device)}">{esc(device)}</a>' if device else ""
    body = (f'<p>jobs{scope}; filter: <a href="/ui/jobs?{dev[5:]}">all</a> {links}</p>'
            + (table(JOB_HEADERS, _job_rows(jobs), caption=f"{total} jobs") if jobs else "<p>No jobs.</p>") + more)
    return _page("Jobs", body, "/ui/jobs")


def _error_words(err: dict[str, Any] | None) -> str:
    if not err:
        return ""
    return f'<p class="error" role="alert"><strong>{esc(err.get("code"))}</strong>: {esc(err.get("message"))}</p>'


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, s: SessionDep, store: StoreDep):
    from service.jobs import repository as job_repo
    job = job_repo.get(s, job_id)
    if job is None:
        return _not_found(f"unknown job {job_id!r}")
    out = job_service.job_out(job)
    req = out.request
    cons = ", ".join(f"{esc(k)} &le; {esc(fmt_metric(k, v))}" for k, v in (req.get("constraints") or {}).items())
    rel = req.get("relative_constraints")
    rel_txt = f" (asked as {esc(json.dumps(rel))})" if rel else ""
    floor = req.get("accuracy_floor")
    done = out.status in ("succeeded", "failed", "cancelled")
    card = subnet_card(out.result.model_dump(), _has_weights(store, out.supernet)) if out.result else ""
    body = f"""<p>{status_badge(out.status)} on <a href="/ui/devices/{esc(out.device)}">{esc(out.device)}</a>
(table v{out.table_version}, supernet <code>{esc(out.supernet)}</code>), answered by <strong>{esc(out.source)}</strong></p>
<section aria-labelledby="req-h"><h2 id="req-h">Request</h2><p>{cons}{rel_txt}
{f" &middot; accuracy floor {esc(fmt_metric('accuracy', floor))}" if floor is not None else ""}
&middot; options {esc(json.dumps(req.get("options")))}</p></section>
<section aria-labelledby="prog-h"><h2 id="prog-h">Progress</h2>
<label>generation <span id="gen">{out.generation}</span> / {out.generations}
<progress id="job-progress" max="1" value="{out.progress:.4f}">{100 * out.progress:.0f}%</progress></label>
<figure class="chart small"><svg id="progress-chart" viewBox="0 0 460 160" role="img"
 aria-label="best predicted accuracy per generation"><polyline class="frontline" points=""/></svg>
<figcaption>best predicted accuracy per generation <span id="best-acc"></span></figcaption></figure></section>
{"" if done else '<p><button id="cancel-job" type="button" class="secondary">Cancel this job</button></p>'}
<div id="job-outcome" aria-live="polite">{card}{_error_words(out.error)}</div>
{json_script("job-data", {"id": out.id, "status": out.status, "done": done})}"""
    return _page(f"Job {job_id[:12]}", body, "/ui/jobs")


def _search_ready(store: SupernetStore, name: str) -> bool:
    try:
        return store.get(name).search_ready       # get(): also picks up a predictor registered meanwhile
    except Exception:
        return False


def _has_weights(store: SupernetStore, name: str) -> bool:
    eng = store.engines.get(name)
    return bool(eng and eng.has_weights)


@router.get("/ui/jobs/{job_id}/card", response_class=HTMLResponse)
def job_card(job_id: str, s: SessionDep, store: StoreDep, heading: str = "Result"):
    """The result card (or the error in words) of a job, for the page script to insert."""
    from service.jobs import repository as job_repo
    job = job_repo.get(s, job_id)
    if job is None:
        return HTMLResponse(f'<p class="error">unknown job {esc(job_id)}</p>', status_code=404)
    out = job_service.job_out(job)
    if out.result:
        return HTMLResponse(subnet_card(out.result.model_dump(), _has_weights(store, out.supernet), heading[:40]))
    return HTMLResponse(_error_words(out.error) or f"<p>{status_badge(out.status)}</p>")


@router.get("/ui/upload", response_class=HTMLResponse)
def upload_page(s: SessionDep, store: StoreDep):
    devices, _ = device_repo.list_devices(s, 0, 500, None, None, None)
    sn = "".join(f'<option>{esc(n)}</option>' for n in sorted(store.engines))
    body = f"""<p class="hint">Writes need an API key (<code>ofa create-api-key</code>): enter it in the header field.</p>
<section aria-labelledby="up-h"><h2 id="up-h">Upload a device's latency table</h2>
<form id="upload-form" class="stack">
<label>device name <input name="name" required pattern="[^/?#% ]{{1,128}}"></label>
<label>supernet <select name="supernet">{sn}</select></label>
<label>description <input name="description"></label>
<label>table files (one <code>&lt;r&gt;_lookup_table.yaml</code> per resolution, or one JSON)
<input type="file" name="file" multiple required accept=".yaml,.yml,.json"></label>
<label><input type="checkbox" name="new_version"> the device exists: upload a new table version</label>
<button type="submit">Upload</button><output name="result" aria-live="polite"></output></form></section>
{_timings_form(None, [d.name for d in devices])}"""
    return _page("Upload", body, "/ui/upload")

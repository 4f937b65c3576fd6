// OFA dashboard: a small hand-written script. Talks to the JSON API; no dependencies, nothing from a CDN.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const KEY = "ofa-api-key";

  function toast(msg, isError) {
    const t = $("#toast");
    if (!t) return;
    t.textContent = msg;
    t.className = isError ? "show error" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, 6000);
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return `${resp.status} ${body.error.code}: ${body.error.message}`;
      return `${resp.status}: ${JSON.stringify(body)}`;
    } catch (e) {
      return `${resp.status} ${resp.statusText}`;
    }
  }

  function apiKey() { return (localStorage.getItem(KEY) || "").trim(); }
  function keyHeaders() { const k = apiKey(); return k ? { "X-API-Key": k } : {}; }

  function setupKey() {
    const input = $("#api-key");
    if (!input) return;
    input.value = apiKey();
    input.addEventListener("input", () => localStorage.setItem(KEY, input.value.trim()));
  }

  function say(form, msg, isError) {
    const out = form.querySelector("output");
    if (out) { out.innerHTML = ""; out.append(msg); out.className = isError ? "error" : "ok"; }
    if (isError) toast(typeof msg === "string" ? msg : msg.textContent, true);
  }

  function link(href, text) { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

  // -- a device's Pareto front: click a point to see that sub-network ----------------------------------
  function setupFront() {
    const data = $("#front-data");
    if (!data) return;
    const front = JSON.parse(data.textContent);
    const select = async (i) => {
      $$("circle.pt").forEach((c) => c.classList.toggle("selected", c.dataset.i === String(i)));
      const p = front.points[i];
      const card = $("#point-card");
      card.innerHTML = "<p>loading sub-network...</p>";
      const resp = await fetch("/specialize", {
        method: "POST", headers: { ...keyHeaders(), "content-type": "application/json" },
        body: JSON.stringify({ device: front.device, constraints: { latency_ms: p.latency_ms }, use_pareto: true }),
      });
      if (!resp.ok) { card.textContent = await errorText(resp); return; }
      const job = await resp.json();
      if (!job.result) {
        card.innerHTML = "";
        card.append("queued as a search: ", link(`/ui/jobs/${job.id}`, `job ${job.id.slice(0, 12)}`));
        return;
      }
      const html = await fetch(`/ui/jobs/${job.id}/card?heading=Selected point ${Number(i) + 1}`);
      card.innerHTML = await html.text();
      const h = card.querySelector("h2");
      if (h) { h.tabIndex = -1; h.focus(); }
    };
    $$("circle.pt").forEach((c) => {
      c.addEventListener("click", () => select(c.dataset.i));
      c.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(c.dataset.i); }
      });
    });
  }

  // -- specialize form -------------------------------------------------------------------------------
  function num(v) { const x = Number(String(v).trim()); return Number.isFinite(x) ? x : NaN; }

  function specializeBody(form) {
    const f = new FormData(form);
    const constraints = {};
    for (const k of ["latency_ms", "macs", "params", "peak_memory_bytes"]) {
      const raw = (f.get(k) || "").trim();
      if (!raw) continue;
      const v = num(raw);
      if (Number.isNaN(v)) throw new Error(`${k}: "${raw}" is not a number`);
      const mode = f.get(`${k}_mode`);
      constraints[k] = mode === "absolute" ? (k === "latency_ms" ? v : Math.round(v)) : { [mode]: v };
    }
    if (!Object.keys(constraints).length) throw new Error("give at least one budget");
    const body = { device: f.get("device"), constraints, use_pareto: f.get("use_pareto") === "on", options: {} };
    const floor = (f.get("accuracy_floor") || "").trim();
    if (floor) body.accuracy_floor = num(floor);
    for (const k of ["population", "generations", "seed"]) {
      const raw = (f.get(k) || "").trim();
      if (raw) body.options[k] = Math.round(num(raw));
    }
    return body;
  }

  function setupSpecialize() {
    const form = $("#specialize-form");
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      let body;
      try { body = specializeBody(form); } catch (err) { say(form, err.message, true); return; }
      const btn = form.querySelector("button[type=submit]");
      btn.disabled = true;
      say(form, "submitting...");
      try {
        const resp = await fetch("/specialize", {
          method: "POST", headers: { ...keyHeaders(), "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        if (!resp.ok) { say(form, await errorText(resp), true); return; }
        const job = await resp.json();
        sessionStorage.setItem("ofa-submitted-at", String(performance.timeOrigin + performance.now()));
        window.location.assign(`/ui/jobs/${job.id}`);
      } finally { btn.disabled = false; }
    });
  }

  // -- a job's page: live progress from the SSE stream, then the result card ---------------------------
  function drawProgress(svg, points) {
    if (!points.length) return;
    const W = 460, H = 160, P = 8;
    const gens = points.map((p) => p[0]), accs = points.map((p) => p[1]);
    const g0 = Math.min(...gens), g1 = Math.max(...gens, g0 + 1);
    let a0 = Math.min(...accs), a1 = Math.max(...accs);
    if (a1 - a0 < 1e-4) { a0 -= 0.005; a1 += 0.005; }
    const xy = points.map(([g, a]) => `${(P + (g - g0) / (g1 - g0) * (W - 2 * P)).toFixed(1)},` +
      `${(H - P - (a - a0) / (a1 - a0) * (H - 2 * P)).toFixed(1)}`);
    svg.querySelector("polyline").setAttribute("points", xy.join(" "));
    let labels = svg.querySelector("g.labels");
    if (!labels) {
      labels = document.createElementNS("http://www.w3.org/2000/svg", "g");
      labels.setAttribute("class", "labels");
      svg.append(labels);
    }
    const text = (x, y, s, anchor) => `<text class="lbl" x="${x}" y="${y}" text-anchor="${anchor}">${s}</text>`;
    labels.innerHTML = text(P + 2, P + 10, `${(100 * a1).toFixed(2)} %`, "start") +
      text(P + 2, H - P - 2, `${(100 * a0).toFixed(2)} %`, "start") +
      text(W - P, H - P - 2, `generation ${g1}`, "end");
  }

  function setupJob() {
    const data = $("#job-data");
    if (!data) return;
    const job = JSON.parse(data.textContent);
    const svg = $("#progress-chart"), bar = $("#job-progress"), gen = $("#gen"), best = $("#best-acc");
    const points = [];
    const finish = async (status) => {
      const c = $("#cancel-job");
      if (c) c.remove();
      const badge = $("main .badge");
      if (badge) { badge.textContent = status; badge.className = `badge ${status}`; }
      const resp = await fetch(`/ui/jobs/${job.id}/card`);
      $("#job-outcome").innerHTML = await resp.text();
      const t0 = Number(sessionStorage.getItem("ofa-submitted-at"));
      if (t0) {
        const ms = performance.timeOrigin + performance.now() - t0;
        document.body.dataset.submitToResultMs = ms.toFixed(0);
        sessionStorage.removeItem("ofa-submitted-at");
      }
      document.body.dataset.jobDone = status;
    };
    if (job.done) {
      document.body.dataset.jobDone = job.status;
      sessionStorage.removeItem("ofa-submitted-at");
      return;
    }
    const cancel = $("#cancel-job");
    if (cancel) {
      cancel.addEventListener("click", async () => {
        const resp = await fetch(`/jobs/${job.id}`, { method: "DELETE", headers: keyHeaders() });
        if (!resp.ok) toast(await errorText(resp), true);
        else toast("cancel requested");
      });
    }
    const es = new EventSource(`/jobs/${job.id}/events`);
    es.addEventListener("progress", (ev) => {
      const d = JSON.parse(ev.data);
      bar.value = d.progress;
      gen.textContent = d.generation;
      const acc = d.best_so_far && d.best_so_far.predicted_accuracy;
      if (acc != null) {
        points.push([d.generation, acc]);
        best.textContent = `(now ${(100 * acc).toFixed(2)} %)`;
        drawProgress(svg, points);
      }
    });
    for (const end of ["result", "failed", "cancelled"]) {
      es.addEventListener(end, (ev) => {
        es.close();
        bar.value = 1;
        finish(JSON.parse(ev.data).status);
      });
    }
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) toast("lost the progress stream; reload", true); };
  }

  // -- uploads: a device table, calibration timings ----------------------------------------------------
  function setupUpload() {
    const form = $("#upload-form");
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const name = (f.get("name") || "").trim();
      const put = f.get("new_version") === "on";
      const body = new FormData();
      for (const file of form.querySelector("input[type=file]").files) body.append("file", file, file.name);
      if (!put) { body.append("name", name); body.append("supernet", f.get("supernet")); }
      if (f.get("description")) body.append("description", f.get("description"));
      const url = put ? `/devices/${encodeURIComponent(name)}` : "/devices";
      const resp = await fetch(url, { method: put ? "PUT" : "POST", headers: keyHeaders(), body });
      if (!resp.ok) { say(form, await errorText(resp), true); return; }
      const d = await resp.json();
      const msg = document.createElement("span");
      msg.append(`device ${d.name}: table v${d.current_version} stored; `, link(`/ui/devices/${d.name}`, "open it"));
      say(form, msg);
    });
  }

  function setupTimings() {
    const form = $("#timings-form");
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const file = form.querySelector("input[type=file]").files[0];
      const text = file ? await file.text() : (f.get("text") || "").trim();
      if (!text) { say(form, "choose a timings file or paste them", true); return; }
      const device = f.get("device");
      const resp = await fetch(`/devices/${encodeURIComponent(device)}/timings`, {
        method: "POST", headers: { ...keyHeaders(), "content-type": "application/json" }, body: text,
      });
      if (!resp.ok) { say(form, await errorText(resp), true); return; }
      const d = await resp.json();
      const msg = document.createElement("span");
      msg.append(`calibrated: ${d.name} table v${d.current_version}; `, link(`/ui/devices/${d.name}`, "open it"));
      say(form, msg);
    });
  }

  // -- downloads: wait while the service recalibrates the sub-network's BN statistics (503 + Retry-After) --
  function setupDownloads() {
    document.addEventListener("click", async (e) => {
      const a = e.target.closest && e.target.closest("a.dl");
      if (!a || a.dataset.ready === "1") return;
      e.preventDefault();
      const deadline = Date.now() + 600000;
      a.setAttribute("aria-busy", "true");
      try {
        for (;;) {
          const resp = await fetch(a.href, { method: "HEAD" });
          if (resp.ok) break;
          const wait = Number(resp.headers.get("retry-after"));
          if (resp.status !== 503 || !wait || Date.now() > deadline) {
            toast(`download failed: ${resp.status} ${resp.statusText}`, true);
            return;
          }
          toast(`preparing the ${a.dataset.format} file (BN statistics are being recalibrated); retrying in ${wait} s`);
          await new Promise((r) => setTimeout(r, wait * 1000));
        }
      } finally { a.removeAttribute("aria-busy"); }
      a.dataset.ready = "1";
      a.click();
      delete a.dataset.ready;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupDownloads();
    setupKey(); setupFront(); setupSpecialize(); setupJob(); setupUpload(); setupTimings();
  });
})();

"""Dashboard benchmark on a live `ofa serve` (embedded default, real worker, loopback):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_dashboard.py [--devices 30] [--loads 15]

Prints, in one run, the server time (p50 over --loads requests on one keep-alive connection) of each dashboard
page beside the JSON endpoint that carries the same data (ratio page / JSON), and, when /usr/bin/chromium exists,
the browser's first contentful paint of the dashboard and of a device page (median of --loads loads) beside an
empty page's (the browser's own floor), and the first navigation of --fresh freshly started browsers (no cache,
no warm renderer; the first of them is the first page the server renders after its start): first paint and the
server's time to first byte, beside a fresh browser's first paint of an empty page. Goal: first paint <= 200 ms
locally.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "service"))

import httpx  # noqa: E402

from ofa_live import add_host_device, start_live, stop_live  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def p50_ms(client: httpx.Client, path: str, n: int) -> float:
    client.get(path).raise_for_status()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def paints(url: str, n: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright
    js = """() => { const e = performance.getEntriesByType('paint');
        const f = e.find(x => x.name === 'first-contentful-paint') || e[0]; return f ? f.startTime : -1; }"""
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = b.new_page(viewport={"width": 1366, "height": 900})
        for name, target in (("empty page", "data:text/html,<p>x</p>"), ("dashboard /", url + "/"),
                             ("device page", url + "/ui/devices/host-cpu"), ("jobs page", url + "/ui/jobs")):
            vals = []
            for _ in range(n):
                page.goto(target)
                page.wait_for_function("performance.getEntriesByType('paint').length > 0")
                vals.append(page.evaluate(js))
            out[name] = statistics.median(vals)
        b.close()
    return out


def fresh_paints(url: str, n: int) -> dict[str, list[float]]:
    """First paint and time to first byte of the first navigation in each of `n` fresh browsers, alternating the
    dashboard with an empty page (the fresh browser's floor); the dashboard goes first."""
    from playwright.sync_api import sync_playwright
    fcp = """() => { const e = performance.getEntriesByType('paint');
        const f = e.find(x => x.name === 'first-contentful-paint') || e[0]; return f ? f.startTime : -1; }"""
    ttfb = "() => { const n = performance.getEntriesByType('navigation')[0]; return n.responseStart - n.requestStart; }"
    out: dict[str, list[float]] = {"dashboard": [], "dashboard ttfb": [], "empty page": []}
    with sync_playwright() as p:
        for _ in range(n):
            for name, target in (("dashboard", url + "/"), ("empty page", "data:text/html,<p>x</p>")):
                b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                page = b.new_page(viewport={"width": 1366, "height": 900})
                page.goto(target)
                page.wait_for_function("performance.getEntriesByType('paint').length > 0")
                out[name].append(page.evaluate(fcp))
                if name == "dashboard":
                    out["dashboard ttfb"].append(page.evaluate(ttfb))
                b.close()
    return out


def print_fresh(fp: dict[str, list[float]]) -> None:
    base = statistics.median(fp["empty page"])
    print(f"first navigation in a fresh browser ({len(fp['dashboard'])} browsers per page)")
    print(f"  dashboard /, first after server start: paint {fp['dashboard'][0]:6.1f} ms, "
          f"server time to first byte {fp['dashboard ttfb'][0]:6.1f} ms")
    for name in ("dashboard", "dashboard ttfb", "empty page"):
        v = fp[name]
        print(f"  {name:<15} median {statistics.median(v):6.1f} ms  max {max(v):6.1f} ms   "
              f"vs fresh empty page x{statistics.median(v) / base if base > 0 else float('nan'):.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--loads", type=int, default=15)
    ap.add_argument("--fresh", type=int, default=5, help="fresh browsers for the first-navigation figures")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        live, proc = start_live(d)
        try:
            add_host_device(live)
            if a.fresh and os.path.exists(CHROMIUM):   # before anything else has asked the server for a page
                print_fresh(fresh_paints(live.url, a.fresh))
            for i in range(a.devices - 1):
                add_host_device(live, f"bench-{i:03d}")
            from service.client import Client
            c = Client(live.url)
            for f in (1.2, 1.5, 2.0):
                c.specialize("host-cpu", latency_ms={"times_min": f}).wait(timeout=300)
            with httpx.Client(base_url=live.url) as h:
                pairs = (("/", f"/devices?limit={a.devices}"), ("/ui/devices/host-cpu", "/devices/host-cpu"),
                         ("/ui/jobs", "/jobs?limit=50"))
                print(f"server time, p50 of {a.loads} (devices: {a.devices}, each with its front)")
                for page, api in pairs:
                    tp, ta = p50_ms(h, page, a.loads), p50_ms(h, api, a.loads)
                    print(f"  {page:<22} {tp:7.1f} ms   JSON {api:<22} {ta:7.1f} ms   ratio {tp / ta:5.2f}")
            if os.path.exists(CHROMIUM):
                fp = paints(live.url, a.loads)
                base = fp["empty page"]
                print(f"first contentful paint in Chromium, median of {a.loads} loads")
                for name, v in fp.items():
                    print(f"  {name:<14} {v:7.1f} ms   vs empty page x{v / base if base > 0 else float('nan'):.2f}")
                print(json.dumps({"first_paint_ms": fp}))
            else:
                print(f"{CHROMIUM} missing: no browser figures (apt-get install chromium)")
        finally:
            stop_live(proc)


if __name__ == "__main__":
    main()

"""`ofa specialize`: the Python client (service.client) on the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys

METRICS = (("latency_ms", "latency"), ("macs", "MACs"), ("params", "parameters"), ("peak_memory_bytes", "peak memory"))
BUDGET_HELP = "NUMBER (absolute), Nx (N times the smallest achievable, e.g. 1.5x) or N%% (N percent of the range " \
              "from the smallest to the largest sub-network, e.g. 30%%)"


def parse_budget(text: str):
    """'3.0' -> 3.0, '1.5x' -> {"times_min": 1.5}, '30%' -> {"fraction_of_range": 0.3}."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            return {"times_min": float(t[:-1])}
        if t.endswith("%"):
            return {"fraction_of_range": float(t[:-1]) / 100}
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a budget: {BUDGET_HELP.replace('%%', '%')}") from None


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("specialize", formatter_class=formatter,
                       help="ask the running service for a sub-network (and download it)",
                       description="Ask a running service for the most accurate sub-network within the budgets "
                                   "(or the fastest reaching --accuracy-floor), follow its progress, print the "
                                   "result and optionally download the weights. Budgets: "
                                   + BUDGET_HELP.replace("%%", "%") + ".")
    p.add_argument("device", help="device name (see GET /devices)")
    for key, label in METRICS:
        p.add_argument("--" + key.replace("_", "-"), type=parse_budget, metavar="BUDGET", help=f"{label} budget: {BUDGET_HELP}" if key == "latency_ms" else f"{label} budget")
    p.add_argument("--accuracy-floor", type=float, help="fastest sub-network whose predicted accuracy reaches this")
    p.add_argument("--supernet", help="default: the device's supernet")
    p.add_argument("--population", type=int, help="default: the service's (a key is needed above it)")
    p.add_argument("--generations", type=int, help="default: the service's (a key is needed above it)")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--no-pareto", action="store_true", help="always search (no answer from the stored front)")
    p.add_argument("--verify", action="store_true", help="recalibrate, score and (host device) time the best "
                   "candidates, answer with the best measured one within the budget")
    p.add_argument("--verify-top-k", type=int, metavar="K", help="candidates to verify (default: the service's, 5)")
    p.add_argument("--url", default=os.environ.get("OFA_URL", "http://127.0.0.1:8000"), help="service URL ($OFA_URL)")
    p.add_argument("--api-key", help="API key; default: $OFA_API_KEY")
    p.add_argument("--download", metavar="PATH", help="download the weights to this file or directory")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "pt", "torchscript", "onnx"),
                   help="download format")
    p.add_argument("--json", action="store_true", help="print the job as JSON (for scripts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the result")
    p.set_defaults(fn=cmd_specialize)


def result_table(job: dict) -> str:
    from service.web.render import fmt_metric
    res = job.get("result") or {}
    cons = job["request"].get("constraints", {})
    rows = [("job", job["id"]), ("status", f"{job['status']} (answered by {job['source']})"),
            ("device", f"{job['device']} (table v{job['table_version']}, supernet {job['supernet']})"),
            ("sub-network", res.get("subnet_id", "-")),
            ("predicted accuracy", fmt_metric("accuracy", res.get("predicted_accuracy")))]
    for key, label in METRICS:
        v = res.get("predicted_latency_ms" if key == "latency_ms" else key)
        budget = f" (budget {fmt_metric(key, cons[key])})" if key in cons else ""
        rows.append((label, fmt_metric(key, v) + budget))
    if res.get("measured_accuracy") is not None:
        rows.append(("measured accuracy", f"{fmt_metric('accuracy', res['measured_accuracy'])} "
                                          f"({res.get('measured_images')} evaluation images)"))
    if res.get("measured_latency_ms") is not None:
        rows.append(("measured latency", fmt_metric("latency_ms", res["measured_latency_ms"])))
    cfg = res.get("config") or {}
    rows.append(("resolution / depths", f"{cfg.get('r')} / {cfg.get('d')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_specialize(args) -> int:
    from service.client import Client
    budgets = {k: getattr(args, k) for k, _ in METRICS if getattr(args, k) is not None}
    if not budgets:
        raise ValueError("give at least one budget: --latency-ms, --macs, --params or --peak-memory-bytes")
    with Client(args.url, api_key=args.api_key or os.environ.get("OFA_API_KEY")) as c:
        job = c.specialize(args.device, **budgets, accuracy_floor=args.accuracy_floor, supernet=args.supernet,
                           population=args.population, generations=args.generations, seed=args.seed,
                           use_pareto=not args.no_pareto, verify=args.verify, verify_top_k=args.verify_top_k)
        job.wait(progress=not (args.no_progress or args.json) and sys.stderr.isatty(), timeout=args.timeout)
        path = str(job.download(args.download, format=args.format)) if args.download else None
    if args.json:
        print(json.dumps({**job.data, **({"download": path} if path else {})}, indent=2))
    else:
        print(result_table(job.data))
        if path:
            print(f"{'downloaded':<19}  {path} ({args.format}, sha256 checked)")
    return 0

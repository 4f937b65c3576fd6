"""Request examples for the table uploads (`POST /devices`, `PUT /devices/{name}`) that Swagger's "Try it out"
can send as they are: a complete table of the default supernet priced by the cost model
(`ofa_core.calibrate.cost_model_table`), built once when the OpenAPI document is first generated, stored once
under `components.examples` and referenced from both operations (the document stays small)."""
from __future__ import annotations

import json
from typing import Any

EXAMPLE_DEVICE = "example-device"   # the query `name` example of POST /devices (not a device a fresh service has)
TYPICAL_MS = 5.0
TABLE_OPS = (("/devices", "post"), ("/devices/{name}", "put"))


def _means(supernet: str) -> dict[str, dict[str, float]]:
    from ofa_core.calibrate import cost_model_table
    from ofa_core.spec import get_spec
    t = cost_model_table(get_spec(supernet), typical_ms=TYPICAL_MS)
    return {str(r): {k: float(f"{e.mean:.4g}") for k, e in sorted(entries.items())}
            for r, entries in sorted(t.tables.items())}


def _yaml(means: dict[str, dict[str, float]]) -> str:
    lines = ["resolutions:"]
    for r, entries in means.items():
        lines.append(f"  '{r}':")
        lines += [f"    {json.dumps(k)}: {{mean: {v!r}}}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def install(doc: dict[str, Any], supernet: str) -> None:
    """Put the complete table examples into `doc` (in place) for the table-upload operations."""
    means = _means(supernet)
    summary = (f"a complete {supernet} table priced by the cost model (average sub-network ~{TYPICAL_MS:g} ms; "
               "a shape, not a measurement)")
    doc.setdefault("components", {}).setdefault("examples", {}).update({
        "CostModelTableJson": {"summary": summary,
                               "value": {"resolutions": {r: {k: {"mean": v} for k, v in t.items()}
                                                         for r, t in means.items()}}},
        "CostModelTableYaml": {"summary": summary, "value": _yaml(means)},
    })
    refs = {"application/json": "#/components/examples/CostModelTableJson",
            "application/yaml": "#/components/examples/CostModelTableYaml"}
    for path, method in TABLE_OPS:
        op = doc["paths"].get(path, {}).get(method)
        if op is None:
            continue
        content = op["requestBody"]["content"]
        for media, ref in refs.items():
            if media in content:
                content[media].pop("example", None)
                content[media]["examples"] = {"cost-model table": {"$ref": ref}}
        if method == "post":
            for p in op.get("parameters", []):
                if p["in"] == "query" and p["name"] == "name":
                    p["example"] = EXAMPLE_DEVICE
                elif p["in"] == "query" and p["name"] == "supernet":
                    p["example"] = supernet

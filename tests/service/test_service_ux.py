"""The service as a person uses it (issue 12): offline API docs with the API-key security scheme, relative
budgets, the device's supernet as the default, the jobs list and the server-rendered dashboard pages."""
from __future__ import annotations

import re

SEARCH = {"population": 16, "generations": 5, "seed": 0}


def test_docs_are_served_offline(sqlite_env):
    c = sqlite_env.client
    for path in ("/docs", "/redoc"):
        page = c.get(path)
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "googleapis" not in page.text
        assets = re.findall(r'(?:src|href)="(/static/(?:docs|redoc)/[^"]+)"', page.text)
        assert assets, page.text
        for a in assets:                      # every script and style sheet comes from this service
            r = c.get(a)
            assert r.status_code == 200 and len(r.content) > 1000, a
        assert not re.findall(r'(?:src|href)="https?://', page.text)
    assert b"cdn.redoc.ly" not in c.get("/static/redoc/redoc.standalone.js").content


def test_openapi_declares_the_api_key_on_writes(sqlite_env):
    doc = sqlite_env.client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"ApiKeyHeader": []} in doc["paths"]["/devices"]["post"]["security"]
    assert {"ApiKeyHeader": []} in doc["paths"]["/devices/{name}"]["put"]["security"]
    assert {"ApiKeyHeader": []} in doc["paths"]["/devices/{name}/timings"]["post"]["security"]
    assert "security" not in doc["paths"]["/devices"]["get"]
    assert "security" not in doc["paths"]["/jobs/{job_id}"]["get"]
    # every operation documents a successful response with an example or a schema
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ok = {k: v for k, v in op["responses"].items() if k.startswith("2")}
            assert ok, (method, path)
            content = next(iter(ok.values())).get("content", {})
            assert not content or any("example" in m or "schema" in m for m in content.values()), (method, path)


def test_relative_budgets(sqlite_env):
    e = sqlite_env
    e.add_device("rel")
    r = e.client.post("/specialize", json={"device": "rel", "constraints": {"latency_ms": 0.001}})
    assert r.status_code == 422
    lo = r.json()["error"]["minima"]["latency_ms"]
    r = e.client.post("/specialize", json={"device": "rel", "constraints": {"latency_ms": {"times_min": 1.5}},
                                           "options": SEARCH, "use_pareto": False}, headers=e.h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert abs(job["request"]["constraints"]["latency_ms"] - 1.5 * lo) < 1e-9 * lo
    assert job["request"]["relative_constraints"] == {"latency_ms": {"times_min": 1.5}}
    assert job["supernet"] == "ofa_mbv3_cifar10"          # no "supernet": the device's
    assert e.run_job(job["id"]) == "succeeded"
    res = e.client.get(f"/jobs/{job['id']}").json()["result"]
    assert res["predicted_latency_ms"] <= 1.5 * lo * (1 + 1e-9)
    r = e.client.post("/specialize", json={"device": "rel", "constraints": {"latency_ms": {"fraction_of_range": 0},
                                                                            "macs": {"times_min": 2}},
                                           "options": SEARCH, "use_pareto": False}, headers=e.h)
    assert r.status_code == 202, r.text
    cons = r.json()["request"]["constraints"]
    assert abs(cons["latency_ms"] - lo) < 1e-9 * lo and isinstance(cons["macs"], int)
    for bad, field in (({"latency_ms": {"times_min": 0.5}}, "constraints.latency_ms"),
                       ({"latency_ms": {"fraction_of_range": 0.3, "times_min": 2}}, "constraints.latency_ms"),
                       ({"latency_ms": {"fastest": 2}}, "constraints.latency_ms"),
                       ({"macs": 1.5}, "constraints.macs"), ({"latency_ms": "fast"}, "constraints.latency_ms")):
        r = e.client.post("/specialize", json={"device": "rel", "constraints": bad})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (bad, r.text)


def test_jobs_list(sqlite_env):
    e = sqlite_env
    e.add_device("lister")
    ids = [e.client.post("/specialize", json={"device": "lister", "constraints": {"latency_ms": {"times_min": f}},
                                              "use_pareto": False}).json()["id"] for f in (1.2, 1.4, 1.6)]
    page = e.client.get("/jobs?limit=2").json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert {j["id"] for j in e.client.get("/jobs?device=lister").json()["items"]} == set(ids)
    assert e.client.get("/jobs?status=succeeded").json()["total"] == 0
    assert e.client.get("/jobs?device=ghost").status_code == 404
    assert e.client.get("/jobs?status=weird").status_code == 422


def test_dashboard_pages(env):
    e = env
    c = e.client
    e.add_device("pages")
    r = c.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'href="/ui/devices/pages"' in r.text
    assert not re.findall(r'(?:src|href)="https?://', r.text)
    for a in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        assert c.get(a).status_code == 200, a
    # the device page before and after its front exists
    assert "being computed" in c.get("/ui/devices/pages").text
    from workers import runner
    from service.devices import repository as repo
    with e.db.session() as s:
        d = repo.get_by_name(s, "pages")
        ids = (d.id, repo.current_table(s, d).id)
    runner.compute_front(e.db, e.store, e.settings, ids[0], ids[1], "ofa_mbv3_cifar10")
    page = c.get("/ui/devices/pages").text
    n = len(c.get("/devices/pages").json()["pareto_front"])
    assert page.count('class="pt"') == 2 * n and 'id="front-data"' in page
    # a front point's sub-network, as the page script asks for it, renders a card with every download
    p = c.get("/devices/pages").json()["pareto_front"][1]
    job = c.post("/specialize", json={"device": "pages", "constraints": {"latency_ms": p["latency_ms"]}}).json()
    assert job["source"] == "pareto" and job["result"]["config"] == p["config"]
    card = c.get(f"/ui/jobs/{job['id']}/card").text
    for f in ("safetensors", "pt", "torchscript", "onnx"):
        assert f"/subnets/{job['result']['subnet_id']}/checkpoint?format={f}" in card
    assert "net.config" in card
    jp = c.get(f"/ui/jobs/{job['id']}").text
    assert "succeeded" in jp and 'id="result-card"' in jp
    assert job["id"][:12] in c.get("/ui/jobs").text
    assert c.get("/ui/specialize?device=pages").status_code == 200
    assert 'id="upload-form"' in c.get("/ui/upload").text
    assert c.get("/ui/devices/ghost").status_code == 404 and c.get("/ui/jobs/nope").status_code == 404
    # what users wrote is escaped
    import json
    from ofa_service_assets import synthetic_table
    r = c.post("/devices?name=esc&description=%3Cscript%3Ealert(1)%3C/script%3E", content=json.dumps(synthetic_table()),
               headers={**e.h, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    page = c.get("/ui/devices/esc").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def _resolve(doc, obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def _request_examples(doc):
    """(method, path, media type, example value) for every request-body example in the document."""
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for media, c in op.get("requestBody", {}).get("content", {}).items():
                found = [c["example"]] if "example" in c else []
                found += [_resolve(doc, v)["value"] for v in c.get("examples", {}).values()]
                schema = _resolve(doc, c.get("schema", {}))
                found += [] if found else list(schema.get("examples", []))
                for ex in found:
                    yield method, path, op, media, ex


def _url(path, op):
    params = [p for p in op.get("parameters", []) if "example" in p]
    for p in params:
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", str(p["example"]))
    query = {p["name"]: p["example"] for p in params if p["in"] == "query"}
    assert "{" not in path, f"path parameter without an example: {path}"
    return path, query


def test_openapi_examples_work(sqlite_env):
    """What "Try it out" sends: every request-body example of every operation, with the documented path and
    query parameter examples and the API key, succeeds on a fresh service's kind of device (the table uploads
    send a complete cost-model table of the default supernet)."""
    import json
    e = sqlite_env
    e.add_device("host-cpu")
    doc = e.client.get("/openapi.json").json()
    sent = []
    for method, path, op, media, ex in _request_examples(doc):
        url, query = _url(path, op)
        if media == "application/json":
            kw = {"content": json.dumps(ex), "headers": {**e.h, "content-type": media}}
        elif media == "application/yaml":
            kw = {"content": ex, "headers": {**e.h, "content-type": media}}
        else:   # multipart: the form fields of the example, the YAML example as the picked file
            yaml_ex = next(x for m, p, _, md, x in _request_examples(doc) if p == path and m == method
                           and md == "application/yaml")
            kw = {"data": ex, "files": {"file": ("example_lookup_table.yaml", yaml_ex, "application/yaml")},
                  "headers": e.h}
        if method == "post" and path == "/devices":   # each upload registers a new device
            name = f"{query.get('name', 'dev')}-{len(sent)}"
            query["name"] = name
            if isinstance(ex, dict) and "name" in ex:
                kw["data"] = {**ex, "name": name}
        device = ex.get("device") if isinstance(ex, dict) else None
        r = e.client.request(method.upper(), url, params=query, **kw)
        sent.append((method, path, media))
        if device and device != "host-cpu":   # the Note10 example needs the README's Note10 import first
            assert r.status_code == 404 and r.json()["error"]["device"] == device, r.text
            continue
        assert r.status_code < 400, (method, path, media, r.status_code, r.text[:300])
    assert {(m, p) for m, p, _ in sent} >= {("post", "/devices"), ("put", "/devices/{name}"), ("post", "/specialize"),
                                            ("post", "/devices/{name}/timings")}, sent
    assert len(sent) >= 9, sent
    sn = next(p for p in doc["paths"]["/supernets/{name}"]["get"]["parameters"] if p["name"] == "name")
    assert e.client.get(f"/supernets/{sn['example']}").status_code == 200
    assert e.client.get("/devices/host-cpu/latency-table").status_code == 200
    assert len(json.dumps(doc)) < 400_000         # the table examples are stored once, referenced twice


def test_job_page_states_an_error_in_words(sqlite_env):
    e = sqlite_env
    e.add_device("failing")
    jid = e.client.post("/specialize", json={"device": "failing", "constraints": {"latency_ms": {"times_min": 2}},
                                             "use_pareto": False}).json()["id"]
    page = e.client.get(f"/ui/jobs/{jid}").text
    assert "queued" in page and 'id="cancel-job"' in page and "times_min" in page
    from service.jobs import repository as job_repo
    with e.db.session() as s:
        assert job_repo.finish(s, jid, None, "failed", error={"code": "search_failed", "message": "the <search> broke"})
        s.commit()
    page = e.client.get(f"/ui/jobs/{jid}").text
    assert 'role="alert"' in page and "search_failed" in page and "the &lt;search&gt; broke" in page
    assert 'id="cancel-job"' not in page
    assert "search_failed" in e.client.get(f"/ui/jobs/{jid}/card").text

"""The README's "Using it" snippets run as written (curl + jq, the Python client, `ofa specialize`, the Note10
sequence) against a live `ofa serve`, in one shell so that variables carry from one block to the next. The only
change made to the text: the service's address `localhost:8000` becomes the test service's."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess

import httpx

from ofa_service_testlib import ROOT


def readme_blocks() -> list[tuple[str, str]]:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Using it"):text.index("\n## ", text.index("## Using it") + 5)]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def test_readme_starts_with_the_two_setup_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert [line.split()[0] for line in first] == ["./scripts/serve", "./scripts/test"]


def test_readme_snippets_run_against_a_live_service(live_service, tmp_path):
    blocks = readme_blocks()
    assert [k for k, _ in blocks].count("python") >= 1 and len(blocks) >= 3
    host = live_service.url.removeprefix("http://")
    script = ["set -euo pipefail -x"]            # -x: the failing command shows in stderr
    for kind, code in blocks:
        code = code.replace("localhost:8000", host)
        script.append(code if kind == "bash" else f".venv/bin/python - <<'PYEOF'\n{code}PYEOF")
    # a fresh checkout's layout: the repository (its .venv) with shared/ beside it; downloads land here
    work = tmp_path / "clone"
    work.mkdir()
    os.symlink(os.path.join(ROOT, ".venv"), work / ".venv")
    os.symlink(os.path.realpath(os.path.join(ROOT, "..", "shared")), tmp_path / "shared")
    env = {**live_service.env, "OFA_URL": live_service.url}
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}\n{live_service.log_tail()}"
    out = r.stdout
    assert '"error": {' not in out and '"code":' not in out, out[-3000:]
    assert "event: result" in out and '"status": "succeeded"' in out
    for name, fmt in (("subnet.safetensors", "safetensors"), ("subnet.pt", "pt"), ("subnet.onnx", "onnx")):
        assert (work / name).stat().st_size > 10_000, name
    # the curl download is the job's sub-network, byte for byte
    job_id = httpx.get(f"{live_service.url}/jobs?device=host-cpu&limit=200").json()["items"]
    sids = {j["result"]["subnet_id"] for j in job_id if j.get("result")}
    digest = hashlib.sha256((work / "subnet.safetensors").read_bytes()).hexdigest()
    shas = {httpx.head(f"{live_service.url}/subnets/{s}/checkpoint?format=safetensors").headers.get("x-content-sha256")
            for s in sids}
    assert digest in shas
    assert "note10" in out and "predicted accuracy" in out
    note10 = [j for j in httpx.get(f"{live_service.url}/jobs?device=note10").json()["items"] if j["result"]]
    assert note10 and note10[0]["result"]["predicted_latency_ms"] <= 25
    lines = [ln for k, c in blocks if k == "python" for ln in c.splitlines() if ln.strip() and not ln.startswith("#")]
    print(f"\nREADME client snippet: {len(lines)} lines to specialize, print and download")

"""A Python client of the OFA specialization service (sync, on httpx).

    from service.client import Client
    c = Client("http://127.0.0.1:8000")
    job = c.specialize("host-cpu", latency_ms={"times_min": 1.5}).wait(progress=True)
    job.download("subnet.safetensors")          # resumable (Range), sha256 checked

Every error answer of the service raises `ServiceError` (or a subclass by status) carrying the service's error
body (`.code`, `.message`, `.details`, `.body`); a service that cannot be reached raises `ConnectionFailed`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
FORMATS = ("safetensors", "pt", "torchscript", "onnx")


class ClientError(Exception):
    """Base of the client's errors."""


class ConnectionFailed(ClientError):
    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the service at {url}: {reason}")
        self.url, self.reason = url, reason


class ServiceError(ClientError):
    """The service answered with an error: `{"error": {"code", "message", ...}}`."""

    def __init__(self, status: int, body: Any, method: str = "", url: str = ""):
        err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        self.status, self.body, self.method, self.url = status, body, method, url
        self.code = err.get("code", "http_error")
        self.message = err.get("message") or (body if isinstance(body, str) else json.dumps(body))[:500]
        self.details = {k: v for k, v in err.items() if k not in ("code", "message")}
        self.retry_after: float | None = None
        super().__init__(f"{status} {self.code}: {self.message}")


class BadRequest(ServiceError):        # 422 (names the field), 400
    pass


class Unauthorized(ServiceError):      # 401: no or a wrong API key
    pass


class NotFound(ServiceError):          # 404: unknown device, job, sub-network, supernet
    pass


class Conflict(ServiceError):          # 409: exists already, weights missing
    pass


class Unavailable(ServiceError):       # 503 (and 429): try again later
    pass


class JobFailed(ClientError):
    def __init__(self, job: "Job"):
        err = job.data.get("error") or {}
        super().__init__(f"job {job.id} {job.status}: {err.get('code', '')} {err.get('message', '')}".strip())
        self.job, self.error = job, err


class ChecksumMismatch(ClientError):
    pass


_BY_STATUS = {400: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound,
              409: Conflict, 429: Unavailable, 503: Unavailable}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    err = _BY_STATUS.get(resp.status_code, ServiceError)(resp.status_code, body, resp.request.method,
                                                        str(resp.request.url))
    err.retry_after = _retry_after(resp) if "retry-after" in resp.headers else None
    raise err


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers["retry-after"]), 0.2), 10.0)
    except ValueError:
        return 2.0


def _sse(lines: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) from a text/event-stream."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


class Job:
    """A specialization job. `data` is the service's job object (status, progress, request, result, error)."""

    def __init__(self, client: "Client", data: dict[str, Any]):
        self.client, self.data = client, data

    id = property(lambda self: self.data["id"])
    status = property(lambda self: self.data["status"])
    result = property(lambda self: self.data.get("result"))
    done = property(lambda self: self.data["status"] in TERMINAL)

    @property
    def subnet_id(self) -> str:
        if not self.result:
            raise ClientError(f"job {self.id} has no result (status {self.status})")
        return self.result["subnet_id"]

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status}>"

    def refresh(self) -> "Job":
        self.data = self.client._get(f"/jobs/{self.id}").json()
        return self

    def wait(self, progress: bool = False, timeout: float | None = None) -> "Job":
        """Follow the job's SSE stream until it ends (a tqdm bar with `progress=True`); falls back to polling if
        the stream breaks. Raises JobFailed for a failed or cancelled job, TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress and not self.done:
            from tqdm import tqdm
            bar = tqdm(total=max(int(self.data.get("generations") or 0), 1), unit="gen", desc=f"job {self.id[:8]}")
        try:
            while not self.done:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
                try:
                    self._follow(bar, deadline)
                except (httpx.TransportError, ValueError):
                    time.sleep(0.5)
                    self.refresh()
            if bar is not None:
                bar.n = bar.total
                acc = (self.result or {}).get("predicted_accuracy")
                if acc is not None:
                    bar.set_postfix(accuracy=f"{acc:.4f}")
                bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        if self.status != "succeeded":
            raise JobFailed(self)
        return self

    def _follow(self, bar, deadline: float | None) -> None:
        read = None if deadline is None else max(deadline - time.monotonic(), 0.1)
        with self.client._http.stream("GET", f"/jobs/{self.id}/events",
                                      timeout=httpx.Timeout(self.client.timeout, read=read or 60.0)) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            for event, data in _sse(resp.iter_lines()):
                if event in ("state", "result", "failed", "cancelled"):
                    self.data = data
                    if bar is not None and data.get("generations"):
                        bar.total = int(data["generations"])
                elif event == "progress" and bar is not None:
                    bar.total = int(data.get("generations") or bar.total)
                    bar.n = int(data["generation"])
                    best = (data.get("best_so_far") or {}).get("predicted_accuracy")
                    if best is not None:
                        bar.set_postfix(accuracy=f"{best:.4f}", refresh=False)
                    bar.refresh()
                if deadline is not None and time.monotonic() > deadline:
                    return
        if not self.done:
            self.refresh()

    def download(self, path: str | os.PathLike = ".", format: str = "safetensors") -> Path:
        """The result's weights (resumable, sha256 checked); `path` a file or an existing directory."""
        return self.client.download(self.subnet_id, path, format)

    def net_config(self) -> dict[str, Any]:
        return self.client.net_config(self.subnet_id)

    def cancel(self) -> "Job":
        self.data = self.client._request("DELETE", f"/jobs/{self.id}").json()
        return self


class Client:
    """`Client(url, api_key=None)`: reads need no key; uploads (and searches beyond the defaults) do."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        headers = {"User-Agent": "ofa-client/0.1"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ConnectionFailed(self.url, f"{type(e).__name__}: {e}") from None
        _raise_for(resp)
        return resp

    def _get(self, path: str, **params) -> httpx.Response:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None})

    # -- reads ------------------------------------------------------------------------------------------
    def supernets(self) -> list[dict[str, Any]]:
        return self._get("/supernets").json()["items"]

    def devices(self, supernet: str | None = None, kind: str | None = None, q: str | None = None
                ) -> list[dict[str, Any]]:
        """All devices (every page), optionally filtered."""
        out, offset = [], 0
        while True:
            page = self._get("/devices", limit=500, offset=offset, supernet=supernet, kind=kind, q=q).json()
            out += page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return out

    def device(self, name: str) -> dict[str, Any]:
        """A device with its table versions and Pareto front."""
        return self._get(f"/devices/{name}").json()

    def job(self, job_id: str) -> Job:
        return Job(self, self._get(f"/jobs/{job_id}").json())

    def jobs(self, status: str | None = None, device: str | None = None, limit: int = 20) -> list[Job]:
        return [Job(self, j) for j in self._get("/jobs", status=status, device=device, limit=limit).json()["items"]]

    def subnet(self, subnet_id: str) -> dict[str, Any]:
        return self._get(f"/subnets/{subnet_id}").json()

    def net_config(self, subnet_id: str) -> dict[str, Any]:
        return self._get(f"/subnets/{subnet_id}/net.config").json()

    # -- writes -----------------------------------------------------------------------------------------
    def upload_table(self, name: str, files: str | os.PathLike | Iterable[str | os.PathLike],
                     supernet: str | None = None, description: str = "", new_version: bool = False
                     ) -> dict[str, Any]:
        """Register a device with its latency table (or, `new_version=True`, upload a new version): `files` is a
        directory of `<r>_lookup_table.yaml` files, one file, or a list of files."""
        paths = _table_files(files)
        parts = [("file", (p.name, p.read_bytes(), "application/json" if p.suffix == ".json" else "application/yaml"))
                 for p in paths]
        data = {"description": description} if description else {}
        if new_version:
            return self._request("PUT", f"/devices/{name}", files=parts, data=data).json()
        data.update(name=name, **({"supernet": supernet} if supernet else {}))
        return self._request("POST", "/devices", files=parts, data=data).json()

    def post_timings(self, device: str, timings: Iterable[dict[str, Any]] | str | os.PathLike,
                     description: str | None = None) -> dict[str, Any]:
        """Calibrate a device's table from whole-network timings `[{"config": {...}, "latency_ms": x}, ...]`
        (or a JSON file holding `{"timings": [...]}`); returns the device with its new version."""
        if isinstance(timings, (str, os.PathLike)):
            body = json.loads(Path(timings).read_text())
        else:
            body = {"timings": list(timings)}
        if description is not None:
            body["description"] = description
        return self._request("POST", f"/devices/{device}/timings", json=body).json()

    def specialize(self, device: str, latency_ms: float | dict | None = None, macs: int | dict | None = None,
                   params: int | dict | None = None, peak_memory_bytes: int | dict | None = None,
                   accuracy_floor: float | None = None, supernet: str | None = None, population: int | None = None,
                   generations: int | None = None, seed: int | None = None, use_pareto: bool = True,
                   verify: bool = False, verify_top_k: int | None = None) -> Job:
        """Ask for the most accurate sub-network within the budgets (or, with `accuracy_floor`, the fastest one
        reaching it). A budget is a number or relative: `{"times_min": 1.5}` / `{"fraction_of_range": 0.3}`.
        With `verify`, a worker recalibrates, scores and (on the host device) times the search's best
        `verify_top_k` candidates and answers with the best measured one within the budget.
        Returns the job at once (already succeeded when the answer was known); call `.wait()`."""
        constraints = {k: v for k, v in (("latency_ms", latency_ms), ("macs", macs), ("params", params),
                                         ("peak_memory_bytes", peak_memory_bytes)) if v is not None}
        options = {k: v for k, v in (("population", population), ("generations", generations), ("seed", seed),
                                     ("verify_top_k", verify_top_k)) if v is not None}
        body: dict[str, Any] = {"device": device, "constraints": constraints, "use_pareto": use_pareto}
        if verify:
            body["verify"] = True
        if options:
            body["options"] = options
        if accuracy_floor is not None:
            body["accuracy_floor"] = accuracy_floor
        if supernet:
            body["supernet"] = supernet
        return Job(self, self._request("POST", "/specialize", json=body).json())

    def _when_ready(self, method: str, path: str, wait_s: float = 600.0, **kw) -> httpx.Response:
        """A request repeated while the service answers 503 with Retry-After (for example while a sub-network's
        BN statistics are being recalibrated), up to `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._request(method, path, **kw)
            except Unavailable as e:
                if e.status != 503 or time.monotonic() > deadline or e.retry_after is None:
                    raise
                time.sleep(e.retry_after)

    # -- downloads --------------------------------------------------------------------------------------
    def download(self, subnet_id: str, path: str | os.PathLike = ".", format: str = "safetensors",
                 chunk: int = 1 << 20) -> Path:
        """A sub-network's weights into `path` (a file, or an existing directory: the service's file name).
        An interrupted download resumes from `<file>.part` (Range + If-Range on the ETag); the whole file's
        sha256 is checked against the service's before the file is put in place."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        url = f"/subnets/{subnet_id}/checkpoint"
        head = self._when_ready("HEAD", url, params={"format": format})
        etag, want = head.headers.get("etag", ""), head.headers.get("x-content-sha256", "")
        target = Path(path)
        if target.is_dir():
            m = re.search(r'filename="([^"]+)"', head.headers.get("content-disposition", ""))
            target = target / (m.group(1) if m else f"{subnet_id}.{format}")
        part = target.with_name(target.name + ".part")
        for _ in range(5):   # the connection may drop mid-way: resume from what arrived
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-", "If-Range": etag} if have and etag else {}
            try:
                with self._http.stream("GET", url, params={"format": format}, headers=headers) as resp:
                    if resp.status_code == 503 and "retry-after" in resp.headers:
                        time.sleep(_retry_after(resp))
                        continue
                    if resp.status_code == 416:
                        part.unlink(missing_ok=True)
                        continue
                    if resp.status_code >= 400:
                        resp.read()
                        _raise_for(resp)
                    mode = "ab" if resp.status_code == 206 else "wb"
                    with open(part, mode) as f:
                        for block in resp.iter_bytes(chunk):
                            f.write(block)
                break
            except httpx.TransportError:
                continue
        else:
            raise ConnectionFailed(self.url, f"download of {subnet_id} kept failing")
        got = _sha256(part)
        if want and got != want:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{target}: sha256 {got} differs from the service's {want}; removed")
        os.replace(part, target)
        return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _table_files(files) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        p = Path(files)
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.name.endswith(("_lookup_table.yaml", "_lookup_table.json")))
            if not found:
                raise ClientError(f"{p}: no <r>_lookup_table.yaml files in this directory")
            return found
        files = [p]
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise ClientError(f"{p}: no such file")
    if not paths:
        raise ClientError("no table files given")
    return paths

"""The `ofa` CLI as a person uses it: any working directory, one data directory, one-line errors, an identical
table import is a no-op, --help shows defaults, a predictor registered in one step."""
from __future__ import annotations

import os
import subprocess
import sys

from ofa_service_testlib import ROOT, SHARED

W12 = "ofa_mbv3_d234_e346_k357_w1.2"


def _ofa(env, cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _env(var_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFA_")}
    env.update(OFA_VAR_DIR=str(var_dir), OFA_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT, OFA_SUPERNETS=f'["{W12}"]', OFA_DEFAULT_SUPERNET=W12)
    return env


def test_cli_from_any_directory(tmp_path):
    elsewhere, var = tmp_path / "elsewhere", tmp_path / "data"
    elsewhere.mkdir()
    env = _env(var)
    r = _ofa(env, elsewhere, "create-api-key", "--name", "me")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ofa_") and (var / "ofa.sqlite").exists()
    assert os.listdir(elsewhere) == []                       # nothing written where the command ran
    note10 = os.path.join(SHARED, "note10")
    r = _ofa(env, elsewhere, "import-table", "note10", note10, "--supernet", W12)
    assert r.returncode == 0 and "table version 1" in r.stdout, r.stderr
    r = _ofa(env, elsewhere, "import-table", "note10", note10, "--supernet", W12)
    assert r.returncode == 0 and "unchanged" in r.stdout and "nothing imported" in r.stdout, r.stderr


def test_cli_errors_are_one_line(tmp_path):
    env = _env(tmp_path / "data")
    for args, words in ((("import-table", "dev", str(tmp_path / "nope")), "no such directory"),
                        (("import-table", "dev", str(tmp_path)), "no <r>_lookup_table.yaml"),
                        (("register-predictor", W12, str(tmp_path / "p.pth")), "no such file"),
                        (("register-predictor", "nope", str(tmp_path)), "unknown supernet"),
                        (("specialize", "dev", "--latency-ms", "2", "--url", "http://127.0.0.1:9"), "cannot reach"),
                        (("specialize", "dev"), "at least one budget")):
        r = _ofa(env, tmp_path, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert words in r.stderr, (args, r.stderr)


def test_cli_help_shows_defaults(tmp_path):
    env = _env(tmp_path / "data")
    r = _ofa(env, tmp_path, "serve", "--help")
    assert "(default: 8000)" in r.stdout and "(default: 127.0.0.1)" in r.stdout
    r = _ofa(env, tmp_path, "specialize", "--help")
    assert "(default: safetensors)" in r.stdout and "1.5x" in r.stdout
    assert "(default: 20)" in _ofa(env, tmp_path, "profile-host", "--help").stdout


def test_register_predictor_in_one_step(tmp_path):
    from service.settings import Settings
    from service.supernets.store import SupernetStore
    var = tmp_path / "data"
    store = SupernetStore(Settings(var_dir=str(var), supernets=[W12], default_supernet=W12)).load()
    assert not store.engines[W12].search_ready
    r = _ofa(_env(var), tmp_path, "register-predictor", W12, os.path.join(SHARED, "acc_predictor.pth"))
    assert r.returncode == 0 and "registered" in r.stdout, r.stderr
    assert store.get(W12).search_ready                          # a running service picks it up
    fresh = SupernetStore(Settings(var_dir=str(var), supernets=[W12], default_supernet=W12)).load()
    assert fresh.engines[W12].search_ready                      # and so does the next start
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a predictor")
    r = _ofa(_env(var), tmp_path, "register-predictor", W12, str(bad))
    assert r.returncode == 2 and "is not a predictor" in r.stderr and "Traceback" not in r.stderr

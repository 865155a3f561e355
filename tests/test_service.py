"""The run service over loopback: the auth matrix on every endpoint, confinement, body limits, a smoke run started
through the API checked against the registry, the health probe over HTTP, and a bounded load test that prints figures.
"""

import hashlib, json, os, secrets, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from conftest import SMOKE
from agent_forge.runs.registry import Registry
from agent_forge.runs.service import create_app, load_test, make_token

ROOT = Path(__file__).resolve().parents[1]
KEY = secrets.token_hex(32).encode()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    "(TestClient, runs folder, seeded artifact id) over a fresh runs folder with one recorded run 'seeded'."
    os.environ.setdefault("WANDB_MODE", "offline")
    runs = tmp_path_factory.mktemp("runs")
    with Registry.open(runs / "seeded") as reg:
        reg.ensure_run("seeded", "tiny", 0)
        reg.start_phase("seeded", 1, "cognate", str(runs / "seeded" / "01_cognate.ipynb"))
        d = runs / "seeded" / "art"
        d.mkdir()
        (d / "weights.bin").write_bytes(os.urandom(4096))
        (d / "config.json").write_text('{"hidden_size": 8}')
        aid = reg.register_artifact("seeded", 1, "trunk", d, metrics={"params": 8})
        reg.finish_phase("seeded", 1, "done", {"loss": 1.5})
    app = create_app(runs, KEY, root=ROOT, max_body=16 * 1024)
    with TestClient(app) as c:
        yield c, runs, aid


def hdr(*scopes, key=KEY, ttl=600):
    return {"Authorization": f"Bearer {make_token(key, scopes, ttl)}"}


def endpoints(aid):
    "(method, path, scope needed, JSON body) of every endpoint but /health."
    return [
        ("GET", "/metrics", "read", None),
        ("GET", "/runs", "read", None),
        ("POST", "/runs", "run", {"phases": "1"}),
        ("GET", "/runs/seeded", "read", None),
        ("GET", "/runs/seeded/metrics", "read", None),
        ("GET", f"/runs/seeded/artifacts/{aid}/files/config.json", "read", None),
        ("POST", "/runs/seeded/cancel", "run", None),
    ]


def none_alg_token():
    now = int(time.time())
    claims = dict(sub="x", iat=now, exp=now + 600, scope="read run")
    return {"Authorization": f"Bearer {jwt.encode(claims, None, algorithm='none')}"}


def test_auth_matrix(svc):
    c, runs, aid = svc
    cases = {
        "no token": lambda s: {},
        "expired": lambda s: hdr(s, ttl=-10),
        "forged signature": lambda s: hdr(s, key=os.urandom(32)),
        "alg none": lambda s: none_alg_token(),
        "garbage": lambda s: {"Authorization": "Bearer not.a.jwt"},
        "wrong scope": lambda s: hdr("run" if s == "read" else "read"),
    }
    want = {k: 403 if k == "wrong scope" else 401 for k in cases}
    rows = []
    for m, path, scope, body in endpoints(aid):
        got = {k: c.request(m, path, json=body, headers=f(scope)).status_code for k, f in cases.items()}
        rows.append((m, path, scope, got))
        assert got == want, (m, path, got)
    print("\n| endpoint | scope | " + " | ".join(cases) + " |")
    for m, path, scope, got in rows:
        print(f"| {m} {path} | {scope} | " + " | ".join(str(got[k]) for k in cases) + " |")
    assert c.get("/health").status_code == 200
    # the right scope gets past authentication (a positive control for the matrix)
    assert c.get("/runs/seeded", headers=hdr("read")).status_code == 200
    assert c.post("/runs/seeded/cancel", headers=hdr("run")).status_code == 404  # never submitted here


def test_secret_file_must_be_0600(tmp_path, monkeypatch):
    f = tmp_path / "key"
    f.write_text("k" * 48)
    f.chmod(0o640)
    monkeypatch.delenv("AGENT_FORGE_JWT_SECRET", raising=False)
    monkeypatch.setenv("AGENT_FORGE_JWT_SECRET_FILE", str(f))
    with pytest.raises(Exception, match="permissions 0640"):
        create_app(tmp_path / "runs", root=ROOT)
    f.chmod(0o600)
    app = create_app(tmp_path / "runs", root=ROOT)
    assert app.state.service.secret == b"k" * 48
    app.state.service.close()


@pytest.mark.parametrize("rid", ["x..y", "...", "%2e%2e", "a%2Fb", "..%2F..%2Fetc", "%00", "-" * 300])
def test_traversal_run_ids_refused(svc, rid):
    "(A literal '..' segment is resolved by the HTTP client; `test_probe_and_load_over_loopback` sends it raw.)"
    c = svc[0]
    for path in (f"/runs/{rid}", f"/runs/{rid}/metrics", f"/runs/{rid}/artifacts/1/files/config.json"):
        r = c.get(path, headers=hdr("read"))
        assert r.status_code in (400, 404), (path, r.status_code)
    assert c.post(f"/runs/{rid}/cancel", headers=hdr("run")).status_code in (400, 404)


@pytest.mark.parametrize(
    "body, code, words",
    [
        ({"phases": "1", "run_id": "../evil"}, 400, "invalid run id"),
        ({"phases": "1", "run_id": "a/b"}, 400, "invalid run id"),
        ({"phases": "1", "params": {"1.run_dir": "/etc"}}, 400, "is set with --runs-dir"),
        ({"phases": "1", "params": {"run_id": "x"}}, 400, "is set with --run-id"),
        ({"phases": "1", "params": {"../x": 1}}, 400, "malformed parameter"),
        ({"phases": "1", "params": {"1.nosuch": 1}}, 400, "does not define"),
        ({"phases": "1", "params": {"1.seq_len": "long"}}, 400, "seq_len"),
        ({"phases": "../1"}, 422, "pattern"),
        ({"phases": 1}, 422, "string"),
        ({"preset": "huge", "phases": "1"}, 400, "huge"),
        ({"phases": "1", "extra": True}, 422, "Extra inputs"),
        ({"phases": "1", "params": {"1.seq_len": [1, 2]}}, 422, "params"),
    ],
)
def test_bad_requests_refused_before_queueing(svc, body, code, words):
    c, runs, _ = svc
    before = sorted(p.name for p in runs.iterdir())
    r = c.post("/runs", json=body, headers=hdr("run"))
    assert r.status_code == code, r.text
    assert words in r.text, r.text
    assert sorted(p.name for p in runs.iterdir()) == before
    assert not (Path("/etc") / "evil").exists()


def test_download_confined_and_verified(svc):
    c, runs, aid = svc
    for p in ("../registry.sqlite", "..%2Fregistry.sqlite", "%2Fetc%2Fpasswd", "nosuch.bin", "manifest.json"):
        r = c.get(f"/runs/seeded/artifacts/{aid}/files/{p}", headers=hdr("read"))
        assert r.status_code in (400, 404), (p, r.status_code)
        assert b"SQLite" not in r.content and b"root:" not in r.content
    r = c.get(f"/runs/seeded/artifacts/{aid}/files/weights.bin", headers=hdr("read"))
    assert r.status_code == 200
    with Registry.open(runs / "seeded", create=False) as reg:
        want = reg.get_artifact(aid)["files"]["weights.bin"]
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"] == want
    # a tampered artifact is refused, not served
    f = runs / "seeded" / "art" / "config.json"
    old = f.read_bytes()
    f.write_text('{"hidden_size": 9}')
    try:
        r = c.get(f"/runs/seeded/artifacts/{aid}/files/weights.bin", headers=hdr("read"))
        assert r.status_code == 409 and "changed" in r.json()["detail"]
        s = c.get("/runs/seeded?verify=true", headers=hdr("read")).json()
        assert s["artifacts"][0]["verified"] is False
    finally:
        f.write_bytes(old)
    assert c.get("/runs/seeded?verify=true", headers=hdr("read")).json()["artifacts"][0]["verified"] is True


def test_oversized_and_malformed_bodies(svc):
    c = svc[0]
    r = c.post("/runs", content=b"{" + b" " * 20000 + b"}", headers=hdr("run") | {"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]

    def chunks():  # no content-length: the limit still holds
        for _ in range(40):
            yield b" " * 1024

    r = c.post("/runs", content=chunks(), headers=hdr("run") | {"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/runs", content=b"{not json", headers=hdr("run") | {"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text
    r = c.post("/runs", content=b"[1, 2]", headers=hdr("run") | {"content-type": "application/json"})
    assert r.status_code == 422


def wait_state(c, rid, states, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = c.get(f"/runs/{rid}", headers=hdr("read"))
        if r.status_code == 200 and r.json()["state"] in states:
            return r.json()
        if r.status_code == 404:  # queued: no registry yet
            j = [x for x in c.get("/runs", headers=hdr("read")).json() if x["run_id"] == rid]
            if j and j[0]["state"] in states:
                return j[0]
        time.sleep(0.5)
    raise AssertionError(f"run {rid} not in {states} after {timeout} s")


def test_smoke_run_through_the_api(svc):
    c, runs, _ = svc
    params = {f"1.{k}": v for k, v in SMOKE[1].items()}
    t0 = time.time()
    r = c.post("/runs", json=dict(phases="1", run_id="api-smoke", params=params, keep_going=True), headers=hdr("run"))
    assert r.status_code == 202, r.text
    assert r.json()["state"] in ("queued", "running")
    # a second run waits in the queue and can be cancelled there
    r2 = c.post("/runs", json=dict(phases="1", run_id="api-queued", params=params), headers=hdr("run"))
    assert r2.status_code == 202 and r2.json()["state"] == "queued"
    assert "agent_forge_queue_length 1.0" in c.get("/metrics", headers=hdr("read")).text
    q = c.get("/runs/api-queued", headers=hdr("read"))
    assert q.status_code == 200 and q.json()["state"] == "queued" and q.json()["phases"] == []
    assert c.post("/runs/api-queued/cancel", headers=hdr("run")).json()["state"] == "cancelled"
    assert c.post("/runs", json=dict(phases="1", run_id="api-smoke"), headers=hdr("run")).status_code == 409
    s = wait_state(c, "api-smoke", ("done", "failed", "gate_failed"), 600)
    wall = time.time() - t0
    print(f"\nsmoke run through the API: {s['state']} in {wall:.1f} s (load {os.getloadavg()[0]:.2f})")
    log = (runs / "_service" / "api-smoke.log").read_text()
    assert s["job"]["returncode"] in (0, 2), log[-3000:]
    s = c.get("/runs/api-smoke?verify=true", headers=hdr("read")).json()
    with Registry.open(runs / "api-smoke", create=False) as reg:
        phases = reg.list_phases("api-smoke")
        arts = {a["id"]: a for a in reg.list_artifacts("api-smoke", states=("live", "failed"))}
    assert [(p["phase"], p["status"], p["wall_s"]) for p in s["phases"]] == [
        (p["phase"], p["status"], p["wall_s"]) for p in phases
    ]
    assert s["phases"][0]["status"] in ("done", "gate_failed")
    assert s["state"] == ("done" if s["phases"][0]["status"] == "done" else "gate_failed")
    assert arts and {a["id"]: (a["sha256"], a["files"]) for a in s["artifacts"]} == {
        i: (a["sha256"], a["files"]) for i, a in arts.items()
    }
    assert all(a["verified"] for a in s["artifacts"]), s["artifacts"]
    a = s["artifacts"][0]
    f = sorted(a["files"])[0]
    r = c.get(f"/runs/api-smoke/artifacts/{a['id']}/files/{f}", headers=hdr("read"))
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == a["files"][f]
    m = c.get("/runs/api-smoke/metrics", headers=hdr("read")).json()
    assert m["phases"]["1"] == phases[0]["metrics"]
    text = c.get("/metrics", headers=hdr("read")).text
    assert 'agent_forge_runs_total{state="cancelled"} 1.0' in text
    assert "agent_forge_queue_length 0.0" in text
    if phases[0]["status"] == "done":
        assert 'agent_forge_phase_duration_seconds_count{phase="1"} 1.0' in text
        assert 'agent_forge_last_run_gate_passed{phase="1"} 1.0' in text
    else:
        assert 'agent_forge_phase_failures_total{kind="gate_failed",phase="1"} 1.0' in text
        assert 'agent_forge_last_run_gate_passed{phase="1"} 0.0' in text
    listed = {x["run_id"]: x["state"] for x in c.get("/runs", headers=hdr("read")).json()}
    assert listed["api-queued"] == "cancelled" and listed["seeded"] == "recorded" and listed["api-smoke"] == s["state"]


def test_cancel_a_running_run(svc):
    c, runs, _ = svc
    params = {f"1.{k}": v for k, v in SMOKE[1].items()}
    r = c.post("/runs", json=dict(phases="1", run_id="api-cancel", params=params), headers=hdr("run"))
    assert r.status_code == 202
    wait_state(c, "api-cancel", ("running",), 120)
    while not (runs / "api-cancel" / "registry.sqlite").exists():
        time.sleep(0.2)
    time.sleep(3)  # the runner has started phase 1
    s = c.post("/runs/api-cancel/cancel", headers=hdr("run")).json()
    assert s["state"] == "cancelled" and s["finished"] is not None
    with Registry.open(runs / "api-cancel", create=False) as reg:
        st = [p["status"] for p in reg.list_phases("api-cancel")]
    assert st in ([], ["failed"]), st
    assert "agent_forge_runs_running 0.0" in c.get("/metrics", headers=hdr("read")).text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_and_load_over_loopback(svc):
    "`agent-forge serve` in its own process on 127.0.0.1: the probe endpoint, raw '..' paths, 1,000 status requests."
    c, runs, aid = svc
    port = free_port()
    env = {**os.environ, "AGENT_FORGE_JWT_SECRET": KEY.decode(), "OMP_NUM_THREADS": "1"}
    env.pop("AGENT_FORGE_JWT_SECRET_FILE", None)
    cli = [str(Path(sys.executable).parent / "agent-forge"), "serve", "--port", str(port), "--runs-dir", str(runs)]
    proc = subprocess.Popen(cli, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while True:
            try:
                h = httpx.get(f"{base}/health")  # what the liveness and readiness probes ask
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.time() - t0 < 60, proc.stdout.read().decode()[-2000:]
                time.sleep(0.2)
        print(f"\nserve answered /health {time.time() - t0:.1f} s after start")
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["worker"] is True
        assert httpx.get(f"{base}/runs/seeded").status_code == 401
        tok = make_token(KEY, ("read",))
        for raw in ("/runs/..", "/runs/../seeded", "/runs/seeded/artifacts/1/files/../../registry.sqlite"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n".encode())
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            assert got.split(b" ")[1] in (b"400", b"404"), (raw, got[:200])
            assert b"SQLite" not in got
        load = os.getloadavg()
        res = load_test(f"{base}/runs/seeded", tok, n=1000, concurrency=50)
        print(
            f"load test: {res['n']} GET /runs/seeded at {res['concurrency']} clients: p50 {res['p50_ms']:.1f} ms, "
            f"p99 {res['p99_ms']:.1f} ms, max {res['max_ms']:.1f} ms, {res['errors']} errors, {res['rps']:.0f} req/s, "
            f"{res['wall_s']:.1f} s; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs"
        )
        assert res["errors"] == 0
    finally:
        proc.terminate()
        proc.wait(20)


def test_deploy_files_probe_the_open_health_endpoint(svc):
    "The manifest's probes ask /health on the served port, the key comes from the Secret, runs live on the claim."
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s.yaml").read_text())}
    assert set(docs) >= {"Secret", "PersistentVolumeClaim", "Deployment"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    port = ctr["ports"][0]["containerPort"]
    assert ctr["args"][ctr["args"].index("--port") + 1] == str(port)
    for probe in ("livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["path"] == "/health" and ctr[probe]["httpGet"]["port"] == "http"
    env = {e["name"]: e for e in ctr["env"]}
    assert env["AGENT_FORGE_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == docs["Secret"]["metadata"]["name"]
    runs_mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == ctr["args"][ctr["args"].index("--runs-dir") + 1])
    vol = next(v for v in pod["volumes"] if v["name"] == runs_mount["name"])
    assert vol["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in docker and "/health" in docker and "JWT_SECRET=" not in docker
    # what the probes get: 200 without a token, while everything else needs one
    c = svc[0]
    assert c.get("/health").status_code == 200 and c.get("/runs").status_code == 401

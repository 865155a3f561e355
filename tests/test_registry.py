"""Registry: WAL, transactions, hashing, tamper detection, model artifacts, concurrent access."""

import json, multiprocessing as mp, shutil, sqlite3, time

import pytest
import torch

from agent_forge.foundation.core import AgentForgeError, ConfigError, IntegrityError
from agent_forge.runs.registry import Registry, load_model_artifact, save_model_artifact
from conftest import tiny_llama, tiny_tokenizer


@pytest.fixture
def reg(tmp_path):
    r = Registry.open(tmp_path / "run1")
    r.ensure_run("run1", "tiny", 0, {})
    yield r
    r.close()


def mkart(reg, name, files):
    d = reg.run_dir / "artifacts" / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).parent.mkdir(parents=True, exist_ok=True)
        (d / k).write_bytes(v)
    return d


def n_artifacts(reg):
    return reg.conn.execute("SELECT count(*) FROM artifacts").fetchone()[0]


def test_wal_and_schema(reg, tmp_path):
    assert reg.journal_mode == "wal"
    c = sqlite3.connect(tmp_path / "run1" / "registry.sqlite")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "phases", "artifacts"} <= tables
    cols = {r[1] for r in c.execute("PRAGMA table_info(artifacts)")}
    assert {"path", "files", "parents", "phase", "name", "kind", "metrics", "created"} <= cols


def test_register_hashes_every_file_and_writes_manifest(reg):
    d = mkart(reg, "a", {"w.bin": b"\x00" * 10, "sub/x.json": b"{}"})
    aid = reg.register_artifact("run1", 1, "trunk", d, metrics={"loss": 1.5})
    rec = reg.get_artifact(aid)
    assert set(rec["files"]) == {"w.bin", "sub/x.json"}
    assert json.loads((d / "manifest.json").read_text()) == rec["files"]
    assert rec["path"] == "artifacts/a" and rec["metrics"] == {"loss": 1.5} and rec["state"] == "live"
    assert reg.verify_artifact(aid)["id"] == aid
    assert reg.find_artifact("run1", phase=1, name="trunk")["id"] == aid


@pytest.mark.parametrize(
    "where,msg",
    [
        ("outside", "not inside the run folder"),
        ("runfolder", "not inside the run folder"),
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("file", "not a folder"),
    ],
)
def test_register_refuses_bad_paths_and_inserts_nothing(reg, tmp_path, where, msg):
    paths = {
        "outside": tmp_path / "elsewhere",
        "runfolder": reg.run_dir,
        "missing": reg.run_dir / "nope",
        "empty": reg.run_dir / "empty",
        "file": reg.run_dir / "f.txt",
    }
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x").write_text("x")
    (reg.run_dir / "empty").mkdir()
    (reg.run_dir / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match=msg):
        reg.register_artifact("run1", 1, "x", paths[where])
    assert n_artifacts(reg) == 0
    assert not (tmp_path / "elsewhere" / "manifest.json").exists()


def test_register_refuses_symlink_escape(reg, tmp_path):
    (tmp_path / "secret").write_text("s")
    d = mkart(reg, "a", {"ok": b"1"})
    (d / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ConfigError, match="symlink"):
        reg.register_artifact("run1", 1, "a", d)
    assert n_artifacts(reg) == 0


def test_failed_insert_leaves_no_manifest(reg):
    d = mkart(reg, "a", {"x": b"1"})
    with pytest.raises(ConfigError, match="unknown run"):
        reg.register_artifact("other", 1, "a", d)
    with pytest.raises(ConfigError, match="parent artifact 7"):
        reg.register_artifact("run1", 1, "a", d, parents=[7])
    assert not (d / "manifest.json").exists() and n_artifacts(reg) == 0


@pytest.mark.parametrize(
    "change,msg",
    [
        ("flip", "file w.bin changed"),
        ("delete", "file sub/x.json is missing"),
        ("extra", "unexpected extra file new.txt"),
        ("manifest", "manifest.json is missing or does not match"),
        ("rmdir", "is missing"),
    ],
)
def test_verify_names_the_file(reg, change, msg):
    d = mkart(reg, "a", {"w.bin": b"\x00\x01\x02", "sub/x.json": b"{}"})
    aid = reg.register_artifact("run1", 1, "trunk", d)
    if change == "flip":
        b = bytearray((d / "w.bin").read_bytes())
        b[1] ^= 1
        (d / "w.bin").write_bytes(bytes(b))
    elif change == "delete":
        (d / "sub" / "x.json").unlink()
    elif change == "extra":
        (d / "new.txt").write_text("x")
    elif change == "manifest":
        (d / "manifest.json").unlink()
    elif change == "rmdir":
        shutil.rmtree(d)
    with pytest.raises(IntegrityError, match=msg):
        reg.verify_artifact(aid)


def test_failed_phase_retires_its_artifacts(reg):
    reg.start_phase("run1", 1, "cognate", "01.ipynb")
    a1 = reg.register_artifact("run1", 1, "trunk", mkart(reg, "a", {"x": b"1"}))
    reg.finish_phase("run1", 1, "done")
    reg.start_phase("run1", 2, "evomerge", "02.ipynb")
    a2 = reg.register_artifact("run1", 2, "merged", mkart(reg, "b", {"x": b"2"}), parents=[a1])
    reg.finish_phase("run1", 2, "failed", error="RuntimeError: boom")
    assert reg.get_artifact(a2)["state"] == "failed"
    with pytest.raises(IntegrityError, match="is failed"):
        reg.verify_artifact(a2)
    with pytest.raises(AgentForgeError, match="no live artifact"):
        reg.find_artifact("run1", 2, "merged")
    assert reg.get_phase("run1", 2)["error"] == "RuntimeError: boom"
    # a rerun of phase 1 supersedes its earlier outputs
    reg.start_phase("run1", 1, "cognate", "01.ipynb")
    assert reg.get_artifact(a1)["state"] == "superseded"
    assert reg.get_phase("run1", 1)["status"] == "running"


def test_metrics_merge_and_json(reg):
    reg.start_phase("run1", 1, "cognate", "01.ipynb")
    reg.log_metrics("run1", 1, {"a": torch.tensor(2.5)})
    reg.log_metrics("run1", 1, {"b": 1})
    p = reg.finish_phase("run1", 1, "done", {"c": 3})
    assert p["metrics"] == {"a": 2.5, "b": 1, "c": 3}
    with pytest.raises(ConfigError, match="JSON"):
        reg.log_metrics("run1", 1, {"x": object()})
    assert reg.get_phase("run1", 1)["metrics"] == {"a": 2.5, "b": 1, "c": 3}


def test_transaction_rolls_back(reg):
    with pytest.raises(RuntimeError):
        with reg._tx() as c:
            c.execute("INSERT INTO runs VALUES ('tmp', 'tiny', 0, '{}', 'x', 'x')")
            raise RuntimeError("stop")
    assert [r["run_id"] for r in reg.list_runs()] == ["run1"]


def test_model_artifact_round_trip_and_tamper(reg):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    out = save_model_artifact(model, tok, reg.run_dir / "artifacts" / "llama")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    aid = reg.register_artifact("run1", 1, "trunk", out)
    m2, t2 = load_model_artifact(reg, aid)
    ids = tok("the cat sat on the mat", return_tensors="pt").input_ids
    assert t2("the cat sat on the mat").input_ids == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, model(ids).logits)
    f = out / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))
    with pytest.raises(IntegrityError, match="model.safetensors changed"):
        load_model_artifact(reg, aid)
    with pytest.raises(ConfigError, match="not empty"):
        save_model_artifact(model, tok, out)
    save_model_artifact(model, tok, out, overwrite=True)
    aid2 = reg.register_artifact("run1", 1, "trunk", out)
    assert reg.get_artifact(aid)["state"] == "superseded"
    assert load_model_artifact(reg, aid2)[0].config.hidden_size == 32


def test_load_refuses_pickle(reg):
    d = mkart(reg, "pk", {"config.json": b"{}"})
    torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin")
    aid = reg.register_artifact("run1", 1, "pk", d)
    with pytest.raises(IntegrityError, match="must be safetensors"):
        load_model_artifact(reg, aid)


def _reader(run_dir, n, q):
    try:
        with Registry.open(run_dir, create=False) as r:
            seen = [len(r.list_artifacts("run1")) for _ in range(n) if not time.sleep(0.005)]
        q.put(("ok", seen))
    except Exception as e:
        q.put(("err", repr(e)))


def test_concurrent_readers_in_other_processes(reg):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(str(reg.run_dir), 100, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for i in range(15):
        reg.register_artifact("run1", 1, f"a{i}", mkart(reg, f"a{i}", {"x": str(i).encode()}))
    res = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(kind == "ok" for kind, _ in res), res
    for _, seen in res:
        assert seen == sorted(seen) and len(seen) == 100  # readers never saw a half-written state going backwards
    assert len(reg.list_artifacts("run1")) == 15

"""Registry faults: many writers at once, tampered artifact files, and writes that fail half-way.

Concurrency: 8 processes each make 500 registry writes at once (phase starts and finishes, metrics, artifacts);
every write must be found afterwards and no "database is locked" may reach the caller. Tampering: every file of
an artifact is truncated, has one byte flipped, or is deleted; each case is an `IntegrityError` naming the file.
A registration whose hashing fails half-way leaves no row and no manifest."""
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from agent_forge.foundation.core import IntegrityError
from agent_forge.runs.registry import MANIFEST, Registry

WRITERS, WRITES = 8, 500


def _writer(run_dir, k, q):
    "One process: WRITES registry writes, cycling through the kinds of write a phase makes."
    errors, done = [], 0
    reg = Registry.open(run_dir)
    art = Path(run_dir) / f"w{k}"
    art.mkdir(exist_ok=True)
    (art / "x.txt").write_text(str(k))
    for i in range(WRITES):
        try:
            if i == 0:
                reg.start_phase("c", k + 1, f"p{k}", "")  # a (re)start clears a phase's metrics: once, first
            elif i == WRITES - 1:
                reg.finish_phase("c", k + 1, "done", {f"f{k}": i})
            elif i % 2:
                reg.log_metrics("c", k + 1, {f"w{k}_{i}": i})
            else:
                reg.register_artifact("c", k + 1, f"a{k}", art, metrics={"i": i}, kind="data")
            done += 1
        except Exception as e:  # noqa: BLE001 - every error is reported to the test
            errors.append(f"{type(e).__name__}: {e}")
    reg.close()
    q.put((k, done, errors))


def test_eight_writers_lose_nothing(tmp_path):
    run = tmp_path / "c"
    with Registry.open(run) as reg:
        reg.ensure_run("c", "tiny", 0, None)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_writer, args=(str(run), k, q)) for k in range(WRITERS)]
    for p in ps:
        p.start()
    results = [q.get(timeout=600) for _ in ps]
    for p in ps:
        p.join(timeout=60)
    errors = [e for _, _, es in results for e in es]
    assert errors == [], errors[:3]
    assert sum(d for _, d, _ in results) == WRITERS * WRITES
    with Registry.open(run, create=False) as reg:
        n_art = reg.conn.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0]
        metrics = {k: v for p in reg.list_phases("c") for k, v in p["metrics"].items()}
        assert {p["status"] for p in reg.list_phases("c")} == {"done"}
        assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert n_art == WRITERS * len(range(2, WRITES - 1, 2))  # every artifact write is a row (older ones superseded)
    for k in range(WRITERS):  # every metrics write of every writer is there
        assert all(f"w{k}_{i}" in metrics for i in range(1, WRITES - 1, 2)), k
        assert f"f{k}" in metrics, k


@pytest.fixture
def artifact(tmp_path):
    "A registered artifact of three files in a fresh run."
    reg = Registry.open(tmp_path / "t")
    reg.ensure_run("t", "tiny", 0, None)
    d = reg.run_dir / "phase1" / "m"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "sub" / "tokenizer.json").write_text('{"v": 1}')
    aid = reg.register_artifact("t", 1, "m", d)
    return reg, aid, d


def _truncate(f):
    f.write_bytes(f.read_bytes()[: max(0, f.stat().st_size // 2)])


def _flip(f):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("how", [_truncate, _flip, Path.unlink], ids=["truncate", "flip-one-byte", "delete"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "sub/tokenizer.json", MANIFEST])
def test_every_tampered_file_is_named(artifact, name, how):
    reg, aid, d = artifact
    reg.verify_artifact(aid)
    how(d / name)
    with pytest.raises(IntegrityError) as e:
        reg.verify_artifact(aid)
    assert (name if name != MANIFEST else MANIFEST) in str(e.value)


def test_failed_registration_leaves_nothing(artifact, monkeypatch):
    reg, aid, d = artifact
    e = reg.run_dir / "phase1" / "half"
    e.mkdir()
    for i in range(3):
        (e / f"f{i}.bin.part").write_text(str(i))
    import agent_forge.runs.registry as R

    calls = []

    def failing(path, chunk=1 << 20):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk error half-way")
        return "0" * 64

    monkeypatch.setattr(R, "sha256_file", failing)
    with pytest.raises(OSError, match="half-way"):
        reg.register_artifact("t", 1, "half", e)
    monkeypatch.undo()
    assert not (e / MANIFEST).exists()
    assert [a["name"] for a in reg.list_artifacts("t", 1)] == ["m"]
    with pytest.raises(sqlite3.Error):  # the registry is closed for writes only by errors, never left mid-transaction
        reg.conn.execute("COMMIT")

"""The `agent-forge` console script: one error line and exit 2 on bad input, nothing half-registered."""

import importlib.util, json, os, sqlite3, subprocess, sys
from pathlib import Path

import pytest

import agent_forge.runs.bench as bench
from agent_forge.runs.cli import main
from agent_forge.runs.runner import run_pipeline
from conftest import calls, tiny_llama

EXE = Path(sys.executable).parent / "agent-forge"


def cli(*args, timeout=600):
    "Run the installed console script; return (exit status, stdout, stderr lines that are not blank)."
    r = subprocess.run(
        [str(EXE), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    return r.returncode, r.stdout, [l for l in r.stderr.splitlines() if l.strip()]


def dump(db: Path):
    "Every row of every table, to compare registries before and after."
    c = sqlite3.connect(db)
    try:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("runs", "phases", "artifacts")}
    finally:
        c.close()


def test_console_script_installed():
    assert EXE.exists(), "run: .venv/bin/pip install -e . --no-deps"
    rc, out, err = cli("--help")
    assert rc == 0 and "run" in out and "status" in out and "bench" in out and err == []


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "tiny", "--phases", "9"], "unknown phase 9"),
        (["--preset", "tiny", "--phases", "2-"], "malformed phase selection"),
        (["--preset", "tiny", "--param", "threshold"], "malformed parameter 'threshold'"),
        (["--preset", "tiny", "--param", "nosuchkey=1"], "malformed parameter 'nosuchkey'"),
        (["--preset", "tiny", "--run-id", "a/b"], "invalid run id 'a/b'"),
        (["--preset", "tiny", "--run-id", ".."], "invalid run id '..'"),
        (["--preset", "tiny", "--run-id", "../escape"], "invalid run id '../escape'"),
        (["--resume", "--run-id", "never-ran"], "cannot resume 'never-ran'"),
        (["--preset", "tiny", "--resume"], "--resume needs --run-id"),
    ],
)
def test_bad_run_input_is_one_line_and_creates_nothing(project, capsys, args, msg):
    rc = main(["run", *args, "--no-progress"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (project / "runs").exists() and not (project.parent / "escape").exists()


def test_console_script_bad_input(project):
    for args, msg in [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "tiny", "--run-id", "../x"], "invalid run id '../x'"),
    ]:
        rc, out, err = cli("run", *args)
        assert rc == 2 and err == [f"error: {err[0][7:]}"] and msg in err[0], err
    rc, out, err = cli("frobnicate")
    assert rc == 2 and len(err) == 1 and "invalid choice: 'frobnicate'" in err[0]
    assert not (project / "runs").exists()


def test_bad_input_against_existing_run_changes_nothing(project, capsys):
    run_pipeline("tiny", "1", "keep", progress=False, log=lambda *a: None)
    capsys.readouterr()
    db = project / "runs" / "keep" / "registry.sqlite"
    before = dump(db)
    for args in [
        ["--preset", "full", "--run-id", "keep"],
        ["--run-id", "keep", "--resume", "--param", "nope=1"],
        ["--run-id", "keep", "--resume", "--phases", "0"],
        ["--run-id", "keep", "--preset", "tiny", "--param", "x"],
    ]:
        rc = main(["run", *args, "--no-progress"])
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (args, err)
    assert dump(db) == before
    assert sorted(p.name for p in (project / "runs").iterdir()) == ["keep"]
    assert calls(project, "keep") == [1]


def test_corrupted_artifact_is_one_error_line_and_nothing_trusted(project):
    rc, out, err = cli("run", "--preset", "tiny", "--phases", "1-2", "--run-id", "c1", "--no-progress")
    assert rc == 0, err
    assert "phase 1 (make): done in" in out and "phase 2 (check): done in" in out
    f = project / "runs" / "c1" / "artifacts" / "one" / "data.txt"
    f.write_bytes(bytes([f.read_bytes()[0] ^ 1]))
    rc, out, err = cli("run", "--preset", "tiny", "--phases", "2", "--run-id", "c1", "--no-progress")
    assert rc == 2 and len(err) == 1, err
    line = err[0]
    assert (
        line.startswith("error: phase 2 (check) failed after ")
        and "IntegrityError" in line
        and "data.txt changed" in line
    )
    assert line.endswith(str(project / "runs" / "c1" / "02_check.ipynb"))
    db = dump(project / "runs" / "c1" / "registry.sqlite")
    assert [(r[1], r[4]) for r in db["phases"]] == [(1, "done"), (2, "failed")]
    assert not any(r[2] == 2 and r[11] == "live" for r in db["artifacts"])  # no live phase-2 artifact
    rc, out, err = cli("status", "c1")
    assert rc == 0 and "NOT VERIFIED" in out and "data.txt changed" in out
    rc, out, err = cli("run", "--resume", "--run-id", "c1", "--phases", "1-2", "--no-progress")
    assert rc == 0, err
    assert "resuming at phase 1 (make)" in out and calls(project, "c1") == [1, 2, 2, 1, 2]
    assert any(
        l.startswith("run c1 (tiny): phases") for l in out.splitlines()
    )  # the resumed run's recorded preset, not None


def test_gate_failure_line(project):
    rc, out, err = cli(
        "run", "--preset", "tiny", "--phases", "1-2", "--run-id", "g1", "--param", "threshold=3", "--no-progress"
    )
    assert rc == 2 and err[-1] == (
        "error: gate failed in phase 2 (check): score 1.0 < threshold 3; report: "
        + str(project / "runs" / "g1" / "02_check.ipynb")
    )
    assert len(err) == 1, err  # nothing else on stderr: no per-key papermill warnings, no kernel chatter


def test_keep_going_runs_past_a_failed_gate(project):
    rc, out, err = cli(
        "run", "--preset", "tiny", "--phases", "1-4", "--run-id", "k1", "--param", "threshold=3", "--no-progress",
        "--keep-going",
    )
    assert rc == 2 and err[-1].startswith("error: gate failed in phase(s) 2 (--keep-going ran the rest): phase 2")
    assert calls(project, "k1") == [1, 2, 4]  # phase 4 ran on phase 2's artifact, still live
    assert "phase 2 (check): --keep-going: the next phases use its artifacts" in out
    rows = dump(project / "runs" / "k1" / "registry.sqlite")
    assert [r[4] for r in rows["phases"]] == ["done", "gate_failed", "done"]  # column 4: status


def test_status_and_missing_run(project, capsys):
    assert main(["status"]) == 0
    assert capsys.readouterr().out.startswith("no runs in")
    assert main(["status", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: no run at")


def test_merge_dispatch(project, tmp_path, capsys, monkeypatch):
    if importlib.util.find_spec("agent_forge.merge.mergekit") is None:
        assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out")]) == 2
        assert "not built yet" in capsys.readouterr().err
    else:
        import agent_forge.merge.mergekit as mc

        seen = []
        monkeypatch.setattr(mc, "run_merge_yaml", lambda c, o: seen.append((c, o)) or Path(o))
        assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out")]) == 0
        assert seen == [(tmp_path / "c.yml", tmp_path / "out")]


def test_bench_json_with_stand_in_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "cognate_builder", lambda preset: tiny_llama(64))
    out = tmp_path / "b.json"
    args = ["bench", "--preset", "tiny", "--device", "cpu", "--batch-size", "2", "--seq-len", "8"]
    args += ["--train-steps", "1", "--new-tokens", "3", "--optim-steps", "1", "--json", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["preset"] == "tiny" and rows[0]["new_tokens"] == 3 and rows[0]["train_tok_s"] > 0
    assert "MuGrokfast/AdamW" in capsys.readouterr().out
    assert main(["bench", "--preset", "huge"]) == 2


def test_docs_static_build(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).parent.parent)
    monkeypatch.delenv("AGENT_FORGE_HOME", raising=False)
    assert main(["docs", "--static", "--out", str(tmp_path / "site"), "--file-glob", "00_core.ipynb"]) == 0
    page = tmp_path / "site" / "00_foundation" / "core"
    assert page.with_suffix(".html").exists() and page.with_suffix(".md").exists()
    assert 'href="00_foundation/core.html"' in (tmp_path / "site" / "index.html").read_text()

"""Runner: chaining, parameters, gate failures, crashes and resume, on fake phase notebooks."""

import json

import nbformat
import pytest

from agent_forge.foundation.core import AgentForgeError, ConfigError, GateError
from agent_forge.runs.registry import Registry
from agent_forge.runs.runner import plan_run, run_pipeline, run_status
from conftest import calls


def run(*a, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *x: None)
    return run_pipeline(*a, **kw)


def phases(root, rid):
    with Registry.open(root / "runs" / rid, create=False) as reg:
        return {p["phase"]: p["status"] for p in reg.list_phases(rid)}


def states(root, rid):
    with Registry.open(root / "runs" / rid, create=False) as reg:
        return {
            a["name"] + f"#{a['id']}": a["state"]
            for a in reg.list_artifacts(rid, states=("live", "failed", "superseded"))
        }


def test_full_chain_injects_parameters_and_environment(project):
    notes = []
    res = run("tiny", "1-4", "r1", params=["value=7", "seed=3"], log=notes.append)
    assert [r["phase"] for r in res] == [1, 2, 4] and all(r["status"] == "done" for r in res)
    assert "note: no notebook yet for phase 3; left out of the chain" in notes
    assert any(l.startswith("phase 2 (check): done in ") for l in notes)
    assert calls(project, "r1") == [1, 2, 4]
    assert sorted(p.name for p in (project / "runs" / "r1" / "logs").iterdir()) == [
        "01_make.kernel.log",
        "02_check.kernel.log",
        "04_last.kernel.log",
    ]
    env = json.loads((project / "runs" / "r1" / "env_1.json").read_text())
    assert env["cwd"] == str(project) and env["seed"] == 3 and env["preset"] == "tiny"
    assert env["run_dir"] == str(project / "runs" / "r1")
    assert env["wandb_mode"] == "offline" and env["wandb_dir"] == str(project / "runs" / "r1" / "wandb")
    with Registry.open(project / "runs" / "r1", create=False) as reg:
        assert reg.get_run("r1")["seed"] == 3
        assert reg.get_phase("r1", 1)["metrics"]["value"] == 7
        assert reg.get_phase("r1", 1)["notebook"] == str(project / "runs" / "r1" / "01_make.ipynb")
    out = nbformat.read(project / "runs" / "r1" / "01_make.ipynb", as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    # a notebook that is not the registered phase notebook gets no typed preset parameters, only its own overrides
    assert len(injected) == 1 and "value = 7" in injected[0].source and "trunk_steps" not in injected[0].source


def test_gate_failure_then_resume_reruns_only_that_phase(project):
    with pytest.raises(GateError) as e:
        run("tiny", "1-8", "r2", params=["threshold=2"])
    msg = str(e.value)
    assert msg.startswith("gate failed in phase 2 (check): score 1.0 < threshold 2; report: ")
    assert msg.endswith(str(project / "runs" / "r2" / "02_check.ipynb")) and "\n" not in msg
    assert phases(project, "r2") == {1: "done", 2: "gate_failed"}  # phase 4 never started
    assert calls(project, "r2") == [1, 2]
    assert sorted(states(project, "r2").values()) == ["failed", "live"]
    # resume keeps the recorded threshold: the gate fails again, phase 1 is not rerun
    with pytest.raises(GateError):
        run(None, "1-8", "r2", resume=True)
    assert calls(project, "r2") == [1, 2, 2]
    run(None, "1-8", "r2", resume=True, params=["threshold=0.5"])
    assert calls(project, "r2") == [1, 2, 2, 2, 4]
    assert phases(project, "r2") == {1: "done", 2: "done", 4: "done"}
    lines = []
    assert run(None, "1-8", "r2", resume=True, log=lines.append) == []
    assert lines[-1] == "run r2: every selected phase is done and verified; nothing to run"


def test_tampered_artifact_makes_resume_restart_there(project):
    run("tiny", "1-4", "r3")
    (project / "runs" / "r3" / "artifacts" / "two" / "data.txt").write_text("tampered")
    lines = []
    run(None, "1-4", "r3", resume=True, log=lines.append)
    assert calls(project, "r3") == [1, 2, 4, 2, 4]
    assert any(l.startswith("resuming at phase 2 (check): output artifact") and "data.txt changed" in l for l in lines)
    assert "NOT VERIFIED" not in run_status(project / "runs", "r3")
    # (tampering with phase 1 makes resume restart at 1: tests/test_cli.py::test_corrupted_artifact_...)


def test_crash_marks_failed_and_retires_its_artifacts(project):
    with pytest.raises(AgentForgeError) as e:
        run("tiny", "1-4", "r4", params=["crash=true"])
    msg = str(e.value)
    assert msg.startswith("phase 4 (last) failed after ") and "RuntimeError: boom after registering four" in msg
    assert msg.endswith(f"executed notebook: {project/'runs'/'r4'/'04_last.ipynb'}")
    assert phases(project, "r4") == {1: "done", 2: "done", 4: "failed"}
    st = states(project, "r4")
    assert [v for k, v in st.items() if k.startswith("four")] == ["failed"]
    with Registry.open(project / "runs" / "r4", create=False) as reg:
        assert "boom" in reg.get_phase("r4", 4)["error"]
    status = run_status(project / "runs", "r4")
    assert "phase 4 (last): failed" in status and "error: RuntimeError: boom" in status


def test_rejected_requests_create_nothing(project):
    for kw, msg in [
        (dict(preset="huge"), "unknown preset"),
        (dict(phases="0"), "unknown phase 0"),
        (dict(phases="1-9"), "unknown phase 9"),
        (dict(phases="x"), "malformed phase selection"),
        (dict(params=["nope=1"]), "malformed parameter 'nope'"),
        (dict(params=["value"]), "malformed parameter 'value'"),
        (dict(run_id="a/b"), "invalid run id"),
        (dict(run_id=".."), "invalid run id"),
        (dict(run_id="x/../y"), "invalid run id"),
        (dict(resume=True, run_id="zz"), "no run at"),
        (dict(kernel="no-such-kernel"), "python -m ipykernel install --sys-prefix --name no-such-kernel"),
        (dict(params=["run_dir=/tmp"]), "--runs-dir"),
    ]:
        args = dict(preset="tiny", phases="1-4", run_id="ok", log=lambda *a: None)
        args.update(kw)
        with pytest.raises(AgentForgeError, match=msg):
            plan_run(**args)
    assert not (project / "runs").exists()


def test_resume_rejects_another_preset(project):
    run("tiny", "1", "r5")
    with pytest.raises(ConfigError, match="uses preset 'tiny', not 'full'"):
        run("full", "1", "r5", resume=True)
    with pytest.raises(ConfigError, match="was created with preset 'tiny'"):
        run("full", "1", "r5")
    assert calls(project, "r5") == [1]


def test_status_lists_runs(project):
    run("tiny", "1", "r6")
    s = run_status(project / "runs")
    assert "r6" in s and "1:done" in s
    s = run_status(project / "runs", "r6")
    assert "phase 1 (make): done" in s and "value=1" in s and ": verified" in s

"""End to end: the real runner executes every phase notebook that exists, at smoke size.

The phase notebooks' parameters cells hold the `tiny` preset; the smoke sizes (`conftest.SMOKE`) are passed as
phase-qualified `--param N.KEY=VALUE` overrides, so CI exercises the whole chain (registry hand-offs included) in
minutes, and the runner validates every value through the phases' typed configs.
"""
import json, os, subprocess, sys
from pathlib import Path

import papermill as pm
import pytest
from conftest import SMOKE, smoke_args

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "agent-forge")]


def run_cli(*args, timeout=1800):
    env = {**os.environ, "WANDB_MODE": "offline", "AGENT_FORGE_HOME": str(ROOT)}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    r = run_cli("run", "--preset", "tiny", "--phases", "1-8", "--run-id", "e2e", "--runs-dir", str(runs),
                "--no-progress", *smoke_args())
    return r, runs / "e2e"


def test_chain_runs_and_registers(chain):
    r, run_dir = chain
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from agent_forge.runs.registry import Registry
    reg = Registry.open(run_dir, create=False)
    phases = {p["phase"]: p for p in reg.list_phases("e2e")}
    assert phases[1]["status"] == "done"
    assert all(p["status"] == "done" for p in phases.values()), phases
    for name in ["trunk", "reasoning", "memory", "general"]:
        reg.verify_artifact(reg.find_artifact("e2e", 1, name)["id"])
    assert (run_dir / "01_cognate.ipynb").exists()


def test_phase1_report_has_measured_gate(chain):
    r, run_dir = chain
    from agent_forge.runs.registry import Registry
    m = Registry.open(run_dir, create=False).get_phase("e2e", 1)["metrics"]
    losses = m["heldout_loss"]
    for d in ["reasoning", "memory", "general"]:  # the gate the notebook asserted, checked again from the registry
        assert min(["reasoning", "memory", "general"], key=lambda s: losses[s][d]) == d
    assert m["parameters"] > 0 and m["speed"]["trunk"]["tokens_per_s"] > 0


def test_tampered_artifact_is_refused(chain):
    r, run_dir = chain
    from agent_forge.foundation.core import IntegrityError
    from agent_forge.runs.registry import Registry, load_model_artifact
    reg = Registry.open(run_dir, create=False)
    art = reg.find_artifact("e2e", 1, "general")
    cfg = Path(art["abspath"]) / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_size"', '"hidden_size" ', 1))
    with pytest.raises(IntegrityError, match="config.json"):
        load_model_artifact(reg, art["id"])
    s = run_cli("status", "e2e", "--runs-dir", str(run_dir.parent))
    assert "config.json" in s.stdout + s.stderr

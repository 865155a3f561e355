"""End to end at smoke size: every phase notebook, executed on the outputs of the one before.

The phase notebooks' parameters cells hold the `tiny` preset; the smoke sizes (`conftest.SMOKE`) are passed as
phase-qualified `--param N.KEY=VALUE` overrides and validated through the phases' typed configs. At smoke size a
phase's gate may fail on its measured numbers (the models barely train), so the chain is run twice:
- `chain`: each notebook executed in turn with papermill, with the parameters the runner plans; a notebook may
  end in its `GateError` (it registers its outputs and gate figures before raising), so every phase runs;
- `runner_chain`: the real `agent-forge run`, which must stop exactly at the first phase whose gate failed in
  `chain` (the same seed and settings give the same numbers), with one line naming it, or finish every phase.
The tests check that each registered gate verdict follows from the registered figures.
"""

import math, os, subprocess, sys
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
    "Run every phase notebook in turn; return (run folder, {phase: None or the GateError message})."
    from agent_forge.runs.runner import plan_run

    runs = tmp_path_factory.mktemp("runs")
    args = smoke_args()
    plan = plan_run("tiny", "1-8", "e2e", params=args[1::2], runs_dir=runs, root=ROOT, log=lambda *a: None)
    os.environ.setdefault("WANDB_MODE", "offline")
    outcome = {}
    plan["run_dir"].mkdir(parents=True)
    for s in plan["steps"]:
        try:
            pm.execute_notebook(
                str(s["source"]),
                str(s["output"]),
                parameters=s["parameters"],
                kernel_name="agent-forge",
                cwd=str(ROOT),
                progress_bar=False,
            )
            outcome[s["phase"]] = None
        except pm.PapermillExecutionError as e:
            assert e.ename == "GateError", f"phase {s['phase']} failed with {e.ename}: {e.evalue}"
            outcome[s["phase"]] = e.evalue
    print("smoke chain gates:", {n: "passed" if e is None else e for n, e in outcome.items()})
    return plan["run_dir"], outcome


@pytest.fixture(scope="module")
def runner_chain(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    r = run_cli(
        "run",
        "--preset",
        "tiny",
        "--phases",
        "1-8",
        "--run-id",
        "e2e",
        "--runs-dir",
        str(runs),
        "--no-progress",
        *smoke_args(),
    )
    return r, runs / "e2e"


def test_every_phase_runs_and_registers(chain):
    run_dir, outcome = chain
    from agent_forge.runs.registry import Registry

    from agent_forge.foundation.config import PHASES, get_phase

    assert sorted(outcome) == [p.number for p in PHASES if p.built]
    with Registry.open(run_dir, create=False) as reg:
        for phase, names in {
            1: ["trunk", "reasoning", "memory", "general"],
            2: ["merged"],
            3: ["quietstar"],
            4: ["bitnet"],
            5: ["curriculum"],
            6: ["baked", "toolset"],
            7: ["experts", "expert_vectors", "design"],
            8: ["compressed"],
        }.items():
            if phase not in outcome:
                continue
            for name in names:
                reg.verify_artifact(reg.find_artifact("e2e", phase, name)["id"])
    for phase in outcome:
        assert (run_dir / get_phase(phase).notebook).exists()


def test_runner_stops_at_the_first_failed_gate(chain, runner_chain):
    from agent_forge.runs.registry import Registry

    _, outcome = chain
    r, run_dir = runner_chain
    failed = [n for n, e in sorted(outcome.items()) if e is not None]
    with Registry.open(run_dir, create=False) as reg:
        status = {p["phase"]: p["status"] for p in reg.list_phases("e2e")}
    if not failed:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert status == {n: "done" for n in outcome}
    else:
        first = failed[0]
        assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
        assert f"gate failed in phase {first} " in r.stderr
        assert status == {**{n: "done" for n in range(1, first)}, first: "gate_failed"}


def _printed_table(nb_path, caption):
    "The rows of the markdown Table with `caption` in an executed notebook: {row name: [cell, ...]}."
    import nbformat

    for cell in nbformat.read(nb_path, as_version=4).cells:
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown", "")
            if caption in md:
                rows = [l.strip().strip("|").split("|") for l in md.splitlines() if l.startswith("|")]
                return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[2:]}
    raise AssertionError(f"no table captioned {caption!r} in {nb_path}")


def _registered(run_dir, phase):
    from agent_forge.runs.registry import Registry

    with Registry.open(run_dir, create=False) as reg:
        p = reg.get_phase("e2e", phase)
        return p["metrics"] if p else {}


def test_phase1_report_has_measured_gate(chain):
    "The registered gate is the one the notebook printed, recomputed from the registered matrix and scores."
    run_dir, outcome = chain
    m = _registered(run_dir, 1)
    losses, gate, ts, dts = m["heldout_loss"], m["gate"], m["task_score"], m["domain_task_score"]
    domains = ["reasoning", "memory", "general"]
    printed = _printed_table(run_dir / "01_cognate.ipynb", "held-out mean NLL per domain")
    assert set(printed) == {"trunk", *domains}
    for name, row in printed.items():  # the matrix the notebook showed is the registered one
        assert row == [f"{losses[name][d]:.3f}" for d in domains]
    assert set(gate) == set(domains)
    for d, g in gate.items():
        others = {n: losses[n][d] for n in losses if n != d}
        assert g["own_loss"] == losses[d][d] and g["best_other_loss"] == min(others.values())
        assert g["loss_passed"] == (losses[d][d] < min(others.values()))
        suites = m["domain_suites"][d]
        k, n = sum(round(ts[d][s]["mean"] * ts[d][s]["n"]) for s in suites), sum(ts[d][s]["n"] for s in suites)
        assert dts[d][d]["n"] == n and math.isclose(dts[d][d]["mean"], k / n) and g["task"] == dts[d][d]["mean"]
        assert math.isclose(g["task_se"], math.sqrt(k / n * (1 - k / n) / n), abs_tol=1e-12)
        two_se = 2 * math.sqrt(g["task_se"] ** 2 + dts["trunk"][d]["se"] ** 2)
        assert math.isclose(g["two_se"], two_se) and g["task_passed"] == (g["task"] - dts["trunk"][d]["mean"] > two_se)
    passed = all(g["loss_passed"] and g["task_passed"] for g in gate.values())
    assert passed == (outcome[1] is None)  # the notebook raised its GateError exactly when a check failed
    for model, suites in ts.items():  # every score is a binomial mean over the asked number of problems
        for s, v in suites.items():
            assert v["n"] == SMOKE[1]["task_eval_examples"] and round(v["mean"] * v["n"]) == v["mean"] * v["n"]
            assert math.isclose(v["se"], math.sqrt(v["mean"] * (1 - v["mean"]) / v["n"]), abs_tol=1e-12)


def test_phase2_to_5_gates_follow_from_their_figures(chain):
    run_dir, outcome = chain
    m2 = _registered(run_dir, 2)
    for c in m2["gate_checks"]:
        if c["check"].startswith("loss below"):
            assert c["ok"] == (c["diff"] < 0) and math.isclose(c["diff"], c["merged"] - c["other"], abs_tol=1e-9)
    assert m2["gate_passed"] == all(c["ok"] for c in m2["gate_checks"]) == (outcome[2] is None)
    m3 = _registered(run_dir, 3)
    d_t, se_t = m3["hard_thought_minus_none"], m3["hard_thought_se"]
    assert m3["gate"]["passed"] == (d_t <= 2 * se_t) == (outcome[3] is None)
    m4 = _registered(run_dir, 4)
    from agent_forge.foundation.config import BitNetPhaseConfig

    lim, ret = BitNetPhaseConfig(), m4["accuracy_retention_vs_control"]
    ok4 = m4["ppl_vs_control"] <= lim.max_ppl_increase and (ret is None or ret >= lim.min_accuracy_retention)
    assert m4["gate_passed"] == ok4 == (outcome[4] is None)
    m5 = _registered(run_dir, 5)
    b, a = m5["before"], m5["after"]
    ok5 = a["total"] - b["total"] > 2 * math.sqrt(a["total_se"] ** 2 + b["total_se"] ** 2)
    ok5 = ok5 and all(math.isfinite(a[k]) and a[k] <= b[k] for k in ("text_loss", "answer_loss"))
    assert m5["gate_passed"] == ok5 == (outcome[5] is None)


def test_phase6_gate_follows_from_its_figures(chain):
    "Tool use beats no tools by 2 se (and the floor), persona consistency rises by 2 se: as registered and raised."
    run_dir, outcome = chain
    m6 = _registered(run_dir, 6)
    from agent_forge.foundation.config import BakingPhaseConfig

    acc = m6["tools"]["baked"]["all"]["accuracy"]
    base = max(m6["no_tools"]["incoming"]["all"], m6["no_tools"]["baked"]["all"], key=lambda s: s["mean"])
    n = SMOKE[6]["eval_examples"] * len(SMOKE[6]["levels"].split(",")) * 2
    assert acc["n"] == base["n"] == n
    floor = BakingPhaseConfig().min_tool_accuracy
    ok_t = acc["mean"] - base["mean"] > 2 * math.sqrt(acc["se"] ** 2 + base["se"] ** 2) and acc["mean"] > floor
    p0, p1 = m6["persona"]["incoming"], m6["persona"]["baked"]
    ok_p = p1["consistency"] - p0["consistency"] > 2 * math.sqrt(p0["consistency_se"] ** 2 + p1["consistency_se"] ** 2)
    assert m6["gate_passed"] == (ok_t and ok_p) == (outcome[6] is None)
    assert len(m6["cycles"]) <= SMOKE[6]["max_cycles"] and [c["kind"] for c in m6["cycles"]][:2] == ["A", "B"]
    assert all(len(c["candidates"]) == SMOKE[6]["candidates"] for c in m6["cycles"])


def test_phase7_gate_follows_from_its_figures(chain):
    "Chosen design beats the input model by 2 se on the test problems, parameter change under 5%: as gated and raised."
    run_dir, outcome = chain
    m7 = _registered(run_dir, 7)
    from agent_forge.foundation.config import ExpertsPhaseConfig
    from agent_forge.experts.search import Design, stored_numbers
    from agent_forge.experts.svf import load_experts
    from agent_forge.runs.registry import Registry

    c = ExpertsPhaseConfig()
    n = SMOKE[7]["test_examples"] * len(c.families.split(","))
    acc, base = m7["final"]["all"], m7["base"]["all"]
    assert acc["n"] == base["n"] == n
    with Registry.open(run_dir, create=False) as reg:
        vecs, index = load_experts(reg.find_artifact("e2e", 7, "expert_vectors")["abspath"])
        reg.verify_artifact(reg.find_artifact("e2e", 7, "design")["id"])
    size = sum(z.numel() for z in vecs[index["families"][0]].values())
    assert m7["layers"]["expert_size"] == size
    stored = stored_numbers(Design(**m7["chosen"]), size, len(index["families"]))
    assert stored == m7["stored_numbers"] and math.isclose(m7["param_change"], stored / m7["parameters"])
    ok = acc["mean"] - base["mean"] > 2 * math.sqrt(acc["se"] ** 2 + base["se"] ** 2)
    ok = ok and m7["param_change"] < c.max_param_change
    assert m7["gate_passed"] == ok == (outcome[7] is None)
    arch = m7["search"]["archive"]
    assert m7["search"]["chosen"] in m7["search"]["front"] and arch[m7["search"]["chosen"]]["design"] == m7["chosen"]
    assert all(arch[i]["param_change"] < c.max_param_change for i in m7["search"]["front"])
    assert all(len(r["reinforce"]["curve"]) == SMOKE[7]["rl_steps"] for r in m7["experts"].values())


def test_phase8_gate_follows_from_its_figures(chain):
    "Size ratio from the bytes on disk, retention and perplexity rise from the registered stages: as gated and raised."
    run_dir, outcome = chain
    m8 = _registered(run_dir, 8)
    from agent_forge.foundation.config import CompressPhaseConfig
    from agent_forge.runs.registry import Registry

    c = CompressPhaseConfig()
    with Registry.open(run_dir, create=False) as reg:
        art = reg.find_artifact("e2e", 8, "compressed")
        final_bytes = sum(f.stat().st_size for f in Path(art["abspath"]).rglob("*.safetensors"))
        p1 = reg.get_artifact(m8["phase1"]["artifact"])
        p1_bytes = sum(f.stat().st_size for f in Path(p1["abspath"]).rglob("*.safetensors"))
    assert m8["sizes"]["final"]["weights_bytes"] == final_bytes
    assert m8["sizes"]["fp32 Phase 1"]["weights_bytes"] == p1_bytes
    assert math.isclose(m8["ratio"], p1_bytes / final_bytes)
    s = m8["stages"]
    ppl = s["final"]["ppl"] / s["input"]["ppl"] - 1
    acc_in, acc_out = s["input"]["pooled"]["mean"], s["final"]["pooled"]["mean"]
    ret_ok = acc_in > 0 and acc_out / acc_in >= c.min_accuracy_retention
    ok = p1_bytes / final_bytes >= c.min_ratio and ret_ok and ppl <= c.max_ppl_increase
    assert m8["gate_passed"] == ok == (outcome[8] is None)
    bits = art["metrics"]["tensor_bits"]
    assert all(r["bpw"] > 0 for r in bits.values())
    assert all(abs(r["bpw"] - 1.6) < 0.01 for n, r in bits.items() if n.endswith("weight_packed") and r["bytes"] > 1000)
    assert m8["decode_ms"] > 0


def test_tampered_artifact_is_refused(chain):
    run_dir, _ = chain
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

"""Lineage-aware resume: a phase counts as done only while its outputs verify, its recorded inputs are the live
artifacts it would consume now and its parameters are the requested ones; Phase 2's search state is keyed on
everything that determines it. Fake two-phase project (no models), one papermill kernel per phase run."""

import json, textwrap

import nbformat
import pytest

from agent_forge.merge.evomerge import GAConfig, ga_search, search_key
from agent_forge.runs.registry import PHASE_ENV, Registry, artifact_sha256
from agent_forge.runs.runner import phase_stale, plan_run, resume_index, run_pipeline, run_status

HEAD = 'run_id = "x"\nrun_dir = ""\npreset = "tiny"\nseed = 0\n'
BODY = {
    1: (
        "01_make.ipynb",
        "value = 1\n",
        """
        d = Path(run_dir) / "artifacts" / "one"
        d.mkdir(parents=True, exist_ok=True)
        (d / "data.txt").write_text(str(value))
        reg.register_artifact(run_id, 1, "one", d, kind="data")
        """,
    ),
    2: (
        "02_use.ipynb",
        "threshold = 0.5\n",
        """
        one = reg.verify_artifact(reg.find_artifact(run_id, 1, "one"))
        bonus = reg.list_artifacts(run_id, 1, "bonus")  # an optional input: absent for now
        d = Path(run_dir) / "artifacts" / "two"
        d.mkdir(parents=True, exist_ok=True)
        (d / "data.txt").write_text(f"{threshold} {(d.parent / 'one' / 'data.txt').read_text()}")
        reg.register_artifact(run_id, 2, "two", d, parents=[one["id"]], kind="data")
        """,
    ),
}


@pytest.fixture
def proj(tmp_path, monkeypatch):
    "A project whose phase 2 consumes phase 1's artifact 'one' and looks for an optional 'bonus'."
    root = tmp_path / "proj"
    (root / "pipelines").mkdir(parents=True)
    for n, (fname, extra, body) in BODY.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "agent-forge", "display_name": "agent-forge", "language": "python"}
        p = nbformat.v4.new_code_cell(HEAD + extra)
        p.metadata["tags"] = ["parameters"]
        code = "from pathlib import Path\nfrom agent_forge.runs.registry import Registry\n"
        code += "reg = Registry.open(run_dir)\nreg.ensure_run(run_id, preset, seed)\n"
        code += f'open(Path(run_dir) / "calls.txt", "a").write("{n}\\n")\n' + textwrap.dedent(body)
        nb.cells = [p, nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, root / "pipelines" / fname)
    monkeypatch.setenv("AGENT_FORGE_HOME", str(root))
    monkeypatch.delenv(PHASE_ENV, raising=False)
    return root


def run(root, *a, **kw):
    return run_pipeline(*a, root=root, progress=False, log=kw.pop("log", lambda *x: None), **kw)


def calls(root, rid):
    return [int(x) for x in (root / "runs" / rid / "calls.txt").read_text().split()]


def test_lineage_params_and_status(proj):
    rid, rd = "L", proj / "runs" / "L"
    run(proj, "tiny", "1-2", rid)
    with Registry.open(rd, create=False) as reg:
        one = reg.find_artifact(rid, 1, "one")
        p1, p2 = reg.get_phase(rid, 1), reg.get_phase(rid, 2)
        # the kernel recorded what phase 2 consumed (id and content hash) and the empty optional lookup
        assert p2["inputs"] == [
            dict(phase=1, name="bonus", id=None, sha256=None),
            dict(phase=1, name="one", id=one["id"], sha256=artifact_sha256(one["files"])),
        ]
        assert p1["inputs"] == [] and p1["params"] == {"preset": "tiny", "seed": 0, "value": 1}
        assert p2["params"] == {"preset": "tiny", "seed": 0, "threshold": 0.5}
    assert "  done: outputs verify, inputs live, parameters as requested" in run_status(proj / "runs", rid, proj)

    # rerunning phase 1 alone makes phase 2 stale although its own status is done and its files verify
    run(proj, "tiny", "1", rid)
    plan = plan_run(None, "1-2", rid, resume=True, root=proj, log=lambda *a: None)
    with Registry.open(rd, create=False) as reg:
        new_one = reg.find_artifact(rid, 1, "one")
        assert reg.get_phase(rid, 2)["status"] == "done"
        why = phase_stale(reg, rid, 2, plan["steps"][1]["resolved"])
        assert why == [f"input make/one is a new artifact #{new_one['id']} (was #{one['id']}), with the same sha256"]
        lines = []
        assert resume_index(reg, plan, lines.append) == 1
        assert lines == [f"resuming at phase 2 (use): {why[0]}"]
    status = run_status(proj / "runs", rid, proj)
    assert f"  stale: input make/one is a new artifact #{new_one['id']}" in status
    run(proj, None, "1-2", rid, resume=True)
    assert calls(proj, rid) == [1, 2, 1, 2]
    assert run(proj, None, "1-2", rid, resume=True) == []  # now everything counts as done

    # --resume --param reruns the phase whose parameter changed (and what follows), never the others
    with Registry.open(rd, create=False) as reg:
        before1 = reg.get_phase(rid, 1)
    lines = []
    run(proj, None, "1-2", rid, resume=True, params=["threshold=0.7"], log=lines.append)
    assert calls(proj, rid) == [1, 2, 1, 2, 2]
    assert "resuming at phase 2 (use): parameter threshold 0.5 -> 0.7" in lines
    with Registry.open(rd, create=False) as reg:
        assert reg.get_phase(rid, 1) == before1  # kept: its parameters and inputs are not rewritten
        assert reg.get_phase(rid, 2)["params"]["threshold"] == 0.7
        assert reg.get_run(rid)["params"]["overrides"] == {"2.threshold": 0.7}
    # a plain --param is recorded for the phases it reached, so resuming other phases does not pick it up
    plan = plan_run(None, "1", rid, resume=True, params=["value=3"], root=proj, log=lambda *a: None)
    assert plan["overrides"] == {"1.value": 3, "2.threshold": 0.7}
    assert plan["steps"][0]["resolved"]["value"] == 3

    # an optional input that appears later, and a tampered output, each make phase 2 stale, saying so
    with Registry.open(rd, create=False) as reg:
        b = rd / "artifacts" / "bonus"
        b.mkdir()
        (b / "x").write_text("b")
        bid = reg.register_artifact(rid, 1, "bonus", b, kind="data")
        assert phase_stale(reg, rid, 2) == [f"input make/bonus exists now (#{bid}); it was absent when the phase ran"]
        (rd / "artifacts" / "two" / "data.txt").write_text("tampered")
        why = phase_stale(reg, rid, 2)
        assert why[0].startswith("output artifact ") and "(two, phase 2): file data.txt changed" in why[0]
        (rd / "artifacts" / "one" / "data.txt").write_text("tampered")
        assert any(w.startswith("input make/one fails verification: ") for w in phase_stale(reg, rid, 2))
        assert phase_stale(reg, rid, 1) != []


def test_legacy_phase_without_lineage_is_stale(tmp_path):
    reg = Registry.open(tmp_path / "old")
    reg.ensure_run("old", "tiny", 0)
    reg.start_phase("old", 1, "make", "01.ipynb")  # no params recorded, as before lineage
    reg.finish_phase("old", 1, "done")
    reg.conn.execute("UPDATE phases SET inputs=NULL")
    assert phase_stale(reg, "old", 1, {"value": 1}) == [
        "no record of the inputs it consumed (it ran before inputs were recorded)",
        "no record of the parameters it ran with",
    ]
    reg.close()


def test_env_names_the_consuming_phase(tmp_path, monkeypatch):
    reg = Registry.open(tmp_path / "e")
    reg.ensure_run("e", "tiny", 0)
    d = tmp_path / "e" / "a"
    d.mkdir()
    (d / "f").write_text("1")
    aid = reg.register_artifact("e", 1, "one", d)
    reg.start_phase("e", 2, "use", "02.ipynb", params={"k": 1})
    monkeypatch.setenv(PHASE_ENV, "e:2")
    kernel_side = Registry.open(tmp_path / "e")
    assert kernel_side.consumer == ("e", 2)
    kernel_side.find_artifact("e", 1, "one")
    kernel_side.list_artifacts("e", 2, "own")  # the phase's own artifacts are outputs, not inputs
    kernel_side.list_artifacts("e", 1)  # a listing without a name is not a lookup of an input
    assert [(e["name"], e["id"]) for e in reg.get_phase("e", 2)["inputs"]] == [("one", aid)]
    kernel_side.close()
    reg.close()


def flat(recipe):
    return {"fitness": 1.0}


def test_search_state_is_keyed_on_its_inputs(tmp_path, capsys):
    path, cfg = tmp_path / "search_ga.json", GAConfig(population=3, generations=2)
    inputs = dict(parents={"trunk": "a" * 64}, windows="w1", weights={"perplexity": 0.4, "speed": 0.2})
    st = ga_search(flat, 3, path, cfg, 0, log=None, inputs=inputs)
    assert json.loads(path.read_text())["key"] == search_key(
        kind="ga", settings=json.loads(json.dumps({"ga": vars(cfg), "n_parents": 3})), seed=0, **inputs
    )
    notes = []
    again = ga_search(flat, 3, path, cfg, 0, log=notes.append, inputs=inputs)
    assert notes == [] and again["evaluations"] == st["evaluations"]  # resumed: nothing measured again
    for change, part in [
        (dict(parents={"trunk": "b" * 64}), "parents"),
        (dict(windows="w2"), "windows"),
        (dict(weights={"perplexity": 0.4, "speed": 0.0}), "weights"),
    ]:
        notes.clear()
        ga_search(flat, 3, path, cfg, 0, log=notes.append, inputs={**inputs, **change})
        assert notes[0] == f"search state {path} was made for other inputs (changed: {part}); starting fresh"
        ga_search(flat, 3, path, cfg, 0, log=None, inputs=inputs)  # back to the original key
    capsys.readouterr()
    ga_search(flat, 3, path, cfg, 1, log=None, inputs=inputs)  # log=None still says why it starts fresh
    assert "(changed: seed); starting fresh" in capsys.readouterr().out
    ga_search(flat, 3, path, GAConfig(population=3, generations=3), 1, log=None, inputs=inputs)
    assert "(changed: settings); starting fresh" in capsys.readouterr().out

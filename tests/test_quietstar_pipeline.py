"""Phase 3 end to end on a throwaway run: with only Phase 1 present it takes `reasoning`, bakes, trains Quiet-STaR
at smoke size, and registers `baked` and `quietstar` with measured metrics."""
import os
from pathlib import Path

import papermill as pm
import pytest
from conftest import SMOKE

ROOT = Path(__file__).resolve().parents[1]


def make_phase1_run(run, preset):
    "A run folder whose registry holds only a Phase 1 `reasoning` model (tiny untrained Cognate, real BPE tokenizer)."
    import agent_forge
    from conftest import tiny_cognate
    from agent_forge.data.tasks import arithmetic_examples
    from agent_forge.data.corpora import domain_documents
    from agent_forge.data.tokenizer import train_tokenizer
    from agent_forge.runs.registry import Registry, save_model_artifact

    texts = domain_documents("general", "train", 20, 0)
    texts += [e.text for e in arithmetic_examples(200, "train", 0, steps=True)]
    tok = train_tokenizer(texts, 320)
    model = tiny_cognate(len(tok), num_hidden_layers=1)
    reg = Registry.open(run)
    reg.ensure_run("qs", preset, 0, None)
    out = save_model_artifact(model, tok, run / "phase1" / "reasoning")
    reg.register_artifact("qs", 1, "reasoning", out)
    return run


def run_phase3(run, out, preset="tiny"):
    "Execute the phase notebook at smoke size (its parameters cell holds the tiny preset)."
    os.environ.setdefault("WANDB_MODE", "offline")
    pm.execute_notebook(
        str(ROOT / "pipelines" / "03_quietstar.ipynb"),
        str(out),
        kernel_name="agent-forge",
        parameters=dict(run_id="qs", run_dir=str(run), preset=preset, **SMOKE[3]),
        cwd=str(ROOT),
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def phase1_run(tmp_path_factory):
    return make_phase1_run(tmp_path_factory.mktemp("runs") / "qs", "tiny")


def test_phase3_smoke(phase1_run, tmp_path):
    run_phase3(phase1_run, tmp_path / "out.ipynb")
    from agent_forge.runs.registry import Registry
    reg = Registry.open(phase1_run, create=False)
    baked, qs = reg.find_artifact("qs", 3, "baked"), reg.find_artifact("qs", 3, "quietstar")
    reg.verify_artifact(baked["id"])
    reg.verify_artifact(qs["id"])
    assert qs["parents"] == [baked["id"]] and baked["parents"] == [reg.find_artifact("qs", 1, "reasoning")["id"]]
    assert {"mixing_head.safetensors", "quietstar.json"} <= set(qs["files"])
    metrics = qs["metrics"]
    # the registered figures are the model's: re-measure the no-thought answer NLL from the registered artifact
    import torch
    from agent_forge.baking.quietstar import answer_rows, load_quietstar, pair_nll
    from agent_forge.data.tasks import arithmetic_examples
    from agent_forge.runs.registry import load_model_artifact
    qsm, tok = load_model_artifact(reg, qs["id"], loader=load_quietstar)
    ex = arithmetic_examples(SMOKE[3]["eval_examples"], "heldout", 0, max_digits=2)
    ids, _, hard = answer_rows(tok, ex)
    hard_row = metrics["nll"]["hard"]
    assert hard_row["tokens"] == len(hard)
    assert abs(pair_nll(qsm, ids, hard, "none").mean().item() - hard_row["none"]) < 1e-4
    for kind in ("hard", "all"):  # the differences are those of the reported means, with a real standard error
        row = metrics["nll"][kind]
        assert abs(row["thought"] - row["none"] - row["thought_minus_none"]) < 1e-5
        assert abs(row["random"] - row["none"] - row["random_minus_none"]) < 1e-5
        assert row["thought_se"] > 0 and row["random_se"] > 0
    # the gate ran at tiny and passed: thoughts did no harm beyond two standard errors
    gate = reg.get_phase("qs", 3)["metrics"]["gate"]
    assert gate["passed"] and gate["preset"] == "tiny" and not gate["failed"]
    assert metrics["hard_thought_minus_none"] <= 2 * metrics["hard_thought_se"]
    # exact match comes with its standard error: sqrt(p (1 - p) / n) over the graded questions
    p, n = metrics["acc_think"], metrics["acc_n"]
    assert n == SMOKE[3]["eval_examples"] and abs(metrics["acc_se"]["think"] - (p * (1 - p) / n) ** 0.5) < 1e-9
    # baking moved the student towards the prompted teacher on held-out questions
    assert baked["metrics"]["kl_baked"] < baked["metrics"]["kl_original"]


def test_phase3_full_gate_refuses_useless_thoughts(tmp_path):
    "At the full preset an untrained model's thoughts do not help: the notebook reports, registers, raises GateError."
    run = make_phase1_run(tmp_path / "qs", "full")
    with pytest.raises(pm.PapermillExecutionError, match="GateError"):
        run_phase3(run, tmp_path / "out.ipynb", preset="full")
    from agent_forge.runs.registry import Registry
    reg = Registry.open(run, create=False)
    qs = reg.find_artifact("qs", 3, "quietstar")
    m = qs["metrics"]
    d_t, se_t = m["hard_thought_minus_none"], m["hard_thought_se"]
    d_r, se_r = m["hard_random_minus_none"], m["hard_random_se"]
    assert not (d_t < -2 * se_t and d_r >= -2 * se_r)  # exactly the condition the gate refused

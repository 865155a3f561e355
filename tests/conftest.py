"""Shared fixtures: a throwaway project with fake phase notebooks, and a tiny Llama model artifact."""

import json, os, sys, textwrap
from pathlib import Path

import nbformat
import pytest

HEAD = 'run_id = "nbval-smoke"\nrun_dir = ""\npreset = "tiny"\nseed = 0\n'
COMMON = textwrap.dedent("""
    import json, os
    from pathlib import Path
    from agent_forge.runs.registry import Registry
    from agent_forge.foundation.core import GateError
    reg = Registry.open(run_dir); reg.ensure_run(run_id, preset, seed)
    with open(Path(run_dir)/"calls.txt", "a") as f: f.write(f"{PHASE}\\n")
    (Path(run_dir)/f"env_{PHASE}.json").write_text(json.dumps(dict(cwd=os.getcwd(), wandb_dir=os.environ.get("WANDB_DIR"),
        wandb_mode=os.environ.get("WANDB_MODE"), seed=seed, preset=preset, run_dir=run_dir)))
    def make(name, text):
        d = Path(run_dir)/"artifacts"/name; d.mkdir(parents=True, exist_ok=True); (d/"data.txt").write_text(text)
        return reg.register_artifact(run_id, PHASE, name, d, kind="data")""")

# Smoke sizes of the real phase notebooks: their parameters cells hold the `tiny` preset, so tests pass these
# smaller values explicitly, per phase (`--param N.KEY=VALUE`).
SMOKE = {
    1: dict(
        seq_len=64,
        trunk_steps=30,
        specialist_steps=15,
        reasoning_steps=15,
        train_tokens_per_domain=60000,
        tokenizer_chars=400000,
        eval_windows=4,
        task_eval_examples=6,
        task_train_examples=500,
        curve_points=1,
        ablations=False,
    ),
    5: dict(
        assess_levels=2,
        assess_examples=6,
        pool_size=4,
        level_rounds=2,
        self_model_rounds=2,
        max_levels=1,
        eval_every=2,
        heldout_examples=4,
        steps_per_round=2,
        batch_size=4,
        dream_samples=4,
        bake_steps=2,
        bake_inputs=4,
        bake_heldout=2,
        seq_len=32,
        eval_windows=2,
    ),
    2: dict(population=4, generations=2, seq_len=64, eval_windows=8, task_examples=2, gate_task_examples=8),
    3: dict(
        bake_inputs=24,
        bake_heldout=12,
        bake_per_input=1,
        bake_steps=12,
        bake_batch=8,
        bake_max_new=24,
        positions=2,
        seq_len=48,
        batch_size=2,
        train_windows=256,
        qs_steps=6,
        qs_lr=3e-4,
        eval_examples=8,
        eval_windows=2,
        eval_positions=8,
        throughput_pairs=4,
        show_thoughts=4,
    ),
    4: dict(
        seq_len=32,
        batch_size=4,
        qat_steps=6,
        qat_warmup=1,
        train_tokens_per_domain=20000,
        calib_windows=2,
        eval_windows=2,
        task_eval_examples=2,
        speed_prompt_len=16,
        speed_new_tokens=4,
        speed_repeats=1,
    ),
    6: dict(
        levels="1",
        train_traces=12,
        warmup_steps=2,
        train_steps=4,
        batch_size=4,
        eval_examples=3,
        persona_examples=4,
        cycle_examples=2,
        candidates=2,
        max_cycles=2,
        bake_steps=1,
        bake_inputs=4,
        bake_heldout=2,
        bake_batch=4,
        max_new_tokens=12,
        transcripts=2,
    ),
    7: dict(
        train_examples=8,
        val_examples=4,
        test_examples=4,
        rl_steps=2,
        nt_steps=2,
        batch_size=4,
        eval_every=1,
        max_new_tokens=8,
        classifier_steps=2,
        cem_shots=2,
        cem_popsize=4,
        cem_iterations=1,
        search_pop=4,
        search_generations=1,
        n_boot=100,
    ),
    8: dict(
        seq_len=32,
        eval_windows=2,
        task_eval_examples=2,
        select_windows=1,
        calib_windows=1,
        seedlm_seeds=64,
        vptq_iters=2,
        verify_bits="2",
        decode_repeats=2,
    ),
}


def smoke_args(phases=SMOKE):
    "The smoke sizes as `--param N.KEY=VALUE` arguments."
    return [a for n, d in phases.items() for k, v in d.items() for a in ("--param", f"{n}.{k}={json.dumps(v)}")]


# phase -> (file name, extra parameters, body). Phase 2 has a gate; phase 4 can crash.
PHASES = {
    1: ("01_make.ipynb", "value = 1\n", 'make("one", str(value)); reg.log_metrics(run_id, 1, {"value": value})'),
    2: (
        "02_check.ipynb",
        "threshold = 0.5\n",
        'reg.verify_artifact(reg.find_artifact(run_id, 1, "one"))\nmake("two", "2")\nreg.log_metrics(run_id, 2, {"score": 1.0})\n'
        'if threshold > 1: raise GateError(f"score 1.0 < threshold {threshold}")',
    ),
    4: (
        "04_last.ipynb",
        "crash = False\n",
        'reg.verify_artifact(reg.find_artifact(run_id, 2, "two")); make("four", "4")\n'
        'if crash: raise RuntimeError("boom after registering four")',
    ),
}


def write_fake_pipelines(root: Path) -> Path:
    "Write fake phase notebooks 1, 2 and 4 under root/pipelines (phase 3 deliberately missing)."
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    for n, (fname, extra, body) in PHASES.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "agent-forge", "display_name": "agent-forge", "language": "python"}
        p = nbformat.v4.new_code_cell(HEAD + extra)
        p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell(COMMON.replace("PHASE", str(n)) + "\n" + body)]
        nbformat.write(nb, root / "pipelines" / fname)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A fake Agent Forge project: AGENT_FORGE_HOME points at it; runs go to its runs/ folder."
    root = write_fake_pipelines(tmp_path / "proj")
    monkeypatch.setenv("AGENT_FORGE_HOME", str(root))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return root


def calls(root: Path, run_id: str) -> list:
    "Phase numbers executed in a run, in order."
    f = root / "runs" / run_id / "calls.txt"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def tiny_tokenizer():
    "A word-level tokenizer built in code (no downloads)."
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(
        ["the cat sat on the mat", "a dog ran far", "1 + 2 = 3"],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"]),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=t, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", bos_token="<eos>"
    )


def tiny_llama(vocab_size: int, seed: int = 0):
    "A LlamaForCausalLM with hidden size 32 and 2 layers."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=2,
        pad_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_cognate(vocab_size: int, seed: int = 0, **overrides):
    "A CognateForCausalLM with hidden size 32 (2 layers, one fast recursion pass unless `overrides` say otherwise)."
    import torch
    from agent_forge.models.cognate import CognateConfig, CognateForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        sliding_window=32,
        num_persistent_tokens=2,
        memory_num_heads=2,
        memory_head_dim=8,
        memory_hidden_size=16,
        memory_chunk_size=8,
        trm_intermediate_size=64,
        trm_latent_steps=1,
        trm_recursions=1,
        trm_supervision_steps=1,
    )
    return CognateForCausalLM(CognateConfig(**{**cfg, **overrides}))


class Killed(Exception):
    "Stands for SIGKILL in the middle of a step."


def dies_at(n, nb):
    "`nb` that raises `Killed` on its `n`-th call (0: never)."
    calls = []

    def f(g):
        calls.append(1)
        if len(calls) == n:
            raise Killed(f"killed at call {n}")
        return nb(g)

    return f

"""The agent runtime: cached decoding equals uncached decoding (float, packed BitNet, expert vectors), halting with the
cache, and `agent-forge chat` on a real run (a tool call), an unknown run and a tampered artifact."""

import importlib.util, json, shutil, tempfile
from pathlib import Path

import pytest
import torch

from agent_forge.models.cognate import CognateCache, CognateConfig, CognateForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FINAL = ROOT / "runs" / "final"  # the tiny run the lead keeps; tests copy it and never write into it


def tiny(seed=0, **kw):
    "A Cognate with window 3 and memory chunks of 4, so 40 tokens cross both many times."
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, sliding_window=3)
    cfg.update(num_persistent_tokens=2, memory_num_heads=2, memory_head_dim=8, memory_hidden_size=16)
    cfg.update(memory_chunk_size=4, memory_conv_kernel=3, trm_intermediate_size=64)
    return CognateForCausalLM(CognateConfig(**{**cfg, **kw})).eval()


def packed(model):
    "`model` converted to BitNet 1.58, written packed and loaded back (TernaryLinear, int_mm kernel)."
    from agent_forge.compress.bitnet import convert_to_bitnet, load_packed, save_packed

    convert_to_bitnet(model, calib_ids=torch.randint(2, 64, (2, 9)))
    with tempfile.TemporaryDirectory() as d:
        save_packed(model.eval(), None, d)
        return load_packed(d, "int_mm")[0].eval()


@torch.no_grad()
def check_cache(model, prompt_len=5, new=35, batch=2):
    "Cached generate == uncached greedy, token for token; cached logits == the full forward's within 1e-5."
    ids = torch.randint(2, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    cached, uncached = model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw)
    assert cached.tolist() == uncached.tolist()
    cache, parts = CognateCache(), []
    for a, b in [(0, prompt_len), *[(t, t + 1) for t in range(prompt_len, cached.shape[1] - 7)], (-7, None)]:
        parts.append(model(cached[:, a : (b if b is not None else cached.shape[1])], past_key_values=cache).logits)
    err = (torch.cat(parts, 1) - model(cached).logits).abs().max().item()
    assert err < 1e-5, err
    assert cache.get_seq_length() == cached.shape[1]
    return err


def test_cached_decoding_equals_uncached_float():
    check_cache(tiny())
    m, ids = tiny(), torch.randint(2, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    for kw in (dict(num_beams=3), dict(do_sample=True, top_k=5)):  # beam search reorders the cache
        with torch.no_grad():
            torch.manual_seed(0)
            a = m.generate(ids, max_new_tokens=15, min_new_tokens=15, use_cache=True, **kw)
            torch.manual_seed(0)
            b = m.generate(ids, max_new_tokens=15, min_new_tokens=15, use_cache=False, **kw)
        assert a.tolist() == b.tolist(), kw
    check_cache(tiny(1, use_memory=False), batch=1)  # the attention-only ablation
    check_cache(tiny(2, sliding_window=1, num_persistent_tokens=0, memory_conv_kernel=1), batch=1)  # edge widths


def test_cached_decoding_equals_uncached_packed_bitnet():
    m = packed(tiny())
    assert type(m.model.layers[0].self_attn.q_proj).__name__ == "TernaryLinear"
    check_cache(m)


def test_cached_decoding_equals_uncached_compressed():
    from agent_forge.compress.final import encode_model, load_compressed, save_compressed

    m = packed(tiny(3))
    enc, layers = encode_model(m)
    with tempfile.TemporaryDirectory() as d:
        save_compressed(enc, layers, m, None, Path(d) / "c")
        c = load_compressed(Path(d) / "c")[0]
    check_cache(c)


def test_cached_decoding_with_expert_vectors():
    have = importlib.util.find_spec("agent_forge.experts") is not None
    if not have or importlib.util.find_spec("agent_forge.experts.svf") is None:
        pytest.skip("Phase 7's agent_forge.experts.svf has not landed: no expert vectors to apply yet")
    from agent_forge.experts.svf import add_experts, expert_layers

    for m, kind in ((tiny(4), "svf"), (packed(tiny(5)), "ia3")):  # SVF on float layers, IA3 on ternary ones
        assert set(add_experts(m, seed=0).values()) == {kind}
        with torch.no_grad():
            for layer in expert_layers(m).values():
                layer.z.normal_(generator=torch.Generator().manual_seed(6))  # an expert far from the identity
        check_cache(m.eval(), new=20, batch=1)


@torch.no_grad()
def test_halting_with_cache_stops_each_position_like_the_full_forward():
    m = tiny(halt_at_inference=True)
    m.recursion.halt_head.bias.fill_(0.0)
    m.recursion.halt_head.weight.normal_(generator=torch.Generator().manual_seed(0))
    ids = torch.randint(2, 64, (1, 30), generator=torch.Generator().manual_seed(3))
    ref, cache = m(ids), CognateCache()
    outs = [m(ids[:, :4], past_key_values=cache)] + [m(ids[:, t : t + 1], past_key_values=cache) for t in range(4, 30)]
    assert (torch.cat([o.logits for o in outs], 1) - ref.logits).abs().max().item() < 1e-5
    passes = torch.cat([o.act_passes for o in outs], 1)
    assert passes.tolist() == ref.act_passes.tolist()
    assert 1 < passes.float().mean().item() < 2  # some positions halted after pass 1, some did not


def chat(capsys, *args):
    "`agent-forge chat ARGS` in this process: (exit status, stdout, stderr)."
    from agent_forge.runs.cli import main

    rc = main(["chat", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def final_copy():
    if not (FINAL / "registry.sqlite").is_file():
        pytest.skip(f"no tiny run at {FINAL} (run `agent-forge run --preset tiny --phases 1-6 --run-id final`)")
    d = Path(tempfile.mkdtemp()) / "runs"
    shutil.copytree(FINAL, d / "final", ignore=shutil.ignore_patterns("checkpoints", "wandb", "*.ipynb"))
    yield d
    shutil.rmtree(d.parent)


def test_chat_one_shot_runs_a_tool_call_on_the_final_run(final_copy, capsys):
    args = ["final", "--runs-dir", str(final_copy), "--prompt", "Q: 37+2=", "--json", "--show-thoughts"]
    rc, out, err = chat(capsys, *args)
    assert rc == 0, err
    r = json.loads(out)
    assert r["calls"] and r["calls"][0][0] == "calculator" and r["calls"][0][3] is True
    assert r["answer"] == r["calls"][0][2]  # the answer is the tool's result, read back
    assert "<tool>" in r["text"] and "<tool>" not in r["answer"]
    rc, out, err = chat(capsys, "final", "--runs-dir", str(final_copy), "--prompt", "Q: 37+2=")
    assert (rc, out.strip()) == (0, "agent> " + r["answer"])  # calls hidden without --show-thoughts
    assert "phase 6" in err and "incremental (CognateCache)" in err


def test_cached_tool_loop_equals_phase6_loop(final_copy):
    from agent_forge.agent.runtime import Agent
    from agent_forge.tools.calls import generate_with_tools
    from agent_forge.tools.traces import tool_traces, trace_tools

    ag = Agent.load("final", final_copy)
    traces = tool_traces("arithmetic", 1, 4, "heldout", 0, final_copy / "final") + tool_traces(
        "recall", 1, 2, "heldout", 0, final_copy / "final"
    )
    for t in traces:
        ag.tools = trace_tools(t, final_copy / "final")
        got = ag.reply(t.prompt, 32)
        want = generate_with_tools(ag.model, ag.tokenizer, t.prompt, ag.tools, 32)
        assert got.text == want.text
        assert got.fed_tokens == len(ag.lm.seen)  # every token ran through the model once


@pytest.fixture(scope="module")
def demo_run():
    "A run folder built in code: one phase-2 float model artifact with a trained-in-code tokenizer."
    from agent_forge.data.tokenizer import train_tokenizer
    from agent_forge.runs.registry import Registry, save_model_artifact

    d = Path(tempfile.mkdtemp()) / "runs"
    tok = train_tokenizer(["Q: 12+30=42\n", "hello world\n"] * 20, 300)
    reg = Registry.open(d / "demo")
    reg.ensure_run("demo", "tiny", 0)
    reg.register_artifact("demo", 2, "merged", save_model_artifact(tiny(8, vocab_size=len(tok)), tok, d / "demo/p2"))
    reg.close()
    yield d
    shutil.rmtree(d.parent)


def test_chat_unknown_run_and_tampered_artifact(demo_run, tmp_path, capsys):
    args = ["demo", "--runs-dir", str(demo_run), "--prompt", "Q: 1+1=", "--json", "--max-new-tokens", "4"]
    rc, out, err = chat(capsys, *args)
    assert rc == 0 and json.loads(out)["prompt"] == "Q: 1+1=" and err == ""  # --json: one JSON line, nothing else
    rc, out, err = chat(capsys, "nosuch", "--runs-dir", str(demo_run), "--prompt", "x")
    assert rc == 2 and err.startswith("error: unknown run 'nosuch'") and err.count("\n") == 1
    bad = tmp_path / "runs"
    shutil.copytree(demo_run / "demo", bad / "demo")
    f = bad / "demo" / "p2" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    rc, out, err = chat(capsys, "demo", "--runs-dir", str(bad), "--prompt", "Q: 1+1=")
    assert rc == 2 and "model.safetensors changed" in err and out == ""


def test_phase7_design_is_applied_to_each_reply(tmp_path):
    if importlib.util.find_spec("agent_forge.experts") is None:
        pytest.skip("Phase 7's agent_forge.experts has not landed")
    import copy
    from agent_forge.agent.runtime import Agent
    from agent_forge.compress.bitnet import save_packed
    from agent_forge.data.tokenizer import train_tokenizer
    from agent_forge.experts.search import AgentParts, Design, save_agent
    from agent_forge.experts.svf import EXPERT_TARGETS, add_experts, get_expert
    from agent_forge.runs.registry import Registry
    from agent_forge.tools.calls import add_tool_tokens

    tok = train_tokenizer(["Q: 12+30=42\n", "hello world\n"] * 20, 300)
    add_tool_tokens(tok)
    m = packed(tiny(7, vocab_size=len(tok)))
    run = tmp_path / "demo"
    reg = Registry.open(run)
    reg.ensure_run("demo", "tiny", 0)
    mid = reg.register_artifact("demo", 7, "experts", save_packed(m, tok, run / "phase7/experts"), kind="bitnet")
    probe = copy.deepcopy(m)
    add_experts(probe, EXPERT_TARGETS)
    design = Design(recursions=1, halting=0.0, tools=False, experts="none", chunk=8)
    meta = dict(targets=list(EXPERT_TARGETS), max_mult=1.0)
    save_agent(run / "phase7/expert_vectors", AgentParts({"arithmetic": get_expert(probe)}), design, meta)
    reg.register_artifact("demo", 7, "expert_vectors", run / "phase7/expert_vectors", parents=[mid], kind="experts")
    reg.close()
    ag = Agent.load(run)
    assert ag.design == design and "recursions 1, halting 0.0, memory chunk 8" in ag.describe()
    seen = []
    cfg = ag.model.config
    hook = ag.model.recursion.register_forward_hook(
        lambda mod, i, o: seen.append((mod.T, cfg.halt_at_inference, cfg.halt_threshold))
    )
    r = ag.reply("Q: 12+30=", 8)
    hook.remove()
    assert seen and all(s == (1, True, 0.0) for s in seen)  # the design's recursions and halting, every step
    assert (ag.model.recursion.T, ag.model.config.halt_at_inference) == (2, False)  # restored after the reply
    assert r.calls == [] and "<tool>" not in r.text  # tools off: the call tokens are banned
    # Phase 8 carries the vectors and design inside its compressed artifact (agent/): the runtime applies them there
    from agent_forge.compress.final import encode_model, save_compressed

    enc, layers = encode_model(m)
    out = save_compressed(enc, layers, m, tok, run / "phase8/compressed")
    shutil.copytree(run / "phase7/expert_vectors", out / "agent", ignore=shutil.ignore_patterns("manifest.json"))
    reg = Registry.open(run)
    reg.register_artifact("demo", 8, "compressed", out, parents=[mid], kind="compressed")
    reg.close()
    ag8 = Agent.load(run)
    assert (ag8.record["phase"], ag8.design) == (8, design)
    assert ag8.reply("Q: 12+30=", 4).calls == []

"""Phase 7 across its notebooks: SVF exactness and gradients on a float Cognate, IA3 on ternary layers, REINFORCE
raising the reward on a toy task, the few-shot optimiser, halting that skips passes, the search's constraint and
front, and the agent's save/load round trip."""

import copy

import pytest
import torch

from agent_forge.baking.prompt import char_tokenizer
from agent_forge.compress.bitnet import convert_to_bitnet
from agent_forge.experts.adapt import cem_alpha
from agent_forge.experts.search import AgentParts, Design, applied, load_agent, run_design, save_agent
from agent_forge.experts.search import search_designs
from agent_forge.experts.svf import IA3Ternary, Problem, SVFLinear, add_experts, expert_layers, experts_off
from agent_forge.experts.svf import get_expert, set_expert, train_expert
from agent_forge.foundation.core import ConfigError
from agent_forge.models.cognate import CognateConfig, CognateForCausalLM

MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def tiny(seed=0):
    "A float Cognate small enough to train in seconds, and its character tokenizer."
    tok = char_tokenizer()
    cfg = CognateConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        memory_num_heads=1,
        memory_head_dim=16,
        memory_hidden_size=16,
        memory_chunk_size=8,
        trm_intermediate_size=32,
        sliding_window=32,
    )
    torch.manual_seed(seed)
    return CognateForCausalLM(cfg).eval(), tok


def sums():
    return [Problem("arithmetic", f"Q: {a}+{b}=", str(a + b), f"{a + b}\n") for a in range(1, 5) for b in range(1, 5)]


def test_svf_gradient_reaches_z_and_constant_z_is_the_base():
    m, tok = tiny()
    text = "R: ab=12 cd=34 ef=56 ? cd="  # longer than a memory chunk, so the memory's keys and values are read
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    base = m(input_ids=ids).logits
    kinds = add_experts(m)
    assert set(kinds.values()) == {"svf"} and len(kinds) == 10  # 2 MLPs (block, recursion) x 3, 4 memory projections
    for c in (1.0, -2.0):
        set_expert(m, {n: torch.full_like(z, c) for n, z in get_expert(m).items()})
        assert (m(input_ids=ids).logits - base).abs().max().item() < 1e-5
    set_expert(m, {n: z + torch.randn_like(z) for n, z in get_expert(m).items()})
    assert (m(input_ids=ids).logits - base).abs().max().item() > 1e-4  # a non-constant z changes the model
    with experts_off(m):
        assert torch.equal(m(input_ids=ids).logits, base)
    for layer in expert_layers(m).values():
        layer.z.requires_grad_(True)
    m(input_ids=ids).logits.logsumexp(-1).sum().backward()
    assert all(layer.z.grad is not None and layer.z.grad.abs().sum() > 0 for layer in expert_layers(m).values())
    layer = next(iter(expert_layers(m).values()))
    assert isinstance(layer, SVFLinear) and layer.U.dtype == torch.float64  # U, S, V computed once and kept


def test_ia3_on_ternary_layers_keeps_the_codes_and_passes_gradients():
    m, tok = tiny()
    convert_to_bitnet(m)
    m.eval()
    ids = torch.tensor([tok("S: copy 1 2=", add_special_tokens=False)["input_ids"]])
    base = m(input_ids=ids).logits
    codes = {n: p.detach().clone() for n, p in m.named_parameters()}
    kinds = add_experts(m, MLP)
    assert set(kinds.values()) == {"ia3"}
    set_expert(m, {n: torch.full_like(z, 0.3) for n, z in get_expert(m).items()})
    assert (m(input_ids=ids).logits - base).abs().max().item() < 1e-4
    m.train()  # the STE path of BitLinear carries the gradient to every earlier layer's scales
    for layer in expert_layers(m).values():
        layer.z.requires_grad_(True)
    m(input_ids=ids).logits.logsumexp(-1).sum().backward()
    assert all(isinstance(x, IA3Ternary) and x.z.grad.abs().sum() > 0 for x in expert_layers(m).values())
    after = {n.replace(".base", ""): p for n, p in m.named_parameters() if not n.endswith(".z")}
    assert all(torch.equal(after[n], p) for n, p in codes.items())  # nothing but z moves


def _half_right_model():
    "A float model trained on sums written half right and half one too high (a sampled answer is right ~1/2)."
    m, tok = tiny()
    docs = [f"{p.prompt}{int(p.answer) + d}\n" for p in sums() for d in (0, 1)]
    enc = tok(docs, add_special_tokens=False, padding=True, return_tensors="pt")
    lab = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(200):
        loss = m(input_ids=enc["input_ids"], labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), tok


def test_reinforce_raises_the_reward_on_a_toy_task():
    m, tok = _half_right_model()
    add_experts(m, MLP)
    start = get_expert(m)
    kw = dict(batch_size=16, lr=0.1, clip=1.0, max_new_tokens=3, eval_every=10)
    run = train_expert(m, tok, sums(), sums(), start, "toy", "reinforce", 30, kl_coef=0.0, **kw)
    r = [c["reward"] for c in run.curve]
    assert sum(r[-10:]) / 10 > sum(r[:10]) / 10 + 0.1
    assert run.val[-1][1] > run.val[0][1]
    assert torch.equal(get_expert(m)[next(iter(start))], run.expert[next(iter(start))])  # the kept vector is set
    nt = train_expert(m, tok, sums(), sums(), start, "toy", "next_token", 5, **kw)
    assert nt.objective == "next_token" and len(nt.curve) == 5 and nt.curve[0]["reward"] is None
    with pytest.raises(ConfigError):
        train_expert(m, tok, sums(), sums(), start, objective="ppo")


def test_few_shot_optimiser_finds_the_optimum_within_bounds():
    seen = []

    def fit(a):
        seen.append(a)
        return -((a[0] - 0.3) ** 2) - (a[1] - 0.9) ** 2 - (a[2] - 0.0) ** 2

    res = cem_alpha(fit, 3, iterations=15)
    assert all(abs(x - y) < 0.06 for x, y in zip(res.alpha, [0.3, 0.9, 0.0]))
    assert all(0 <= v <= 1 for a in seen for v in a) and len(seen) == 32 * len(res.history)


def test_halting_skips_the_passes_it_halts():
    m, _ = tiny()
    calls = []
    h = m.recursion.register_forward_hook(lambda mod, a, out: calls.append(a[0].shape[1]))
    ids = torch.arange(3, 15)[None]
    m(input_ids=ids)
    full = list(calls)
    calls.clear()
    with applied(m, Design(halting=-100.0)):  # every halting logit is above the threshold after the first pass
        out = m(input_ids=ids)
    h.remove()
    assert full == [12] * m.config.trm_supervision_steps
    assert calls == [12] and out.act_passes.eq(1).all()  # later passes ran on no position
    assert m.config.halt_at_inference is False  # restored


def test_search_respects_the_constraint_and_returns_its_front():
    def toy(d):
        acc = 0.2 + 0.1 * d.recursions + (0.2 if d.tools else 0.0) + 0.02 * d.k
        lat = 0.01 * d.k * d.recursions
        return dict(fitness=acc, accuracy=acc, latency=lat, param_change=0.2 * (d.experts == "cem"))

    sr = search_designs(toy, [Design(), Design(experts="cem", recursions=3, k=5)], pop_size=8, generations=4, log=None)
    keys = [tuple(sorted(e["design"].items())) for e in sr.archive]
    assert len(keys) == len(set(keys)) >= 8  # every design once
    assert all(sr.archive[i]["param_change"] < 0.05 for i in sr.front) and sr.chosen in sr.front
    front = [sr.archive[i] for i in sr.front]
    for e in front:  # no feasible design beats a front member on both objectives
        assert not any(
            o["param_change"] < 0.05
            and o["fitness"] >= e["fitness"]
            and o["latency"] <= e["latency"]
            and (o["fitness"] > e["fitness"] or o["latency"] < e["latency"])
            for o in sr.archive
        )


def test_agent_round_trip(tmp_path):
    m, tok = tiny()
    plain = copy.deepcopy(m)
    add_experts(m, MLP)
    z = get_expert(m)
    parts = AgentParts(
        {"arithmetic": {n: v + 0.4 for n, v in z.items()}, "sequence": {n: v - 0.4 for n, v in z.items()}},
        z,
        {"arithmetic": [0.7, 0.3], "sequence": [0.1, 0.9]},
        "",
        4,
    )
    d = Design(experts="cem", k=3)
    save_agent(tmp_path / "agent", parts, d, dict(targets=list(MLP), max_mult=1.0))
    p2, d2, index = load_agent(plain, tmp_path / "agent")
    assert d2 == d and index["families"] == ["arithmetic", "sequence"]
    assert run_design(plain, tok, sums(), d2, p2)[0] == run_design(m, tok, sums(), d, parts)[0]


def test_svf_on_a_tiny_llama():
    "The same layers on a Hugging Face Llama: its MLP and attention matrices, base logits back at constant z."
    from agent_forge.baking.prompt import tiny_llama

    tok = char_tokenizer()
    m = tiny_llama(len(tok)).eval()
    ids = torch.tensor([tok("S: rev 3 1 2=", add_special_tokens=False)["input_ids"]])
    base = m(input_ids=ids).logits
    kinds = add_experts(m, MLP + ("self_attn.q_proj", "self_attn.v_proj"))
    assert set(kinds.values()) == {"svf"} and len(kinds) == 2 * 5
    set_expert(m, {n: torch.full_like(z, 3.0) for n, z in get_expert(m).items()})
    assert (m(input_ids=ids).logits - base).abs().max().item() < 1e-5

"""Phase 6 parts that cross modules (agent_forge.tools.personas, agent_forge.tools.cycles): a packed ternary Cognate
model keeps its call tokens through save and reload, the A/B loop runs with the real half-bake and scorers on it and
leaves its input alone, personas refuse what they cannot check, and the phase's config and preset are valid."""

import copy

import pytest
import torch
from conftest import tiny_cognate

from agent_forge.baking.prompt import char_tokenizer, ids_containing
from agent_forge.compress.bitnet import BitLinear, TernaryLinear, convert_to_bitnet, load_packed, save_packed
from agent_forge.curriculum.loop import thaw_ternary
from agent_forge.foundation.config import BakingPhaseConfig, get_phase, phase_config
from agent_forge.foundation.core import ConfigError
from agent_forge.tools.calls import TOOL_START, add_tool_tokens, generate_with_tools
from agent_forge.tools.cycles import codes_changed, requant_cost, run_cycles, tool_prompt, tool_scores
from agent_forge.tools.personas import PERSONAS, persona_consistency, persona_items, persona_prompt
from agent_forge.tools.traces import half_bake, tool_traces

CHARS = "0123456789abcdefghijklmnopqrstuvwxyzAQRSW +-=*:.,?()\n'"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    "A tiny ternary Cognate model with the call tokens, saved packed and reloaded: (model, tokenizer, folder)."
    tok = char_tokenizer(CHARS)
    m = tiny_cognate(len(tok))
    convert_to_bitnet(m)
    add_tool_tokens(tok, m)
    d = tmp_path_factory.mktemp("packed")
    save_packed(m.eval(), tok, d)
    model, tok2 = load_packed(d, "int_mm")
    return model, tok2, d


def test_call_tokens_survive_packing(packed):
    model, tok, _ = packed
    ids = add_tool_tokens(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > max(ids.values())
    assert tok.convert_ids_to_tokens(ids[TOOL_START]) == TOOL_START
    assert any(isinstance(m, TernaryLinear) for m in model.modules())
    thawed = copy.deepcopy(model)
    names = thaw_ternary(thawed)
    assert names and all(isinstance(thawed.get_submodule(n), BitLinear) for n in names)
    x = torch.tensor([tok("Q: 1+2=", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():  # thawing keeps the codes: the same logits up to the kernels' rounding
        assert torch.allclose(model(input_ids=x).logits, thawed.eval()(input_ids=x).logits, atol=1e-3)
    tr = generate_with_tools(model, tok, "Q: 1+2=", {}, max_new_tokens=4)
    assert isinstance(tr.text, str)


def test_cycles_with_real_half_bakes_leave_the_input_alone(packed, tmp_path):
    model, tok, _ = packed
    m = copy.deepcopy(model)
    thaw_ternary(m)
    m.eval()
    w0 = {k: v.clone() for k, v in m.state_dict().items()}
    held = tool_traces("arithmetic", 1, 2, "heldout", 0, tmp_path)
    items = persona_items("answer_form", 1, 2, "heldout", 0)
    stop = tuple(ids_containing(tok, "\n")) + (tok.eos_token_id,)
    ins = [t.prompt for t in tool_traces("arithmetic", 1, 6, "train", 3, tmp_path)]
    costs = []

    def baker(cur, kind, prompt):
        r = half_bake(cur, tok, prompt, ins, ins[:2], 1, batch_size=4, max_new_tokens=6, stop_ids=stop)
        costs.append(requant_cost(cur, r, tok, prompt, ins[:2], max_new_tokens=6, stop_ids=stop))
        return r.model.eval(), dict(steps=r.steps)

    res = run_cycles(
        m,
        dict(
            A=lambda i: [("1 shot", tool_prompt(("arithmetic",), 1, 1, tmp_path, i)), ("none", "")],
            B=lambda i: [("1 shot", persona_prompt("answer_form", 1, 1, i))],
        ),
        dict(
            A=lambda cur, p: dict(score=tool_scores(cur, tok, held, tmp_path, p, 6)["all"]["accuracy"].mean),
            B=lambda cur, p: dict(score=persona_consistency(cur, tok, "answer_form", items, p).consistency.mean),
        ),
        baker,
        max_cycles=2,
        log=lambda s: None,
    )
    assert [r.kind for r in res.history] == ["A", "B"] and res.stopped == "budget"
    assert [len(r.candidates) for r in res.history] == [2, 1]
    assert all(k in costs[0] for k in ("kl_float", "kl_requantised", "codes_changed"))
    assert 0 <= costs[0]["codes_changed"] <= 1
    assert all(torch.equal(w0[k], v) for k, v in m.state_dict().items())  # the input model is never modified
    assert any(isinstance(x, BitLinear) for x in res.model.modules())  # the merged model is still ternary


def test_codes_changed_counts_flipped_codes():
    a = tiny_cognate(40)
    convert_to_bitnet(a)
    b = copy.deepcopy(a)
    assert codes_changed(a, b) == 0.0
    layer = next(x for x in b.modules() if isinstance(x, BitLinear))
    with torch.no_grad():
        layer.weight.neg_()
    n = sum(x.weight.numel() for x in a.modules() if isinstance(x, BitLinear))
    nz = int((layer.weight != 0).sum())  # nonzero codes flip sign, zeros stay
    assert 0 < codes_changed(a, b) <= nz / n + 1e-9


def test_personas_check_exactly_and_refuse_unknown_names():
    for name in PERSONAS:
        check = PERSONAS.get(name).fn
        for it in persona_items(name, 1, 6, "heldout", 0):
            assert check(it.answer, it.demo) == (True, True)
            assert check(it.answer, it.demo + " ")[0] is False
    with pytest.raises(ConfigError, match="unknown persona"):
        persona_items("pirate", 1, 2, "train")


def test_phase6_config_and_presets():
    ph = get_phase(6)
    assert (ph.name, ph.notebook, ph.config, ph.built) == ("baking", "06_baking.ipynb", BakingPhaseConfig, True)
    full = phase_config("full", 6)
    assert full.min_tool_accuracy == 0.9 and BakingPhaseConfig().min_tool_accuracy == 0.0
    with pytest.raises(ConfigError, match="levels must be"):
        BakingPhaseConfig(levels="1,1")
    with pytest.raises(ConfigError, match="unknown trace family"):
        BakingPhaseConfig(tool_families="sequence")

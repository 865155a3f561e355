"""Prompt baking across notebooks: a Cognate student, the registry round trip of the merged artifact."""
import torch
import pytest

import agent_forge
from agent_forge.baking.prompt import bake, bake_report, char_tokenizer, encode, fit_lm, lora_targets
from agent_forge.models.cognate import CognateForCausalLM
from agent_forge.runs.registry import Registry, load_model_artifact, save_model_artifact
from conftest import tiny_cognate

L = "abcdefgh"
def shift(x):
    return "".join(L[(L.index(c) + 1) % len(L)] for c in x)


@pytest.fixture(scope="module")
def cognate_shift():
    "A tiny Cognate that has learned: `shift:abc=bcd`, bare `abc=abc`."
    import random
    tok = char_tokenizer()
    model = tiny_cognate(len(tok))
    r = random.Random(0)
    docs = []
    for _ in range(3000):
        x = "".join(r.choice(L) for _ in range(3))
        docs.append(f"shift:{x}={shift(x)}\n" if r.random() < 0.5 else f"{x}={x}\n")
    fit_lm(model, tok, docs, steps=400, lr=3e-3)
    xs = ["".join(t) + "=" for t in __import__("itertools").product(L, repeat=3)]
    r.shuffle(xs)
    return model, tok, xs[:200], xs[200:232]


def test_cognate_targets_are_its_projections(cognate_shift):
    model, _, _, _ = cognate_shift
    assert set(lora_targets(model)) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_bake_cognate_and_registry_round_trip(cognate_shift, tmp_path):
    model, tok, train, held = cognate_shift
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nl = tok.convert_tokens_to_ids("\n")
    res = bake(model, tok, "shift:", train, held, steps=80, eval_every=20, max_new_tokens=4, stop_ids=(nl,))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the teacher is untouched
    assert type(res.model) is CognateForCausalLM
    assert res.kl_before > 0.5 and res.kl_after < 0.5 * res.kl_before
    rep = bake_report(model, res.model, tok, "shift:", held, max_new_tokens=4, stop_ids=(nl,))
    assert rep["agree_tok_baked"] > rep["agree_tok_original"]
    reg = Registry.open(tmp_path / "run")
    reg.ensure_run("r", "tiny", 0, None)
    out = save_model_artifact(res.model, tok, tmp_path / "run" / "phase3" / "baked")
    aid = reg.register_artifact("r", 3, "baked", out, metrics=res.summary())
    loaded, tok2 = load_model_artifact(reg, aid)
    assert type(loaded) is CognateForCausalLM and not any("lora" in k for k in loaded.state_dict())
    x = torch.tensor([[0] + encode(tok2, "abc=bc")])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, res.model.eval()(input_ids=x).logits, atol=1e-5)

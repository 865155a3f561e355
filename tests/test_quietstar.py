"""Quiet-STaR on the project's Cognate model: the batched sampled-position rows equal single rows, training
runs, and the artifact (model + mixing head) survives the registry round trip."""
import torch
import pytest

import agent_forge
from agent_forge.baking.prompt import char_tokenizer, encode, final_hidden, fit_lm
from agent_forge.models.cognate import CognateForCausalLM
from agent_forge.baking.quietstar import (
    QuietStar,
    QuietStarConfig,
    gather_base,
    load_quietstar,
    mixed_logprobs,
    pair_nll,
    sample_pairs,
    sample_thoughts,
    save_quietstar_extras,
    thought_forward,
    train_quietstar,
)
from agent_forge.runs.registry import Registry, load_model_artifact, save_model_artifact
from conftest import tiny_cognate


@pytest.fixture(scope="module")
def cognate():
    import random
    tok = char_tokenizer()
    model = tiny_cognate(len(tok), sliding_window=16, trm_recursions=2, trm_supervision_steps=2)
    r = random.Random(0)
    docs = [f"{a}+{b}={a + b}\n" for a, b in ((r.randrange(10), r.randrange(10)) for _ in range(2000))]
    fit_lm(model, tok, docs, steps=150, lr=3e-3)
    ids = torch.tensor([[0] + encode(tok, "1+2=3\n4+4=8\n5+2=7\n9+9=18\n3+3=6\n")])
    return model, tok, ids


def test_batched_rows_equal_single_rows_on_cognate(cognate):
    model, tok, ids = cognate
    qs = QuietStar(model, tok, QuietStarConfig(thought_len=5))
    pairs = torch.tensor([[0, 3], [0, 17], [0, 24]])  # positions past the memory chunk and the attention window
    th = sample_thoughts(qs, ids, pairs, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp, h = thought_forward(qs, ids, pairs, th, 3)
        for k in range(len(th)):
            b, i = pairs[k // 2].tolist()
            row = [*ids[b, : i + 1].tolist(), qs.start_id, *th[k].tolist(), qs.end_id, *ids[b, i + 1 : i + 3].tolist()]
            row = torch.tensor([row])
            assert torch.allclose(h[k], final_hidden(model, row)[0, i + 7:i + 10], atol=1e-4)


def test_train_and_registry_round_trip(cognate, tmp_path):
    model, tok, ids = cognate
    qs = QuietStar(model, tok, QuietStarConfig(thought_len=4, positions=3))
    windows = ids[:, :24].repeat(8, 1)
    curve = train_quietstar(qs, windows, steps=4, batch_size=2, lr=1e-3, head_lr=1e-2)
    assert len(curve) == 4 and all(torch.isfinite(torch.tensor(c["loss"])) for c in curve)
    assert abs(curve[-1]["w"] - curve[0]["w"]) > 0  # the head moved
    reg = Registry.open(tmp_path / "run")
    reg.ensure_run("r", "tiny", 0, None)
    out = save_model_artifact(qs.model, tok, tmp_path / "run" / "phase3" / "quietstar")
    save_quietstar_extras(qs, out)
    aid = reg.register_artifact("r", 3, "quietstar", out)
    qs2, tok2 = load_model_artifact(reg, aid, loader=load_quietstar)
    assert type(qs2.model) is CognateForCausalLM and len(tok2) == len(tok)
    pairs = torch.tensor([[0, 5], [0, 9]])
    th = sample_thoughts(qs, ids, pairs, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = mixed_logprobs(
            qs, gather_base(final_hidden(qs.model, ids), pairs, 1), thought_forward(qs, ids, pairs, th, 1)[1]
        )[0]
        b = mixed_logprobs(
            qs2, gather_base(final_hidden(qs2.model, ids), pairs, 1), thought_forward(qs2, ids, pairs, th, 1)[1]
        )[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert pair_nll(qs2, ids, sample_pairs(1, ids.shape[1], 4, 1), "random").isfinite().all()


def test_thoughts_learn_to_carry_a_hidden_key():
    """The toy task of `nbs/50_baking/01_quietstar.ipynb`: the answering position of `KeyReaderLM` cannot see the key
    (no-thought answer NLL >= log 4); a thought started there can. With the default training signal, Quiet-STaR
    must raise the mixing weight, lower the held-out answer NLL below no thought by more than two standard errors and
    below log 4, and random thoughts must not help."""
    import math
    from agent_forge.baking.quietstar import key_task_run

    torch.set_num_threads(1)
    r = key_task_run(steps=600, seed=0)
    b, a = r["before"], r["after"]
    assert abs(b["none"] - math.log(4)) < 0.1 and a["none"] > math.log(4) - 0.1  # no thought: the key is unseen
    assert b["w"] < 0.01 < 0.5 < a["w"]  # the head learned to use the thought
    assert a["thought_minus_none"] < -2 * a["thought_se"] and a["thought"] < math.log(4) - 0.2
    assert a["random_minus_none"] > -2 * a["random_se"]  # random thoughts carry no key
    print({k: round(v, 4) for k, v in a.items()}, f"{r['seconds']:.1f} s")

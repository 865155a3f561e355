"""Tool traces (agent_forge.tools.traces): every level's traces train on the completion only, Toolformer's losses are
exact on scripted models, the filter keeps calls of a trained Cognate model and none of an untrained one, and
half-baking is the bake stopped early, not an interpolation."""

import math

import pytest
import torch
from torch import nn

from agent_forge.baking.prompt import bake, char_tokenizer, tiny_llama
from agent_forge.data.tasks import LEVELS, Example, level_examples
from agent_forge.data.tokenizer import train_tokenizer
from agent_forge.foundation.core import ConfigError
from agent_forge.models.cognate import CognateConfig, CognateForCausalLM
from agent_forge.tools.builtin import LookupStore
from agent_forge.tools.calls import RESULT_END, RESULT_START, TOOL_START, add_tool_tokens, run_call
from agent_forge.tools.traces import (
    TRACE_FAMILIES,
    ToolTrace,
    half_bake,
    tool_trace,
    tool_traces,
    toolformer_filter,
    toolformer_losses,
    toolformer_weights,
    trace_tools,
)
from agent_forge.training.train import TrainConfig, encode_examples, mixed_batches, train_lm

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz QRW+-=*:.,?()\n"


@pytest.fixture(scope="module")
def bpe():
    texts = [e.text for f in TRACE_FAMILIES for lv in LEVELS for e in level_examples(f, lv, 40, "train", 0)]
    tok = train_tokenizer(texts, 400)
    add_tool_tokens(tok)
    return tok


@pytest.mark.parametrize("family", ["arithmetic", "recall"])
def test_every_level_trains_on_the_completion_only(family, bpe, tmp_path):
    ctok = char_tokenizer(CHARS)
    start = add_tool_tokens(ctok)[TOOL_START]
    for lv in LEVELS:
        ts = tool_traces(family, lv, 25, "train", 3, tmp_path)
        assert all(t.level == lv and t.family == family for t in ts)
        for tok in (bpe, ctok):
            rows = encode_examples(tok, ts)  # raises unless the prompt's tokens are a prefix
            assert [tok.decode(r[:p]) for r, p in rows] == [t.prompt for t in ts]
            assert all(r[p] == tok.convert_tokens_to_ids(TOOL_START) for r, p in rows)
        assert start == ctok.convert_tokens_to_ids(TOOL_START)
        for t in ts:  # the call really reproduces the answer, from the trace's own store
            assert run_call(t.call, trace_tools(t, tmp_path)).result == t.answer == t.result
            assert t.text == t.prompt + f"<tool>{t.call}</tool><result>{t.answer}</result>{t.answer}\n"


def test_recall_pairs_live_in_a_lookup_store(tmp_path):
    t = tool_traces("recall", 5, 1, "heldout", 0, tmp_path)[0]
    key = t.call[len("lookup(") : -1]
    assert LookupStore(tmp_path, t.store).get(key) == t.answer
    assert len(LookupStore(tmp_path, t.store)) == t.prompt.count("=") - 1  # every pair, not the query
    with pytest.raises(ConfigError, match="pass run_dir"):
        tool_traces("recall", 1, 1, "train", 0)


def test_refusals():
    with pytest.raises(ConfigError, match="not the answer"):
        tool_trace(Example("Q: 2+2=", "5\n", "5"), "arithmetic")
    with pytest.raises(ConfigError, match="unknown trace family"):
        tool_traces("sequence", 1, 1, "train", 0)
    with pytest.raises(ConfigError, match="does not end in its answer"):
        ToolTrace("Q: 1+1=", "<tool>calculator(1+1)</tool><result>2</result>3\n", "2")
    with pytest.raises(ConfigError, match="finite"):
        toolformer_filter(None, None, [], tau=float("inf"))


class Copier(nn.Module):
    "Logit s on the k-th result token at the k-th position after </result>; zero logits elsewhere."

    def __init__(self, tok, s):
        super().__init__()
        ids = add_tool_tokens(tok)
        self.r0, self.r1, self.V, self.s = ids[RESULT_START], ids[RESULT_END], len(tok), s
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.V)
        for b, row in enumerate(input_ids.tolist()):
            if self.r0 in row and self.r1 in row:
                a, e = row.index(self.r0), row.index(self.r1)
                for k, t in enumerate(row[a + 1 : e]):
                    logits[b, e + k, t] = self.s
        return type("Out", (), {"logits": logits})()


def test_losses_are_exact_and_on_answer_tokens_only(bpe):
    t = tool_traces("arithmetic", 10, 1, "train", 0)[0]
    V = len(bpe)
    copy = math.log1p((V - 1) * math.exp(-3.0))
    L = toolformer_losses(Copier(bpe, 3.0), bpe, [t, t], decay=0.2)
    assert torch.allclose(L, torch.tensor([[copy, math.log(V), math.log(V)]] * 2), atol=1e-5)
    # positions: a bigram's loss of answer token k comes from the row of the token before it
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(1))
    bigram = type("B", (nn.Module,), {"forward": lambda self, input_ids: type("O", (), {"logits": table[input_ids]})})
    m = bigram()
    m.w = nn.Parameter(torch.zeros(1))
    ans = bpe(t.answer, add_special_tokens=False)["input_ids"]
    for decay in (0.0, 0.2):
        lp = torch.log_softmax(table[[bpe.convert_tokens_to_ids(RESULT_END)] + ans[:-1]], -1)
        hand = float((toolformer_weights(len(ans), decay) * -lp[torch.arange(len(ans)), ans]).sum())
        assert abs(float(toolformer_losses(m, bpe, [t], decay=decay)[0, 0]) - hand) < 1e-5
    # the threshold: gain = log V - log(1 + (V - 1) e^-s), kept iff >= tau
    for s in (1.0, 2.0, 5.0):
        gain = math.log(V) - math.log1p((V - 1) * math.exp(-s))
        assert len(toolformer_filter(Copier(bpe, s), bpe, [t]).kept) == int(gain >= 1.0)


def test_filter_keeps_calls_of_a_trained_cognate_model():
    tok = char_tokenizer(CHARS)
    add_tool_tokens(tok)
    cfg = CognateConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        sliding_window=48,
        num_persistent_tokens=2,
        memory_num_heads=2,
        memory_head_dim=8,
        memory_hidden_size=16,
        memory_chunk_size=4,
        trm_intermediate_size=64,
    )
    train, held = tool_traces("arithmetic", 7, 600, "train", 0), tool_traces("arithmetic", 7, 40, "heldout", 0)
    torch.manual_seed(0)
    untrained = toolformer_filter(CognateForCausalLM(cfg), tok, held)
    assert untrained.summary()["candidates"] == 40 and len(untrained.kept) == 0
    torch.manual_seed(0)
    m = CognateForCausalLM(cfg)
    rows = encode_examples(tok, train + [t.plain for t in train])
    nb = mixed_batches(rows, {}, {"tasks": 1.0}, 16, 32, 1, tok.pad_token_id)
    train_lm(m, nb, TrainConfig(steps=600, lr=1e-2, warmup_steps=5, log_every=100), progress=False)
    res = toolformer_filter(m, tok, held)
    s = res.summary()
    assert len(res.kept) >= 15, s
    assert s["loss_with_result"] < s["loss_no_call"] and s["loss_with_result"] < s["loss_empty_result"], s
    assert all(g >= 1.0 for t, g in zip(held, res.gains.tolist()) if t in res.kept)
    assert len(toolformer_filter(m, tok, held, tau=100.0).kept) == 0


def test_half_bake_stops_early_and_does_not_interpolate():
    tok = char_tokenizer()
    lm = tiny_llama(len(tok))
    xs = [f"{a}{b}=" for a in "abcdefgh" for b in "abcdefgh"]
    kw = dict(max_new_tokens=4, stop_ids=(tok.convert_tokens_to_ids("\n"),), batch_size=8, per_input=1)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    torch.manual_seed(0)
    half = half_bake(lm, tok, "shift:", xs[:40], xs[40:48], steps=3, **kw)
    torch.manual_seed(0)
    same = bake(lm, tok, "shift:", xs[:40], xs[40:48], steps=3, eval_every=3, **kw)
    full = bake(lm, tok, "shift:", xs[:40], xs[40:48], steps=12, eval_every=12, **kw)
    assert (half.steps, half.stopped_early, half.curve[-1]["step"]) == (3, False, 3)
    assert half.kl_after == half.summary()["kl_after"] < half.kl_before
    assert torch.allclose(flat(half.model), flat(same.model), atol=1e-6)
    dh, df = flat(half.model) - flat(lm), flat(full.model) - flat(lm)
    assert float(dh.norm()) > 0
    resid = float((dh - float(dh @ df / (df @ df)) * df).norm() / dh.norm())
    assert resid > 0.05  # an interpolation W0 + a (W_full - W0) would leave no residual
    with pytest.raises(ConfigError, match="positive int"):
        half_bake(lm, tok, "shift:", xs[:40], xs[40:48], steps=True)
    with pytest.raises(ConfigError, match="stop_at"):
        half_bake(lm, tok, "shift:", xs[:40], xs[40:48], steps=3, stop_at=0.5)

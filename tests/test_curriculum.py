"""Phase 5's curriculum parts with fake models and graders: pool retirement and hints, the training signal, the
JSONL source, the baseline level, the dream filter, the self-model head, and a curriculum killed inside a level
(SIGKILL in a subprocess) that resumes from its checkpoint to the result of an uninterrupted run."""

import copy, dataclasses, json, os, signal, subprocess, sys
from pathlib import Path

import pytest
import torch

from agent_forge.baking.prompt import char_tokenizer, tiny_llama
from agent_forge.data.tasks import Example, solve_arithmetic, solve_sequence
from agent_forge.foundation.core import ConfigError
from agent_forge.curriculum.levels import MAX_HINTS, Question, TaskSource, baseline_level, jsonl_source, level_scores
from agent_forge.curriculum.loop import (
    CurriculumSettings,
    QuestionPool,
    attempt,
    dream_filter,
    run_curriculum,
    self_model_head,
    thaw_ternary,
    train_examples,
)
from agent_forge.training.optim import MuGrokfast
from agent_forge.training.train import content_hash

TOK = char_tokenizer("0123456789+-*=QWRS: ,abcdefghijklmnopqrstuvwxyz?\n")


def test_pool_retires_after_three_successes_and_hints_on_failure():
    pool = QuestionPool(TaskSource("sequence"), 3, 3, seed=2)
    q0, q1 = pool.items[0].question, pool.items[1].question
    assert [pool.record(0, True) for _ in range(2)] == ["success", "success"]
    assert pool.items[0].question == q0  # two successes do not retire
    assert pool.record(0, True) == "retired" and pool.items[0].question != q0
    assert pool.record(1, True) == "success" and pool.record(1, False) == "hinted"
    assert pool.items[1].streak == 0 and pool.items[1].hints == 1 and pool.items[1].question == q1
    for _ in range(10):
        pool.record(1, False)
    assert pool.items[1].hints == MAX_HINTS and pool.hints_used == MAX_HINTS and pool.retired == 1
    hints = [q1.hint(k) for k in range(MAX_HINTS + 1)]
    assert hints[0] == "" and all(q1.worked.startswith(h.strip()) for h in hints)
    assert [len(h) for h in hints] == sorted(len(h) for h in hints)


def test_training_signal_is_verified_and_never_the_question_alone():
    def half_right(prompts, n):  # right on even-length lists, and a wrong answer otherwise
        qs = [p.split("=", 1)[0] + "=" for p in prompts]  # the question, without a hint shown after it
        return [solve_sequence(q) if len(q.split()) % 2 == 0 else "1 2" for q in qs]

    pool = QuestionPool(TaskSource("sequence"), 3, 10, seed=0)
    atts = attempt(half_right, TOK, pool, list(pool.items), rationale="worked")
    assert {a.correct for a in atts} == {True, False}
    for a in atts:
        assert a.question.check(a.example.completion) and a.example.completion.strip()
        assert a.example.completion == ((a.completion if a.correct else a.question.worked) + "\n")
        assert a.event == ("success" if a.correct else "hinted")
    again = attempt(half_right, TOK, pool, list(pool.items))  # rationale='answer': the verified answer alone
    assert [a.example.completion for a in again] == [a.question.answer + "\n" for a in again]
    hinted = [a for a in again if a.hints]
    assert hinted and all(a.event == ("faded" if a.correct else "hinted") for a in hinted)


def test_a_hinted_success_fades_its_hint_and_never_retires():
    pool = QuestionPool(TaskSource("arithmetic"), 2, 2, seed=3)
    q = pool.items[0].question
    assert [pool.record(0, False) for _ in range(2)] == ["hinted", "hinted"]
    assert [pool.record(0, True) for _ in range(2)] == ["faded", "faded"]  # right only with the answer shown
    assert pool.items[0].hints == 0 and pool.items[0].streak == 0 and pool.retired == 0
    assert [pool.record(0, True) for _ in range(3)] == ["success", "success", "retired"]
    assert pool.items[0].question != q and pool.retired == 1


def test_jsonl_source(tmp_path):
    f = tmp_path / "q.jsonl"
    rows = [dict(prompt=f"Q: {a}+{a}=", answer=str(2 * a), level=1 + a % 3) for a in range(90)]
    rows[5]["verifier"] = "arithmetic"
    f.write_text("\n".join(map(json.dumps, rows)))
    src = jsonl_source(f)
    assert src.levels == (1, 2, 3)
    tr, ho = src.questions(1, 99, "train"), src.questions(1, 99, "heldout")
    assert len(tr) + len(ho) == 30 and not {q.prompt for q in tr} & {q.prompt for q in ho}
    f.write_text(json.dumps(dict(prompt="Q: 1+1=", answer="3", verifier="arithmetic")))
    with pytest.raises(ConfigError, match="does not verify"):
        jsonl_source(f)


def test_assessment_and_baseline_level():
    src = TaskSource("arithmetic")
    good = {q.prompt for lv in (1, 2) for q in src.questions(lv, 10, "heldout")}
    fake = lambda prompts, n: [solve_arithmetic(p) if p in good else "0" for p in prompts]
    sc = level_scores(fake, TOK, src, (1, 2, 3), 10)
    assert [s.mean for s in sc.values()] == [1.0, 1.0, 0.0]
    assert baseline_level(sc) == 2 and baseline_level({1: 0.74}) == 0 and baseline_level({1: 0.5}, 0.5) == 1


def test_dream_filter_keeps_only_verified():
    lines = ["S: rev 1 2 3=3 2 1", "S: rev 1 2 3=1 2 3", "S: sort 5 1=1 5", "S: nope=1", "Q: 1+1=2", "S: copy 4 4=4 4"]
    kept = dream_filter(lines, "sequence", 1, exclude={"S: copy 4 4="})
    assert [e.prompt for e in kept] == ["S: rev 1 2 3=", "S: sort 5 1="]
    assert all(solve_sequence(e.prompt) == e.answer for e in kept)


def test_loop_stops_at_the_hard_wall():
    lm = tiny_llama(len(TOK), hidden_size=16, layers=1)
    cs = CurriculumSettings(pool_size=3, level_rounds=2, eval_every=2, heldout_examples=4, steps_per_round=1,
                            batch_size=2, dreams=False)
    res = run_curriculum(lm, TOK, {"recall": TaskSource("recall")}, {"recall": 1}, cs,
                         torch.optim.AdamW(lm.parameters()), complete=lambda p, n: ["x"] * len(p), log=lambda m: None)
    assert [r["status"] for r in res.levels] == ["hard wall"] and "hard wall at level 1" in res.messages[0]
    assert res.levels[0]["hints"] == 6 and res.reached == {"recall": 0}
    assert all(r["where"] == "below" for r in res.curve)


def test_self_model_head_regresses_detached_activations_and_joins_training():
    lm = tiny_llama(len(TOK), hidden_size=16, layers=2)
    head = self_model_head(lm, layer=1, weight=2.0)
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    labels = torch.tensor([[-100, -100, 4, 5, 6]])
    h = lm(input_ids=ids, output_hidden_states=True).hidden_states[1].detach().requires_grad_(True)
    hs = (None, h, None)
    loss = head(hs, labels)
    loss.backward()
    rows = h[0, 1:4]  # positions 1..3 predict the labelled tokens 2..4
    pred = head.proj(rows)
    assert torch.allclose(loss, ((pred - rows) ** 2).mean())
    # the target is a constant: the gradient reaches the activations through the prediction only
    manual = 2 * (pred - rows) @ head.proj.weight / rows.numel()
    assert torch.allclose(h.grad[0, 1:4], manual.detach(), atol=1e-6) and h.grad[0, [0, 4]].abs().sum() == 0
    with pytest.raises(ConfigError, match="not one of the 3 hidden states"):
        self_model_head(lm, layer=3)
    ex = [Example("Q: 1+1=", "2\n", "2")] * 4
    with_head = tiny_llama(len(TOK), hidden_size=16, layers=2)
    opt = torch.optim.AdamW(list(with_head.parameters()) + list(head.parameters()), lr=1e-2)
    h1 = train_examples(with_head, TOK, ex, 3, opt, batch_size=2, self_model=head)
    plain = tiny_llama(len(TOK), hidden_size=16, layers=2)
    h0 = train_examples(plain, TOK, ex, 3, torch.optim.AdamW(plain.parameters(), lr=1e-2), batch_size=2)
    assert "self_model_loss" not in h0 and h1["self_model_loss"] > 0
    assert h1["losses"][0] > h0["losses"][0]  # same weights and batch: the first step's loss adds the head's
    assert content_hash(with_head.state_dict()) != content_hash(plain.state_dict())


def _part_oracle(lm):
    "Greedy decoding of `lm`, except a fixed third of the questions, answered right (so questions retire)."
    from zlib import crc32

    from agent_forge.curriculum.levels import complete_fn

    greedy = complete_fn(lm, TOK)
    solve = {"Q": solve_arithmetic, "S": solve_sequence}

    def complete(prompts, n):
        out = greedy(prompts, n)
        for i, p in enumerate(prompts):
            q = p.split("=")[0] + "="
            if crc32(q.encode()) % 3 == 0:
                out[i] = (" = " if len(p) > len(q) else "") + solve[q[0]](q)  # after a hint: end its worked line
        return out

    return complete


def _resume_setup():
    "The killed and the uninterrupted run's inputs: two families, partly real decoding, dreams, a self-model head."
    lm = tiny_llama(len(TOK), hidden_size=16, layers=1)
    opt = MuGrokfast.for_model(lm, lr=1e-2, grokfast_lambda=2.0)
    srcs = {f: TaskSource(f) for f in ("arithmetic", "sequence")}
    cs = CurriculumSettings(pool_size=3, level_rounds=3, eval_every=3, max_levels=2, heldout_examples=4,
                            steps_per_round=2, batch_size=4, hard_wall=0.0, dreams=True, dream_samples=3,
                            self_model_weight=0.5)
    return lm, opt, srcs, {"arithmetic": 1, "sequence": 1}, cs, _part_oracle(lm)


KILLED = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from test_curriculum import TOK, _resume_setup
from agent_forge.curriculum.loop import run_curriculum

lm, opt, srcs, start, cs, complete = _resume_setup()


def log(msg):
    if msg.startswith("round 4:"):  # the first round of level 2, after its training, before its checkpoint
        os.kill(os.getpid(), signal.SIGKILL)


run_curriculum(lm, TOK, srcs, start, cs, opt, complete, log=log, checkpoint=sys.argv[1], checkpoint_every=2)
"""


def _timeless(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_curriculum_killed_inside_a_level_resumes_to_the_uninterrupted_result(tmp_path):
    lm, opt, srcs, start, cs, complete = _resume_setup()
    ref = run_curriculum(lm, TOK, srcs, start, cs, opt, complete, log=lambda m: None)
    assert sum(r["right"] for r in ref.curve) > 0 and sum(r["retired"] for r in ref.levels) > 0
    assert [(r["family"], r["level"]) for r in ref.levels] == [("arithmetic", 1), ("sequence", 1),
                                                               ("arithmetic", 2), ("sequence", 2)]
    ck = tmp_path / "ck"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    r = subprocess.run([sys.executable, str(script), str(ck), str(Path(__file__).parent)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert sorted(os.listdir(ck)) == ["checkpoint.json", "step-00000002.safetensors"]  # every 2 rounds: round 2
    said = []
    lm2, opt2, *_, complete2 = _resume_setup()
    back = run_curriculum(lm2, TOK, srcs, start, cs, opt2, complete2, log=said.append, checkpoint=ck,
                          checkpoint_every=2)
    assert said[0].startswith("curriculum: resumed after round 2") and back.resumed_at == 2
    assert content_hash(lm2.state_dict()) == content_hash(lm.state_dict())
    assert _timeless(back.curve) == _timeless(ref.curve) and back.reached == ref.reached
    assert _timeless(back.levels) == _timeless(ref.levels)
    assert all(c["self_model_loss"] > 0 for c in back.curve)
    # other settings do not continue it: the run starts fresh and says why
    said.clear()
    lm3, opt3, *_ = _resume_setup()

    def stop(prompts, n):
        raise KeyboardInterrupt("stopped at the first answer")

    with pytest.raises(KeyboardInterrupt):
        run_curriculum(lm3, TOK, srcs, start, dataclasses.replace(cs, steps_per_round=1), opt3, complete=stop,
                       log=said.append, checkpoint=ck)
    assert said[0].startswith("curriculum: starting fresh") and "settings.steps_per_round 2 -> 1" in said[0]


def test_stop_after_ends_at_that_round_and_a_rerun_continues_to_the_full_result(tmp_path):
    lm, opt, srcs, start, cs, complete = _resume_setup()
    ref = run_curriculum(lm, TOK, srcs, start, cs, opt, complete, log=lambda m: None)
    lm2, opt2, *_, complete2 = _resume_setup()
    part = run_curriculum(lm2, TOK, srcs, start, cs, opt2, complete2, log=lambda m: None, checkpoint=tmp_path / "ck",
                          checkpoint_every=5, stop_after=2)
    assert {r["round"] for r in part.curve} == {1, 2} and _timeless(part.curve) == _timeless(ref.curve[:4])
    assert "step-00000002.safetensors" in os.listdir(tmp_path / "ck")  # written although 2 % checkpoint_every != 0
    lm3, opt3, *_, complete3 = _resume_setup()
    back = run_curriculum(lm3, TOK, srcs, start, cs, opt3, complete3, log=lambda m: None, checkpoint=tmp_path / "ck")
    assert back.resumed_at == 2 and content_hash(lm3.state_dict()) == content_hash(lm.state_dict())
    assert _timeless(back.curve) == _timeless(ref.curve)


class _Frozen(torch.optim.SGD):
    "An optimizer whose steps change nothing: the weights move only through the bake."

    def step(self, closure=None):
        return None


def test_a_bake_that_costs_the_levels_accuracy_is_measured_and_dropped(monkeypatch):
    import agent_forge.curriculum.levels as lv

    lm = tiny_llama(len(TOK), hidden_size=16, layers=1)
    bad, good = copy.deepcopy(lm), copy.deepcopy(lm)
    with torch.no_grad():
        for p, q in zip(bad.parameters(), good.parameters()):
            p.add_(1.0)
            q.add_(0.5)
    right = lambda prompts, n: [solve_arithmetic(p.split("=")[0] + "=") for p in prompts]
    monkeypatch.setattr(lv, "complete_fn", lambda m, tok, batch_size=32: (lambda p, n: right(p, n) if m is not bad
                                                                         else ["x"] * len(p)))
    cs = CurriculumSettings(pool_size=2, level_rounds=1, eval_every=1, heldout_examples=3, steps_per_round=1,
                            batch_size=2, dreams=False, max_levels=1, hard_wall=0.0)
    srcs, start = {"arithmetic": TaskSource("arithmetic")}, {"arithmetic": 1}
    for merged, kept in ((bad, False), (good, True)):
        m = copy.deepcopy(lm)
        h0 = content_hash(m.state_dict())
        res = run_curriculum(m, TOK, srcs, start, cs, _Frozen(m.parameters(), lr=1e-3), complete=right,
                             bake=lambda model, f, level: (merged, {"kl_before": 1.0}), log=lambda s: None)
        rec = res.levels[0]["bake"]
        assert rec["kept"] is kept and rec["acc_before"]["mean"] == 1.0 and rec["kl_before"] == 1.0
        assert rec["acc_after"]["mean"] == (1.0 if kept else 0.0) and rec["acc_after"]["n"] == 3
        want = content_hash(good.state_dict()) if kept else h0  # no optimizer step: only a kept bake changes them
        assert content_hash(m.state_dict()) == want

"""Phase 5's curriculum parts with fake models and graders: pool retirement and hints, the training signal, the
JSONL source, the baseline level and the dream filter."""

import json

import pytest
import torch

from agent_forge.baking.prompt import char_tokenizer, tiny_llama
from agent_forge.data.tasks import solve_arithmetic, solve_sequence
from agent_forge.foundation.core import ConfigError, NotBuiltError
from agent_forge.curriculum.levels import MAX_HINTS, Question, TaskSource, baseline_level, jsonl_source, level_scores
from agent_forge.curriculum.loop import (
    CurriculumSettings,
    QuestionPool,
    attempt,
    dream_filter,
    run_curriculum,
    self_model_head,
    thaw_ternary,
)

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
        return [solve_sequence(p) if len(p.split()) % 2 == 0 else "1 2" for p in prompts]

    pool = QuestionPool(TaskSource("sequence"), 3, 10, seed=0)
    atts = attempt(half_right, TOK, pool, list(pool.items))
    assert {a.correct for a in atts} == {True, False}
    for a in atts:
        assert a.question.check(a.example.completion) and a.example.completion.strip()
        assert a.example.completion == ((a.completion if a.correct else a.question.worked) + "\n")
        assert a.event == ("success" if a.correct else "hinted")


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


def test_loop_stops_at_the_hard_wall_and_self_model_is_not_built():
    lm = tiny_llama(len(TOK), hidden_size=16, layers=1)
    cs = CurriculumSettings(pool_size=3, level_rounds=2, eval_every=2, heldout_examples=4, steps_per_round=1,
                            batch_size=2, dreams=False)
    res = run_curriculum(lm, TOK, {"recall": TaskSource("recall")}, {"recall": 1}, cs,
                         torch.optim.AdamW(lm.parameters()), complete=lambda p, n: ["x"] * len(p), log=lambda m: None)
    assert [r["status"] for r in res.levels] == ["hard wall"] and "hard wall at level 1" in res.messages[0]
    assert res.levels[0]["hints"] == 6 and res.reached == {"recall": 0}
    assert all(r["where"] == "below" for r in res.curve)
    with pytest.raises(NotBuiltError):
        self_model_head(lm)

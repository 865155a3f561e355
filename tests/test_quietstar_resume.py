"""Kill and resume in the Quiet-STaR training loop (Phase 3).

`train_quietstar(..., checkpoint=folder)` must continue a killed run to weights (model and mixing head)
bit-identical to an uninterrupted run's, with the same curve; refuse a checkpoint made for other settings, data,
weights or key, or a damaged one (starting fresh and saying why); and write only safetensors and JSON.
"""

import hashlib, json
from pathlib import Path

import pytest
import torch
from conftest import Killed, dies_at
from safetensors.torch import save_file

from agent_forge.baking.prompt import char_tokenizer, tiny_llama
from agent_forge.baking.quietstar import QuietStar, QuietStarConfig, train_quietstar
from agent_forge.training.train import CHECKPOINT, content_hash

STEPS, EVERY, BATCH = 10, 4, 4
KW = dict(steps=STEPS, batch_size=BATCH, lr=3e-3, head_lr=1e-2, log_every=1, seed=5)
WINDOWS = torch.randint(3, 40, (32, 14), generator=torch.Generator().manual_seed(0))


def fresh(seed=1, **cfg):
    "A tiny Llama with thought tokens and a mixing head, built in code (its own tokenizer each time)."
    tok = char_tokenizer()
    cfg = QuietStarConfig(**{**dict(thought_len=2, positions=3), **cfg})
    return QuietStar(tiny_llama(len(tok) + 2, seed=seed), tok, cfg)


def source(die_at=0, windows=WINDOWS):
    "The same draws as the tensor path, as a batch source that raises `Killed` on call `die_at` (0: never)."
    return dies_at(die_at, lambda g: windows[torch.randint(len(windows), (BATCH,), generator=g)])


def weights_sha(qs, tmp: Path) -> str:
    "sha256 of the model's and head's weights written as one safetensors file."
    sd = {k: v.detach().contiguous().clone() for k, v in qs.state_dict().items()}
    save_file(sd, str(tmp / "w.safetensors"))
    return hashlib.sha256((tmp / "w.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference():
    "An uninterrupted run without a checkpoint, on the tensor of windows: (model, curve)."
    qs = fresh()
    return qs, train_quietstar(qs, WINDOWS, **KW)


def losses(curve):
    return [(c["step"], c["loss"], c["nll_mix"], c["policy"], c["w"]) for c in curve]


@pytest.mark.parametrize("kill_call", [1, 5, 8, 10])  # before any checkpoint, between, on a checkpoint step, last
def test_killed_run_resumes_to_identical_weights(tmp_path, capsys, reference, kill_call):
    whole, ref = reference
    ck = tmp_path / "ck"
    with pytest.raises(Killed):
        train_quietstar(fresh(), source(kill_call), **KW, checkpoint=ck, checkpoint_every=EVERY, checkpoint_key="v1")
    capsys.readouterr()
    resumed = fresh()
    curve = train_quietstar(resumed, source(), **KW, checkpoint=ck, checkpoint_every=EVERY, checkpoint_key="v1")
    out = capsys.readouterr().out
    at = EVERY * ((kill_call - 1) // EVERY)
    if at:
        assert f"quietstar: resumed at step {at} of {STEPS} from checkpoint {ck}" in out, out
    else:
        assert "starting fresh" in out and "no checkpoint yet" in out, out
    assert any(k.startswith("head.") for k in resumed.state_dict())  # the mixing head is part of what is compared
    assert weights_sha(resumed, tmp_path) == weights_sha(whole, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
    assert losses(curve) == losses(ref)
    assert sorted(p.name for p in ck.iterdir()) == [CHECKPOINT, f"step-{STEPS:08d}.safetensors"]


def test_the_kill_changes_the_weights_without_resume(tmp_path, reference):
    "The comparison can fail: a killed run continued from scratch on a new generator state differs."
    whole, _ = reference
    partial = fresh()
    with pytest.raises(Killed):
        train_quietstar(partial, source(6), **KW)
    train_quietstar(partial, source(), **{**KW, "steps": 5})  # the 5 missing steps, but not from the checkpoint
    assert weights_sha(partial, tmp_path) != weights_sha(whole, tmp_path)


def test_finished_checkpoint_skips_training(tmp_path, capsys, reference):
    whole, ref = reference
    ck = tmp_path / "ck"
    train_quietstar(fresh(), source(), **KW, checkpoint=ck)
    again = fresh()
    curve = train_quietstar(again, source(1), **KW, checkpoint=ck)  # would raise if it drew a batch
    assert f"resumed at step {STEPS} of {STEPS}" in capsys.readouterr().out
    assert weights_sha(again, tmp_path) == weights_sha(whole, tmp_path) and losses(curve) == losses(ref)


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(kw={"lr": 1e-3}), "settings.lr 0.003 -> 0.001"),
        (dict(key="v2"), "checkpoint_key changed"),
        (dict(seed=2), "initial_weights changed"),
        (dict(cfg={"n_true": 3}), "quietstar_config.n_true 4 -> 3"),
        (dict(windows=WINDOWS.flip(0)), "windows changed"),
    ],
)
def test_checkpoint_for_other_inputs_starts_fresh(tmp_path, capsys, change, reason):
    ck = tmp_path / "ck"
    with pytest.raises(Killed):
        train_quietstar(fresh(), source(7), **KW, checkpoint=ck, checkpoint_every=EVERY, checkpoint_key="v1")
    capsys.readouterr()
    windows, kw = change.get("windows", WINDOWS), {**KW, **change.get("kw", {})}
    qs = fresh(change.get("seed", 1), **change.get("cfg", {}))
    curve = train_quietstar(qs, windows, **kw, checkpoint=ck, checkpoint_key=change.get("key", "v1"))
    out = capsys.readouterr().out
    assert "starting fresh" in out and "made for other inputs" in out and reason in out, out
    assert "resumed" not in out
    plain = fresh(change.get("seed", 1), **change.get("cfg", {}))  # a fresh start is a clean start: nothing leaked
    assert losses(curve) == losses(train_quietstar(plain, windows, **kw))
    assert weights_sha(qs, tmp_path) == weights_sha(plain, tmp_path)


def test_damaged_checkpoint_starts_fresh(tmp_path, capsys):
    ck = tmp_path / "ck"
    with pytest.raises(Killed):
        train_quietstar(fresh(), source(7), **KW, checkpoint=ck, checkpoint_every=EVERY)
    f = next(ck.glob("step-*.safetensors"))
    b = bytearray(f.read_bytes())
    b[-1] ^= 1
    f.write_bytes(bytes(b))
    capsys.readouterr()
    train_quietstar(fresh(), source(), **KW, checkpoint=ck)
    assert "starting fresh" in (out := capsys.readouterr().out) and "does not match the sha256" in out, out
    (ck / CHECKPOINT).write_text("{not json")
    train_quietstar(fresh(), source(), **KW, checkpoint=ck)
    assert "is unreadable" in capsys.readouterr().out


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    ck = tmp_path / "ck"
    train_quietstar(fresh(), WINDOWS, **KW, checkpoint=ck, checkpoint_every=3)
    meta = json.loads((ck / CHECKPOINT).read_text())
    assert meta["step"] == STEPS and meta["tensors"] == f"step-{STEPS:08d}.safetensors"
    assert {p.suffix for p in ck.iterdir()} == {".json", ".safetensors"}
    assert meta["key"] == content_hash(meta["key_parts"])
    assert len(meta["curve"]) == STEPS and meta["key_parts"]["settings"]["steps"] == STEPS


def test_bad_checkpoint_every_is_refused():
    with pytest.raises(Exception, match="checkpoint_every >= 0"):
        train_quietstar(fresh(), WINDOWS, **KW, checkpoint_every=-1)


def test_bake_is_seeded_so_phase3_resume_finds_the_same_initial_weights():
    "Quiet-STaR starts from the baked model: two bakes with one seed, whatever the global RNG, give identical weights."
    from agent_forge.baking.prompt import bake

    tok = char_tokenizer()
    model = tiny_llama(len(tok), seed=0)
    nl = tok.convert_tokens_to_ids("\n")
    xs = [f"{a}+{b}=" for a in range(4) for b in range(3)]
    kw = dict(steps=3, eval_every=3, batch_size=4, max_new_tokens=3, stop_ids=(nl,))
    runs = []
    for s in (11, 12):  # a different global RNG state before each bake
        torch.manual_seed(s)
        runs.append(bake(model, tok, "add:", xs[:8], xs[8:], **kw).model.state_dict())
    other = bake(model, tok, "add:", xs[:8], xs[8:], **kw, seed=1).model.state_dict()
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())
    assert not all(torch.equal(v, other[k]) for k, v in runs[0].items())  # the seed matters: the check can fail

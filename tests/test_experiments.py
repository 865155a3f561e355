"The experiment notebooks: smoke size end to end, and a checkpointed run resumes bit-identically."
import json
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODMUL = ROOT / "experiments" / "grokfast_modmul.ipynb"

def run_modmul(tmp_path, name, **params):
    "Execute the modmul notebook with `params`; return the executed notebook."
    return pm.execute_notebook(str(MODMUL), str(tmp_path / f"{name}.ipynb"), parameters=params,
                               kernel_name="agent-forge", progress_bar=False, cwd=str(ROOT))

def stdout(nb):
    "All stream output of an executed notebook."
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")

def load(d, run, seed=0): return json.loads((d / f"{run}_s{seed}.json").read_text())

def test_modmul_smoke(tmp_path):
    cache = tmp_path / "cache"
    nb = run_modmul(tmp_path, "smoke", results_dir=str(cache))
    assert len(list(cache.glob("*.json"))) == 10  # five runs x two seeds
    r = load(cache, "adam_wd0", 1)
    assert r["finished"] and r["steps_run"] == 10 and r["step"] == [10] and r["eval_every_steps"] == 10
    assert (cache / "grokfast_modmul_curves.png").stat().st_size > 10_000
    assert "| mugrokfast | not reached within 10 | not reached within 10 | n/a | n/a | n/a |" in stdout(nb)

def test_modmul_resume_is_bit_identical(tmp_path):
    kw = dict(runs=["grokfast_ma", "mugrokfast"], seeds=[0], checkpoint_every=10)  # MA keeps a deque; MuGrokfast has Muon state
    run_modmul(tmp_path, "straight", max_steps=40, results_dir=str(tmp_path / "a"), **kw)
    run_modmul(tmp_path, "first", max_steps=20, results_dir=str(tmp_path / "b"), **kw)
    nb = run_modmul(tmp_path, "rest", max_steps=40, results_dir=str(tmp_path / "b"), **kw)
    assert stdout(nb).count("resumed at step 20") == 2
    for run in kw["runs"]:
        a, b = load(tmp_path / "a", run), load(tmp_path / "b", run)
        assert a["step"] == b["step"] == [10, 20, 30, 40]
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"] and a["val_acc"] == b["val_acc"]

def test_modmul_eval_every_and_report_only(tmp_path):
    cache = tmp_path / "c"
    run_modmul(tmp_path, "sparse", max_steps=50, eval_every=2, runs=["adam_wd"], seeds=[0], results_dir=str(cache))
    assert load(cache, "adam_wd")["step"] == [20, 40, 50]  # every 2nd epoch, and always at the cap
    before = (cache / "adam_wd_s0.json").stat().st_mtime_ns
    nb = run_modmul(tmp_path, "report", max_steps=100_000, report_only=True, runs=["adam_wd", "grokfast_ema"], seeds=[0],
                    results_dir=str(cache))
    assert (cache / "adam_wd_s0.json").stat().st_mtime_ns == before  # report_only never trains
    assert "grokfast_ema seed 0: no result" in stdout(nb)
    with pytest.raises(pm.PapermillExecutionError, match="report_only needs results_dir"):
        run_modmul(tmp_path, "bad", report_only=True)

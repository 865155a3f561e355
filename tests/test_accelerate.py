"""Training past one process: `accelerate launch` with two CPU processes against one process at twice the batch.

`train_lm` seeds each process's batch generator by its rank (`cfg.seed + 1_000_003 * rank`), so the ranks draw
different data, and DDP averages their gradients. With the same data, two processes at batch B must then follow
the path of one process at batch 2B: the step losses (the mean of the ranks' losses) and the final weights may
differ only by float32 rounding (the order of the sums). Measured: at most 3.1e-7 on weights of magnitude up to 5,
5e-7 on losses of about 4.2; the tolerance is 1e-5 absolute on both, about 30 times the measured difference.

Launch: accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts ONE process (`--cpu` always takes its
simple launcher; several CPU processes need mpirun). `--multi_gpu --num_processes 2` starts two through torchrun;
on a machine without CUDA (here forced with CUDA_VISIBLE_DEVICES="") `train_lm`'s `Accelerator(cpu=True)` then
runs them as MULTI_CPU with the gloo backend. The test checks that each rank saw two processes. It also kills a
2-process run with a checkpoint (every process exits on its 4th batch) and resumes it: each rank continues its
own batches from step 2 and the weights are bit-identical to the uninterrupted 2-process run's.
"""

import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "tests" / "accelerate_train.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "(rank 0, rank 1) of the two-process run at batch 4, and the one-process run at batch 8 on the same data."
    d = tmp_path_factory.mktemp("acc")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled"}
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    ck = ["--checkpoint", str(d / "ck")]
    for cmd, ok in (
        ([*launch, str(SCRIPT), str(d / "two.json"), "--batch", "4"], True),
        ([sys.executable, str(SCRIPT), str(d / "one.json"), "--batch", "8", "--ranks-of", "2"], True),
        ([*launch, str(SCRIPT), str(d / "killed.json"), "--batch", "4", *ck, "--die-at", "4"], False),
        ([*launch, str(SCRIPT), str(d / "resumed.json"), "--batch", "4", *ck], True),
    ):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert (r.returncode == 0) == ok, r.stdout[-3000:] + r.stderr[-3000:]
    load = lambda f: json.loads((d / f).read_text())
    return load("two.rank0.json"), load("two.rank1.json"), load("one.rank0.json"), load("resumed.rank0.json"), load(
        "resumed.rank1.json"
    )


def test_two_processes_ran(runs):
    r0, r1, one, _, _ = runs
    assert (r0["rank"], r0["processes"], r1["rank"], r1["processes"]) == (0, 2, 1, 2)
    assert one["processes"] == 1


def test_ranks_draw_different_batches(runs):
    r0, r1, _, _, _ = runs
    assert len(r0["batches"]) == len(r1["batches"]) == 6
    for b0, b1 in zip(r0["batches"], r1["batches"]):
        assert b0 != b1
    rows0 = {tuple(r) for b in r0["batches"] for r in b}
    rows1 = {tuple(r) for b in r1["batches"] for r in b}
    assert len(rows0 & rows1) <= 1  # 24 windows each out of ~2,400 offsets: a shared one is rare, many is a bug


def test_two_processes_match_one_at_twice_the_batch(runs):
    r0, r1, one, _, _ = runs
    assert one["batches"] == [a + b for a, b in zip(r0["batches"], r1["batches"])]  # the same data, in one batch
    assert r0["weights"] == r1["weights"]  # DDP keeps the ranks' weights identical
    mean = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
    assert max(abs(a - b) for a, b in zip(mean, one["losses"])) < TOL
    worst = max(max(abs(x - y) for x, y in zip(r0["weights"][k], one["weights"][k])) for k in one["weights"])
    moved = max(max(abs(x - y) for x, y in zip(r0["weights"][k], init)) for k, init in initial().items())
    print(f"2 processes x batch 4 vs 1 process x batch 8: max |weight difference| {worst:.2e}, training moved {moved:.2e}")
    assert worst < TOL
    assert moved > 100 * TOL  # the weights did move: the comparison can fail


def initial():
    "The tiny Cognate's weights before training (the script's model, same seed)."
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_cognate

    return {k: v.flatten().tolist() for k, v in tiny_cognate(64, seed=1).state_dict().items()}


def test_two_processes_resume_a_killed_run_identically(runs):
    "Killed on its 4th batch (checkpoint at step 2), the 2-process run resumes with each rank's own generator."
    r0, r1, _, k0, k1 = runs
    assert (k0["resumed_at"], k1["resumed_at"]) == (2, 2)
    assert (k0["batches"], k1["batches"]) == (r0["batches"][2:], r1["batches"][2:])  # each rank continues its own
    assert k0["losses"] == r0["losses"]  # the history before step 2 is the main process's, kept in the checkpoint
    assert k1["losses"][2:] == r1["losses"][2:]
    assert k0["weights"] == r0["weights"]  # bit-identical to the uninterrupted 2-process run

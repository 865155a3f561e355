"""A small `train_lm` run for tests/test_accelerate.py, under `accelerate launch` or plain python.

    accelerate launch --cpu --num_processes 2 tests/accelerate_train.py OUT.json --batch 4
    python tests/accelerate_train.py OUT.json --batch 8 --ranks-of 2

Each process writes OUT.rank<R>.json: the token ids of every batch it drew, its step losses and its final weights.
`--checkpoint DIR --die-at N` checkpoints every 2 steps and exits on the N-th batch in every process (a kill).
With `--ranks-of N` a single process draws, each step, the batches that ranks 0..N-1 of an N-process run would
draw (one generator per rank, seeded as `train_lm` seeds them) and trains on all of them at once: the one-process
run at N times the per-process batch that the N-process run must match.
"""

import argparse, json, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_cognate  # noqa: E402

from agent_forge.training.train import TrainConfig, train_lm  # noqa: E402

STREAM = torch.arange(3, 64).repeat(40)[torch.randperm(61 * 40, generator=torch.Generator().manual_seed(0))]
SEQ = 16


def draw(g, batch):
    "`batch` windows of `SEQ` tokens from `STREAM` at offsets drawn from generator `g`."
    off = torch.randint(0, len(STREAM) - SEQ, (batch,), generator=g)
    return torch.stack([STREAM[o : o + SEQ] for o in off.tolist()])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch", type=int, required=True, help="windows per step in this process")
    ap.add_argument("--ranks-of", type=int, default=0, help="draw the batches of ranks 0..N-1 in one process")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--checkpoint", type=Path, help="checkpoint folder (every 2 steps)")
    ap.add_argument("--die-at", type=int, default=0, help="raise on this call of next_batch in every process")
    a = ap.parse_args()
    cfg = TrainConfig(steps=a.steps, lr=3e-3, warmup_steps=1, log_every=1, seed=5)
    seen = []
    if a.ranks_of:
        per = a.batch // a.ranks_of
        extra = [torch.Generator().manual_seed(cfg.seed + 1_000_003 * r) for r in range(1, a.ranks_of)]

        def next_batch(g):
            ids = torch.cat([draw(g, per)] + [draw(x, per) for x in extra])
            seen.append(ids.tolist())
            return ids

    else:

        def next_batch(g):
            ids = draw(g, a.batch)
            seen.append(ids.tolist())
            return ids

    def batches(g):
        if len(seen) + 1 == a.die_at:
            raise SystemExit(f"killed at call {a.die_at}")
        return next_batch(g)

    model = tiny_cognate(64, seed=1)
    ck = dict(checkpoint=a.checkpoint, checkpoint_every=2) if a.checkpoint else {}
    res = train_lm(model, batches, cfg, progress=False, **ck)
    from accelerate import PartialState

    st = PartialState()
    out = a.out.with_suffix(f".rank{st.process_index}.json")
    out.write_text(
        json.dumps(
            dict(
                rank=st.process_index,
                processes=st.num_processes,
                resumed_at=res["resumed_at"],
                batches=seen,
                losses=[h["loss"] for h in res["history"]],
                weights={k: v.flatten().tolist() for k, v in model.state_dict().items()},
            )
        )
    )


if __name__ == "__main__":
    main()

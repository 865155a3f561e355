"""Measure merge and candidate-evaluation throughput, and our YAML merge time against mergekit's, in one run.

Usage: .venv/bin/python tests/merge_bench.py [--quick]   (prints a Markdown report on stdout)
Not collected by pytest. Figures land in docs/merge_results.md by hand, with the machine load printed here.
"""

import json, os, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mergekit_env import ensure_mergekit_venv
from agent_forge.models.cognate import CognateConfig, CognateForCausalLM
from agent_forge.merge.evomerge import MergeEvaluator, merge_recipe
from agent_forge.training.evaluate import domain_losses
from agent_forge.merge.methods import merge, model_state
from agent_forge.merge.mergekit import run_merge_yaml

QUICK = "--quick" in sys.argv
REPS = 2 if QUICK else 5


def med(f, reps=REPS):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def family(model_fn, seed=0, eps=0.01):
    "A base and three 'fine-tunes' (base plus a random task vector) of one architecture."
    torch.manual_seed(seed)
    base = model_fn().eval()
    sd = model_state(base)
    parents = [
        {k: v + eps * torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()} for _ in range(3)
    ]
    return base, sd, parents


METHODS = [
    ("linear", dict()),
    ("task_arithmetic", dict()),
    ("ties", dict(density=0.5)),
    ("ties", dict(density=0.5, trim="global")),
    ("dare_ties", dict(density=0.5)),
    ("dare_linear", dict(density=0.5)),
    ("breadcrumbs", dict(density=0.8)),
]


def merges_per_s(sd, parents):
    rows = []
    for name, kw in METHODS:
        s = med(lambda: merge(name, parents, None if name == "linear" else sd, **kw))
        rows.append((name + (" (global trim)" if kw.get("trim") == "global" else ""), 1 / s))
    s = med(lambda: merge("slerp", parents[:1], sd, t=0.5))
    rows.append(("slerp (2 models)", 1 / s))
    return rows


def evals_per_s(base, sd, parents, vocab, seq_len, n_windows, batch):
    g = torch.Generator().manual_seed(0)
    sets = {d: torch.randint(0, vocab, (n_windows, seq_len), generator=g) for d in ("reasoning", "memory", "general")}
    work = type(base)(base.config).eval()
    ev = MergeEvaluator(
        work,
        parents,
        sd,
        lambda m: domain_losses(m, sets, batch),
        probe=sets["general"][:batch],
        weights={"perplexity": 0.4, "speed": 0.2, "memory": 0.1},
        reps=3,
    )
    recipes = [
        {"method": "ties", "params": {"weights": [0.3 + 0.1 * i, 0.5, 0.7], "density": 0.5}} for i in range(REPS)
    ]
    t0 = time.perf_counter()
    for r in recipes:
        ev(r)
    total = time.perf_counter() - t0
    return len(recipes) / total, len(recipes) / ev.merge_s


def tiny_llama(hidden=32, layers=2, inter=64, vocab=64, heads=4):
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=64,
        )
    )


MK_WORKER = r"""
import sys, time, json, yaml, statistics, shutil, os
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
cfg_path, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = MergeConfiguration.model_validate(yaml.safe_load(open(cfg_path)))
ts = []
for i in range(reps):
    d = f"{out}/mk{i}"
    t0 = time.perf_counter()
    run_merge(cfg, d, MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False, random_seed=0))
    ts.append(time.perf_counter() - t0)
    shutil.rmtree(d)
print(json.dumps(ts))
"""


def vs_mergekit(model_fn, label):
    exe, why = ensure_mergekit_venv()
    if exe is None:
        return f"mergekit unavailable: {why}"
    py = exe.parent / "python"
    with tempfile.TemporaryDirectory() as T:
        T = Path(T)
        base, _, _ = family(model_fn)
        base.save_pretrained(T / "base")
        for i in (1, 2, 3):
            torch.manual_seed(10 + i)
            m = model_fn()
            m.load_state_dict(base.state_dict())
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            m.save_pretrained(T / f"ft{i}")
        lines = []
        for method, params in [
            ("ties", "weight: 0.5, density: 0.5"),
            ("linear", "weight: 0.4"),
            ("task_arithmetic", "weight: 0.4"),
        ]:
            (T / "c.yml").write_text(textwrap.dedent(f"""
                merge_method: {method}
                {'base_model: ' + str(T/'base') if method != 'linear' else ''}
                models:
                  - {{model: {T/'ft1'}, parameters: {{{params}}}}}
                  - {{model: {T/'ft2'}, parameters: {{{params}}}}}
                  - {{model: {T/'ft3'}, parameters: {{{params}}}}}
                dtype: float32"""))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            mk, ours = [], []
            for _ in range(2):  # interleave the two tools to share the machine's load
                r = subprocess.run(
                    [str(py), "-c", MK_WORKER, str(T / "c.yml"), str(T), str(REPS)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if r.returncode != 0:
                    return f"mergekit timing failed: {r.stderr[-500:]}"
                mk += json.loads(r.stdout.strip().splitlines()[-1])[1:]  # drop each worker's cold first run
                for i in range(REPS):
                    t0 = time.perf_counter()
                    run_merge_yaml(T / "c.yml", T / f"ours{i}")
                    dt = time.perf_counter() - t0
                    if i:
                        ours.append(dt)
                    import shutil

                    shutil.rmtree(T / f"ours{i}")
            a, b = statistics.median(ours), statistics.median(mk)
            lines.append(f"| {label} | {method} | {a * 1e3:.0f} ms | {b * 1e3:.0f} ms | {a / b:.2f} |")
        return "\n".join(lines)


if __name__ == "__main__":
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}, reps {REPS}\n")
    sizes = {"tiny": CognateConfig.from_preset("tiny"), "full": CognateConfig.from_preset("full")}
    for name, cfg in sizes.items():
        base, sd, parents = family(lambda: CognateForCausalLM(cfg))
        n = sum(p.numel() for p in base.parameters())
        print(f"### Cognate {name}: {n:,} parameters, {len(sd)} tensors\n\n| method | merges/s |\n|---|---|")
        for m, r in merges_per_s(sd, parents):
            print(f"| {m} | {r:.2f} |")
        seq = 64 if name == "tiny" else 256
        e, mg = evals_per_s(base, sd, parents, cfg.vocab_size, seq, 4, 4)
        print(
            f"\ncandidate evaluations/s (ties merge + load + held-out loss on 3 x 4 windows of {seq} tokens"
            f" + latency probe 4 x {seq}, 3 reps): "
            f"{e:.3f}/s (merge part alone {mg:.2f}/s)\n"
        )
    print("### ours vs mergekit 0.1.5 (same YAML, load + merge + write, median of warm runs)\n")
    print("| checkpoints | method | ours | mergekit | ratio ours/mergekit |\n|---|---|---|---|---|")
    print(vs_mergekit(lambda: tiny_llama(), "tiny Llama (hidden 32, 2 layers)"))
    print(
        vs_mergekit(
            lambda: tiny_llama(hidden=384, layers=8, inter=1152, vocab=12288, heads=6),
            "Llama ~25M (hidden 384, 8 layers)",
        )
    )
    print(f"\nload average at end {os.getloadavg()}")

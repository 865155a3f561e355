"""Our merges equal mergekit's: the same YAML through mergekit's CLI (`mergekit-multi`, mergekit 0.1.5 in
`.venv-mergekit`, see tests/mergekit_env.py) and through `agent_forge.merge.mergekit.run_merge_yaml`, on tiny Llama
checkpoints built here, must give the same tensors within 1e-6. Skipped, with the reason shown by `-ra`, only when the
mergekit venv cannot be built (for example without access to PyPI)."""

import json, os, subprocess, textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from agent_forge.merge.mergekit import run_merge_yaml
from mergekit_env import ensure_mergekit_venv

TOL = 1e-6


def _save(d, seed, layers=2, base=None, tie=False):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        max_position_embeddings=64,
    )
    m = LlamaForCausalLM(cfg)
    if base is not None:  # a "fine-tune": the base plus a random task vector
        with torch.no_grad():
            for p, q in zip(m.parameters(), base.parameters()):
                p.copy_(q + 0.05 * torch.randn_like(q))
    m.save_pretrained(d)
    return m


# name -> YAML; $T is the folder of checkpoints: base, ft1, ft2, ft3 (fine-tunes of base), scaled (1.5 x base),
# deep (3 layers), tbase, tft1, tft2 (tied embeddings, as Cognate has).
CASES = {
    "linear": """
        merge_method: linear
        models:
          - {model: $T/ft1, parameters: {weight: 0.5}}
          - {model: $T/ft2, parameters: {weight: 0.3}}
          - {model: $T/ft3, parameters: {weight: 0.2}}
        dtype: float32""",
    "linear_unnormalized_tied": """
        merge_method: linear
        models:
          - {model: $T/tft1, parameters: {weight: 0.7}}
          - {model: $T/tft2, parameters: {weight: 0.6}}
        parameters: {normalize: false}
        dtype: float32""",
    "slerp_gradient": """
        merge_method: slerp
        base_model: $T/ft1
        slices:
          - sources: [{model: $T/ft1, layer_range: [0, 2]}, {model: $T/deep, layer_range: [1, 3]}]
        parameters:
          t:
            - {filter: self_attn, value: [0.1, 0.9]}
            - {filter: mlp, value: [0.8, 0.3]}
            - {value: 0.4}
        dtype: float32""",
    "slerp_collinear": """
        merge_method: slerp
        base_model: $T/base
        models: [{model: $T/base}, {model: $T/scaled}]
        parameters: {t: 0.3}
        dtype: float32""",
    "task_arithmetic": """
        merge_method: task_arithmetic
        base_model: $T/base
        models:
          - {model: $T/ft1, parameters: {weight: 0.6}}
          - {model: $T/ft2, parameters: {weight: [0.2, 0.9]}}
        parameters: {lambda: 0.8}
        dtype: float32""",
    "ties": """
        merge_method: ties
        base_model: $T/base
        models:
          - {model: $T/ft1, parameters: {weight: 0.7, density: 0.5}}
          - {model: $T/ft2, parameters: {weight: 0.3, density: 0.3}}
          - {model: $T/ft3, parameters: {weight: 0.5, density: [{filter: mlp, value: 0.2}, {value: 0.6}]}}
        dtype: float32""",
    "ties_unnormalized_tied": """
        merge_method: ties
        base_model: $T/tbase
        models:
          - {model: $T/tft1, parameters: {weight: 1.0, density: 0.4}}
          - {model: $T/tft2, parameters: {weight: 0.5, density: 0.7}}
        parameters: {normalize: false, lambda: 1.3}
        dtype: float32""",
    "dare_linear_nodrop": """
        merge_method: dare_linear
        base_model: $T/base
        models:
          - {model: $T/ft1, parameters: {weight: 0.6}}
          - {model: $T/ft2, parameters: {weight: 0.4, density: 1.0}}
        dtype: float32""",
    "dare_ties_nodrop": """
        merge_method: dare_ties
        base_model: $T/base
        models:
          - {model: $T/ft1, parameters: {weight: 0.6}}
          - {model: $T/ft2, parameters: {weight: 0.4}}
        parameters: {normalize: true}
        dtype: float32""",
    "breadcrumbs": """
        merge_method: breadcrumbs
        base_model: $T/base
        models:
          - {model: $T/ft1, parameters: {weight: 0.5, density: 0.8, gamma: 0.05}}
          - {model: $T/ft2, parameters: {weight: 0.5, density: 0.6}}
        dtype: float32""",
    "passthrough": """
        merge_method: passthrough
        slices:
          - sources: [{model: $T/base, layer_range: [0, 2]}]
          - sources: [{model: $T/deep, layer_range: [1, 3]}]
          - sources: [{model: $T/ft1, layer_range: [1, 2]}]
        dtype: float32""",
}


@pytest.fixture(scope="module")
def mergekit_outputs(tmp_path_factory):
    exe, why = ensure_mergekit_venv()
    if exe is None:
        pytest.skip(f"mergekit reference venv unavailable: {why}")
    T = tmp_path_factory.mktemp("ckpt")
    base = _save(T / "base", 0)
    for i in (1, 2, 3):
        _save(T / f"ft{i}", i, base=base)
    scaled = _save(T / "scaled", 0)  # 1.5 x base: every tensor collinear with base's, SLERP's linear branch
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.5)
    scaled.save_pretrained(T / "scaled")
    _save(T / "deep", 4, layers=3)
    tbase = _save(T / "tbase", 5, tie=True)
    for i in (1, 2):
        _save(T / f"tft{i}", 5 + i, base=tbase, tie=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    docs = []
    for name, text in CASES.items():
        body = textwrap.dedent(text).replace("$T", str(T)).strip()
        (T / f"{name}.yml").write_text(body + "\n")
        docs.append(f"name: case_{name}\n{body}\n")
    (T / "all.yml").write_text("---\n".join(docs))
    # one mergekit-multi process runs every case (mergekit's own CLI; one import of torch instead of one per case)
    multi = exe.parent / "mergekit-multi"
    r = subprocess.run(
        [str(multi), str(T / "all.yml"), "-I", str(T / "mk"), "--quiet", "--no-copy-tokenizer", "--random-seed", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, f"mergekit-multi failed: {r.stderr[-3000:]}"
    return T


@pytest.mark.parametrize("name", list(CASES))
def test_same_tensors_as_mergekit(mergekit_outputs, name):
    T = mergekit_outputs
    ours = run_merge_yaml(T / f"{name}.yml", T / f"ours_{name}")
    a, b = load_file(str(T / "mk" / f"case_{name}" / "model.safetensors")), load_file(str(ours / "model.safetensors"))
    assert set(a) == set(b), f"tensor names differ: {sorted(set(a) ^ set(b))}"
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= TOL, f"{name}: max |ours - mergekit| = {worst:.3g}"
    mk_cfg, our_cfg = (json.loads((d / "config.json").read_text()) for d in (T / "mk" / f"case_{name}", ours))
    assert our_cfg["num_hidden_layers"] == mk_cfg["num_hidden_layers"]


def test_cases_are_not_trivial(mergekit_outputs):
    "The merges really mix the inputs: ties differs from its base and from each input."
    T = mergekit_outputs
    out = (
        load_file(str(T / "ours_ties" / "model.safetensors"))
        if (T / "ours_ties").exists()
        else load_file(str(run_merge_yaml(T / "ties.yml", T / "ours_ties") / "model.safetensors"))
    )
    for src in ("base", "ft1", "ft2", "ft3"):
        ref = load_file(str(T / src / "model.safetensors"))
        assert max((out[k] - ref[k]).abs().max().item() for k in ref) > 1e-3

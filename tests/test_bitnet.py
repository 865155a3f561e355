"Heavier checks of agent_forge.compress.bitnet across modules: Cognate conversion, packed kernels, damaged files, the registry."
import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agent_forge.compress.bitnet import (PACKED_FILE, BitLinear, TernaryLinear, convert_to_bitnet, load_bitnet_artifact, load_packed,
                                logits_match, pack_ternary, qat_train, quantize_weights, save_packed, ternary_stats, unpack_ternary)
from agent_forge.models.cognate import CognateConfig, CognateForCausalLM
from agent_forge.foundation.core import IntegrityError
from agent_forge.runs.registry import Registry
from agent_forge.runs.registry import load_model_artifact as load_model_artifact_plain


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def tiny_cognate(seed=0):
    torch.manual_seed(seed)
    return CognateForCausalLM(CognateConfig.from_preset("tiny"))


@pytest.fixture(scope="module")
def cognate_qat():
    "A tiny Cognate converted to BitNet and trained a few QAT steps (weights no longer the float ones)."
    m = tiny_cognate()
    ids = torch.randint(0, m.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    convert_to_bitnet(m, calib_ids=ids)
    qat_train(m, lambda s: ids, steps=3, lr=3e-3, optimizer="adamw")
    return m.eval(), ids


def test_pack_roundtrip_random_shapes():
    rng = random.Random(0)
    for _ in range(200):
        shape = tuple(rng.randint(1, 9) for _ in range(rng.randint(1, 3)))
        t = torch.randint(-1, 2, shape, dtype=torch.int8)
        p = pack_ternary(t)
        assert p.dtype == torch.uint8 and p.numel() == (t.numel() + 3) // 4
        assert torch.equal(unpack_ternary(p, shape), t)


def test_any_code3_is_refused():
    t = torch.randint(-1, 2, (7, 5), dtype=torch.int8)
    p = pack_ternary(t)
    for byte in range(p.numel()):
        for slot in range(4):
            if byte * 4 + slot >= t.numel(): continue
            q = p.clone(); q[byte] |= 3 << (2 * slot)
            with pytest.raises(IntegrityError, match="code 3"): unpack_ternary(q, t.shape)


def test_registries_name_their_papers_and_lookups_return_the_entries():
    from agent_forge.compress.bitnet import KERNELS, QAT_OPTIMIZERS, QUANTIZERS, Quantizer, get_kernel, get_quantizer
    get_kernel("packed")  # imports agent_forge.compress.kernels, which registers the packed kernel
    assert list(KERNELS) == ["int_mm", "fp64_exact", "packed"] and list(QAT_OPTIMIZERS) == ["mugrokfast", "adamw"]
    assert KERNELS.get("packed").paper == "https://arxiv.org/abs/2410.16144"
    assert all(KERNELS.get(n).paper == "https://arxiv.org/abs/2402.17764" for n in ("int_mm", "fp64_exact"))
    assert all(QUANTIZERS.get(n).paper == "https://arxiv.org/abs/2402.17764" for n in QUANTIZERS)
    for n in KERNELS:
        assert get_kernel(n) is KERNELS.get(n).fn and get_kernel(n).name == n
    assert get_quantizer("absmean_ternary") == Quantizer("absmean_ternary", quantize_weights, "weight",
                                                         "https://arxiv.org/abs/2402.17764")
    assert QAT_OPTIMIZERS.names(options=True) == ["mugrokfast"]


def test_zero_fraction_near_a_third_on_gaussian():
    assert 0.29 < (quantize_weights(torch.randn(512, 512))[0] == 0).float().mean().item() < 0.33


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_converted_cognate_is_causal(mode):
    m = tiny_cognate(1)
    ids = torch.randint(0, m.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    names = convert_to_bitnet(m, calib_ids=ids)
    assert any(".memory." in n for n in names) and any(n.startswith("recursion.mlp") for n in names)
    assert type(m.lm_head) is torch.nn.Linear and m.lm_head.weight is m.model.embed_tokens.weight
    getattr(m, mode)()
    for j in (1, 17, 39):
        b = ids.clone(); b[:, j] = (b[:, j] + 1) % m.config.vocab_size
        with torch.no_grad(): la, lb = m(input_ids=ids).logits, m(input_ids=b).logits
        assert torch.equal(la[:, :j], lb[:, :j]), f"position < {j} changed"
        assert not torch.equal(la[:, j:], lb[:, j:])


@pytest.mark.parametrize("kernel", ["int_mm", "packed"])
def test_cognate_packed_logits_equal_qat(cognate_qat, kernel, tmp_path):
    m, ids = cognate_qat
    save_packed(m, None, tmp_path)
    pm, _ = load_packed(tmp_path, kernel=kernel)
    for n, mod in pm.named_modules():
        if isinstance(mod, TernaryLinear):
            w_q, gamma = quantize_weights(m.get_submodule(n).weight)
            assert torch.equal(mod.ternary_weight(), w_q) and torch.equal(mod.weight_scale, gamma)
    with torch.no_grad(): a, b = pm(input_ids=ids).logits, m(input_ids=ids).logits
    ok, dmax = logits_match(a, b)
    assert ok and dmax == 0.0
    assert ternary_stats(pm) == ternary_stats(m)


def test_damaged_files_never_load_different_weights(cognate_qat, tmp_path):
    "Truncations and random byte flips anywhere either raise IntegrityError or give back the identical model."
    m, ids = cognate_qat
    save_packed(m, None, tmp_path)
    f = tmp_path/PACKED_FILE
    raw = f.read_bytes()
    with torch.no_grad(): ref = m(input_ids=ids).logits
    hlen = int.from_bytes(raw[:8], "little") + 8
    rng = random.Random(0)
    cases = [("trunc", n) for n in (0, 4, 8, hlen - 1, hlen, hlen + 10, len(raw) // 2, len(raw) - 1)]
    cases += [("flip", rng.randrange(hlen)) for _ in range(40)] + [("flip", rng.randrange(hlen, len(raw))) for _ in range(20)]
    errors = 0
    for kind, pos in cases:
        data = raw[:pos] if kind == "trunc" else raw[:pos] + bytes([raw[pos] ^ rng.randrange(1, 256)]) + raw[pos + 1:]
        f.write_bytes(data)
        try: pm, _ = load_packed(tmp_path)
        except IntegrityError: errors += 1; continue
        with torch.no_grad(): assert torch.equal(pm(input_ids=ids).logits, ref), f"{kind} at {pos} loaded a different model"
    assert errors >= len(cases) - 3  # only a flip inside the header's whitespace padding may be harmless


def test_registry_refuses_tampered_artifact(cognate_qat, tmp_path):
    m, ids = cognate_qat
    reg = Registry.open(tmp_path); reg.ensure_run("r", "tiny", 0, None)
    save_packed(m, None, tmp_path/"bitnet")
    aid = reg.register_artifact("r", 4, "bitnet", tmp_path/"bitnet", kind="bitnet")
    pm, _ = load_bitnet_artifact(reg, aid, kernel="packed")
    with torch.no_grad(): assert torch.equal(pm(input_ids=ids).logits, m(input_ids=ids).logits)
    f = tmp_path/"bitnet"/PACKED_FILE
    raw = bytearray(f.read_bytes()); raw[-5] ^= 1; f.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="changed"): load_bitnet_artifact(reg, aid)
    reg.close()


def test_qat_latent_weights_stay_float32_and_move(cognate_qat):
    m, _ = cognate_qat
    bls = [mod for mod in m.modules() if isinstance(mod, BitLinear)]
    assert bls and all(b.weight.dtype == torch.float32 and getattr(b.weight, "_bitnet_latent", False) for b in bls)
    fresh = tiny_cognate()
    moved = [not torch.equal(b.weight, fresh.get_submodule(n).weight) for n, b in m.named_modules() if isinstance(b, BitLinear)]
    assert all(moved)


def _run_folder(tmp_path, run_id):
    "A run folder named after its run id, as the phases require."
    (tmp_path / run_id).mkdir()
    return tmp_path / run_id


def _phase1_run(run_dir, run_id, preset):
    "A run whose Phase 1 registered an (untrained) tiny Cognate 'general' model with a real tokenizer."
    from agent_forge.data.corpora import domain_documents
    from agent_forge.data.tokenizer import train_tokenizer
    from agent_forge.runs.registry import save_model_artifact
    reg = Registry.open(run_dir); reg.ensure_run(run_id, preset, 0, None)
    tok = train_tokenizer(domain_documents("reasoning", "train", 300, 0) + domain_documents("memory", "train", 100, 0)
                          + domain_documents("general", "train", 100, 0), 512)
    cfg = CognateConfig.from_preset("tiny", vocab_size=512, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    p = save_model_artifact(CognateForCausalLM(cfg), tok, Path(run_dir)/"phase1"/"general")
    return reg, reg.register_artifact(run_id, 1, "general", p)


def _run_phase4(run_dir, run_id, preset, **params):
    import papermill as pm
    from agent_forge.foundation.core import project_root
    return pm.execute_notebook(str(project_root()/"pipelines"/"04_bitnet.ipynb"), str(Path(run_dir)/"04_out.ipynb"),
                               parameters=dict(run_id=run_id, run_dir=str(run_dir), preset=preset, **params),
                               kernel_name="agent-forge", progress_bar=False)


def _smoke4(**params):
    from conftest import SMOKE
    return {**SMOKE[4], "qat_steps": 2, **params}


# gate limits no 2-step QAT of an untrained model can fail: these tests check the plumbing, not the quality
OPEN_GATE = dict(max_ppl_increase=1e6, min_accuracy_retention=0.0)


def test_phase4_notebook_end_to_end(tmp_path):
    tmp_path = _run_folder(tmp_path, "p4")
    reg, src = _phase1_run(tmp_path, "p4", "tiny")
    _run_phase4(tmp_path, "p4", "tiny", **_smoke4(**OPEN_GATE))
    art = reg.find_artifact("p4", 4, "bitnet")
    assert art["kind"] == "bitnet" and art["parents"] == [src]
    d = Path(art["abspath"])
    assert (d/PACKED_FILE).is_file() and (d/"config.json").is_file() and (d/"tokenizer.json").is_file()
    assert not (d/"model.safetensors").exists()
    model, tok = load_bitnet_artifact(reg, art["id"], kernel="packed")
    assert tok is not None and any(isinstance(m, TernaryLinear) for m in model.modules())
    m = reg.get_phase("p4", 4)["metrics"]
    assert m["logits_max_diff"] == 0.0 and m["source"]["name"] == "general" and m["quietstar"] is None
    assert m["sizes"]["linear_packed_bytes"] * 8 < m["sizes"]["linear_fp32_bytes"]
    assert set(m["speed"]) == {"fp32", "ternary_packed", "ternary_int_mm"}
    # the gate's baseline is the float control, trained at every preset: its loss differs from the incoming model's
    ctl = m["float_control"]
    assert ctl is not None and ctl["mean_loss"] != m["before"]["mean_loss"]
    assert abs(m["ppl_vs_control"] - (m["after"]["ppl"] / ctl["ppl"] - 1)) < 1e-9


@pytest.mark.parametrize("preset", ["tiny", "full"])
def test_phase4_gate_enforced_at_every_preset(tmp_path, preset):
    import papermill as pm
    tmp_path = _run_folder(tmp_path, "p4g")
    _phase1_run(tmp_path, "p4g", preset)
    with pytest.raises(pm.PapermillExecutionError) as e:  # a limit of -100% demands a perplexity of 0
        _run_phase4(tmp_path, "p4g", preset, **_smoke4(max_ppl_increase=-1.0, min_accuracy_retention=0.0))
    assert e.value.ename == "GateError" and "perplexity" in e.value.evalue


def test_phase4_keeps_quietstar_head_and_thoughts(tmp_path):
    "A Quiet-STaR input comes out as a ternary Quiet-STaR model: thought tokens, ternary head, same config."
    from agent_forge.baking.quietstar import CONFIG_FILE, QuietStar, load_quietstar, save_quietstar_extras
    from agent_forge.compress.bitnet import QS_HEAD_PACKED, load_bitnet_quietstar
    from agent_forge.runs.registry import save_model_artifact
    tmp_path = _run_folder(tmp_path, "p4q")
    reg, src = _phase1_run(tmp_path, "p4q", "tiny")
    model, tok = load_model_artifact_plain(reg, src)
    qs = QuietStar(model, tok)
    with torch.no_grad():
        qs.head.net[2].weight.normal_(0, 0.5)  # a head that does something, as after Phase 3
    p = save_model_artifact(qs.model, tok, Path(tmp_path)/"phase3"/"quietstar")
    save_quietstar_extras(qs, p)
    qid = reg.register_artifact("p4q", 3, "quietstar", p, parents=[src])
    _run_phase4(tmp_path, "p4q", "tiny", **_smoke4(**OPEN_GATE))
    art = reg.find_artifact("p4q", 4, "bitnet")
    d = Path(art["abspath"])
    assert art["parents"] == [qid] and (d/QS_HEAD_PACKED).is_file() and (d/CONFIG_FILE).is_file()
    assert (d/CONFIG_FILE).read_text() == (p/CONFIG_FILE).read_text()
    tq, _ = load_bitnet_quietstar(d)
    assert (tq.start_id, tq.end_id) == (qs.start_id, qs.end_id)
    assert isinstance(tq.head.net[0], TernaryLinear) and isinstance(tq.head.net[2], TernaryLinear)
    assert any(isinstance(m, TernaryLinear) for m in tq.model.modules())
    m = reg.get_phase("p4q", 4)["metrics"]
    assert m["quietstar"]["kept"] and sorted(m["quietstar"]["head_layers"]) == ["net.0", "net.2"]
    assert not any(type(x) is torch.nn.Linear for x in tq.head.modules())  # every linear layer of the head is ternary
    assert m["source"]["name"] == "quietstar"

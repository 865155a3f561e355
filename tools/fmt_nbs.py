"""Format every code cell of the library and phase notebooks with black (line length 120), then report what is left.

Black splits statements joined by `;` and wraps long lines; what it cannot wrap (a long string) is listed, with
the notebook and cell, for a hand edit. Cells holding IPython magics or shell escapes are left as they are.
Usage: python tools/fmt_nbs.py [--check] [NOTEBOOK ...]   (default: nbs/**/*.ipynb and pipelines/*.ipynb)
"""
import io, json, sys, tokenize
from pathlib import Path

import black

ROOT = Path(__file__).resolve().parents[1]
MODE = black.Mode(line_length=120)


def semicolons(src):
    "Line numbers where `;` joins statements (tokenizer-based, so strings and comments do not count)."
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    return [t.start[0] for t in toks if t.type == tokenize.OP and t.string == ";"]


def fmt_cell(src):
    if any(l.lstrip().startswith(("%", "!")) for l in src.splitlines()):
        return src
    try:
        out = black.format_str(src, mode=MODE)
    except Exception as e:  # noqa: BLE001 - report and keep the cell
        print(f"  black could not parse a cell: {type(e).__name__}: {str(e)[:100]}")
        return src
    # black writes nbdev's `#| directive` comments as `# | directive`; keep nbdev's spelling
    return "\n".join("#|" + l[3:] if l.startswith("# |") else l for l in out.rstrip("\n").splitlines())


def main(argv):
    check = "--check" in argv
    files = [Path(a).resolve() for a in argv if not a.startswith("--")] or sorted(ROOT.glob("nbs/**/*.ipynb")) + sorted(
        ROOT.glob("pipelines/*.ipynb")
    )
    left = 0
    for p in files:
        nb = json.loads(p.read_text())
        changed = False
        for i, c in enumerate(nb["cells"]):
            if c["cell_type"] != "code":
                continue
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            new = src if check else fmt_cell(src)
            if new != src:
                c["source"], changed = new.splitlines(keepends=True), True
            for n, line in enumerate(new.splitlines(), 1):
                if len(line) > 120:
                    left += 1
                    print(f"{p.relative_to(ROOT)} cell {i} line {n}: {len(line)} chars")
            for n in semicolons(new):
                left += 1
                print(f"{p.relative_to(ROOT)} cell {i} line {n}: ';' joins statements")
        if changed:
            p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{left} line(s) left to fix by hand")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

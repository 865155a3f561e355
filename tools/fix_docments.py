"""Restore one parameter per line where black joined a signature's parameters and glued their docments comments.

Black turns `def f(a, # first\n      b # second\n     ):` into `def f(a, b):  # first  # second` when it fits;
docments then sees no comments. Each such signature is written back one parameter per line with its comment
(and a trailing comma, so black keeps it that way). Signatures whose comment count differs from their parameter
count are listed for a hand edit.
Usage: python tools/fix_docments.py NOTEBOOK ...
"""
import ast, io, json, re, sys, tokenize
from pathlib import Path


def _split_top(s):
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def fix_source(src, where):
    lines = src.split("\n")
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    edits = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body0 = node.body[0].lineno
        a, b = node.lineno - 1, body0 - 1  # signature lines [a, b)
        sig = "\n".join(lines[a:b])
        toks = list(tokenize.generate_tokens(io.StringIO(sig + "\n").readline))
        comments = [t for t in toks if t.type == tokenize.COMMENT]
        glued = [t for t in comments if re.search(r"\S  # ", t.string[1:])]
        if not glued:
            continue
        docs = [c.strip() for t in comments for c in t.string.lstrip("#").split("  # ")]
        code = "".join(l.split("  #")[0] if "#" in l else l for l in sig.split("\n"))
        m = re.match(r"^(\s*)(async\s+)?def\s+(\w+)\((.*)\)(\s*->\s*[^:]+)?:\s*$", code.rstrip())
        if not m:
            print(f"{where}: cannot parse signature of {node.name}")
            continue
        ind, asy, name, params, ret = m.groups()
        ps = [p for p in _split_top(params) if p]
        if len(ps) != len(docs):
            print(f"{where}: {node.name}: {len(ps)} parameters but {len(docs)} comments; fix by hand")
            continue
        new = [f"{ind}{asy or ''}def {name}("] + [f"{ind}    {p},  # {d}" for p, d in zip(ps, docs)]
        new.append(f"{ind}){(ret or '').rstrip()}:")
        edits.append((a, b, new))
    for a, b, new in sorted(edits, reverse=True):
        lines[a:b] = new
    return "\n".join(lines)


def main(paths):
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        for i, c in enumerate(nb["cells"]):
            if c["cell_type"] == "code":
                s = "".join(c["source"])
                t = fix_source(s, f"{p} cell {i}")
                if t != s:
                    c["source"] = t.splitlines(keepends=True)
                    print(f"{p} cell {i}: fixed")
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

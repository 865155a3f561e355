"""Split `#| export` cells that define several public names into one cell per public definition.

Private helpers, imports and other statements go with the public definition after them (trailing ones with the
last). The split cells keep their order; prose and examples are written by hand afterwards.
Usage: python tools/split_cells.py NOTEBOOK ...
"""
import ast, json, sys, uuid
from pathlib import Path


def _public(n):
    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        patched = any(isinstance(d, ast.Name) and d.id == "patch" for d in n.decorator_list)
        return not n.name.startswith("_") and not patched
    if isinstance(n, (ast.Assign, ast.AnnAssign)):
        ts = n.targets if isinstance(n, ast.Assign) else [n.target]
        return any(isinstance(t, ast.Name) and not t.id.startswith("_") for t in ts)
    return False


def split(src):
    "Pieces of an export cell's source, one per public definition."
    head, _, body = src.partition("\n")
    lines = body.split("\n")
    tree = ast.parse(body)
    groups, cur = [], []
    for n in tree.body:
        cur.append(n)
        if _public(n):
            groups.append(cur)
            cur = []
    if cur:
        if groups:
            groups[-1] += cur
        else:
            groups.append(cur)
    if len(groups) < 2:
        return [src]
    starts = []
    for g in groups:
        n = g[0]
        first = min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])])
        starts.append(first - 1)
    starts[0] = 0
    # leading comment lines belong to the definition below them
    for k in range(1, len(starts)):
        s = starts[k]
        while s > starts[k - 1] and lines[s - 1].lstrip().startswith("#"):
            s -= 1
        starts[k] = s
    ends = starts[1:] + [len(lines)]
    return [head + "\n" + "\n".join(lines[a:b]).strip("\n") for a, b in zip(starts, ends)]


def main(paths):
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        out, n = [], 0
        for c in nb["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] == "code" and src.startswith("#| export\n"):
                parts = split(src)
                if len(parts) > 1:
                    n += 1
                for i, part in enumerate(parts):
                    d = dict(c) if i == 0 else dict(c, id=uuid.uuid4().hex[:8], outputs=[], execution_count=None)
                    d["source"] = part.splitlines(keepends=True)
                    out.append(d)
            else:
                out.append(c)
        nb["cells"] = out
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p}: split {n} cell(s)")


if __name__ == "__main__":
    main(sys.argv[1:])

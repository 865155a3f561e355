"""House-style figures of the library notebooks: export cells defining more than one public name, example cells
with outputs, and export cells not followed by prose and an example.
Usage: python tools/nb_stats.py [NOTEBOOK ...]   (default: nbs/**/*.ipynb)
"""
import ast, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def public_names(src):
    "Public names a cell defines at top level."
    try:
        tree = ast.parse("\n".join(l for l in src.splitlines() if not l.startswith("%")))
    except SyntaxError:
        return []
    out = []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not any(isinstance(d, ast.Name) and d.id == "patch" for d in n.decorator_list):
                out.append(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            ts = n.targets if isinstance(n, ast.Assign) else [n.target]
            out += [t.id for t in ts if isinstance(t, ast.Name)]
    return [x for x in out if not x.startswith("_")]


def stats(p):
    cells = json.loads(Path(p).read_text())["cells"]
    exp = multi = examples = shown = orphan = 0
    for i, c in enumerate(cells):
        src = "".join(c["source"])
        if c["cell_type"] != "code":
            continue
        if src.startswith("#| export"):
            exp += 1
            if len(public_names(src)) > 1:
                multi += 1
            nxt = cells[i + 1 : i + 3]
            kinds = [x["cell_type"] for x in nxt]
            ex = [x for x in nxt if x["cell_type"] == "code" and not "".join(x["source"]).startswith("#|")]
            if public_names(src) and (not kinds or kinds[0] != "markdown" or not ex):
                orphan += 1
        elif not src.startswith("#|") and src.strip() and "import" not in src.split("\n")[0]:
            examples += 1
            shown += bool(c.get("outputs"))
    return exp, multi, examples, shown, orphan


if __name__ == "__main__":
    files = [Path(a) for a in sys.argv[1:]] or sorted(ROOT.glob("nbs/**/*.ipynb"))
    tot = [0] * 5
    print(f"{'notebook':<36} export  multi  examples  shown  no-prose-or-example")
    for f in files:
        s = stats(f)
        tot = [a + b for a, b in zip(tot, s)]
        print(f"{str(f.relative_to(ROOT) if f.is_absolute() else f):<36} {s[0]:>6} {s[1]:>6} {s[2]:>9} {s[3]:>6} {s[4]:>6}")
    print(f"{'total':<36} {tot[0]:>6} {tot[1]:>6} {tot[2]:>9} {tot[3]:>6} {tot[4]:>6}")

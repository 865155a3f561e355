"""Keep imports in their own cells (nbdev's doc build executes every cell that holds an import).

A non-export code cell whose top level starts with imports and goes on with other code is split into an import
cell and the rest. Cells that only silence tqdm's "IProgress not found" warning are dropped: `agent_forge`
filters that message on import. Cells with imports nested deeper are listed for a hand edit.
Usage: python tools/split_imports.py NOTEBOOK ...
"""
import ast, json, sys, uuid
from pathlib import Path


def main(paths):
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        out, todo = [], []
        for i, c in enumerate(nb["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or src.startswith("#| export"):
                out.append(c)
                continue
            try:
                tree = ast.parse(src)
            except SyntaxError:
                out.append(c)
                continue
            if "IProgress not found" in src and all(
                isinstance(n, (ast.Import, ast.ImportFrom)) or "filterwarnings" in ast.unparse(n) for n in tree.body
            ):
                continue
            has_imp = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
            if not has_imp or all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                out.append(c)
                continue
            k = 0
            while k < len(tree.body) and isinstance(tree.body[k], (ast.Import, ast.ImportFrom)):
                k += 1
            rest = tree.body[k:]
            if k == 0 or any(isinstance(n, (ast.Import, ast.ImportFrom)) for r in rest for n in ast.walk(r)):
                todo.append(i)
                out.append(c)
                continue
            lines = src.split("\n")
            cut = rest[0].lineno - 1
            while cut > 0 and lines[cut - 1].lstrip().startswith("#"):
                cut -= 1
            head, tail = "\n".join(lines[:cut]).strip("\n"), "\n".join(lines[cut:]).strip("\n")
            out.append(dict(c, source=head.splitlines(keepends=True), outputs=[], execution_count=None))
            out.append(dict(c, id=uuid.uuid4().hex[:8], source=tail.splitlines(keepends=True)))
        nb["cells"] = out
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p}: by hand: cells {todo}" if todo else f"{p}: ok")


if __name__ == "__main__":
    main(sys.argv[1:])

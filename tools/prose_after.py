"""Move the prose that introduces an export cell to just after it (house rule: definition, prose, example).

A markdown cell right before a public `#| export` cell is split: its leading `#` heading lines stay before the
definition, the rest moves after it. Export cells with no such prose are listed for a hand edit.
Usage: python tools/prose_after.py NOTEBOOK ...
"""
import json, sys, uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nb_stats import public_names  # noqa: E402


def fix(p):
    nb = json.loads(Path(p).read_text())
    cells, todo = nb["cells"], []
    i = 0
    while i < len(cells):
        c = cells[i]
        src = "".join(c["source"])
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        if c["cell_type"] == "code" and src.startswith("#| export") and public_names(src):
            if nxt is None or nxt["cell_type"] != "markdown":
                prev = cells[i - 1] if i else None
                if prev is not None and prev["cell_type"] == "markdown":
                    lines = "".join(prev["source"]).split("\n")
                    k = 0
                    while k < len(lines) and (lines[k].startswith("#") or not lines[k].strip()):
                        k += 1
                    head, prose = "\n".join(lines[:k]).strip(), "\n".join(lines[k:]).strip()
                    if prose:
                        md = dict(cell_type="markdown", id=uuid.uuid4().hex[:8], metadata={},
                                  source=prose.splitlines(keepends=True))
                        if head:
                            prev["source"] = head.splitlines(keepends=True)
                            cells.insert(i + 1, md)
                        else:
                            cells.pop(i - 1)
                            cells.insert(i, md)
                            i -= 1
                    else:
                        todo.append(public_names(src))
                else:
                    todo.append(public_names(src))
        i += 1
    Path(p).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{p}: no prose for {todo}" if todo else f"{p}: ok")


if __name__ == "__main__":
    for a in sys.argv[1:]:
        fix(a)

"""Convert a percent-format script (`# %%` code cells, `# %% [markdown]` cells) into a notebook.

Authoring aid for library and phase notebooks: write cells in an editor, convert, then
`nbdev-clean`. The notebook is the source of truth afterwards; the script is not kept.
Usage: python tools/py2nb.py SRC.py DEST.ipynb [--kernel agent-forge] [--parameters]
(--parameters tags the first code cell `parameters` for papermill).
"""
import re, sys
from pathlib import Path
import nbformat

def _cells(text):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = "\n".join(buf).strip("\n")
        if kind == "markdown":
            src = "\n".join(re.sub(r"^# ?", "", l) for l in src.splitlines())
        if src.strip(): cells.append((kind, src))
    for line in text.splitlines():
        m = re.match(r"^# %%(.*)$", line)
        if m:
            flush()
            kind, buf = ("markdown" if "[markdown]" in m.group(1) else "code"), []
        else:
            if kind is None: kind = "code"
            buf.append(line)
    flush()
    return cells

def convert(src, dest, kernel="python3", parameters=False):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    tagged = not parameters
    for kind, src_ in _cells(Path(src).read_text()):
        if kind == "markdown": nb.cells.append(nbformat.v4.new_markdown_cell(src_))
        else:
            c = nbformat.v4.new_code_cell(src_)
            if not tagged: c.metadata["tags"], tagged = ["parameters"], True
            nb.cells.append(c)
    nbformat.write(nb, dest)

if __name__ == "__main__":
    a = sys.argv[1:]
    kernel = a[a.index("--kernel") + 1] if "--kernel" in a else "python3"
    pos = [x for i, x in enumerate(a) if not x.startswith("--") and (i == 0 or a[i-1] != "--kernel")]
    convert(pos[0], pos[1], kernel=kernel, parameters="--parameters" in a)

"""Wrap code lines over 120 characters that are a lone (f-)string inside brackets into two adjacent strings.

Python joins adjacent string literals, so the value is unchanged. The split falls on a space outside `{...}`.
Usage: python tools/wrap_strings.py NOTEBOOK ...
"""
import json, re, sys
from pathlib import Path

LIMIT = 120
LONE = re.compile(r'^(\s*)([rbfRBF]{0,2})(["\'])(.*)\3(,?)(\s*\)?)$')


def split_line(line):
    m = LONE.match(line)
    if not m or len(line) <= LIMIT:
        return None
    ind, pre, q, body, comma, tail = m.groups()
    if q in body or "\\" + q in body:
        return None
    depth, cut = 0, -1
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == " " and depth == 0 and len(ind) + len(pre) + 1 + i + 2 <= LIMIT - 4:
            cut = i
    if cut <= 0:
        return None
    a, b = body[: cut + 1], body[cut + 1 :]
    pa = pre if ("f" in pre.lower() and "{" in a) or "f" not in pre.lower() else pre.replace("f", "").replace("F", "")
    pb = pre if ("f" in pre.lower() and "{" in b) or "f" not in pre.lower() else pre.replace("f", "").replace("F", "")
    return [f"{ind}{pa}{q}{a}{q}", f"{ind}{pb}{q}{b}{q}{comma}{tail}"]


def main(paths):
    for p in map(Path, paths):
        nb = json.loads(p.read_text())
        n = 0
        for c in nb["cells"]:
            if c["cell_type"] != "code":
                continue
            out = []
            for line in "".join(c["source"]).split("\n"):
                parts = split_line(line)
                while parts and len(parts[-1]) > LIMIT and split_line(parts[-1]):
                    parts = parts[:-1] + split_line(parts[-1])
                out += parts or [line]
                n += bool(parts)
            c["source"] = "\n".join(out).splitlines(keepends=True)
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p}: wrapped {n} line(s)")


if __name__ == "__main__":
    main(sys.argv[1:])

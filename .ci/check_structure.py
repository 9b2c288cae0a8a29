"""Structure checks run by CI: the numbers the project holds itself to, printed, and a nonzero exit if one fails.

- ``STMCDI.impute`` takes at most 10 parameters;
- no file in ``src/`` has more than 600 lines;
- the README has at most 150 lines;
- README and docs carry no work-log wording (sessions, dated history of defaults);
- no script in ``benchmarks/`` imports a private ``stmcdi._...`` module;
- at most 8 pairs of places in ``src/`` share six or more lines of the same code (same lines, or the same shape with
  other names, strings and numbers; blank, comment and import lines do not count).
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from collections import defaultdict
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"impute_parameters": 10, "largest_src_file": 600, "readme_lines": 150, "duplicate_pairs": 8}
WORK_LOG = re.compile(r"\bsessions?\b|\b(since|before|until|as of) 20\d\d-\d\d|\b20\d\d-\d\d-\d\d\b", re.IGNORECASE)
MIN_LINES = 6


def impute_parameters() -> int:
    tree = ast.parse((ROOT / "src/stmcdi/_model.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "impute":
            a = node.args
            return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - 1 + bool(a.vararg) + bool(a.kwarg)
    raise SystemExit("STMCDI.impute not found in src/stmcdi/_model.py")


def largest_src_file() -> tuple[int, str]:
    sizes = [(len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in (ROOT / "src").rglob("*.py")]
    return max(sizes)


def work_log_lines() -> list[str]:
    hits = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if WORK_LOG.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    return hits


def private_imports() -> list[str]:
    hits = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(re.match(r"stmcdi(\.\w+)*\._", n) for n in names):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def _shape_lines(path: Path) -> list[tuple[int, str]]:
    """Code lines of a file with names, strings and numbers replaced by placeholders (line number, shape)."""
    out: dict[int, list[str]] = defaultdict(list)
    skip: set[int] = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.string in ("import", "from") and tok.start[1] == len(tok.line) - len(
                tok.line.lstrip()):
            skip.add(tok.start[0])
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            continue
        text = {tokenize.NAME: "N", tokenize.STRING: "S", tokenize.NUMBER: "0"}.get(tok.type, tok.string)
        if tok.type == tokenize.NAME and tok.string in KEYWORDS:
            text = tok.string
        out[tok.start[0]].append(text)
    lines = []
    for n in sorted(out):
        shape = " ".join(out[n])
        if n in skip or not re.search(r"[A-Za-z0-9]", shape):
            continue  # imports and lone punctuation
        lines.append((n, shape))
    return lines


KEYWORDS = {"def", "class", "return", "if", "else", "elif", "for", "in", "while", "with", "as", "not", "and", "or",
            "is", "None", "True", "False", "raise", "try", "except", "lambda", "yield", "assert", "pass", "del"}


def duplicate_pairs() -> list[tuple[str, str]]:
    windows: dict[tuple, set[tuple[str, int]]] = defaultdict(set)
    for path in sorted((ROOT / "src").rglob("*.py")):
        lines = _shape_lines(path)
        rel = str(path.relative_to(ROOT / "src"))
        for i in range(len(lines) - MIN_LINES + 1):
            windows[tuple(s for _, s in lines[i:i + MIN_LINES])].add((rel, lines[i][0]))
    pairs = set()
    for places in windows.values():
        if 2 <= len(places) <= 8:  # a run in more places is boilerplate too common to list
            for (fa, la), (fb, lb) in combinations(sorted(places), 2):
                if fa != fb or abs(la - lb) >= MIN_LINES:
                    pairs.add((fa, fb))
    return sorted(pairs)


def main() -> int:
    failures = []
    n = impute_parameters()
    print(f"STMCDI.impute parameters: {n} (at most {LIMITS['impute_parameters']})")
    failures += [] if n <= LIMITS["impute_parameters"] else ["impute has too many parameters"]
    lines, name = largest_src_file()
    print(f"largest file in src/: {name}, {lines} lines (at most {LIMITS['largest_src_file']})")
    failures += [] if lines <= LIMITS["largest_src_file"] else [f"{name} is over the limit"]
    readme = len((ROOT / "README.md").read_text().splitlines())
    print(f"README lines: {readme} (at most {LIMITS['readme_lines']})")
    failures += [] if readme <= LIMITS["readme_lines"] else ["README is too long"]
    log = work_log_lines()
    print(f"work-log wording in README/docs: {len(log)} lines")
    for hit in log:
        print(f"  {hit}")
    failures += ["work-log wording in README/docs"] if log else []
    private = private_imports()
    print(f"private stmcdi._ imports in benchmarks/: {len(private)}")
    for hit in private:
        print(f"  {hit}")
    failures += ["benchmarks import private modules"] if private else []
    pairs = duplicate_pairs()
    print(f"pairs of places in src/ sharing {MIN_LINES}+ lines of the same code: {len(pairs)} "
          f"(at most {LIMITS['duplicate_pairs']})")
    for a, b in pairs:
        print(f"  {a} ~ {b}")
    failures += ["too many duplicated places in src/"] if len(pairs) > LIMITS["duplicate_pairs"] else []
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("structure checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

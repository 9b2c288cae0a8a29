"""Structure checks run by CI: the numbers the project holds itself to, printed, and a nonzero exit if one fails.

- ``STMCDI.impute`` takes at most 10 parameters;
- no file in ``src/`` has more than 600 lines;
- the README has at most 150 lines;
- README and docs carry no work-log wording (sessions, dated history of defaults);
- no script in ``benchmarks/`` imports a private ``stmcdi._...`` module;
- at most 8 pairs of places in ``src/`` share six or more lines of the same code (same lines, or the same shape with
  other names, strings and numbers; blank, comment and import lines do not count). As in the ``duplicates`` tool, a
  thin run (under 4 tokens a line, or under 2 statements: ``__all__`` lists, constants, dict entries, class fields)
  counts only where it is the same to the letter.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"impute_parameters": 10, "largest_src_file": 600, "readme_lines": 150, "duplicate_pairs": 8}
WORK_LOG = re.compile(r"\bsessions?\b|\b(since|before|until|as of) 20\d\d-\d\d|\b20\d\d-\d\d-\d\d\b", re.IGNORECASE)
MIN_LINES = 6


def impute_parameters() -> int:
    """Parameters of ``STMCDI.impute`` (``self`` not counted)."""
    tree = ast.parse((ROOT / "src/stmcdi/_model.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "impute":
            a = node.args
            return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - 1 + bool(a.vararg) + bool(a.kwarg)
    raise SystemExit("STMCDI.impute not found in src/stmcdi/_model.py")


def largest_src_file() -> tuple[int, str]:
    """Lines and path of the longest file in ``src/``."""
    sizes = [(len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in (ROOT / "src").rglob("*.py")]
    return max(sizes)


def work_log_lines() -> list[str]:
    """Lines of README and docs pages that read as a work log."""
    hits = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if WORK_LOG.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    return hits


def private_imports() -> list[str]:
    """Imports of private ``stmcdi._...`` modules in the benchmark scripts."""
    hits = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(re.match(r"stmcdi(\.\w+)*\._", n) for n in names):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


STRING = re.compile(r"[rbfuRBFU]*(\"\"\"|\'\'\'|\"|\')(?:\\.|(?!\1).)*\1")
NUMBER = re.compile(r"\b\d[\d_]*(\.\d*)?([eE][-+]?\d+)?\b")
NAME = re.compile(r"\b[A-Za-z_]\w*\b")
TOKEN = re.compile(r'""|\w+|\S')
KEYWORDS = {"def", "class", "return", "if", "else", "elif", "for", "in", "while", "with", "as", "not", "and", "or",
            "is", "None", "True", "False", "raise", "try", "except", "lambda", "yield", "assert", "pass", "del",
            "self"}
STATEMENT_WORDS = {"if", "for", "while", "return", "else", "elif", "try", "except", "with", "raise", "yield", "await",
                   "assert", "del", "continue", "break"}
# lines that declare data rather than do something: a dict entry ``key: value,`` or a class field ``name: type = 0``
DECLARATION = re.compile(r'^(N|"")(\.N)*: (N|""|-?0)(\.N)*(\(\))?,?$|^N: [^=]+ = (""|-?0|None|True|False)$')
MIN_TOKENS = 4  # a run compared by shape needs this many tokens a line on average ...
MIN_STATEMENTS = 2  # ... and this many statements; a thinner run counts only where it is the same to the letter


class Line(NamedTuple):
    """One counted line of a file."""

    number: int
    text: str  # white space folded, trailing comment dropped
    shape: str  # names, strings and numbers replaced by placeholders
    tokens: int
    statement: bool


def _is_statement(shape: str, tokens: list[str]) -> bool:
    """Whether a line does something, as the ``duplicates`` tool decides.

    A statement word, an assignment or a long line is; a dict entry or a class field with a literal default is not.
    """
    if DECLARATION.match(shape):
        return False
    if tokens[0] in STATEMENT_WORDS:
        return True
    for k, t in enumerate(tokens):
        alone = k + 1 >= len(tokens) or tokens[k + 1] not in "=>"
        if t == "=" and alone and (k == 0 or tokens[k - 1] not in "=!<>"):
            return True
    return len(tokens) >= 8


def _lines(path: Path) -> list[Line]:
    """Counted lines of a file with their shapes: names, strings and numbers replaced by placeholders.

    Blank lines, comments, lone punctuation and import statements are passed over; white space is folded.
    """
    lines, in_import = [], False
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if in_import:
            in_import = ")" not in line
            continue
        if line.startswith(("import ", "from ")) and " import" in f" {line}":
            in_import = line.rstrip().endswith("(")
            continue
        if not line or line.startswith("#") or not re.search(r"[A-Za-z0-9]", line):
            continue
        text = " ".join(line.split("  #")[0].split())
        shape = STRING.sub('""', text)
        shape = NUMBER.sub("0", shape)
        shape = " ".join(NAME.sub(lambda m: m.group(0) if m.group(0) in KEYWORDS else "N", shape).split())
        tokens = TOKEN.findall(shape)
        lines.append(Line(n, text, shape, len(tokens), _is_statement(shape, tokens)))
    return lines


def _window_key(window: list[Line]) -> tuple:
    """What a run of lines is compared by: its shapes, or its text where it is too thin to compare by shape.

    Thin runs are lists of names such as ``__all__``, constants, dict entries and class fields.
    """
    thin = sum(x.tokens for x in window) < MIN_TOKENS * len(window) or sum(x.statement for x in window) < MIN_STATEMENTS
    return ("text", *(x.text for x in window)) if thin else ("shape", *(x.shape for x in window))


def duplicate_pairs() -> list[tuple[str, str]]:
    """Pairs of files (or a file with itself) sharing a run of ``MIN_LINES`` lines of the same code."""
    windows: dict[tuple, set[tuple[str, int]]] = defaultdict(set)
    for path in sorted((ROOT / "src").rglob("*.py")):
        lines = _lines(path)
        rel = str(path.relative_to(ROOT / "src"))
        for i in range(len(lines) - MIN_LINES + 1):
            windows[_window_key(lines[i:i + MIN_LINES])].add((rel, lines[i].number))
    pairs = set()
    for places in windows.values():
        if 2 <= len(places) <= 8:  # a run in more places is boilerplate too common to list
            for (fa, la), (fb, lb) in combinations(sorted(places), 2):
                if fa != fb or abs(la - lb) >= MIN_LINES:
                    pairs.add((fa, fb))
    return sorted(pairs)


def main() -> int:
    """Print every check; exit 1 if one fails."""
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

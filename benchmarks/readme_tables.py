"""README tables generated from the CSVs under ``benchmarks/results/``, so that no result is typed by hand.

    .venv/bin/python benchmarks/readme_tables.py            # rewrite every block in README.md
    .venv/bin/python benchmarks/readme_tables.py --check    # exit 1 when a block differs from its CSV

A block in README.md is an opening comment line, the generated Markdown table, a closing line:

    <!-- table: benchmarks/results/NAME.csv [columns=a,b,c] [where=QUERY] [pivot=I/C/V] [round=3] -->
    | a | b | c |
    ...
    <!-- /table -->

The path is relative to the README's folder. Options (each at most once, in any order):

- ``where=QUERY``: keep the rows of ``DataFrame.query(QUERY, engine="python")``, e.g.
  ``where=kind == 'symmetric' and signal in ['noise_score', 'cl_issue']`` (spaces allowed; the
  value runs to the next option or the end of the comment).
- ``pivot=INDEX/COLUMNS/VALUES``: a wide table, ``DataFrame.pivot_table(index=INDEX,
  columns=COLUMNS, values=VALUES)`` after ``where``; COLUMNS may be several, comma-separated, and a
  pivoted column is named by its keys joined with a space (``symmetric 0.1``).
- ``columns=a,b,c``: these columns, in this order (after ``pivot``).
- ``round=N``: floats with N decimals (default 3); integers (also a float column holding only
  whole numbers and empty cells) and text as they are; a missing value is an empty cell.

Rows keep the CSV's order. Everything between the opening and the closing line is replaced; edit
the comment, never the table. ``tests/test_readme.py`` runs ``--check`` and also checks that each
number in the README's prose is held by some CSV under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("columns", "where", "pivot", "round")
OPEN = re.compile(r"^<!-- table: (?P<path>\S+)(?P<options>.*?) -->$")
CLOSE = "<!-- /table -->"
OPTION = re.compile(rf"(?:^|\s)({'|'.join(OPTIONS)})=(.*?)(?=\s+(?:{'|'.join(OPTIONS)})=|$)")


class BlockError(ValueError):
    """A block that cannot be read or generated (one line, with the README line number)."""


@dataclass
class Block:
    line: int  # 1-based line number of the opening comment
    end: int  # 0-based index of the closing line
    path: str
    options: dict[str, str]
    body: list[str]  # the lines between the opening and the closing line, as they are now


def parse_blocks(lines: list[str]) -> list[Block]:
    """The table blocks of a README's lines, in order."""
    blocks, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i].strip())
        if m is None:
            if lines[i].strip().startswith("<!-- table"):
                raise BlockError(f"line {i + 1}: not a table comment: {lines[i].strip()}")
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == CLOSE or OPEN.match(lines[j].strip())),
                   None)
        if end is None or lines[end].strip() != CLOSE:
            raise BlockError(f"line {i + 1}: table block without its closing line {CLOSE}")
        options: dict[str, str] = {}
        rest = m["options"].strip()
        for key, value in OPTION.findall(rest):
            if key in options:
                raise BlockError(f"line {i + 1}: option {key}= given twice")
            options[key] = value.strip()
        leftover = OPTION.sub("", rest).strip()
        if leftover:
            raise BlockError(f"line {i + 1}: unknown option text {leftover!r} (options: {', '.join(OPTIONS)})")
        blocks.append(Block(i + 1, end, m["path"], options, lines[i + 1:end]))
        i = end + 1
    return blocks


def render(block: Block, root: Path) -> list[str]:
    """The Markdown table the block's CSV and options give, as lines."""
    where = f"line {block.line} ({block.path})"
    csv = root / block.path
    if not csv.is_file():
        raise BlockError(f"{where}: no such file")
    df = pd.read_csv(csv)
    try:
        if "where" in block.options:
            df = df.query(block.options["where"], engine="python")
        if "pivot" in block.options:
            parts = block.options["pivot"].split("/")
            if len(parts) != 3:
                raise BlockError(f"{where}: pivot= needs INDEX/COLUMNS/VALUES, got {block.options['pivot']!r}")
            index, columns, values = parts[0], parts[1].split(","), parts[2]
            df = df.pivot_table(index=index, columns=columns, values=values, sort=False)
            df.columns = [" ".join(str(k) for k in (c if isinstance(c, tuple) else (c,))) for c in df.columns]
            df = df.reset_index()
        if "columns" in block.options:
            df = df[block.options["columns"].split(",")]
    except BlockError:
        raise
    except (KeyError, ValueError, SyntaxError, NameError, AttributeError, TypeError) as e:
        raise BlockError(f"{where}: {type(e).__name__}: {e}") from None
    if df.empty:
        raise BlockError(f"{where}: no rows")
    digits = block.options.get("round", "3")
    if not digits.isdigit():
        raise BlockError(f"{where}: round= needs a number of decimals, got {digits!r}")
    for name in df.columns[df.dtypes == float]:  # integers read as floats beside empty cells
        values = df[name].dropna()
        if len(values) and (values == values.round()).all():
            df[name] = df[name].astype("Int64")
    cells = df.astype(object).where(df.notna(), None)
    return cells.to_markdown(index=False, floatfmt=f".{digits}f", missingval="").splitlines()


def regenerate(text: str, root: Path) -> tuple[str, list[Block]]:
    """The README text with every block regenerated, and the blocks whose table changed."""
    lines = text.splitlines()
    blocks = parse_blocks(lines)
    changed = []
    for block in reversed(blocks):  # from the end, so earlier indices stay valid
        table = render(block, root)
        if table != block.body:
            changed.append(block)
        lines[block.line:block.end] = table
    return "\n".join(lines) + ("\n" if text.endswith("\n") else ""), changed[::-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs from its CSV")
    args = ap.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        new, changed = regenerate(text, args.readme.parent)
    except (OSError, BlockError) as e:
        print(f"error: {args.readme}: {e}", file=sys.stderr)
        return 1
    if args.check:
        for block in changed:
            print(f"{args.readme}: the table at line {block.line} differs from {block.path} "
                  f"(run python benchmarks/readme_tables.py)")
        return 1 if changed else 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: {len(parse_blocks(new.splitlines()))} table(s), {len(changed)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

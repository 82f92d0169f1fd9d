"""The class tree in the warehouse (``taxa``): written by ingest or from a user's taxonomy CSV,
read as rows for :func:`fieldguide.models.taxonomy.tree_from_taxa`.

A taxonomy CSV has a ``class`` column (the labels) and one column per rank above it, in any
order (``class,genus,family``); known ranks are ordered coarse to fine by
:data:`~fieldguide.platform.sources.taxonomy.RANKS`, others keep the order of the columns read
from the right (the CSV lists them fine to coarse).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from fieldguide.config import Project
from fieldguide.errors import IngestError
from fieldguide.platform import store
from fieldguide.platform.lock import writes
from fieldguide.platform.sources.records import Record
from fieldguide.platform.sources.taxonomy import RANKS, class_tree, rank_order


def write_taxa(project: Project, rows: list[dict]) -> None:
    """The class tree: each class's rows replace the ones it had (a lineage may lose a rank)."""
    if not rows:
        return
    with store.warehouse(project).connect() as con:
        con.register("_taxa", pd.DataFrame(rows))
        con.execute("DELETE FROM taxa WHERE class IN (SELECT DISTINCT class FROM _taxa)")
        con.execute("INSERT OR REPLACE INTO taxa BY NAME SELECT * FROM _taxa")
        con.unregister("_taxa")


def read_taxa(project: Project) -> list[dict]:
    """Every row of ``taxa`` (``class, rank, name, depth, ...``); empty when no class has ranks."""
    return store.warehouse(project).query('SELECT * FROM taxa ORDER BY "class", depth').to_dict("records")


def taxonomy_records(path: Path, *, label_rank: str = "species") -> list[Record]:
    """One record per row of a taxonomy CSV (``class`` and rank columns; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"taxonomy: {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "class" not in columns or len(columns) < 2:
            raise IngestError(f"{path}: expected a 'class' column and rank columns (e.g. class,genus,family), "
                              f"got {', '.join(columns) or 'no header'}")
        above = [c for c in columns if c != "class"]
        known = [c for c in above if c in RANKS]
        others = [c for c in reversed(above) if c not in RANKS]
        order = rank_order([sorted(known, key=RANKS.index), others]) if others else sorted(known, key=RANKS.index)
        records = []
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("class"):
                continue
            lineage = {rank: row[rank] for rank in order if row.get(rank)}
            records.append(Record(filepath=path, label=row["class"], split="",
                                  taxonomy={**lineage, label_rank: row["class"]}, label_rank=label_rank))
    return records


@writes("taxonomy")
def load_taxonomy(project: Project, path: Path, *, label_rank: str = "species") -> dict:
    """Add (replace) the classes' ranks from a taxonomy CSV: their rows of ``taxa``. Returns
    ``{"classes": n, "ranks": [...], "conflicts": [...]}``."""
    rows, conflicts = class_tree(taxonomy_records(path, label_rank=label_rank))
    write_taxa(project, rows)
    ranks = list(dict.fromkeys(r["rank"] for r in sorted(rows, key=lambda r: r["depth"]) if r["rank"] != label_rank))
    return {"classes": len({r["class"] for r in rows}), "ranks": ranks, "conflicts": list(conflicts.values())}

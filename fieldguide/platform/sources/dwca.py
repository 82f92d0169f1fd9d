"""A Darwin Core Archive (folder or .zip): occurrence core, Simple Multimedia extension, photos
in ``--images`` named by the core record's id (``<id>`` or ``<id>_<k>`` for its k-th photo).

Read with GBIF's ``python-dwca-reader``. Terms kept as observation fields: ``eventDate``
(``observed_at``), ``decimalLatitude``/``decimalLongitude`` (``location``), ``recordedBy``
(``observer``), ``kingdom`` ... ``genus``, ``specificEpithet``, ``infraspecificEpithet``
(``taxonomy``); every other term is a field named in snake_case (``identifiedBy`` ->
``identified_by``), and each photo's Multimedia terms are fields ``media_<term>``. The label is
``scientificName``, or the rank that ``--label-rank`` picks.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path

from fieldguide.errors import IngestError
from fieldguide.platform.sources.observations import (
    find_photos, no_photo_reason, observed, photo_records,
)
from fieldguide.platform.sources.records import Record, Reject, SourceOptions
from fieldguide.platform.sources.registry import register
from fieldguide.platform.sources.tables import column_cast, field_name, typed
from fieldguide.platform.sources.taxonomy import rank_of

OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
HIGHER_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
INFRASPECIFIC_RANKS = ("subspecies", "variety", "form")
LABEL, DATE, LATITUDE, LONGITUDE, OBSERVER = (
    "scientificName", "eventDate", "decimalLatitude", "decimalLongitude", "recordedBy")
NAME_TERMS = (*HIGHER_RANKS, "specificEpithet", "infraspecificEpithet")


def _short(term: str) -> str:
    return term.rsplit("/", 1)[-1]


def _snake(term: str) -> str:
    """``identifiedBy`` -> ``identified_by``, ``occurrenceID`` -> ``occurrence_id``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", term).lower()


def taxonomy_of(data: dict[str, str]) -> dict[str, str]:
    """Ranks from the Darwin Core name terms, coarse to fine; species is genus + specificEpithet."""
    ranks = {rank: data[rank].strip() for rank in HIGHER_RANKS if (data.get(rank) or "").strip()}
    genus, epithet = ranks.get("genus"), (data.get("specificEpithet") or "").strip()
    if genus and epithet:
        ranks["species"] = f"{genus} {epithet}"
        infra = (data.get("infraspecificEpithet") or "").strip()
        if infra:
            rank = (data.get("taxonRank") or "").strip().lower()
            ranks[rank if rank in INFRASPECIFIC_RANKS else "infraspecies"] = f"{ranks['species']} {infra}"
    return ranks


def _is_photo(media: dict[str, str]) -> bool:
    kind, fmt = media.get("type") or "", media.get("format") or ""
    return not any(word in kind for word in ("Sound", "MovingImage")) and not fmt.startswith(("audio/", "video/"))


def _media_fields(media: list[dict[str, str]], k: int) -> dict:
    """The Multimedia terms of photo ``k`` (``<id>`` and ``<id>_1`` are the first) as ``media_<term>``."""
    row = media[max(k, 1) - 1] if max(k, 1) <= len(media) else {}
    return {f"media_{_snake(t)}": v.strip() for t, v in row.items() if t not in ("coreid", "id") and v.strip()}


def _read_archive(source: Path) -> list[tuple[str, dict[str, str], list[dict[str, str]]]]:
    """(id, core terms, photo Multimedia rows) of each core row, terms by their short names."""
    from dwca.exceptions import InvalidArchive
    from dwca.read import DwCAReader

    try:
        with DwCAReader(str(source), skip_metadata=True) as archive:
            core = archive.core_file.file_descriptor.type
            if core and core != OCCURRENCE:
                raise IngestError(f"{source}: the archive's core is {core}; --format dwca reads an occurrence core")
            rows = []
            for row in archive:
                data = {_short(k): v for k, v in row.data.items()}
                media = [{_short(k): v for k, v in e.data.items()} for e in row.extensions if e.rowtype == MULTIMEDIA]
                obs_id = (row.id or data.get("id") or data.get("occurrenceID") or "").strip()
                rows.append((obs_id, data, [m for m in media if _is_photo(m)]))
            return rows
    except (InvalidArchive, ET.ParseError, OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise IngestError(f"{source}: cannot read the Darwin Core Archive ({type(e).__name__}: {e})") from None


def _label_term(source: Path, rows, label_rank: str | None) -> str | None:
    """The core term that is the label, or None when ``--label-rank`` picks a rank of the taxonomy."""
    if label_rank is None:
        return LABEL
    known = {rank for _, data, _ in rows for rank in taxonomy_of(data)}
    if label_rank not in known:
        raise IngestError(f"{source}: no rank {label_rank!r} for --label-rank in the archive "
                          f"(ranks its terms give: {', '.join(sorted(known)) or 'none'})")
    return None


@register("dwca", takes="archive", options=("images", "label_rank"))
def read_dwca(source: Path, options: SourceOptions, problems: list[Reject]) -> list[Record]:
    """One record per photo of each occurrence; an occurrence without a photo is a reject."""
    rows = _read_archive(source)
    label_term = _label_term(source, rows, options.label_rank)
    used = {"id", DATE, LATITUDE, LONGITUDE, OBSERVER, *NAME_TERMS, label_term}
    terms = list(dict.fromkeys(t for _, data, _ in rows for t in data if t not in used))
    names = {t: field_name(_snake(t)) for t in terms}
    casts = {t: column_cast([data.get(t) for _, data, _ in rows]) for t in terms}
    images = options.images or (source if source.is_dir() else source.parent)
    photos = find_photos(images, {i for i, _, _ in rows} - {""}, options.extensions, problems)
    records, seen = [], set()
    for position, (obs_id, data, media) in enumerate(rows, start=1):
        where = f"{source}:{obs_id}"
        if not obs_id or obs_id in seen:
            problems.append(Reject(f"{source}:row {position}", f"occurrence id {obs_id!r} repeats an earlier row's"
                                   if obs_id else "occurrence without an id"))
            continue
        seen.add(obs_id)
        fields = {names[t]: typed(data.get(t), casts[t]) for t in terms}
        try:
            fields.update(observed(obs_id, date=data.get(DATE) or "", date_column=DATE,
                                   latitude=data.get(LATITUDE) or "", longitude=data.get(LONGITUDE) or "",
                                   observer=data.get(OBSERVER) or ""))
        except ValueError as e:
            problems.append(Reject(where, str(e)))
            continue
        taxonomy = taxonomy_of(data)
        label = ((data.get(label_term) or "").strip() if label_term else taxonomy.get(options.label_rank)) or None
        author = (data.get("scientificNameAuthorship") or "").strip()
        if label and author and label.endswith(author) and label != author:  # "Bellis perennis L." -> the name
            label = label[: -len(author)].strip()
        rank = (data.get("taxonRank") or "").strip().lower()
        label_rank = options.label_rank or rank_of(label, taxonomy) or (rank if rank in taxonomy else None)
        found = photos.get(obs_id, [])
        if not found:
            problems.append(Reject(where, no_photo_reason(obs_id, images, len(media))))
            continue
        if len(found) < len(media):
            problems.append(Reject(where, f"observation {obs_id}: {len(media) - len(found)} of {len(media)} "
                                          f"photos missing in {images}; the other {len(found)} ingested"))
        records += photo_records(obs_id, found, label, "train" if label else "unlabeled", fields, taxonomy,
                                 label_rank if label else None, partial(_media_fields, media))
    return records

"""Checking the images of a source: each file resolves, exists, has a UTF-8 name, can be read,
decodes fully and is not too large (described: size, channels, content hash); the rows of one
file agree; the photos of one observation share a split."""

from __future__ import annotations

import hashlib
import io
import mimetypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from fieldguide.platform.sources.records import Notice, Record, Reject, is_utf8, printable

FILE_NAME_NOT_UTF8 = "file name is not valid UTF-8; rename it"


def utf8_problem(path: Path) -> str | None:
    """Why ``path`` cannot be stored (the store keeps UTF-8 text), or None."""
    if not is_utf8(path.name):
        return FILE_NAME_NOT_UTF8
    bad = next((p.name for p in reversed(path.parents) if not is_utf8(p.name)), None)
    return f"folder name '{printable(bad)}' is not valid UTF-8; rename it" if bad else None


def describe_image(path: Path) -> dict:
    """Decode the whole image (a truncated file fails here) and return its metadata and hash."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        width, height = im.size
        channels = len(im.getbands())
        fmt = im.format
    mime = Image.MIME.get(fmt or "", None) or mimetypes.guess_type(path.name)[0] or "image"
    return {
        "width": width,
        "height": height,
        "num_channels": channels,
        "size_bytes": len(data),
        "mime_type": mime,
        "filehash": hashlib.sha1(data).hexdigest(),
    }


def check_image(record: Record) -> tuple[Record, dict | None, str | None]:
    """The record (its path resolved when good), its image's description, or why it is rejected."""
    path = Path(record.filepath)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        return record, None, f"cannot resolve path: {e}"
    if not resolved.exists():
        return record, None, "file does not exist"
    if not resolved.is_file():
        return record, None, "not a file"
    problem = utf8_problem(resolved)
    if problem:
        return record, None, problem
    record.filepath = resolved
    try:
        return record, describe_image(resolved), None
    except PermissionError:
        return record, None, "cannot read the file (permission denied)"
    except UnidentifiedImageError:
        return record, None, "not an image (cannot identify the format)"
    except Image.DecompressionBombError as e:
        return record, None, f"image too large ({e})"
    except (OSError, SyntaxError, ValueError) as e:
        return record, None, f"corrupt or truncated image ({e})"


def _disagreement(records: list[Record]) -> str | None:
    """Why the rows of one file cannot all be right (different labels, split or fields), or None."""
    def values(get):
        return list(dict.fromkeys(get(r) for r in records))

    labels = values(lambda r: r.label)
    if len(labels) > 1:
        named = ", ".join(repr(label) if label else "no label" for label in labels)
        return f"listed {len(records)} times with different labels ({named}); keep one row for it"
    if len(values(lambda r: r.split)) > 1:
        return f"listed {len(records)} times with different splits; keep one row for it"
    keys = sorted({k for r in records for k in r.fields})
    differ = [k for k in keys if len(values(lambda r: r.fields.get(k))) > 1]
    if len(values(lambda r: tuple(r.taxonomy.items()))) > 1:
        differ.append("taxonomy")
    if differ:
        return f"listed {len(records)} times with different {', '.join(differ)}; keep one row for it"
    return None


def check_records(records: list[Record], workers: int, problems: list[Reject]) -> list[tuple[Record, dict]]:
    """The records whose image is good, one per file.

    A bad image is a reject; a file listed several times is taken once if its rows agree (a
    notice) and rejected, all its rows, if they do not; photos of one observation in different
    splits are rejected. Rejects and notices go to ``problems``.
    """
    by_path: dict[str, list[tuple[Record, dict | None, str | None]]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_image, records, chunksize=32)
        for result in tqdm(results, total=len(records), desc="checking images", unit="img", disable=None):
            by_path.setdefault(str(result[0].filepath), []).append(result)
    good = []
    for path, rows in by_path.items():
        reason = next((r for _, _, r in rows if r), None) or _disagreement([rec for rec, _, _ in rows])
        if reason:
            problems.append(Reject(path, reason))
            continue
        if len(rows) > 1:
            problems.append(Notice(path, f"listed {len(rows)} times in the source with the same values; taken once"))
        good.append(rows[0][:2])
    return _one_split_per_observation(good, problems)


def _one_split_per_observation(good: list[tuple[Record, dict]], problems: list[Reject]) -> list[tuple[Record, dict]]:
    """Photos of one observation that the source puts in different splits are all rejected (one
    split per observation keeps its near-identical photos from leaking between train and test)."""
    splits: dict[str, set[str]] = {}
    for record, _ in good:
        obs = record.fields.get("observation_id")
        if obs is not None and record.split != "unlabeled":
            splits.setdefault(str(obs), set()).add(record.split)
    mixed = {obs: s for obs, s in splits.items() if len(s) > 1}
    if not mixed:
        return good
    kept = []
    for record, meta in good:
        obs = str(record.fields.get("observation_id"))
        if obs in mixed and record.split != "unlabeled":
            problems.append(Reject(str(record.filepath), f"observation {obs}: its photos are in different "
                                         f"splits ({', '.join(sorted(mixed[obs]))}); give them one split"))
        else:
            kept.append((record, meta))
    return kept

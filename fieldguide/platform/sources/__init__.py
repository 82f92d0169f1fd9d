"""Source formats for ``fieldguide ingest``: one module per format, found by name in :data:`FORMATS`.

A reader turns a source into :class:`Record` s (file, label, split, observation fields,
taxonomy) and puts the rows or files it cannot use into ``problems`` (a :class:`Reject`, or a
:class:`Notice` for a decision taken); it writes nothing. Adding a format is adding a module
that registers its reader with ``@register(name, takes=...)`` and importing it here.
"""

from fieldguide.platform.sources.records import Notice, Record, Reject, SourceOptions, is_utf8, printable
from fieldguide.platform.sources.registry import FORMATS, SourceFormat, register

from fieldguide.platform.sources import folder, cub, csv, inat, dwca  # noqa: E402,F401  (register, in this order)

__all__ = ["FORMATS", "Notice", "Record", "Reject", "SourceFormat", "SourceOptions", "is_utf8", "printable",
           "register"]

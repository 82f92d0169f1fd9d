"""The ``fieldguide`` command: one verb per step of the loop.

Each verb parses its options and calls one function of ``platform``, ``models`` or
``curation``; heavy imports happen inside the verbs, so ``fieldguide --help`` is instant.
Expected failures (:class:`FieldguideError`) print one line and exit 1. Options whose default is
a project setting default to None and take the value from fieldguide.toml.

The parser and the order of the verbs are in :mod:`fieldguide.cli.main`; the verbs, by group, in
:mod:`~fieldguide.cli.project`, :mod:`~fieldguide.cli.models`, :mod:`~fieldguide.cli.curation` and
:mod:`~fieldguide.cli.labelstudio`. ``python -m fieldguide.cli`` and the ``fieldguide`` console
script both run :func:`run`.
"""

from fieldguide.cli.main import app, main, run

__all__ = ["app", "main", "run"]

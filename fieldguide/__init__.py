"""fieldguide: a data-centric labeling and curation platform for fine-grained visual classification.

From Python: ``fieldguide.open_project(path)`` / ``fieldguide.init_project(path)`` return a
:class:`fieldguide.api.Project` (imported on first use, so ``import fieldguide`` stays light).
"""

__version__ = "0.1.0"

#: names this package re-exports lazily from :mod:`fieldguide.api`
API = ("open_project", "init_project", "Project")
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    if name in API:
        from fieldguide import api

        return getattr(api, name)
    raise AttributeError(f"module 'fieldguide' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})

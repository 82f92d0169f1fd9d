"""Launch the FiftyOne App on the project's dataset (or one of its saved views)."""

from __future__ import annotations

import logging

from fieldguide.config import Project
from fieldguide.errors import StoreError
from fieldguide.platform import store

log = logging.getLogger(__name__)


def launch_app(project: Project, *, port: int = 5151, address: str = "127.0.0.1",
               view: str | None = None, wait: bool = True):
    """Serve the App on ``address:port`` showing the dataset or the saved ``view``.

    Returns the session (when ``wait`` is False) so a caller can close it.
    """
    ds = store.dataset(project, create=False)
    import fiftyone as fo

    target = ds
    if view:
        if not ds.has_saved_view(view):
            names = ", ".join(ds.list_saved_views()) or "none yet (run 'fieldguide flag')"
            raise StoreError(f"no saved view {view!r} (saved views: {names})")
        target = ds.load_saved_view(view)
    session = fo.launch_app(target, port=port, address=address, remote=True, auto=False)
    if wait:
        session.wait(-1)
    return session

"""The database of the project's own Label Studio: SQLite in its data dir, or a team's PostgreSQL.

``[labelstudio.database]`` in fieldguide.toml (:class:`fieldguide.config.sections.LabelStudioDatabase`)
picks it. For PostgreSQL the server is started with Label Studio's own settings
(``DJANGO_DB=default`` and ``POSTGRE_NAME``, ``POSTGRE_USER``, ``POSTGRE_PASSWORD``,
``POSTGRE_HOST``, ``POSTGRE_PORT``; Label Studio's ``psycopg`` driver comes with it), after
:func:`check` has logged in once, so that a database that cannot be reached is one line, not a
server that dies in its migrations. The password is never printed or logged: what names the
database is :func:`describe`.
"""

from __future__ import annotations

import os

from fieldguide.config import Project
from fieldguide.config.sections import LabelStudioDatabase
from fieldguide.errors import ServiceError

SQLITE_FILE = "label_studio.sqlite3"  # Label Studio's name for it, in its data dir
CHECK_TIMEOUT_S = 5
#: Label Studio reads each setting from NAME, HEARTEX_NAME or LABEL_STUDIO_NAME (the last first)
_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_", "")
_SETTINGS = ("DJANGO_DB", "DATABASE_NAME", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD",
             "POSTGRE_HOST", "POSTGRE_PORT")


def describe(project: Project) -> str:
    """The database in words, never the password: ``sqlite PATH`` or ``postgresql://user@host:port/name``."""
    db = project.config.labelstudio.database
    if db.engine == "sqlite":
        return f"sqlite {project.labelstudio_dir / SQLITE_FILE}"
    return db.where()


def password(db: LabelStudioDatabase) -> str:
    """``password`` from fieldguide.toml, else the environment variable named by ``password_env``."""
    return db.password or os.environ.get(db.password_env, "")


def server_env(project: Project, env: dict[str, str]) -> None:
    """Set Label Studio's database settings in ``env`` (the server's environment), in place.

    Any of its database settings already in the environment (under any of Label Studio's
    prefixes) are dropped first, so that the server uses what fieldguide.toml says.
    """
    for name in _SETTINGS:
        for prefix in _PREFIXES:
            env.pop(prefix + name, None)
    db = project.config.labelstudio.database
    if db.engine == "sqlite":
        env["DJANGO_DB"] = "sqlite"
        return
    env.update({
        "DJANGO_DB": "default",  # Label Studio's name for its PostgreSQL settings
        "POSTGRE_NAME": db.name,
        "POSTGRE_USER": db.user,
        "POSTGRE_PASSWORD": password(db),
        "POSTGRE_HOST": db.host.strip("[]"),
        "POSTGRE_PORT": str(db.port),
    })


def check(project: Project, *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Log in to the PostgreSQL database once (nothing to do for SQLite).

    Raises ServiceError in one line naming the database (not the password) when it cannot.
    """
    db = project.config.labelstudio.database
    if db.engine == "sqlite":
        return
    try:
        import psycopg
    except ImportError:
        raise ServiceError(
            "labelstudio.database.engine is postgresql but the psycopg driver is not installed "
            "(pip install 'fieldguide[labelstudio]')"
        ) from None
    try:
        with psycopg.connect(host=db.host.strip("[]"), port=db.port, dbname=db.name, user=db.user,
                             password=password(db), connect_timeout=max(1, round(timeout_s)),
                             application_name="fieldguide check") as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        lines = str(e).strip().splitlines()
        reason = " ".join(lines[0].split()) if lines else type(e).__name__
        hint = ""
        if "password" in reason and not password(db):
            hint = f"; no password set (labelstudio.database.password or the variable {db.password_env})"
        raise ServiceError(
            f"cannot use Label Studio's database {db.where()} (labelstudio.database): {reason}{hint}"
        ) from None

"""The project file ``fieldguide.toml``: read once into a validated pydantic model.

Code takes the values it needs as arguments; only this module reads the file, and only
:func:`project_dir_from` reads the environment (``FIELDGUIDE_PROJECT``). The sections and their
keys (defaults, bounds, descriptions) are in :mod:`fieldguide.config.sections`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import tempfile
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fieldguide.config.sections import Config, ProjectSection, TrainSection
from fieldguide.errors import ConfigError

CONFIG_NAME = "fieldguide.toml"
PROJECT_ENV = "FIELDGUIDE_PROJECT"


class Project:
    """A project folder and its validated configuration.

    Everything the project owns lives under ``root``: the FiftyOne database, the warehouse,
    embeddings, checkpoints, the Label Studio data dir and run outputs.
    """

    def __init__(self, root: Path, config: Config):
        self.root = root
        self.config = config

    # ---- places on disk -------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def database_dir(self) -> Path:
        return self.root / "db"

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def labelstudio_dir(self) -> Path:
        return self.root / "labelstudio"

    @property
    def dataset_name(self) -> str:
        """The FiftyOne dataset name: configured, or the project name plus its id.

        The id (written by ``init``) keeps two projects with the same name apart when they share
        a database, and does not change when the folder moves.
        """
        if self.config.store.dataset_name:
            return self.config.store.dataset_name
        return f"fieldguide-{self.config.project.name}-{self.config.project.id or legacy_id(self.root)}"

    def run_dir(self, run_id: str) -> Path:
        path = self.runs_dir / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path


def legacy_id(root: Path) -> str:
    """The id of a project made before ids existed: a hash of the folder it was made in."""
    return hashlib.sha1(str(root).encode()).hexdigest()[:8]


def new_id() -> str:
    return secrets.token_hex(4)


def default_config(name: str) -> Config:
    return Config(project=ProjectSection(name=name, id=new_id()))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        keys = [k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k) for k in value]
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in zip(keys, value.values())) + " }"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def dump_config(config: Config) -> str:
    """TOML text for ``config``, every key written with its description as a comment."""
    lines = ["# fieldguide project file: every key is optional but [project].name", ""]
    for section_name in Config.model_fields:
        _dump_table(lines, section_name, getattr(config, section_name))
    return "\n".join(lines)


def _dump_table(lines: list[str], name: str, section: BaseModel) -> None:
    """``[name]`` and its keys, then its nested sections as ``[name.sub]`` (TOML wants them after)."""
    lines.append(f"[{name}]")
    nested = []
    for key, info in type(section).model_fields.items():
        value = getattr(section, key)
        if isinstance(value, BaseModel):
            nested.append((key, value))
            continue
        if info.description:
            lines.append(f"# {info.description}")
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    for key, value in nested:
        _dump_table(lines, f"{name}.{key}", value)


SECRET_KEYS = {"token", "password", "secret", "database_uri"}


def _format_validation_error(path: Path, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        elif e["type"] == "missing":
            parts.append(f"missing key '{where}'")
        elif (e["loc"] and str(e["loc"][-1]) in SECRET_KEYS) or tuple(map(str, e["loc"][:2])) == ("labelstudio", "database"):
            # any value of the database table may hold a pasted connection URI with its password
            parts.append(f"'{where}': {e['msg']} (value not shown)")
        elif isinstance(e.get("input"), dict):  # a whole table: it may hold a secret
            parts.append(f"'{where}': {e['msg']}")
        else:
            parts.append(f"'{where}': {e['msg']} (got {e.get('input')!r})")
    return f"{path}: " + "; ".join(parts)


def load_config(path: Path) -> Config:
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is a file, not a project folder (pass --project DIR)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist (run 'fieldguide init {path.parent}' or pass --project DIR)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a file (remove it and run 'fieldguide init')") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from None


def project_dir_from(option: str | Path | None) -> Path:
    """The project folder: the option, else ``FIELDGUIDE_PROJECT``, else the current folder."""
    value = option or os.environ.get(PROJECT_ENV) or "."
    return Path(value).expanduser().resolve()


def open_project(root: str | Path | None) -> Project:
    root = project_dir_from(root)
    project = Project(root, load_config(root / CONFIG_NAME))
    if not project.config.project.id:
        _pin_legacy_id(project)
    _upgrade_head_recipe(project.config)
    return project


# the head-mode recipe fieldguide.toml held before the full-batch one (issue 15): minibatches of 128
# for 40 epochs at lr 3e-3 on sqrt(d)-scaled features, which memorised noisy labels
OLD_HEAD_RECIPE = {"epochs": 40, "lr": 3e-3, "batch_size": 128}


def _upgrade_head_recipe(config: Config) -> None:
    """A project written with the old head recipe's exact values trains with the new defaults
    (its file is left as it is; change any of the three values to keep your own)."""
    train = config.train
    if all(getattr(train, k) == v for k, v in OLD_HEAD_RECIPE.items()):
        new = TrainSection()
        for key in OLD_HEAD_RECIPE:
            setattr(train, key, getattr(new, key))
        logging.getLogger(__name__).warning(
            "fieldguide.toml [train] holds the old head recipe (epochs 40, lr 0.003, batch_size 128); "
            "training uses the new defaults (epochs %d, lr %g, batch_size %d: full batch)",
            new.epochs, new.lr, new.batch_size)


def _pin_legacy_id(project: Project) -> None:
    """A project made before ids existed keeps the dataset it has: its id is the hash of the
    folder it lives in now, written into fieldguide.toml so that a later move keeps it."""
    pid = legacy_id(project.root)
    project.config.project.id = pid
    try:
        set_project_key(project.config_path, "id", pid)
    except OSError:  # a read-only project still opens; it is pinned the next time it can be
        pass


def set_project_key(path: Path, key: str, value: str) -> None:
    """Set ``[project].key`` in the TOML file at ``path``, keeping every other line as it is."""
    lines = path.read_text(encoding="utf-8").splitlines()
    line = f"{key} = {_toml_value(value)}"
    section, insert_at = None, None
    for i, text in enumerate(lines):
        stripped = text.strip()
        if stripped.startswith("["):
            section = stripped.strip("[] ")
            if section == "project":
                insert_at = i + 1
            continue
        if section == "project" and re.match(rf"{key}\s*=", stripped):
            lines[i] = line
            break
    else:
        if insert_at is None:
            lines = ["[project]", line, ""] + lines
        else:
            lines.insert(insert_at, line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_project(root: str | Path, name: str | None = None, *, exist_ok: bool = True) -> Project:
    """Create ``root/fieldguide.toml`` (kept as is when it exists and ``exist_ok``)."""
    root = Path(root).expanduser().resolve()
    path = root / CONFIG_NAME
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file: 'fieldguide init' needs a folder (new or existing)")
    if path.exists():
        if not exist_ok:
            raise ConfigError(f"{path} already exists")
        return open_project(root)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or root.name).strip("-.") or "project"
    config = default_config(slug)
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_config(config), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot create the project at {root} ({e.strerror})") from None
    return Project(root, config)


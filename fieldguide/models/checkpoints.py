"""A training run's files: its checkpoint (``PROJECT/checkpoints/<run>/last.pt``, written every
epoch, so a stopped run resumes from its last epoch) and its per-sample trajectories
(``PROJECT/runs/<run>/trajectories.npz``, the input of the ``entropy`` signal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fieldguide.config import Project
from fieldguide.errors import NotReadyError
from fieldguide.models.fit import TRAJECTORIES, FitState
from fieldguide.platform import store


class CheckpointWriter:
    """``writer(state, model_state, optim_state, schedule_state)`` saves the run's ``last.pt``."""

    def __init__(self, path: Path, config: dict, started):
        self.path = path
        self.config = config
        self.started = started

    def __call__(self, state: FitState, model_state: dict, optim_state: dict, schedule_state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"config": self.config, "started": self.started, "state": state, "model": model_state,
                    "optimizer": optim_state, "schedule": schedule_state}, tmp)
        tmp.replace(self.path)  # atomic: a crash mid-write keeps the previous epoch's checkpoint


def checkpoint_writer(project: Project, run_id: str, config: dict, resumed: dict | None) -> CheckpointWriter:
    """The writer of run ``run_id``'s checkpoint (``resumed``: the checkpoint it resumes from)."""
    from fieldguide.platform.warehouse import now

    folder = project.checkpoints_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return CheckpointWriter(folder / "last.pt", config, resumed["started"] if resumed else now())


def load_checkpoint(project: Project, run_id: str) -> dict:
    """The last checkpoint of run ``run_id``: ``config``, ``started``, ``state``, ``model``,
    ``optimizer`` and ``schedule``."""
    path = project.checkpoints_dir / run_id / "last.pt"
    if not path.exists():
        raise NotReadyError(f"no checkpoint for run {run_id!r} ({path} does not exist)")
    return torch.load(path, map_location="cpu", weights_only=False)


def save_trajectories(project: Project, run_id: str, sample_ids: list[str], state: FitState) -> Path:
    """Write the per-sample trajectories of run ``run_id`` (rows: ``sample_ids``)."""
    path = project.run_dir(run_id) / "trajectories.npz"
    np.savez_compressed(path, sample_ids=np.array(sample_ids), **state.trajectories)
    return path


def load_trajectories(project: Project, run_id: str | None = None) -> tuple[str, list[str], dict[str, np.ndarray]]:
    """``(run_id, sample_ids, trajectories)`` of a train run (default: the latest completed one)."""
    wh = store.warehouse(project)
    run_id = wh.run_or_last(run_id, "train", "retrain", missing="no training run yet (run 'fieldguide train')")
    path = project.runs_dir / run_id / "trajectories.npz"
    if not path.exists():
        raise NotReadyError(f"trajectories of run {run_id} are missing ({path})")
    z = np.load(path, allow_pickle=False)
    return run_id, z["sample_ids"].tolist(), {k: z[k] for k in TRAJECTORIES}

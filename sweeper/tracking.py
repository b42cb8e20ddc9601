"""MLflow in one place: tracking URI, experiments, runs, and the training Reporter.

Everything goes through an explicit ``MlflowClient`` and run id (no global active run),
so the driver can log several runs at once (the sweep's parent and its children).
Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``,
absolute so Ray trials (whose working directory is their trial folder) hit the same
files.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _artifact_root(uri: str) -> Optional[str]:
    """Artifacts beside a SQLite file; a server or database URI decides for itself."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return None


def get_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = _artifact_root(client.tracking_uri)
    return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def server_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict]:
    """``mlflow server`` over a SQLite store (the dashboard), and its environment.

    Job execution is off: it makes the server take ~2.4 GiB instead of ~0.5 GiB."""
    import shutil
    import sys

    if not tracking_uri.startswith(("sqlite:///", "postgresql", "mysql")):
        raise ValueError(f"{tracking_uri}: srsweep ui serves a database store (sqlite:///..., postgresql://...)")
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = [exe, "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    root = _artifact_root(tracking_uri)
    if root:
        cmd += ["--artifacts-destination", root]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"loss.dp.mu": "0.5", ...}`` (readable, sortable params)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[i:i + 100])


class MLflowReporter:
    """The trainer's :class:`~trainables.train.Reporter`, writing to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, key=name, step=step)

    def scores(self, step: int, rows: list) -> None:
        per_image = {r.name: {"psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips} for r in rows}
        self.client.log_dict(self.run_id, per_image, f"val_scores/step_{step:07d}.json")

    def checkpoint(self, step: int, path: Path) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(f"checkpoint.{path.stem}", str(path.resolve()))])

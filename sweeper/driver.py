"""The sweep driver's side of a Ray cluster: joining it (checked, reported in one line) and
running the Tuner so that a lost cluster never leaves the parent MLflow run RUNNING."""

from __future__ import annotations

from typing import Optional

from sweeper.cluster import ClusterError, ClusterInfo, ClusterWatch, check_paths_on_workers, connect
from sweeper.errors import describe
from sweeper.state import SweepState
from sweeper.storage import is_remote
from sweeper.tracking import Tracker


def connect_ray(address: Optional[str], cfg, resources) -> ClusterInfo:
    """The embedded local Ray or a running cluster (``sweeper.cluster.connect``: one line, or one
    line saying why not); on a joined cluster, the files trials read are checked on every node."""
    info = connect(address, {"cpu": resources.cpu, "gpu": resources.gpu})
    if address:
        pre = cfg.train.pretrained_g
        paths = [
            cfg.data.train,
            cfg.data.val,
            cfg.backbones.weights_dir,
            pre if pre and not is_remote(pre) else None,
        ]
        check_paths_on_workers([p for p in paths if p and p != "embedded"])
    return info


def fit_guarded(state: SweepState, tuner) -> None:
    """``Tuner.fit`` that never leaves the parent MLflow run RUNNING when the driver dies of a
    lost cluster: the watch marks it FAILED while this process still can (Ray ends a driver
    whose GCS is gone without Python cleanup); an exception marks it FAILED too."""
    import ray

    tracker, parent = Tracker(state.tracking_uri), state.parent_run_id
    hint = f"continue with: srsweep resume {state.sweep_dir}"

    def lost() -> None:
        print(
            f"srsweep: error: the Ray cluster {gcs} stopped answering; MLflow parent run {parent} marked "
            f"FAILED; {hint}",
            flush=True,
        )
        tracker.set_tags(parent, {"failure": f"Ray cluster {gcs} lost"})
        tracker.end_run(parent, "FAILED")

    joined = state.address or ""
    gcs = joined if joined.startswith("ray://") else ray.get_runtime_context().gcs_address
    watch = ClusterWatch(gcs, lost) if state.address else None
    try:
        if watch:
            with watch:
                tuner.fit()
        else:
            tuner.fit()
    except Exception as exc:
        if not (watch and watch.lost):
            why = describe(exc) or f"{type(exc).__name__}: {str(exc)[:300]}"  # the root cause, said once
            tracker.set_tags(parent, {"failure": why})
            tracker.end_run(parent, "FAILED")
        if watch and watch.lost:
            raise ClusterError(
                f"the Ray cluster {gcs} went away during the sweep; MLflow parent run "
                f"{parent} marked FAILED; {hint}"
            ) from None
        raise
    if watch and watch.lost:  # Tune returned although the cluster is gone
        raise ClusterError(f"the Ray cluster {gcs} went away during the sweep; {hint}")

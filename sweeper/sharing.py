"""A sweep on a cluster: where its folder lives, and how the files every node needs get there.

The sweep folder is a URI: a local or shared folder (NFS: every node sees the same path), or
``s3://bucket/prefix/NAME`` (``sweeper.storage``). With S3:
- Ray Tune writes results, checkpoints and its own state there (``RunConfig.storage_filesystem``);
- ``sweep.json`` is written and read there (``SweepState.save`` / ``load``);
- the shared pretrained G is uploaded into the sweep prefix by whichever node pretrained it, and
  each trial copies it to a node-local file before training (``localize_pretrained``);
- ``finish`` and ``best`` work on a local mirror (``local_view``: checkpoints left out) and
  upload what they write back next to the experiment (``publish``).
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
import time
from pathlib import Path
from typing import Optional

from sweeper import storage
from sweeper.lock import hold
from sweeper.state import SweepState

PRETRAIN_FILE = "pretrain_g.pt"
# What the driver writes into a sweep folder after the Tuner (finish / best).
OUTPUT_FILES = ("results.parquet", "ranked.parquet", "pareto.png", "parallel.png", "winner.yaml")


def new_sweep_dir(storage_arg: str | Path, name: str) -> str:
    """``--storage`` + sweep name -> a new sweep folder ``NAME-YYYYmmdd-HHMMSS-xxxx``, never
    reused (two sweeps started in the same second differ); a local one is created here. The
    storage is checked writable first (a missing bucket, bad credentials, a read-only folder:
    one line, nothing written)."""
    path, fs = storage.resolve_storage(storage_arg)
    storage.check_writable(path, fs)
    for _ in range(20):
        uri = storage.uri_of(
            storage.join(path, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"), fs
        )
        if storage.is_remote(uri):
            hold(uri)  # one driver per sweep, from the moment the folder exists
            return uri
        try:
            Path(uri).mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        hold(uri)
        return uri
    raise FileExistsError(f"{storage_arg}: could not create a new sweep folder for {name}")


def local_dir(sweep_dir: str | Path) -> Path:
    """A folder on this machine for the driver's own files of a sweep (the tracking outbox):
    the sweep folder itself, or its local cache for a sweep on S3."""
    if storage.is_remote(sweep_dir):
        path = storage.local_cache(str(sweep_dir))
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(sweep_dir)


def experiment_location(sweep_dir: str) -> tuple[str, str, Optional[object]]:
    """A sweep URI -> (storage_path, experiment name, filesystem) for ``tune.RunConfig``."""
    path, fs = storage.resolve_storage(sweep_dir)
    parent, _, name = path.rpartition("/")
    return parent, name, fs


def local_view(state: SweepState) -> SweepState:
    """The state with ``sweep_dir`` on this machine: itself for a folder, a fresh mirror of the
    remote experiment (no model checkpoints) in ``storage.local_cache`` for S3."""
    if not storage.is_remote(state.sweep_dir):
        return state
    path, fs = storage.resolve_storage(state.sweep_dir)
    local = storage.mirror_dir(path, fs, storage.local_cache(state.sweep_dir))
    print(f"local copy of {state.sweep_dir}: {local}", flush=True)
    return state.model_copy(update={"sweep_dir": str(local)})


def publish(view: SweepState, sweep_dir: str) -> list[str]:
    """Upload what ``finish`` / ``best`` wrote in the local view back into the remote sweep
    folder; returns the URIs written (nothing for a folder, which is the sweep itself)."""
    if not storage.is_remote(sweep_dir) or view.sweep_dir == sweep_dir:
        return []
    path, fs = storage.resolve_storage(sweep_dir)
    done = []
    for name in OUTPUT_FILES:
        src = Path(view.sweep_dir) / name
        if src.is_file():
            storage.upload_file(src, storage.join(path, name), fs)
            done.append(f"{sweep_dir}/{name}")
    return done


def remote_checkpoints(df, view: SweepState, sweep_dir: str):
    """The results table's checkpoint column pointed back at the remote sweep folder."""
    if view.sweep_dir == sweep_dir or "checkpoint" not in df:
        return df
    local = view.sweep_dir.rstrip("/")
    df = df.copy()
    df["checkpoint"] = [c.replace(local, sweep_dir, 1) if isinstance(c, str) else c for c in df["checkpoint"]]
    return df


def pretrain_out_dir(sweep_dir: str) -> str:
    """Where the shared pretraining writes: the sweep folder itself when it is a (shared)
    folder; a node-local temp folder when the sweep is on S3 (then ``publish_pretrained``)."""
    if storage.is_remote(sweep_dir):
        return tempfile.mkdtemp(prefix="srsweep-pretrain-")
    return str(Path(sweep_dir) / "pretrain")


def publish_pretrained(local_file: str, sweep_dir: str) -> str:
    """Runs on the node that pretrained: with S3 storage, upload the generator into the sweep
    prefix and return its ``s3://`` URI (what trials get as ``train.pretrained_g``)."""
    if not storage.is_remote(sweep_dir):
        return local_file
    path, fs = storage.resolve_storage(sweep_dir)
    storage.upload_file(local_file, storage.join(path, "pretrain", PRETRAIN_FILE), fs)
    return f"{sweep_dir}/pretrain/{PRETRAIN_FILE}"


def localize_pretrained(cfg):
    """A trial config whose pretrained G is on S3 -> the same config reading a node-local copy
    (downloaded once per node; parallel trials share it)."""
    uri = cfg.train.pretrained_g
    if not uri or not storage.is_remote(uri):
        return cfg
    key = hashlib.sha1(uri.encode()).hexdigest()[:16]
    local = storage.fetch_file(uri, Path(tempfile.gettempdir()) / "srsweep-pretrained" / f"{key}.pt")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"pretrained_g": str(local)})})

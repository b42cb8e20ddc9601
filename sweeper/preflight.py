"""Checks that run before a sweep writes or starts anything.

Each check raises :class:`PreflightError` on the first problem, with one line that names
what is wrong and where; nothing is created (write probes use a temp file that is removed).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence

_REMOTE_STORAGE = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")


class PreflightError(ValueError):
    """One line naming what is wrong and where."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _existing_ancestor(path: Path, what: str) -> Path:
    """The deepest existing folder above (or at) ``path``; a file on the way is an error."""
    p = path
    while not p.exists():
        if p.is_symlink():
            raise PreflightError(f"{what} {path}: {p} is a broken symlink")
        p = p.parent
    if not p.is_dir():
        raise PreflightError(f"{what} {path}: {p} is a file, not a folder")
    return p


def _probe_write(folder: Path, what: str, path: Path) -> None:
    # A real write, not os.access: root passes access() on read-only mode bits but not on a
    # read-only mount, and a full disk only shows on write.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".srsweep-preflight-", dir=folder)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise PreflightError(f"{what} {path}: cannot write in {folder} ({exc.strerror})") from None


def check_run_folder(out: Path) -> None:
    """``srsweep train --out``: a folder (new, or one to resume) this process can write in."""
    if out.exists() and not out.is_dir():
        raise PreflightError(f"--out {out}: is a file, not a folder")
    _probe_write(_existing_ancestor(out, "--out"), "--out", out)


# ----------------------------------------------------------------------------- tracking
def _sqlite_path(uri: str) -> Path:
    from sweeper.sqlite_uri import sqlite_path

    path = sqlite_path(uri)
    if path is None:
        raise PreflightError(f"tracking URI {uri}: expected sqlite:///relative or sqlite:////absolute path")
    return path.expanduser()


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """The MLflow store answers and can be written, without creating it."""
    if uri.startswith("sqlite:"):
        db = _sqlite_path(uri)
        folder = db.parent
        if not folder.is_dir():
            kind = "is a file, not a folder" if folder.exists() else "does not exist"
            if not folder.exists() and any(a.is_file() for a in folder.parents):
                kind = "lies under a file"
            raise PreflightError(f"tracking URI {uri}: folder {folder} {kind}")
        _probe_write(folder, "tracking store", db)  # SQLite writes its journal beside the file
        if db.exists():
            if not db.is_file():
                raise PreflightError(f"tracking URI {uri}: {db} is not a file")
            try:
                con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
                try:
                    con.execute("select count(*) from sqlite_master").fetchone()
                finally:
                    con.close()
                with open(db, "r+b"):
                    pass
            except (sqlite3.Error, OSError) as exc:
                raise PreflightError(
                    f"tracking URI {uri}: {db} is not a usable SQLite database ({' '.join(str(exc).split())})"
                ) from None
        return
    if uri.startswith(("http://", "https://")):
        _check_http(uri.rstrip("/"), timeout_s)
        return
    if uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        _check_database(uri, timeout_s)
        return
    if uri.startswith("file:") or "://" not in uri:
        raise PreflightError(
            f"tracking URI {uri}: MLflow 3 refuses file stores; use "
            f"sqlite:///PATH/store.db "
            f"or an http(s) server"
        )
    # databricks, uc and other plugin schemes: checked by MLflow itself.


def _check_http(base: str, timeout_s: float) -> None:
    last = ""
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout_s) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PreflightError(
                    f"tracking URI {base}: the server refused the request "
                    f"(HTTP {exc.code}); set MLFLOW_TRACKING_USERNAME/PASSWORD "
                    f"or MLFLOW_TRACKING_TOKEN"
                ) from None
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, socket.timeout, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PreflightError(
                f"tracking URI {base}: no MLflow server answers within {timeout_s:g} s "
                f"({' '.join(str(reason).split())})"
            ) from None
    raise PreflightError(
        f"tracking URI {base}: not an MLflow server ({last} on /health and experiments/search)"
    )


def _check_database(uri: str, timeout_s: float) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(max(1, timeout_s))})
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise PreflightError(
            f"tracking URI {uri.split('@')[-1]}: no database driver installed ({type(exc).__name__}: {exc})"
        ) from None
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("select 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        raise PreflightError(f"tracking URI {uri.split('@')[-1]}: cannot connect ({first})") from None
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- storage
def check_storage(path: str | os.PathLike, need_bytes: int = 0) -> None:
    """The sweep storage folder can be created and written and has ``need_bytes`` free.
    Object stores (``s3://``...) are checked elsewhere."""
    text = str(path)
    if text.startswith(_REMOTE_STORAGE):
        return
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise PreflightError(f"--storage {p}: is a file, not a folder")
    folder = _existing_ancestor(p, "--storage")
    _probe_write(folder, "--storage", p)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise PreflightError(
            f"--storage {p}: needs about {_gib(need_bytes)} for the planned checkpoints, "
            f"only {_gib(free)} free on {folder}"
        )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_bytes(module) -> int:
    """Bytes of a module's ``state_dict`` (parameters and buffers, frozen ones included)."""
    return sum(v.numel() * v.element_size() for v in module.state_dict().values() if hasattr(v, "numel"))


def saved_objective_bytes(objective) -> int:
    """What the trainer saves of the objective: term buffers and calibration, not the frozen
    backbones (Trainer._objective_state leaves ``backbones.*`` out)."""
    return sum(
        v.numel() * v.element_size()
        for k, v in objective.state_dict().items()
        if hasattr(v, "numel") and not k.startswith("backbones.")
    )


def estimate_checkpoint_bytes(
    g_params: int,
    d_params: int,
    copies: int = 1,
    frozen_bytes: int = 0,
    bytes_per_value: int = 4,
    overhead: int = 256 * 1024,
) -> int:
    """Upper bound of ``copies`` trainer checkpoints: G + D weights, Adam's two moments for
    two G optimisers (pretraining and GAN) and one D optimiser, the objective's state
    (``frozen_bytes``: term buffers; the frozen VGG/ResNet trunks are not saved) and a fixed
    overhead (config, RNG states, zip headers)."""
    per = (g_params * (1 + 2 * 2) + d_params * (1 + 2)) * bytes_per_value + frozen_bytes + overhead
    return per * copies


def planned_checkpoint_bytes(cfg, trials: int, kept_per_trial: int = 3) -> int:
    """For a sweep: every trial keeps ``kept_per_trial`` copies (Tune's ``num_to_keep=2``
    plus the trial folder's ``last.pt``), plus the shared ``pretrain_g.pt``. Builds the
    models once on the CPU (random init: sizes only)."""
    from trainables.models import build_discriminator, build_generator
    from trainables.objective import GeneratorObjective

    g = count_parameters(build_generator(cfg.model.generator, cfg.scale))
    d = count_parameters(build_discriminator(cfg.model.discriminator, cfg.data.patch_size))
    frozen = saved_objective_bytes(GeneratorObjective(cfg))
    return estimate_checkpoint_bytes(g, d, trials * kept_per_trial, frozen) + g * 4 + 256 * 1024


# ----------------------------------------------------------------------------- images
def _decode(path: Path) -> str | None:
    """None if both decoders read every pixel, else the reason."""
    import cv2
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # the whole file: a truncated PNG/JPEG raises here, not at open()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for junk
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    if cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None:  # what the trainer reads with
        return "OpenCV cannot decode it"
    return None


def _image_paths(source) -> list[Path]:
    items = getattr(source, "items", None)
    if items is not None:  # a trainables.data.ImageSet
        return [p for _, hr, lr in items for p in (hr, lr) if p is not None]
    from trainables.data import list_images

    folder = Path(source)
    return list_images(folder / "HR" if (folder / "HR").is_dir() else folder)


def check_images(source, workers: int = 2) -> int:
    """Fully decode every image once (an ImageSet, or a folder); returns how many."""
    paths = _image_paths(source)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # both decoders release the GIL
        for path, problem in zip(paths, pool.map(_decode, paths)):
            if problem:
                raise PreflightError(f"{path}: cannot decode image ({problem})")
    return len(paths)


# ----------------------------------------------------------------------------- resources
def check_resources(
    need: Mapping[str, float],
    available: Mapping[str, float] | Sequence[Mapping[str, float]],
    where: str = "resources",
) -> None:
    """A trial's ``need`` ({"cpu": 2, "gpu": 1}) fits one node of ``available``: a dict of
    cluster totals (``ray.cluster_resources()``) or per-node dicts (``ray.nodes()``'s
    ``Resources``). Ray places a trial on one node, so per-node is the accurate form."""
    nodes: Iterable[Mapping[str, float]] = [available] if isinstance(available, Mapping) else available
    nodes = [{k.upper(): float(v) for k, v in n.items()} for n in nodes]
    want = {k.upper(): float(v) for k, v in need.items() if v}
    if any(all(n.get(k, 0.0) >= v for k, v in want.items()) for n in nodes):
        return
    for k, v in want.items():
        best = max((n.get(k, 0.0) for n in nodes), default=0.0)
        if best < v:
            where_k = f"{where}.{k.lower()}"
            scope = "node" if len(nodes) > 1 else "Ray cluster"
            raise PreflightError(
                f"{where_k}: a trial needs {v:g} {k} but the largest {scope} has {best:g}; "
                f"lower {where_k} or add nodes (it would wait forever)"
            )
    raise PreflightError(
        f"{where}: no single node has {', '.join(f'{v:g} {k}' for k, v in want.items())} "
        f"at once (a trial runs on one node)"
    )


def ray_node_resources() -> list[dict[str, float]]:
    """Per alive node resources of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


# ----------------------------------------------------------------------------- a whole sweep
def needed_weights(cfg) -> list[str]:
    """The ImageNet weight files a trial with ``cfg`` loads (none with ``weights: random``)."""
    if cfg.backbones.weights != "pretrained":
        return []
    loss = cfg.loss
    keys = ["vgg19"] if loss.perceptual is not None else []
    if loss.dp is not None and loss.dp.mu != float("inf"):
        keys.append("resnet50")
    return keys + ["alexnet"]  # LPIPS, always scored


def local_resources() -> dict[str, float]:
    """What the embedded local Ray will offer (ray.init's defaults), known before it starts."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def planned_trials(sweep) -> int:
    return sweep.planned_trials  # one owner of the trial count: SweepConfig


def check_test_overlap(splits: Mapping, allowed: bool) -> None:
    """The test split shares no picture (by decoded content) with val or train, unless
    the sweep says ``allow_test_overlap: true``."""
    from trainables.splits import content_hashes

    if "test" not in splits or allowed:
        return
    test = content_hashes(splits["test"])
    for other in ("val", "train"):
        shared = sorted(set(test) & set(content_hashes(splits[other])))
        if shared:
            raise PreflightError(
                f"data.test: {len(shared)} image(s) also in data.{other} (same pixels: "
                f"{', '.join(test[h] for h in shared[:3])}); the confirmation must score held-out "
                "images (use other images, or allow_test_overlap: true to report non-held-out numbers)"
            )


def preflight_sweep(sweep, sweep_path, cfg, storage, tracking_uri: str, address) -> None:
    """Every input of ``srsweep run`` before anything is written or started: resources of
    the embedded Ray (a cluster is checked when connecting), the tracking store, the storage
    folder and its free space, every image decoded, every sampleable config's weights."""
    from sweeper.sweep_config import corners, experiment_at, experiment_dict
    from trainables.backbones import check_available
    from trainables.splits import open_split

    res = sweep.resources
    if address is None:
        check_resources({"cpu": res.cpu, "gpu": res.gpu}, local_resources(), "resources")
    check_tracking(tracking_uri)
    exp, seen = experiment_dict(sweep, sweep_path), set()
    for what, assignments in corners(sweep.space):  # load_sweep validated these same corners
        trial = experiment_at(exp, assignments, f"{sweep_path} (space at {what})")
        keys = tuple(needed_weights(trial))
        if keys not in seen:
            seen.add(keys)
            check_available(keys, trial.backbones.weights_dir)
    names = ("train", "val", "test") if cfg.data.test else ("train", "val")
    splits = {s: open_split(cfg.data, cfg.scale, s, cache=False) for s in names}
    for images in splits.values():
        check_images(images)
    check_test_overlap(splits, sweep.allow_test_overlap)
    check_storage(storage, planned_checkpoint_bytes(cfg, planned_trials(sweep)))

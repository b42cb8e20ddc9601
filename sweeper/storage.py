"""Sweep storage: a local or shared folder (NFS), or ``s3://bucket/prefix`` (S3, MinIO, moto).

``resolve_storage`` turns the ``--storage`` argument into what ``tune.RunConfig(storage_path=...,
storage_filesystem=...)`` and ``tune.Tuner.restore`` take. The S3 endpoint comes from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (unset: AWS itself), the region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION``; credentials from the usual AWS chain on each node
(env variables, ~/.aws, an instance role), never stored in the filesystem object.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from trainables.errors import SrsweepError

CACHE_ENV = "SRSWEEP_CACHE"  # where the driver mirrors a sweep kept on S3 (default ~/.cache/srsweep)


class StorageError(SrsweepError, ValueError):
    """One line naming the storage location and what is wrong with it."""


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {"region": region}
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=url.netloc, scheme=url.scheme or "https")
    return pafs.S3FileSystem(**kwargs)


def resolve_storage(storage: str | os.PathLike) -> tuple[str, Optional[pafs.FileSystem]]:
    """``--storage`` -> (storage_path, filesystem). A folder gives (absolute path, None), so Ray
    uses the local filesystem; ``s3://bucket/prefix`` gives ("bucket/prefix", S3FileSystem)."""
    text = str(storage)
    if "://" not in text:
        return str(Path(text).expanduser().resolve()), None
    url = urlparse(text)
    if url.scheme != "s3":
        raise StorageError(f"--storage {text}: only a folder or s3://bucket/prefix is supported")
    if not url.netloc:
        raise StorageError(f"--storage {text}: no bucket (expected s3://bucket/prefix)")
    return f"{url.netloc}/{url.path.strip('/')}".rstrip("/"), _s3_filesystem()


def join(storage_path: str, *parts: str) -> str:
    """Paths inside the storage (always '/': S3 keys and POSIX folders)."""
    return "/".join([storage_path.rstrip("/"), *(p.strip("/") for p in parts)])


def _fs(fs: Optional[pafs.FileSystem]) -> pafs.FileSystem:
    return fs if fs is not None else pafs.LocalFileSystem()


def write_text(path: str, text: str, fs: Optional[pafs.FileSystem] = None) -> None:
    """Write a small file (sweep.json); parent folders are created on a local filesystem."""
    fs = _fs(fs)
    parent = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(path: str, fs: Optional[pafs.FileSystem] = None) -> str:
    with _fs(fs).open_input_stream(path) as src:
        return src.read().decode()


def exists(path: str, fs: Optional[pafs.FileSystem] = None) -> bool:
    return _fs(fs).get_file_info(path).type != pafs.FileType.NotFound


def check_writable(storage_path: str, fs: Optional[pafs.FileSystem] = None) -> None:
    """Write, read back and delete a probe file: a missing bucket, bad credentials or a read-only
    folder fail here in one line, before the sweep creates anything."""
    probe = join(storage_path, f".srsweep-write-test-{uuid.uuid4().hex[:8]}")
    where = f"s3://{storage_path}" if isinstance(fs, pafs.S3FileSystem) else storage_path
    try:
        write_text(probe, "ok", fs)
        if read_text(probe, fs) != "ok":
            raise OSError("read back something else")
        _fs(fs).delete_file(probe)
    except (OSError, ValueError) as exc:
        raise StorageError(f"--storage {where} is not writable: {str(exc).splitlines()[0][:300]}") from None


def download_dir(path: str, fs: Optional[pafs.FileSystem], dest: str | os.PathLike) -> Path:
    """Mirror a storage folder (an experiment on S3) into a local folder, for the readers that
    take local paths (results table, per-image scores, plots). A local storage is returned as is."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def upload_file(src: str | os.PathLike, path: str, fs: Optional[pafs.FileSystem] = None) -> None:
    """Copy one local file (results.parquet, a plot) to ``path`` in the storage."""
    if fs is None:
        fs = pafs.LocalFileSystem()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


# ------------------------------------------------------------------ sweep folders as URIs
def is_remote(uri: str | os.PathLike) -> bool:
    """``s3://...`` (a sweep folder, a pretrained G) rather than a path on this machine."""
    return str(uri).startswith("s3://")


def uri_of(storage_path: str, fs: Optional[pafs.FileSystem]) -> str:
    """(storage path, filesystem) -> what sweep.json and the CLI show: a folder or s3://..."""
    return f"s3://{storage_path}" if isinstance(fs, pafs.S3FileSystem) else storage_path


def local_cache(uri: str) -> Path:
    """The driver's local mirror of a remote sweep folder (results, plots, winner.yaml)."""
    root = Path(os.environ.get(CACHE_ENV) or "~/.cache/srsweep").expanduser()
    return root / str(uri).removeprefix("s3://")


def mirror_dir(path: str, fs: pafs.FileSystem, dest: str | os.PathLike, skip_suffixes=(".pt",)) -> Path:
    """Like ``download_dir``, without the files the driver never reads (model checkpoints:
    the bulk of a sweep). Files already mirrored with the same size are not fetched again."""
    dest, local = Path(dest), pafs.LocalFileSystem()
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File or info.path.endswith(tuple(skip_suffixes)):
            continue
        target = dest / info.path[len(path.rstrip("/")) + 1 :]
        if target.is_file() and target.stat().st_size == info.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(target), source_filesystem=fs, destination_filesystem=local)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def fetch_file(uri: str, dest: str | os.PathLike) -> Path:
    """Copy one ``s3://`` object to a local path (atomically: parallel trials on one node)."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    path, fs = resolve_storage(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    os.replace(tmp, dest)
    return dest

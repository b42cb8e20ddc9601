"""Ray's restore pickles, signed: ``srsweep resume`` never unpickles a file it did not write.

``Tuner.restore`` unpickles ``tuner.pkl``, the searcher state and values inside
``experiment_state-*.json``; a sweep folder may sit on storage others can write. So the
driver keeps a signed copy of exactly those files (``ray_state.signed.json``: their
bytes and an HMAC-SHA256 over them), refreshed whenever Tune has saved its state
(``SigningCallback.on_step_end`` runs right after Tune's periodic save, in the same loop).
The key lives outside the folder: ``$SRSWEEP_KEY_FILE`` or ``~/.config/srsweep/hmac.key``
(created 0600 on first use; copy it deliberately to resume on another machine).

``resume`` checks the copy and writes those bytes back over Ray's files before the
restore (a local folder or ``s3://``); any other Ray state file is renamed
``*.unverified`` so Ray cannot pick it. A driver killed between Tune's save and the
signing resumes from the state one loop step older (trials continue from their
checkpoints). A copy that fails the check is refused.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import glob
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Optional

from ray.tune import Callback

from sweeper import atomic
from trainables.errors import SrsweepError

SIGNED_FILE = "ray_state.signed.json"
KEY_ENV = "SRSWEEP_KEY_FILE"
TRUST_ENV = "SRSWEEP_TRUST_UNSIGNED"  # a sweep from before signing: the user vouches for it
# The files Tuner.restore reads at the experiment's top level (the rest is plain JSON).
PATTERNS = ("tuner.pkl", "*state-*.json", "*state-*.pkl")


class UnsignedState(SrsweepError):
    """Ray's saved state is not the one this user's srsweep signed (one line)."""


def key_file() -> Path:
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "srsweep" / "hmac.key"


def _key() -> bytes:
    path = key_file()
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileExistsError):  # O_EXCL: two drivers at once agree on one key
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
        key = path.read_text().strip().encode()
    except OSError as exc:
        why = f"{exc.strerror}; set {KEY_ENV} to a file this user can write"
        raise UnsignedState(f"{path}: cannot create or read the signing key ({why})") from None
    if len(key) < 32:
        raise UnsignedState(f"{path}: signing key too short (want >= 32 characters)")
    return key


def ray_files(folder: Path) -> dict[str, Path]:
    found = {p.name: p for pat in PATTERNS for p in folder.glob(pat) if p.is_file() and not p.is_symlink()}
    return dict(sorted(found.items()))


def _ray_name(name: str) -> bool:
    return Path(name).name == name and any(fnmatch.fnmatchcase(name, pat) for pat in PATTERNS)


class Place:
    """The sweep folder, local or ``s3://``: the few file operations signing needs."""

    def __init__(self, sweep_dir: str | Path):
        from sweeper import storage

        self.remote = storage.is_remote(sweep_dir)
        self.root, self.fs = (
            storage.resolve_storage(str(sweep_dir)) if self.remote else (str(sweep_dir), None)
        )

    def at(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _entries(self):
        import pyarrow.fs as pafs

        return self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))

    def files(self) -> dict[str, str]:
        """Ray's state files at the top of the folder (no symlinks): name -> path."""
        if not self.remote:
            return {k: str(v) for k, v in ray_files(Path(self.root)).items()}
        return dict(
            sorted((i.base_name, i.path) for i in self._entries() if i.is_file and _ray_name(i.base_name))
        )

    def read(self, name: str) -> Optional[bytes]:
        if not self.remote:
            path = Path(self.at(name))
            return path.read_bytes() if path.is_file() and not path.is_symlink() else None
        if self.fs.get_file_info(self.at(name)).is_file:
            with self.fs.open_input_stream(self.at(name)) as f:
                return f.read()
        return None

    def write(self, name: str, data: bytes) -> None:
        if not self.remote:
            atomic.write_bytes(self.at(name), data)
            return
        with self.fs.open_output_stream(self.at(name)) as f:  # one PUT: all or nothing
            f.write(data)

    def set_aside(self, name: str) -> None:
        """Renamed so Ray cannot pick it (its globs end in .json / .pkl)."""
        (self.fs.move if self.remote else os.replace)(self.at(name), self.at(name + ".unverified"))

    def trials_ran(self) -> bool:
        if not self.remote:
            return any(p.is_dir() and (p / "params.json").is_file() for p in Path(self.root).iterdir())
        dirs = [i.path for i in self._entries() if i.type.name == "Directory"]
        return any(self.fs.get_file_info(f"{d}/params.json").is_file for d in dirs)


def _mac(files: dict[str, str]) -> str:
    body = json.dumps(files, sort_keys=True).encode()
    return hmac.new(_key(), body, hashlib.sha256).hexdigest()


def sign(place: Place, sources: dict[str, bytes]) -> None:
    """Store the signed copy of ``sources`` (name -> bytes) in the sweep folder."""
    files = {name: base64.b64encode(data).decode() for name, data in sources.items()}
    place.write(SIGNED_FILE, json.dumps({"files": files, "mac": _mac(files)}).encode())


def verified(place: Place) -> Optional[dict[str, bytes]]:
    """The signed files' bytes; None when the folder has no signed copy (raises when the
    copy does not match this user's key)."""
    raw = place.read(SIGNED_FILE)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        files, mac = data["files"], data["mac"]
        ok = isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
        ok = ok and isinstance(mac, str) and hmac.compare_digest(_mac(files), mac)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UnsignedState(
            f"{place.at(SIGNED_FILE)}: Ray's saved state does not carry this user's signature (key "
            f"{key_file()}); it was changed, or signed with another key: not restored "
            "(no code from it is run)"
        )
    return {name: base64.b64decode(v) for name, v in files.items() if _ray_name(name)}


def put_back(place: Place) -> bool:
    """Before ``Tuner.restore``: Ray's state files are exactly the signed ones again.
    False when nothing was signed (the driver stopped before Tune's first save)."""
    files = verified(place)
    if files is None:
        return False
    for name in place.files():
        if name not in files:
            place.set_aside(name)
    for name, data in files.items():
        place.write(name, data)
    return True


class SigningCallback(Callback):
    """Signs Ray's state files after each save of Tune's state (cheap when unchanged)."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = str(sweep_dir)
        self._seen: Optional[tuple] = None
        self._tuner: Optional[bytes] = None  # written once, when the Tuner is made

    def _staging(self, trials) -> Optional[Path]:
        """Tune saves into the driver's staging folder, then copies it to the sweep folder
        in the background: the staging copy is the complete one at this point. Restored
        trials keep their first session's path, so the newest saved one is taken."""
        dirs = {Path(t.storage.experiment_driver_staging_path) for t in trials[:1]}
        with contextlib.suppress(Exception):  # a private Ray helper: the trial's path is the fallback
            from ray.train._internal.storage import _get_ray_train_session_dir

            name = self.sweep_dir.rstrip("/").rsplit("/", 1)[-1]
            dirs.update(Path(_get_ray_train_session_dir()).glob(f"*/{glob.escape(name)}/driver_artifacts"))
        saved = [(max(p.stat().st_mtime_ns for p in d.glob("experiment_state-*.json")), d) for d in dirs
                 if d.is_dir() and any(d.glob("experiment_state-*.json"))]  # fmt: skip
        return max(saved)[1] if saved else None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        staging = self._staging(trials)
        if staging is None:
            return
        sources = {k: v for k, v in ray_files(staging).items() if k != "tuner.pkl"}
        seen = tuple((k, p.stat().st_mtime_ns, p.stat().st_size) for k, p in sources.items())
        if seen == self._seen:
            return
        place = Place(self.sweep_dir)
        if self._tuner is None:
            self._tuner = place.read("tuner.pkl")
        data = {k: p.read_bytes() for k, p in sources.items()}
        sign(place, {**data, "tuner.pkl": self._tuner} if self._tuner is not None else data)
        self._seen = seen

    def on_experiment_end(self, trials: list, **info) -> None:
        self.on_step_end(0, trials)


def callbacks(state) -> list:
    """The signing callback. The key is read now: a key that cannot be created or read
    stops the sweep in one line before Tune starts."""
    _key()
    return [SigningCallback(state.sweep_dir)]


def check_resumable(state) -> None:
    """Before anything starts: refuse a copied or moved folder (Ray's pickled state names
    the original, and its Optuna study), a signed copy that fails its check, and Ray state
    no one signed (unless the user vouches for it)."""
    if state.moved:
        raise UnsignedState(
            f"{state.sweep_dir}: this sweep was created in {state.origin}, and Ray's saved state "
            "names that folder; resume it there (`srsweep best` works on a copy)"
        )
    place = Place(state.sweep_dir)
    if verified(place) is not None or os.environ.get(TRUST_ENV) == "1":
        return
    if place.read("tuner.pkl") is not None and place.trials_ran():
        raise UnsignedState(
            f"{state.sweep_dir}: Ray's saved state is not signed (written by an srsweep before signing, "
            f"or the signature was removed); if you trust every file in it, resume with {TRUST_ENV}=1"
        )


def restored_tuner(state, trainable, build):
    """The Tuner a resume continues: Ray's restore from the signed state, ``build(state)``
    when Tune never saved (stopped before the first trial)."""
    from ray import tune

    from sweeper.storage import resolve_storage

    exp_path, fs = resolve_storage(state.sweep_dir)
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        return build(state)
    place = Place(state.sweep_dir)
    if not put_back(place):
        check_resumable(state)  # (checked at the start too; the folder may have changed since)
        if not place.trials_ran():
            return build(state)  # Tune never saved: nothing of it to restore
        sign(place, {name: place.read(name) for name in place.files()})  # the user vouched for these
    return tune.Tuner.restore(
        exp_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
    )

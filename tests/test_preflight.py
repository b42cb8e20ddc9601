"""Preflight checks on real files, folders, servers and models: one line each, nothing created.

Tests run as root, which ignores permission bits: "read-only" here is /proc (no file can be
created there, even by root) and "not a folder" is a path under a regular file.
"""

import http.server
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from sweeper.preflight import (
    PreflightError,
    check_images,
    check_resources,
    check_storage,
    check_tracking,
    count_parameters,
    estimate_checkpoint_bytes,
    planned_checkpoint_bytes,
    saved_objective_bytes,
)
from trainables.data import folder_pairs, open_dataset

BAD = []  # (check, input) of every bad input refused, counted by the last test


def _refused(fn, *args, match: str, **kw) -> str:
    with pytest.raises(PreflightError) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    BAD.append((fn.__name__, args))
    return msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def http_404(tmp_path):
    """A real HTTP server that is not MLflow (every path 404s)."""
    (tmp_path / "www").mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **k)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_tracking_uri_problems_are_one_line_and_create_nothing(tmp_path, http_404):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "corrupt.db").write_bytes(b"this is not sqlite" * 100)
    (tmp_path / "dir.db").mkdir()
    before = _tree(tmp_path)
    _refused(check_tracking, f"sqlite:///{tmp_path}/missing/mlflow.db", match="does not exist")
    _refused(check_tracking, f"sqlite:///{tmp_path}/afile/mlflow.db", match="is a file, not a folder")
    _refused(check_tracking, f"sqlite:///{tmp_path}/afile/sub/mlflow.db", match="lies under a file")
    _refused(check_tracking, "sqlite:////proc/mlflow.db", match="cannot write in /proc")
    _refused(check_tracking, f"sqlite:///{tmp_path}/corrupt.db", match="not a usable SQLite database")
    _refused(check_tracking, f"sqlite:///{tmp_path}/dir.db", match="is not a file")
    _refused(
        check_tracking,
        f"http://127.0.0.1:{_free_port()}",
        match="no MLflow server answers within 2 s",
        timeout_s=2,
    )
    _refused(check_tracking, http_404, match="not an MLflow server (HTTP 404")
    _refused(
        check_tracking,
        f"postgresql://u:secret@127.0.0.1:{_free_port()}/db",
        match="tracking URI",
        timeout_s=2,
    )
    _refused(check_tracking, str(tmp_path / "mlruns"), match="refuses file stores")
    assert _tree(tmp_path) == before and not (tmp_path / "mlflow.db").exists()
    # Good stores pass: a folder without a store yet (not created), a real SQLite file.
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()
    sqlite3.connect(tmp_path / "real.db").execute("create table t (x)").connection.close()
    check_tracking(f"sqlite:///{tmp_path}/real.db")


def test_storage_problems_are_one_line_and_create_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    _refused(check_storage, tmp_path / "afile", match="is a file, not a folder")
    _refused(check_storage, tmp_path / "afile" / "sweeps", match="is a file, not a folder")
    _refused(check_storage, "/proc/srsweep-sweeps", match="cannot write in /proc")
    _refused(check_storage, tmp_path / "sweeps", need_bytes=10**18, match="only")
    assert _tree(tmp_path) == before
    check_storage(tmp_path / "new" / "sweeps", need_bytes=1024)
    check_storage("s3://bucket/sweeps", need_bytes=10**18)  # object stores: checked by the S3 layer
    assert _tree(tmp_path) == before  # the probe file is gone, the folder not created


def test_images_are_fully_decoded(tmp_path, shared_data):
    src = shared_data / "Set5"
    data = tmp_path / "data"
    shutil.copytree(src, data)
    assert check_images(data) == 5  # HR only for a folder
    assert check_images(folder_pairs(data, 4)) == 10  # HR and LR of an ImageSet
    png = data / "HR" / "img_003.png"
    raw = png.read_bytes()
    png.write_bytes(raw[: len(raw) * 2 // 3])
    open_dataset(data, 4).validate(32)  # the header-only check lets the truncated file through
    _refused(check_images, data, match=f"{png}: cannot decode image")
    png.write_bytes(raw)
    lr = data / "LR_bicubic" / "X4" / "img_002.png"
    lr.write_bytes(b"not an image at all")
    _refused(check_images, folder_pairs(data, 4), match=f"{lr}: cannot decode image")
    lr.write_bytes(b"")
    _refused(check_images, folder_pairs(data, 4), match=f"{lr}: cannot decode image")
    shutil.copy(src / "LR_bicubic" / "X4" / "img_002.png", lr)
    import cv2

    jpg = tmp_path / "jpg"
    jpg.mkdir()
    cv2.imwrite(str(jpg / "a.jpg"), cv2.imread(str(src / "HR" / "img_002.png")))
    assert check_images(jpg) == 1
    body = (jpg / "a.jpg").read_bytes()
    (jpg / "a.jpg").write_bytes(body[: len(body) // 2])  # OpenCV decodes this with a grey bottom
    assert cv2.imread(str(jpg / "a.jpg")) is not None
    _refused(check_images, jpg, match="truncated")


def test_resources_that_no_node_has_are_refused():
    _refused(
        check_resources,
        {"cpu": 64, "gpu": 0},
        {"CPU": 2.0, "memory": 1e9},
        match="resources.cpu: a trial needs 64 CPU but the largest Ray cluster has 2",
    )
    _refused(check_resources, {"cpu": 1, "gpu": 1}, {"CPU": 2.0}, match="resources.gpu: a trial needs 1 GPU")
    _refused(check_resources, {"cpu": 2}, [{"CPU": 1.0}, {"CPU": 1.0}], match="largest node has 1")
    _refused(
        check_resources,
        {"cpu": 2, "gpu": 1},
        [{"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}],
        match="no single node has 2 CPU, 1 GPU",
    )
    check_resources({"cpu": 1, "gpu": 0.5}, [{"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}])
    check_resources({"cpu": 2}, {"CPU": 2.0})


def test_checkpoint_estimate_bounds_a_real_checkpoint(tiny_config, tmp_path):
    from trainables.train import Trainer

    est = estimate_checkpoint_bytes(1000, 100, copies=2, frozen_bytes=7, overhead=0)
    assert est == 2 * ((1000 * 5 + 100 * 3) * 4 + 7)
    cfg = tiny_config(
        {
            "model": {
                "generator": {"arch": "srresnet", "num_feat": 16, "num_blocks": 2},
                "discriminator": {"arch": "srgan", "num_feat": 16},
            },
            "train": {
                "pretrain_steps": 1,
                "steps": 1,
                "val_every": 100,
                "log_every": 100,
                "checkpoint_every": 100,
                "val_crop": 64,
                "device": "cpu",
            },
        }
    )
    t = Trainer(cfg, tmp_path)
    t.run()  # both G optimisers and D's have moments now: the largest a checkpoint gets
    size = (tmp_path / "last.pt").stat().st_size
    est = estimate_checkpoint_bytes(
        count_parameters(t.G), count_parameters(t.D), frozen_bytes=saved_objective_bytes(t.objective)
    )
    print(f"checkpoint {size} bytes, estimate {est}")
    assert size <= est <= size * 1.5 + 256 * 1024
    assert planned_checkpoint_bytes(cfg, trials=4) >= 12 * size


def test_bad_input_count():
    print(f"preflight bad inputs refused in one line: {len(BAD)}")
    assert len(BAD) >= 22

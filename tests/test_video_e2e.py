"""Video end to end, as a user runs it: `srsweep train sa_vsr_lv --tiny`, `srsweep eval` on
embedded-video and a Vid4-layout folder (bicubic and the trained checkpoint), and a 2-trial
`srsweep run` of the shipped search_spaces/sa_vsr.yaml; CPU, SQLite MLflow stores in tmp."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from test_sweep import _sweep_dir, srsweep

from trainables.video_data import embedded_video
from trainables.video_metrics import eval_bicubic_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ROW = re.compile(r"^(\S+)\s+([\d.]+)\s+([\d.]+)(?:\s+([\d.]+))?$")


def table(stdout: str) -> dict[str, tuple[float, ...]]:
    """Rows of a printed eval table: name -> (PSNR, SSIM[, LPIPS])."""
    out = {}
    for line in stdout.splitlines():
        m = ROW.match(line.strip())
        if m:
            out[m.group(1)] = tuple(float(g) for g in m.groups()[1:] if g is not None)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`srsweep train sa_vsr_lv --tiny` (fewer steps) logging to a SQLite store."""
    tmp = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    res = srsweep(
        "train",
        "sa_vsr_lv",
        "--tiny",
        "--out",
        tmp / "run",
        "--tracking-uri",
        uri,
        "--set",
        "train.pretrain_steps=4",
        "--set",
        "train.steps=4",
        "--set",
        "train.val_every=4",
        "--set",
        "train.val_images=2",
        cwd=tmp,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp, uri, res.stdout


def test_train_sa_vsr_lv_tiny_logs_to_mlflow(trained):
    from mlflow import MlflowClient

    tmp, uri, stdout = trained
    assert "backbones are random-init" in stdout and "val_psnr=" in stdout
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("srsweep-train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.kind"] == "video"
    assert (
        run.data.params["model.generator.arch"] == "vsrresfeat" and run.data.params["data.synth_size"] == "64"
    )
    hist = client.get_metric_history(run.info.run_id, "val_psnr")
    assert [m.step for m in hist] == [4, 8] and all(m.value > 15 for m in hist)
    # the per-sequence table at each validation, its mean row equal to the logged val_psnr
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "val_sequences")}
    assert arts == {"val_sequences/step_0000004.json", "val_sequences/step_0000008.json"}
    local = client.download_artifacts(run.info.run_id, "val_sequences/step_0000008.json", str(tmp))
    tab = json.loads(Path(local).read_text())
    cols, rows = tab["columns"], tab["data"]
    assert cols[:3] == ["sequence", "psnr_y", "ssim_y"] and [r[0] for r in rows] == [
        "chelsea",
        "coffee",
        "mean",
    ]
    assert rows[2][1] == pytest.approx((rows[0][1] + rows[1][1]) / 2)
    assert rows[2][1] == pytest.approx(hist[-1].value)


def test_eval_embedded_video_bicubic_and_the_checkpoint(trained):
    tmp, _, _ = trained
    res = srsweep("eval", "embedded-video", "--lpips", "none", cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    bic = table(res.stdout)
    seqs = ["chelsea", "coffee", "camera", "moon", "coins", "brick", "grass", "gravel"]
    assert list(bic) == [*seqs, "mean"] and "centre frame of 5-frame clips" in res.stdout
    assert bic["mean"][0] == pytest.approx(np.mean([bic[s][0] for s in seqs]), abs=0.01)
    # the same numbers the library gives on the same synthetic frames
    from trainables.video_metrics import bicubic_centre, evaluate_video, sequence_rows

    lib = sequence_rows(evaluate_video(bicubic_centre(4), embedded_video("val", 4), 5))
    assert [round(r.psnr, 2) for r in lib] == [bic[s][0] for s in seqs]
    res = srsweep("eval", "embedded-video", "--model", tmp / "run" / "last.pt", "--lpips", "none", cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    g = table(res.stdout)
    assert list(g) == [*seqs, "mean"] and g != bic and f"generator {tmp / 'run' / 'last.pt'}" in res.stdout


def test_eval_on_a_vid4_layout_folder(trained, tmp_path):
    tmp, _, _ = trained
    videos = embedded_video("val", 4, n_frames=5, size=64)
    for i, name in enumerate(videos.names[:2]):
        for t in range(5):
            hr = videos.frame(i, t)[0]
            path = tmp_path / "vid" / "HR" / name / f"{t:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), np.ascontiguousarray(hr[:, :, ::-1]))
    res = srsweep("eval", tmp_path / "vid", "--lpips", "none", cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    got = table(res.stdout)
    _, seq_rows = eval_bicubic_folder(tmp_path / "vid", 4, 5)
    assert got == {r.name: (round(r.psnr, 2), round(r.ssim, 4)) for r in seq_rows} | {
        "mean": (round(np.mean([r.psnr for r in seq_rows]), 2), round(np.mean([r.ssim for r in seq_rows]), 4))
    }
    res = srsweep("eval", tmp_path / "vid", "--model", tmp / "run" / "last.pt", "--lpips", "none", cwd=tmp)
    assert res.returncode == 0 and list(table(res.stdout)) == ["chelsea", "coffee", "mean"], res.stderr[
        -2000:
    ]
    (tmp_path / "vid" / "HR" / "empty").mkdir()
    res = srsweep("eval", tmp_path / "vid", "--lpips", "none", cwd=tmp)
    errors = [line for line in res.stderr.splitlines() if line.startswith("srsweep: error:")]
    assert res.returncode == 2 and len(errors) == 1 and "HR/empty" in errors[0], res.stderr


def test_sa_vsr_sweep_two_trials(tmp_path):
    """The shipped sa_vsr.yaml, with only its budget and step counts shrunk."""
    sweep = yaml.safe_load((REPO / "search_spaces" / "sa_vsr.yaml").read_text())
    sweep["budget"] = {"num_samples": 2, "max_concurrent": 2}
    sweep["set"]["train"].update(pretrain_steps=4, steps=4, val_every=2, log_every=2, checkpoint_every=2)
    sweep["set"]["loss"]["pixel"]["sa"]["calibration_batches"] = 1
    sweep["selection"] = {"psnr_margin": -30.0}  # 4 pretraining steps stay far below bicubic
    path = tmp_path / "sa_vsr.yaml"
    path.write_text(yaml.safe_dump(sweep))
    res = srsweep("run", path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = _sweep_dir(tmp_path)
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 2 and set(df["status"]) <= {"TERMINATED", "STOPPED"}
    assert df["final_val_lpips"].notna().all() and (df["sa_share"] > 0).all()
    from mlflow import MlflowClient

    state = json.loads((d / "sweep.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("srsweep-sa_vsr")
    children = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]
    ]
    assert len(children) == 2 and all(r.data.tags["ray_status"] != "ERROR" for r in children)
    for r in children:
        assert r.data.params["data.kind"] == "video" and "val_psnr" in r.data.metrics
        assert client.list_artifacts(r.info.run_id, "val_sequences")
    print(res.stdout[-2500:])

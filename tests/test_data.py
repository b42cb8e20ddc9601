"""Tests for trainables.data: image loading, LR making, datasets, patch sampling."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainables.data import (
    DataError,
    ImageSet,
    PairedImages,
    TrainPatches,
    embedded,
    folder_hr,
    folder_pairs,
    list_images,
    load_image,
    make_lr,
    mod_crop,
    open_dataset,
)
from trainables.edges import CannySpec, canny
from trainables.patch_cache import ArrowPatches, cache_patches_arrow


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array with cv2 (which wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def assert_one_line_error(exc_info, must_contain: Path | str) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    assert str(must_contain) in msg, msg


# ----------------------------------------------------------------------------- load_image
def check_rgb(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.uint8 and img.shape == (*shape, 3) and img.flags.c_contiguous


def test_load_gray8(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    check_rgb(img, (3, 4))
    assert (img == g[:, :, None]).all()


def test_load_gray_alpha(tmp_path):
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0], la[..., 1] = 77, 5
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    check_rgb(img, (2, 3))
    assert (img == 77).all()


def test_load_palette(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 128, 255, 12, 34, 56] + [0] * (256 * 3 - 12)
    idx = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"  # really a palette file
    img = load_image(tmp_path / "p.png")
    check_rgb(img, (2, 4))
    colours = np.array(palette[:12], np.uint8).reshape(4, 3)
    assert (img == colours[idx]).all()


def test_load_rgba_keeps_rgb(tmp_path):
    rgba = np.zeros((3, 2, 4), np.uint8)
    rgba[...] = (10, 20, 30, 40)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    check_rgb(img, (3, 2))
    assert (img == (10, 20, 30)).all()


def test_load_channel_order_is_rgb(tmp_path):
    red = np.zeros((4, 5, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")  # PIL writes RGB as RGB
    assert (load_image(tmp_path / "red.png") == (255, 0, 0)).all()


def test_load_16bit_rgb(tmp_path):
    v = np.array([[0, 1, 100, 254]], np.uint16)  # 257 * 255 + 128 would overflow
    rgb16 = np.stack([v * 257, v * 257 + 128, v * 0 + 129], axis=2).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1].copy())
    img = load_image(tmp_path / "c16.png")
    check_rgb(img, (1, 4))
    assert (img[..., 0] == v).all()  # 257 * v -> v exactly
    assert (img[..., 1] == v).all()  # 257 * v + 128 rounds down
    assert (img[..., 2] == 1).all()  # 129 / 257 = 0.502 rounds up


def test_load_16bit_gray(tmp_path):
    g = np.array([[0, 257 * 3, 65535], [257 * 200, 257 * 200 + 129, 128]], np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), g)
    img = load_image(tmp_path / "g16.png")
    check_rgb(img, (2, 3))
    assert (img == np.array([[0, 3, 255], [200, 201, 0]])[:, :, None]).all()


def test_load_jpeg(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[...] = (200, 40, 90)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100, subsampling=0)
    img = load_image(tmp_path / "c.jpg")
    check_rgb(img, (16, 16))
    assert np.abs(img.astype(int) - (200, 40, 90)).max() <= 2  # lossy, but RGB order kept


def test_load_float_tiff_rejected(tmp_path):
    path = tmp_path / "f.tif"
    assert cv2.imwrite(str(path), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataError, match="float32") as e:
        load_image(path)
    assert_one_line_error(e, path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("not an image\nsecond line\n")
    with pytest.raises(DataError) as e:
        load_image(path)
    assert_one_line_error(e, path)
    with pytest.raises(DataError) as e:  # validate() reads headers only, same failure
        folder_hr(tmp_path, 4).validate(8)
    assert_one_line_error(e, path)


# ----------------------------------------------------------------------------- folders
def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.Tiff", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.Tiff"]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found") as e:
        list_images(tmp_path)
    assert_one_line_error(e, tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such folder") as e:
        open_dataset(missing, 4)
    assert_one_line_error(e, missing)


def test_image_smaller_than_patch(tmp_path):
    write_rgb(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
    small = write_rgb(tmp_path / "small.png", np.zeros((30, 20, 3), np.uint8))
    ds = folder_hr(tmp_path, 4)
    ds.validate(20)  # both are at least 20 pixels on each side
    with pytest.raises(DataError, match="20x30, smaller than the 64x64 HR patch") as e:
        ds.validate(64)
    assert_one_line_error(e, small)
    # Without validate() the patch sampler reports the same file when it hits it.
    tp = TrainPatches(ds, patch=64, length=50, seed=0)
    with pytest.raises(DataError) as e:
        for k in range(50):
            tp[k]
    assert_one_line_error(e, small)


def make_pairs(root: Path, scale: int, shapes: list[tuple[int, int]], seed: int = 0) -> None:
    """BasicSR layout where HR is LR with each pixel repeated into an s x s block."""
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(shapes):
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write_rgb(root / "LR_bicubic" / f"X{scale}" / f"im{i}.png", lr)
        write_rgb(root / "HR" / f"im{i}.png", lr.repeat(scale, 0).repeat(scale, 1))


def test_pair_missing_lr(tmp_path):
    make_pairs(tmp_path, 2, [(8, 8), (8, 8)])
    (tmp_path / "LR_bicubic" / "X2" / "im1.png").unlink()
    with pytest.raises(DataError) as e:
        folder_pairs(tmp_path, 2)
    assert_one_line_error(e, tmp_path / "HR" / "im1.png")


def test_pair_missing_hr(tmp_path):
    make_pairs(tmp_path, 2, [(8, 8), (8, 8)])
    (tmp_path / "HR" / "im0.png").unlink()
    with pytest.raises(DataError) as e:
        folder_pairs(tmp_path, 2)
    assert_one_line_error(e, tmp_path / "LR_bicubic" / "X2" / "im0.png")


def test_pair_lr_size_mismatch(tmp_path):
    make_pairs(tmp_path, 2, [(8, 8)])
    bad = write_rgb(tmp_path / "LR_bicubic" / "X2" / "im0.png", np.zeros((8, 7, 3), np.uint8))
    ds = folder_pairs(tmp_path, 2)
    for call in (lambda: ds.validate(4), lambda: ds.pair(0)):
        with pytest.raises(DataError, match="7x8.*16x16") as e:
            call()
        assert_one_line_error(e, bad)


def test_mod_crop():
    img = np.arange(10 * 7 * 3).reshape(10, 7, 3)
    out = mod_crop(img, 4)
    assert out.shape == (8, 4, 3) and (out == img[:8, :4]).all()
    assert mod_crop(img[:8, :4], 4).shape == (8, 4, 3)
    assert mod_crop(img, 1).shape == img.shape


def test_open_dataset_picks_layout(tmp_path):
    make_pairs(tmp_path / "pairs", 2, [(8, 8)])
    assert open_dataset(tmp_path / "pairs", 2).items[0][2] is not None
    assert open_dataset(tmp_path / "pairs", 3).items[0][2] is None  # no X3 folder: HR only
    write_rgb(tmp_path / "flat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    ds = open_dataset(tmp_path / "flat", 2)
    assert ds.names == ["a"] and ds.items[0][2] is None
    hr, lr = ds.pair(0)
    assert hr.shape == (8, 8, 3) and lr.shape == (4, 4, 3)


# ----------------------------------------------------------------------------- real data
def test_set14_gray_image_loads_as_rgb(shared_data):
    img = load_image(shared_data / "Set14" / "HR" / "img_003.png")
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_folder_pairs_set5(shared_data):
    ds = folder_pairs(shared_data / "Set5", 4)
    ds.validate(64)
    assert len(ds) == 5 and ds.names == [f"img_00{i}" for i in range(1, 6)]
    items = PairedImages(ds)
    for i in range(5):
        it = items[i]
        assert it["name"] == ds.names[i]
        assert it["hr"].shape[0] == 3 and it["lr"].shape[0] == 3
        assert it["lr"].shape[1] * 4 == it["hr"].shape[1] and it["lr"].shape[2] * 4 == it["hr"].shape[2]
        assert it["hr"].dtype == torch.float32 and 0 <= it["hr"].min() and it["hr"].max() <= 1


@pytest.mark.parametrize("name", ["Set5", "Set14"])
def test_make_lr_matches_shipped_matlab_lr(name, shared_data):
    """The shipped LR images were made by MATLAB: this is imresize's reference check."""
    ds = folder_pairs(shared_data / name, 4, cache=False)
    for i in range(len(ds)):
        hr, lr = ds.pair(i)
        mine = make_lr(hr, 4)
        assert mine.shape == lr.shape and mine.dtype == np.uint8
        diff = np.abs(mine.astype(int) - lr.astype(int))
        assert diff.max() == 0, (ds.names[i], diff.mean(), diff.max())  # bit-exact


def test_make_lr_basic():
    flat = np.full((12, 8, 3), 37, np.uint8)
    assert (make_lr(flat, 4) == 37).all() and make_lr(flat, 4).shape == (3, 2, 3)
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (8, 1, 3))
    lr = make_lr(ramp, 2)
    assert lr.dtype == np.uint8 and (np.diff(lr[0, :, 0].astype(int)) >= 0).all()


# ----------------------------------------------------------------------------- patches
@pytest.fixture
def pairs(tmp_path) -> ImageSet:
    make_pairs(tmp_path, 2, [(20, 24), (16, 16), (30, 18)], seed=1)
    return folder_pairs(tmp_path, 2)


def test_patch_must_divide_by_scale(pairs):
    with pytest.raises(ValueError, match="multiple of the scale"):
        TrainPatches(pairs, patch=15, length=4)


def test_patches_deterministic(pairs):
    a = TrainPatches(pairs, patch=8, length=100, seed=3)
    b = TrainPatches(folder_pairs(Path(pairs.source), 2, cache=False), patch=8, length=100, seed=3)
    c = TrainPatches(pairs, patch=8, length=100, seed=4)
    assert len(a) == 100
    for k in (0, 1, 57, 10_000):
        x, y = a[k], b[k]
        assert torch.equal(x["lr"], y["lr"]) and torch.equal(x["hr"], y["hr"])
        assert x["lr"].shape == (3, 4, 4) and x["hr"].shape == (3, 8, 8)
        assert x["hr"].dtype == torch.float32 and 0 <= x["hr"].min() and x["hr"].max() <= 1
    assert any(not torch.equal(a[k]["hr"], c[k]["hr"]) for k in range(5))
    assert not torch.equal(a[0]["hr"], a[1]["hr"])


def test_patches_aligned_crop_without_augmentation(pairs):
    tp = TrainPatches(pairs, patch=8, length=50, seed=0, hflip=False, vflip=False, rot90=False)
    seen = set()
    for k in range(50):
        i, y, x, aug = tp.crop_params(k)
        assert aug == (False, False, False)
        seen.add(i)
        hr, lr = pairs.pair(i)
        item = tp[k]
        want_lr = lr[y : y + 4, x : x + 4]
        want_hr = hr[2 * y : 2 * y + 8, 2 * x : 2 * x + 8]
        assert torch.equal(item["lr"], torch.from_numpy(want_lr).permute(2, 0, 1).float() / 255)
        assert torch.equal(item["hr"], torch.from_numpy(want_hr).permute(2, 0, 1).float() / 255)
    assert seen == {0, 1, 2}


def test_augmentations_identical_on_lr_and_hr(pairs):
    plain = TrainPatches(pairs, patch=8, length=200, seed=5, hflip=False, vflip=False, rot90=False)
    full = TrainPatches(pairs, patch=8, length=200, seed=5)
    combos = set()
    for k in range(200):
        it = full[k]
        # HR is LR blown up into 2x2 blocks, so LR == HR[::2, ::2] under any flip/transpose.
        assert torch.equal(it["lr"], it["hr"][:, ::2, ::2])
        _, _, _, aug = full.crop_params(k)
        combos.add(aug)
        # The crop does not depend on which augmentations are on; each one is the
        # expected array operation on the un-augmented crop.
        ref = plain[k]["hr"]
        if aug[0]:
            ref = ref.flip(2)
        if aug[1]:
            ref = ref.flip(1)
        if aug[2]:
            ref = ref.transpose(1, 2)
        assert torch.equal(it["hr"], ref)
    assert len(combos) == 8  # every dihedral combination occurs


def test_single_augmentation_switches(pairs):
    plain = TrainPatches(pairs, patch=8, length=64, seed=9, hflip=False, vflip=False, rot90=False)
    ops = {"hflip": lambda t: t.flip(2), "vflip": lambda t: t.flip(1), "rot90": lambda t: t.transpose(1, 2)}
    for j, (name, op) in enumerate(ops.items()):
        flags = {n: n == name for n in ops}
        tp = TrainPatches(pairs, patch=8, length=64, seed=9, **flags)
        applied = 0
        for k in range(64):
            on = tp.crop_params(k)[3][j]
            applied += on
            for key in ("lr", "hr"):
                ref = plain[k][key]
                assert torch.equal(tp[k][key], op(ref) if on else ref)
        assert 10 < applied < 54  # p = 0.5


def test_dataloader_workers_match(pairs):
    tp = TrainPatches(pairs, patch=8, length=24, seed=2)
    pickle.loads(pickle.dumps(tp))  # what spawn-started workers need
    batches = []
    for workers in (0, 2):
        dl = DataLoader(tp, batch_size=4, shuffle=False, num_workers=workers)
        batches.append([(b["lr"], b["hr"]) for b in dl])
    assert len(batches[0]) == 6
    for (l0, h0), (l1, h1) in zip(*batches):
        assert torch.equal(l0, l1) and torch.equal(h0, h1)


def hr_uint8(hr: torch.Tensor) -> np.ndarray:
    """The HR patch back as the uint8 HxWx3 array it was made from (exact: it is x/255)."""
    return hr.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("channels,c", [("gray", 1), ("rgb", 3)])
def test_patches_canny_edge(pairs, channels, c):
    spec = CannySpec(60, 120, channels)
    plain = TrainPatches(pairs, patch=8, length=40, seed=7)
    tp = TrainPatches(pairs, patch=8, length=40, seed=7, edge=spec)
    assert "edge" not in plain[0]  # only when configured
    augmented, total = 0, 0.0
    for k in range(40):
        it = tp[k]
        # The edge map does not change the random stream: same crops and flips.
        assert torch.equal(it["hr"], plain[k]["hr"]) and torch.equal(it["lr"], plain[k]["lr"])
        e = it["edge"]
        assert e.shape == (c, 8, 8) and e.dtype == torch.float32 and e.is_contiguous()
        assert ((e == 0) | (e == 1)).all()
        # Canny of exactly the returned (augmented) HR patch, so it lines up with "hr".
        want = canny(hr_uint8(it["hr"]), 60, 120, channels)
        assert np.array_equal(e.permute(1, 2, 0).numpy(), want)
        augmented += any(tp.crop_params(k)[3])
        total += float(e.sum())
    assert augmented > 20 and total > 0  # flips were exercised, edges were found


def test_patches_edge_must_be_spec(pairs):
    with pytest.raises(TypeError, match="CannySpec"):
        TrainPatches(pairs, patch=8, length=4, edge=(60, 120, "gray"))


def test_dataloader_workers_carry_edge(pairs):
    tp = TrainPatches(pairs, patch=8, length=8, seed=2, edge=CannySpec(60, 120, "rgb"))
    assert pickle.loads(pickle.dumps(tp)).edge == tp.edge
    runs = []
    for workers in (0, 2):
        dl = DataLoader(tp, batch_size=4, shuffle=False, num_workers=workers)
        runs.append([b["edge"] for b in dl])
    assert runs[0][0].shape == (4, 3, 8, 8)
    for e0, e1 in zip(*runs):
        assert torch.equal(e0, e1)


def test_preload_fills_cache(pairs):
    assert pairs.preload() is pairs and len(pairs._cache) == len(pairs)
    hr, lr = pairs.pair(1)
    assert pairs.pair(1)[0] is hr


def test_paired_images_collate(pairs):
    it = PairedImages(pairs)[2]
    assert it["name"] == "im2" and it["lr"].shape == (3, 30, 18) and it["hr"].shape == (3, 60, 36)
    assert torch.equal(it["lr"], it["hr"][:, ::2, ::2])


def test_arrow_patch_cache_roundtrip(pairs, tmp_path):
    tp = TrainPatches(pairs, patch=8, length=30, seed=1)
    path = cache_patches_arrow(tp, tmp_path / "patches.arrow", 30, chunk=7)
    ap = ArrowPatches(path)
    assert len(ap) == 30
    ap2 = pickle.loads(pickle.dumps(ap))
    for k in (0, 6, 7, 29):
        for key in ("lr", "hr"):
            assert torch.equal(ap[k][key], tp[k][key]) and torch.equal(ap2[k][key], tp[k][key])
    bad = tmp_path / "bad.arrow"
    bad.write_text("nope")
    with pytest.raises(DataError) as e:
        ArrowPatches(bad)
    assert_one_line_error(e, bad)


# ----------------------------------------------------------------------------- embedded
def test_embedded_split_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("embedded dataset tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    train, val = embedded("train", 4), open_dataset("embedded", 4, "val")
    # Training set unchanged; validation large enough for a paired test (>= 6 images).
    assert train.names == ["astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "ihc"]
    assert val.names == ["chelsea", "coffee", "camera", "moon", "coins", "brick", "grass", "gravel"]
    assert not set(train.names) & set(val.names)
    for ds in (train, val):
        for i in range(len(ds)):
            hr, lr = ds.pair(i)
            assert hr.dtype == np.uint8 and hr.ndim == 3 and hr.shape[2] == 3
            assert hr.shape[0] % 4 == 0 and lr.shape == (hr.shape[0] // 4, hr.shape[1] // 4, 3)
            gray = (hr[..., 0] == hr[..., 1]).all() and (hr[..., 1] == hr[..., 2]).all()
            assert gray == (ds.names[i] not in ("chelsea", "coffee") and ds is val)  # gray ones as RGB
            assert hr.std() > 10  # photos and textures, not flat images
        ds.validate(128)
    with pytest.raises(ValueError):
        embedded("holdout")


def test_arrow_cache_refuses_edge_maps(pairs, tmp_path):
    from trainables.edges import CannySpec

    ds = TrainPatches(pairs, patch=8, length=4, seed=0, edge=CannySpec())
    with pytest.raises(ValueError, match="edge maps are not cached"):
        cache_patches_arrow(ds, tmp_path / "p.arrow", 2)

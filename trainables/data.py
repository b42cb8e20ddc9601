"""Images for training and evaluation: loading, LR making, patch sampling.

Everything here takes plain arguments (paths, scale, patch size, seed) so the config
layer stays the only place that knows about YAML. Image arrays are uint8 HxWx3 RGB;
tensors handed to models are float CHW in [0, 1].

Sources of images (an :class:`ImageSet`):
- ``folder_pairs``: BasicSR layout ``root/HR`` + ``root/LR_bicubic/X{scale}``;
- ``folder_hr``: HR only, LR made with the MATLAB-compatible :func:`make_lr`;
- ``embedded``: scikit-image's bundled photos, so a demo runs with no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainables.edges import CannySpec
from trainables.imresize import imresize_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# scikit-image photos that ship inside the wheel (no pooch download). Training: natural
# RGB only (gray test charts, logos and the colour wheel would teach a generator nothing
# useful). Validation: 8 images, so a paired test between two trials has power (6 is
# the fewest for which a sign-flip p can fall below 0.05); the gray photos and textures
# load as RGB (equal channels). Not motorcycle_right: the stereo twin of a train image.
EMBEDDED_VAL = ("chelsea", "coffee", "camera", "moon", "coins", "brick", "grass", "gravel")
EMBEDDED_TRAIN = ("astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "ihc")
# Test (the confirmation's held-out split): photos used nowhere else, plus disjoint crops
# (y, x, side): six 300 px from inside the retina's fundus disc (1411 px square) and the
# textured corner of cell, so no pixel of a test image is in train or val. Not page.png
# (libpng warns on every decode). Entries: (name, file stem, crop or None).
_RETINA = tuple((f"retina_{k}", "retina", (255 + 300 * (k // 2), 405 + 300 * (k % 2), 300)) for k in range(6))
EMBEDDED_TEST = (("cell", "cell", (340, 230, 320)), ("clock_motion", "clock_motion", None), *_RETINA)
EMBEDDED_TEST += (("text", "text", None),)


class DataError(ValueError):
    """Bad dataset input; the message is one line that names the file or folder."""

    def __init__(self, message: str):
        # One line, always: these end up in CLI errors and trial logs.
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------- files
def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read any supported image as uint8 HxWx3 RGB (gray, alpha and 16-bit normalised)."""
    path = str(path)
    # IMREAD_UNCHANGED keeps 16-bit depth (the default would truncate it to x >> 8
    # instead of rounding) and tells us about alpha. Palette PNGs come back expanded.
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot read image (unreadable or not an image)")
    if img.dtype == np.uint16:
        # round(x / 257) maps 257*v exactly to v; 257 is odd so no ties occur.
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (only 8- and 16-bit images)")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 2:  # gray + alpha: drop alpha
        img = img[:, :, :1]
    elif channels == 4:  # BGRA: drop alpha (no compositing: SR targets are the colours)
        img = img[:, :, :3]
    elif channels not in (1, 3):
        raise DataError(f"{path}: unsupported number of channels ({channels})")
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so height and width are multiples of ``scale`` (HR convention)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    # Dot files are skipped: macOS '._x.png' resource forks look like images but are not.
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        exts = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise DataError(f"{folder}: no images found ({exts})")
    return files


def make_lr(hr_uint8: np.ndarray, scale: int, border: str = "replicate") -> np.ndarray:
    """MATLAB ``imresize(hr, 1/scale, 'bicubic')`` on a uint8 HxWx3 image -> uint8.

    MATLAB's uint8 path rounds between its two 1-D passes (``imresize_uint8``), and the
    classic benchmark LR files (Set5/Set14 here) come from a release that replicated
    edge pixels: with ``border="replicate"`` generated LR matches shipped LR, so
    folder_hr and folder_pairs datasets agree. ``"symmetric"`` is current MATLAB.
    """
    x = torch.from_numpy(np.ascontiguousarray(hr_uint8)).permute(2, 0, 1)
    y = imresize_uint8(x, scale=1.0 / scale, border=border)
    return y.permute(1, 2, 0).contiguous().numpy()


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises several types for junk files
        raise DataError(
            f"{path}: cannot read image (unreadable or not an image: {type(exc).__name__})"
        ) from None


# ----------------------------------------------------------------------------- image sets
class ImageSet:
    """Named (HR file, optional LR file) entries at one scale, decoded lazily.

    Construction only lists files; :meth:`validate` checks every header up front (so a
    sweep fails before any trial), :meth:`pair` decodes one entry. Making LR is the
    costly part, so decoded pairs are kept in memory when ``cache`` is true (each
    DataLoader worker holds its own cache).
    """

    def __init__(
        self,
        items: list[tuple[str, Path, Path | None]],
        scale: int,
        source: str,
        cache: bool = True,
        crops: dict[str, tuple[int, int, int]] | None = None,
    ):
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if not items:
            raise DataError(f"{source}: no images found")
        self.items = [(n, Path(h), None if l is None else Path(l)) for n, h, l in items]
        self.scale = int(scale)
        self.source = source
        self.cache = cache
        self.crops = dict(crops or {})  # name -> (y, x, side) of an HR-only entry
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.items]

    def _check_lr_size(
        self, lr_path: Path, lr_wh: tuple[int, int], hr_path: Path, hr_wh: tuple[int, int]
    ) -> None:
        s = self.scale
        want = (hr_wh[0] // s, hr_wh[1] // s)
        if tuple(lr_wh) != want:
            raise DataError(
                f"{lr_path}: LR is {lr_wh[0]}x{lr_wh[1]} but HR {hr_path} is "
                f"{hr_wh[0]}x{hr_wh[1]}; x{s} needs LR {want[0]}x{want[1]}"
            )

    def validate(self, min_hr_size: int = 0) -> None:
        """Check every file is readable, at least ``min_hr_size`` square, LR sizes match."""
        for _, hr_path, lr_path in self.items:
            w, h = _header_size(hr_path)
            if min_hr_size and (w < min_hr_size or h < min_hr_size):
                raise DataError(
                    f"{hr_path}: image is {w}x{h}, smaller than the {min_hr_size}x{min_hr_size} HR patch"
                )
            if w < self.scale or h < self.scale:
                raise DataError(f"{hr_path}: image is {w}x{h}, smaller than the scale x{self.scale}")
            if lr_path is not None:
                self._check_lr_size(lr_path, _header_size(lr_path), hr_path, (w, h))

    def preload(self) -> "ImageSet":
        """Decode everything now: DataLoader workers forked afterwards share the cache
        instead of each making the LR images again."""
        for i in range(len(self)):
            self.pair(i)
        return self

    def hr_image(self, i: int) -> np.ndarray:
        """The decoded HR image of entry ``i`` (its crop, for a cropped entry)."""
        name, hr_path, _ = self.items[i]
        img = load_image(hr_path)
        if name in self.crops:
            y, x, side = self.crops[name]
            img = np.ascontiguousarray(img[y : y + side, x : x + side])
        return img

    def subset(self, keep: slice) -> "ImageSet":
        """The entries ``items[keep]`` (sorted-name order), as a new set."""
        return ImageSet(self.items[keep], self.scale, self.source, self.cache, self.crops)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR mod-cropped, LR) uint8 HxWx3 arrays of entry ``i``."""
        if i in self._cache:
            return self._cache[i]
        _, hr_path, lr_path = self.items[i]
        hr = mod_crop(self.hr_image(i), self.scale)
        if hr.shape[0] == 0 or hr.shape[1] == 0:
            raise DataError(f"{hr_path}: image is smaller than the scale x{self.scale}")
        if lr_path is None:
            lr = make_lr(hr, self.scale)
        else:
            lr = load_image(lr_path)
            self._check_lr_size(lr_path, (lr.shape[1], lr.shape[0]), hr_path, (hr.shape[1], hr.shape[0]))
        if self.cache:
            self._cache[i] = (hr, lr)
        return hr, lr


def folder_pairs(root: str | os.PathLike, scale: int, cache: bool = True) -> ImageSet:
    """BasicSR layout: ``root/HR`` and ``root/LR_bicubic/X{scale}`` with matching names.

    An LR file may also carry BasicSR's ``x{scale}`` suffix (``img_001x4.png``).
    """
    root = Path(root)
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    hr_files, lr_files = list_images(hr_dir), list_images(lr_dir)
    lr_by_stem = {p.stem: p for p in lr_files}
    items, used = [], set()
    for hr in hr_files:
        lr = lr_by_stem.get(hr.stem) or lr_by_stem.get(f"{hr.stem}x{scale}")
        if lr is None:
            raise DataError(f"{hr}: no LR image with the same name in {lr_dir}")
        used.add(lr)
        items.append((hr.stem, hr, lr))
    for lr in lr_files:
        if lr not in used:
            raise DataError(f"{lr}: no HR image with the same name in {hr_dir}")
    return ImageSet(items, scale, str(root), cache)


def folder_hr(root: str | os.PathLike, scale: int, cache: bool = True) -> ImageSet:
    """HR images in ``root/HR`` (if present) or ``root``; LR made with :func:`make_lr`."""
    root = Path(root)
    folder = root / "HR" if (root / "HR").is_dir() else root
    return ImageSet([(p.stem, p, None) for p in list_images(folder)], scale, str(folder), cache)


def embedded_folder() -> Path:
    """Where scikit-image keeps its bundled sample images."""
    import skimage  # lazy: only the embedded demo needs it

    return Path(skimage.__file__).resolve().parent / "data"


def embedded(split: str, scale: int = 4, cache: bool = True) -> ImageSet:
    """scikit-image's bundled photos: fixed disjoint splits, 5 for ``train``, 8 for ``val``,
    8 for ``test``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = embedded_folder()
    names = EMBEDDED_VAL if split == "val" else EMBEDDED_TRAIN
    entries = EMBEDDED_TEST if split == "test" else [(n, n, None) for n in names]
    # Read straight from the package folder: skimage.data functions fall back to a
    # network download for files a given release does not bundle, which must not happen.
    by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    items = [(n, by_stem[stem], None) for n, stem, _ in entries if stem in by_stem]
    if not items:
        names = ", ".join(n for n, _, _ in entries)
        raise DataError(f"{folder}: none of the embedded {split} images ({names}) ship with scikit-image")
    crops = {n: box for n, _, box in entries if box is not None}
    return ImageSet(items, scale, f"embedded:{split}", cache, crops)


def open_dataset(spec: str | os.PathLike, scale: int, split: str = "train", cache: bool = True) -> ImageSet:
    """``"embedded"`` -> :func:`embedded`; a folder with ``HR/`` and
    ``LR_bicubic/X{scale}/`` -> :func:`folder_pairs`; any other folder -> :func:`folder_hr`.
    ``split`` only selects within the embedded set (a folder is one split)."""
    if str(spec) == "embedded":
        return embedded(split, scale, cache)
    root = Path(spec)
    if (root / "HR").is_dir() and (root / "LR_bicubic" / f"X{scale}").is_dir():
        return folder_pairs(root, scale, cache)
    return folder_hr(root, scale, cache)


# ----------------------------------------------------------------------------- torch datasets
def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)


class PairedImages(Dataset):
    """Whole images for validation: dict(name, lr (3,h,w), hr (3,H,W)), floats in [0, 1]."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        hr, lr = self.images.pair(i)
        return {"name": self.images.items[i][0], "lr": to_tensor(lr), "hr": to_tensor(hr)}


class TrainPatches(Dataset):
    """Deterministic stream of aligned, augmented (LR, HR) patches.

    Item ``k`` depends only on (seed, k): a trial resumed at step n asks for the same
    indices and gets the same patches, whatever the worker count. ``length`` is a virtual
    epoch. All random draws happen whether or not an augmentation is enabled, so
    switching one off does not change the crops or the other flips.

    With ``edge`` (a :class:`~trainables.edges.CannySpec`) each item also carries
    ``"edge"``: the Canny map of the returned HR patch, float (1 or 3, H, W) in {0, 1}.
    It is made here, in the workers, because OpenCV has no place in the GPU step; it is
    taken from the final augmented patch so it lines up with ``"hr"`` exactly.
    """

    def __init__(
        self,
        images: ImageSet,
        patch: int,
        length: int,
        seed: int = 0,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        edge: CannySpec | None = None,
    ):
        if patch <= 0 or patch % images.scale:
            raise ValueError(f"HR patch {patch} must be a positive multiple of the scale {images.scale}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.images, self.patch, self.length, self.seed = images, int(patch), int(length), int(seed)
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        if edge is not None and not isinstance(edge, CannySpec):
            raise TypeError(f"edge must be a CannySpec or None, got {type(edge).__name__}")
        self.edge = edge

    def __len__(self) -> int:
        return self.length

    def _sample(self, k: int):
        rng = np.random.default_rng([self.seed, int(k)])
        i = int(rng.integers(len(self.images)))
        hr, lr = self.images.pair(i)
        lp = self.patch // self.images.scale
        h, w = lr.shape[:2]
        if h < lp or w < lp:
            raise DataError(
                f"{self.images.items[i][1]}: image is {hr.shape[1]}x{hr.shape[0]}, "
                f"smaller than the {self.patch}x{self.patch} HR patch"
            )
        y, x = int(rng.integers(h - lp + 1)), int(rng.integers(w - lp + 1))
        flips = rng.random(3) < 0.5
        aug = tuple(bool(f and e) for f, e in zip(flips, (self.hflip, self.vflip, self.rot90)))
        return i, y, x, aug, hr, lr

    def crop_params(self, k: int) -> tuple[int, int, int, tuple[bool, bool, bool]]:
        """(image index, LR y, LR x, (hflip, vflip, rot90)) that item ``k`` uses."""
        return self._sample(k)[:4]

    @staticmethod
    def augment(img: np.ndarray, hflip: bool, vflip: bool, rot90: bool) -> np.ndarray:
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if rot90:  # transpose: with the flips, generates all 8 dihedral transforms
            img = img.transpose(1, 0, 2)
        return img

    def __getitem__(self, k: int) -> dict:
        i, y, x, aug, hr, lr = self._sample(k)
        s, lp = self.images.scale, self.patch // self.images.scale
        lr_p = lr[y : y + lp, x : x + lp]
        hr_p = self.augment(hr[y * s : (y + lp) * s, x * s : (x + lp) * s], *aug)
        item = {"lr": to_tensor(self.augment(lr_p, *aug)), "hr": to_tensor(hr_p)}
        if self.edge is not None:
            item["edge"] = torch.from_numpy(self.edge(hr_p)).permute(2, 0, 1).contiguous()
        return item

"""The three image splits of a sweep: train, val (the search) and test (the confirmation).

``val: holdout`` takes validation from the training distribution: the last
``data.holdout`` images (by name) of ``data.train`` validate, and the train loader skips
them. Overlap between splits is found by content (decoded pixels), whatever the names.
"""

from __future__ import annotations

from trainables.data import DataError, ImageSet, open_dataset

HOLDOUT = "holdout"  # data.val: the last data.holdout images of data.train (skipped for training)


def open_split(data, scale: int, split: str, cache: bool = True) -> ImageSet:
    """One split of an image ``DataConfig``: ``train`` (without its held-out tail),
    ``val`` (``data.val``, or with ``val: holdout`` the last ``data.holdout`` images of
    ``data.train``), ``test`` (``data.test``)."""
    if split == "test" and not data.test:
        raise DataError("data.test: not set (the confirmation scores a held-out test split)")
    spec = {"train": data.train, "val": data.val, "test": data.test}[split]
    if split == "val" and spec == HOLDOUT:
        return open_dataset(data.train, scale, "train", cache).subset(slice(-data.holdout, None))
    images = open_dataset(spec, scale, split, cache)
    if split == "train" and data.holdout:
        if len(images) <= data.holdout:
            raise DataError(
                f"{images.source}: {len(images)} images, data.holdout {data.holdout} leaves none to train on"
            )
        return images.subset(slice(None, -data.holdout))
    return images


def content_hashes(images: ImageSet) -> dict[str, str]:
    """sha256 of each entry's decoded HR pixels -> its name: the same picture in two
    splits is caught whatever its file name or lossless format."""
    import hashlib

    out = {}
    for i, (name, _, _) in enumerate(images.items):
        img = images.hr_image(i)
        out[hashlib.sha256(repr(img.shape).encode() + img.tobytes()).hexdigest()] = name
    return out

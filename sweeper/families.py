"""One model family per sweep: every trial starts from one shared pretraining run.

``srsweep run`` pretrains the generator once and hands it to every trial, so the trials
of a sweep must share the generator and the kind of sample (image or clip) it was
pretrained on. A space searching ``model.*`` / ``data.*`` is refused by sweeper/space.py
(FROZEN); this module refuses a ``base`` list that mixes image presets with video presets,
in one line, before the merged experiment would fail with a less telling error. No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainables.config import ConfigError, VSRResFeatGenConfig
from trainables.config_files import resolve_bases

VIDEO_ARCHS = {VSRResFeatGenConfig.model_fields["arch"].default}


def family(experiment: dict) -> Optional[str]:
    """ "video", "image", or None for an overlay that names neither (tiny_cpu, say)."""
    data = experiment.get("data") if isinstance(experiment.get("data"), dict) else {}
    model = experiment.get("model") if isinstance(experiment.get("model"), dict) else {}
    gen = model.get("generator") if isinstance(model.get("generator"), dict) else {}
    if data.get("kind") == "video" or gen.get("arch") in VIDEO_ARCHS:
        return "video"
    if data.get("kind") == "image" or "arch" in gen:
        return "image"
    return None


def check_one_family(sweep, path: str | Path) -> None:
    """ConfigError (one line) if the sweep's base mixes image and video presets."""
    bases = [sweep.base] if isinstance(sweep.base, str) else list(sweep.base or [])
    origin = Path(path).parent
    kinds = {name: family(resolve_bases({"base": name}, origin)) for name in bases}
    image = [n for n, k in kinds.items() if k == "image"]
    video = [n for n, k in kinds.items() if k == "video"]
    if image and video:
        raise ConfigError(
            f"{path}: base: mixes image presets ({', '.join(image)}) and video presets "
            f"({', '.join(video)}); shared pretraining is per model family: one family per sweep"
        )

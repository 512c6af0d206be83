"""The field's standard data sets: where they go in the settings' layouts, where the field gets them,
and a SHA-256 manifest that tells a user whether their copy is the standard one.

:data:`STANDARD_SETS` lists the sets ``constyle data`` lays out (CBSD68, Rain100L test, BSD400, LIVE1,
RainTrainL) and :data:`ELSEWHERE` the ones a setting also needs (SOTS, RESIDE OTS, WED, GoPro, LOL), each
with its source. The manifest (package data, ``manifests/standard_sets.json``) records for every file of
the verifiable sets (CBSD68, Rain100L test, BSD400, LIVE1): its SHA-256, size in bytes, the SHA-256 of
its decoded pixels, its height / width / channels, a content fingerprint (an 8 x 8 grey thumbnail) and
its fine detail (mean absolute Laplacian of the grey image). :func:`compare_file` uses them to name how a
file differs: recompressed, resized, rotated, flipped, converted to grey, another picture.

Core layer: numpy and OpenCV (and the package's file hashing).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import cv2
import numpy as np

from ..core.pretrained import file_sha256
from ..errors import ImageReadError

__all__ = ["ELSEWHERE", "MANIFEST", "STANDARD_SETS", "StandardSet", "Verdict", "compare_file",
           "image_record", "load_manifest"]

PathLike = Union[str, "os.PathLike[str]"]
MANIFEST = Path(__file__).with_name("manifests") / "standard_sets.json"
THUMB = 8          # side of the grey thumbnail recorded per file
SAME_PICTURE = 8.0  # mean absolute thumbnail difference (0-255) below which two files show the same picture


@dataclass(frozen=True)
class StandardSet:
    """A standard set ``constyle data`` lays out.

    ``roles``: role (``gt`` clean, ``lq`` degraded) -> the folders under the data root its files go to;
    ``get``: where the field gets it; ``used``: what needs it; ``verifiable``: the manifest covers it.
    """

    key: str
    title: str
    roles: Mapping[str, Tuple[str, ...]]
    get: str
    used: str
    verifiable: bool = True


STANDARD_SETS: Dict[str, StandardSet] = {s.key: s for s in (
    StandardSet("CBSD68", "CBSD68 (68 colour test images)",
                {"gt": ("test/denoise/bsd68", "Test_small/noise_small")},
                "cszn/IRCNN testsets/CBSD68 (identical in cszn/FFDNet); BSDS500's val/ JPEGs decode to the same "
                "pixels",
                "the BSD68 denoising columns of three-task / five-task and CBSD68 s25 of constyle-v2"),
    StandardSet("Rain100L", "Rain100L test (100 pairs)",
                {"gt": ("test/derain/Rain100L/target",), "lq": ("test/derain/Rain100L/input",)},
                "Arvaesri/PreNet datasets/test/Rain100L (norain-XXX.png, rainy/rain-XXX.png); the JORDER "
                "authors' Rain100L",
                "the Rain100L column of three-task / five-task"),
    StandardSet("BSD400", "BSD400 (BSDS500 train + test, 400 colour JPEGs)",
                {"gt": ("Train/Denoise",)},
                "BSDS500 (Berkeley's BSR_bsds500.tgz: BSR/BSDS500/data/images/{train,test}; a copy in "
                "Sisso16/ssn_pytorch)",
                "denoising training in three-task / five-task, beside WED"),
    StandardSet("LIVE1", "LIVE1 (29 colour BMP)",
                {"gt": ("LIVE1",)},
                "cszn/DnCNN testsets/LIVE1",
                "JPEG artefact removal tests (the clean images of constyle-v2's LIVE1 q20)"),
    StandardSet("RainTrainL", "RainTrainL (rain-N.png / norain-N.png, 200 pairs)",
                {"lq": ("Train/Derain/rainy",), "gt": ("Train/Derain/gt",)},
                "the JORDER authors' RainTrainL (200 pairs); Arvaesri/PreNet datasets/train/RainTrainL ships 10",
                "deraining training in three-task / five-task", verifiable=False),
)}

# What the settings also need and ``constyle data`` cannot verify here: name -> (where it goes, where to get it).
ELSEWHERE: Dict[str, Tuple[str, str]] = {
    "SOTS outdoor": ("test/dehaze/{input,target}", "RESIDE's SOTS outdoor (the RESIDE project page); PromptIR "
                                                  "and AdaIR ship it as test/dehaze"),
    "RESIDE OTS": ("Train/Dehaze/{synthetic,original}", "RESIDE-beta OTS (the RESIDE project page)"),
    "WED": ("Train/Denoise (beside BSD400)", "the Waterloo Exploration Database (4 744 images)"),
    "GoPro": ("test/deblur/gopro, Train/Deblur", "the GoPro deblurring set (Nah et al.)"),
    "LOL": ("test/enhance/lol, Train/Enhance", "LOL v1 (Wei et al., RetinexNet)"),
}


@lru_cache(maxsize=None)
def load_manifest(path: Optional[str] = None) -> Dict[str, dict]:
    """The manifest's sets: ``{set key: {"source": str, "files": {name: record}}}`` (see :func:`image_record`).
    ``name`` is the file's path in the set as released (``rainy/rain-001.png``); each record also has its
    ``role`` (``gt`` / ``lq``)."""
    with open(path or MANIFEST, encoding="utf-8") as f:
        return json.load(f)["sets"]


def _decode(path: PathLike) -> np.ndarray:
    """The file's samples as stored (BGR order, no orientation or colour conversion), 8 bit."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.strerror or exc})") from None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (cannot decode it)")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    return img


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img.astype(np.float32)
    code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2])
    return (cv2.cvtColor(img, code) if code else img[..., 0]).astype(np.float32)


def _thumb(grey: np.ndarray) -> np.ndarray:
    return np.round(cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)).astype(np.uint8)


def image_record(path: PathLike) -> dict:
    """What the manifest records of one file: ``bytes``, ``sha256``, ``pixels`` (SHA-256 of the decoded
    samples with their shape), ``height``, ``width``, ``channels``, ``thumb`` (8 x 8 grey thumbnail, hex)
    and ``detail`` (mean absolute Laplacian of the grey image, 0-255 scale)."""
    img = _decode(path)
    grey = _grey(img)
    pixels = hashlib.sha256(repr(img.shape).encode() + np.ascontiguousarray(img).tobytes()).hexdigest()
    detail = float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(Path(path)), "pixels": pixels,
            "height": int(img.shape[0]), "width": int(img.shape[1]),
            "channels": 1 if img.ndim == 2 else int(img.shape[2]), "thumb": _thumb(grey).tobytes().hex(),
            "detail": round(detail, 3)}


@dataclass(frozen=True)
class Verdict:
    """How a file compares with its manifest record: ``status`` ``identical`` (same bytes), ``same-pixels``
    (another file with the standard pixels: re-saved, or stored as another format), ``differs`` or
    ``unreadable``; ``detail``: the difference in words."""

    status: str
    detail: str = ""

    @property
    def standard(self) -> bool:
        """The file measures as the standard one does."""
        return self.status in ("identical", "same-pixels")


# Candidate geometric changes: name -> (thumbnail transform applied to the standard thumbnail, swaps sides).
_TRANSFORMS = {
    "": (lambda t: t, False),
    "rotated by 90 degrees clockwise": (lambda t: np.rot90(t, -1), True),
    "rotated by 90 degrees counter-clockwise": (lambda t: np.rot90(t, 1), True),
    "rotated by 180 degrees": (lambda t: np.rot90(t, 2), False),
    "flipped left-right": (lambda t: t[:, ::-1], False),
    "flipped upside down": (lambda t: t[::-1], False),
}


def compare_file(record: Mapping, path: PathLike, sha256: Optional[str] = None) -> Verdict:
    """``path`` against its manifest ``record`` (``sha256``: the file's, when already computed)."""
    if (sha256 or file_sha256(Path(path))) == record["sha256"]:
        return Verdict("identical")
    try:
        now = image_record(path)
    except ImageReadError as exc:
        return Verdict("unreadable", str(exc))
    if now["pixels"] == record["pixels"]:
        return Verdict("same-pixels", f"another file with the standard pixels ({Path(path).suffix or 'no suffix'}, "
                                      f"{now['bytes']} bytes instead of {record['bytes']})")
    size, std = f"{now['width']}x{now['height']}", f"{record['width']}x{record['height']}"
    notes = []
    if now["channels"] != record["channels"]:
        kind = {1: "grey", 3: "colour", 4: "colour with alpha"}
        notes.append(f"{kind.get(now['channels'], now['channels'])} instead of "
                     f"{kind.get(record['channels'], record['channels'])}")
    mine = np.frombuffer(bytes.fromhex(now["thumb"]), np.uint8).reshape(THUMB, THUMB).astype(np.float32)
    theirs = np.frombuffer(bytes.fromhex(record["thumb"]), np.uint8).reshape(THUMB, THUMB).astype(np.float32)
    distance = {name: float(np.abs(mine - f(theirs)).mean()) for name, (f, _) in _TRANSFORMS.items()}
    change = min(distance, key=distance.get)
    if distance[change] > SAME_PICTURE:
        return Verdict("differs", f"another picture ({size}; the standard file is {std}; content fingerprint "
                                  f"{distance[''] :.0f} grey levels away)")
    swapped = _TRANSFORMS[change][1]
    h, w = (record["width"], record["height"]) if swapped else (record["height"], record["width"])
    if change:
        notes.append(change)
    if (now["height"], now["width"]) != (h, w):
        notes.append(f"resized to {size} from {w}x{h}" if swapped else f"resized to {size} from {std}")
    elif not change or abs(now["detail"] - record["detail"]) > 0.01 * record["detail"]:
        ratio = now["detail"] / record["detail"] if record["detail"] else 1.0
        if notes and abs(ratio - 1) < 0.05:  # the channel change says it all
            pass
        elif ratio > 1.05:
            notes.append(f"noise or sharpening added (pixels changed, fine detail up {100 * (ratio - 1):.0f} %)")
        else:
            notes.append(f"recompressed (pixels changed, fine detail {100 * (ratio - 1):+.0f} %)")
    return Verdict("differs", "; ".join(notes) + (f" (standard file {std})" if swapped else ""))

"""What a prompter recognises on real degraded images: a classifier fitted on the package's own
degradations, scored on real inputs.

A multinomial logistic regression on the latent prompt ``z2`` (``allinone.linear_classifier``, the
linear probe of ``benchmarks/allinone.py``) is fitted on crops of the offline training photos degraded by the eight
generators of ``constyle_plugin.data.degradations.ALL_IN_ONE`` (their default parameters), then shown
crops of real degraded images it never saw, made by code other than the package's where the field
has no real set:

- ``rain``: the rainy inputs of the Rain100L test set (``--rain100l``: the folder holding
  ``rainy/rain-XXX.png``);
- ``noise``: CBSD68 (``--cbsd68``) with additive white Gaussian noise at sigma 15, 25 and 50;
- ``jpeg``: LIVE1 (``--live1``) saved as JPEG by Pillow at quality 10, 20, 30 and 40;
- ``blur``: CBSD68 blurred by Pillow's ``GaussianBlur`` (radius 1.5 and 2.5): scored as blur when the
  classifier says ``defocus_blur`` or ``motion_blur``.

``--fit-photos DIR`` fits the classifier on crops of training photos instead (their training part, every
``--holdout-every``-th photo held out, as stage 1's ``holdout_every``), and ``--fit-ranges OPTIONS.yml``
draws the generators' parameters from a stage-1 options file's ``degradation_ranges``: the
degradations the prompter was pre-trained on. ``--dev-photos DIR`` / ``--dev-rain DIR`` replace the
test sets by development sets made from training data (the held-out photos with the same noise, JPEG
and blur; rainy training images), written to ``prompter_transfer_dev.{md,json}``: choose a design on
those, then measure the test sets once.

It also reports the probe's accuracy on the held-out offline photos (as ``allinone.py --probe-only``).
Per-type recall for the packaged prompter, every ``--compare NAME=PATH`` and a random network.

    python benchmarks/prompter_transfer.py --threads 1 \\
        --rain100l data/test/derain/Rain100L --cbsd68 data/raw/ircnn/testsets/CBSD68 \\
        --live1 data/raw/dncnn/testsets/LIVE1 \\
        --compare previous=benchmarks/prompters/constyle_v2_prompter_2026-12-02.safetensors

``--smoke`` runs on miniature stand-ins made from the offline photos (no real data needed).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from _host import report_header  # benchmarks/_host.py
from constyle_plugin.core.pretrained import file_sha256
from allinone import (PROBE_SEED, TEST_SEED, UNTRAINED_PROMPTER_SEED, fit_probe, fixed_crops, linear_classifier,
                      load_prompter, prompter_latents, random_prompter, to_tensor)

REPO = Path(__file__).resolve().parent.parent
NOISE_SIGMAS = (15, 25, 50)
JPEG_QUALITIES = (10, 20, 30, 40)
BLUR_RADII = (1.5, 2.5)
REAL_SEED = 7


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompter", default=None, help="prompter file (default: the packaged one)")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=PATH", help="more prompters to score")
    p.add_argument("--rain100l", default=None, help="Rain100L test folder (with rainy/rain-XXX.png)")
    p.add_argument("--cbsd68", default=None, help="folder of the 68 CBSD68 images")
    p.add_argument("--live1", default=None, help="folder of the 29 LIVE1 images")
    p.add_argument("--fit-photos", nargs="+", default=None, metavar="DIR",
                   help="fit the classifier on crops of these training photos (their --holdout-every training "
                        "part) instead of the offline photos")
    p.add_argument("--fit-ranges", default=None, metavar="OPTIONS.yml",
                   help="draw the generators' parameters from the degradation_ranges of this stage-1 options "
                        "file (datasets.train), as the prompter saw them, instead of their defaults")
    p.add_argument("--fit-crops", type=int, default=96, help="crops per type with --fit-photos")
    p.add_argument("--holdout-every", type=int, default=10,
                   help="with --fit-photos / --dev-photos: every N-th photo (sorted) is held out, as the stage-1 "
                        "option holdout_every")
    p.add_argument("--dev-photos", nargs="+", default=None, metavar="DIR",
                   help="development instead of test sets: the held-out part of these training photos with "
                        "noise, Pillow JPEG and Pillow blur made as for CBSD68 / LIVE1")
    p.add_argument("--dev-rain", default=None, metavar="DIR",
                   help="development rain: a folder of rainy training images (e.g. RainTrainL's rain-*.png)")
    p.add_argument("--crop", type=int, default=128, help="crop side (px), at the images' own resolution")
    p.add_argument("--crops-per-image", type=int, default=2)
    p.add_argument("--probe-crops", type=int, default=4, help="crops per training photo for the classifier")
    p.add_argument("--holdout", type=float, default=0.2, help="as benchmarks/allinone.py")
    p.add_argument("--split-seed", type=int, default=0, help="as benchmarks/allinone.py")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="folder for prompter_transfer.{md,json} (default benchmarks/results)")
    p.add_argument("--smoke", action="store_true", help="miniature stand-ins for the real sets, a temporary --out")
    args = p.parse_args(argv)
    args.compare = dict(_name_path(s) for s in args.compare)
    tests, dev = (args.rain100l or args.cbsd68 or args.live1), (args.dev_photos or args.dev_rain)
    if tests and dev:
        p.error("--dev-photos / --dev-rain replace the test sets: give them without --rain100l, --cbsd68, --live1")
    if not args.smoke and not (tests or dev):
        p.error("give at least one of --rain100l, --cbsd68, --live1, or the development sets --dev-photos / "
                "--dev-rain (or --smoke)")
    if args.holdout_every < 2:
        p.error(f"--holdout-every: expected an integer >= 2, got {args.holdout_every}")
    return args


def _name_path(spec: str) -> Tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise SystemExit(f"--compare {spec!r}: expected NAME=PATH of an existing prompter file")
    return name, Path(path)


def _images(folder: Path, pattern: str = "*") -> List[Path]:
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    found = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in exts)
    if not found:
        raise SystemExit(f"{folder}: no image matching {pattern!r}")
    return found


def _read_rgb(path: Path) -> np.ndarray:
    from constyle_plugin.data.imageio import read_image

    return np.ascontiguousarray(read_image(path)[..., :3], dtype=np.float32)


def _crops(img: np.ndarray, size: int, n: int, key: str) -> List[np.ndarray]:
    """``n`` seeded crops (a pure function of the file name), reflect-padded when the image is small."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
        h, w = img.shape[:2]
    rng = np.random.default_rng([REAL_SEED, *key.encode()])
    out = []
    for _ in range(n):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(np.ascontiguousarray(img[top:top + size, left:left + size]))
    return out


def _pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))


def _from_pil(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _noise_and_blur(files: List[Path], set_name: str, size: int) -> List[Dict]:
    """Gaussian noise at each of NOISE_SIGMAS and Pillow's GaussianBlur at each of BLUR_RADII, one crop each."""
    from PIL import ImageFilter

    items = []
    for f in files:
        clean = _read_rgb(f)
        for sigma in NOISE_SIGMAS:
            rng = np.random.default_rng([REAL_SEED, sigma, *f.name.encode()])
            for c in _crops(clean, size, 1, f.name + str(sigma)):
                noisy = np.clip(c + rng.normal(0, sigma / 255.0, c.shape), 0, 1).astype(np.float32)
                items.append({"set": set_name, "condition": f"noise sigma {sigma}", "expected": ("noise",),
                              "image": noisy})
        for radius in BLUR_RADII:
            blurred = _from_pil(_pil(clean).filter(ImageFilter.GaussianBlur(radius)))
            for c in _crops(blurred, size, 1, f.name + str(radius)):
                items.append({"set": set_name, "condition": f"Pillow GaussianBlur {radius}",
                              "expected": ("defocus_blur", "motion_blur"), "image": c})
    return items


def _pillow_jpeg(files: List[Path], set_name: str, size: int, n: int) -> List[Dict]:
    """Each whole image saved by Pillow at each of JPEG_QUALITIES, decoded, then cropped (any grid phase)."""
    from PIL import Image

    items = []
    for f in files:
        clean = _pil(_read_rgb(f))
        for q in JPEG_QUALITIES:
            buf = io.BytesIO()
            clean.save(buf, format="JPEG", quality=q)
            decoded = _from_pil(Image.open(io.BytesIO(buf.getvalue())))
            for c in _crops(decoded, size, n, f.name + str(q)):
                items.append({"set": set_name, "condition": f"JPEG quality {q}", "expected": ("jpeg",), "image": c})
    return items


def _rainy(files: List[Path], set_name: str, size: int, n: int) -> List[Dict]:
    return [{"set": set_name, "condition": "rain", "expected": ("rain",), "image": c}
            for f in files for c in _crops(_read_rgb(f), size, n, f.name)]


def _photos(folders: Sequence[str], every: int, split: str) -> List[Path]:
    from constyle_plugin.data.pretrain_sources import holdout_split

    found: List[Path] = []
    for folder in folders:
        found += holdout_split(_images(Path(folder)), every, split)
    return found


def real_sets(args: argparse.Namespace) -> Tuple[List[Dict], Dict[str, Dict]]:
    """The real inputs, as ``{'set', 'condition', 'expected', 'image'}`` items, and each set's manifest:
    the test sets, or with ``--dev-photos`` / ``--dev-rain`` the development sets made from training data."""
    items: List[Dict] = []
    manifests: Dict[str, Dict] = {}

    def record(name: str, files: List[Path]) -> List[Path]:
        manifests[name] = {"folder": ", ".join(sorted({str(f.parent) for f in files})), "files": len(files),
                           "sha256": {f.name: file_sha256(f) for f in files}}
        return files

    size, n = args.crop, args.crops_per_image
    if args.rain100l:
        items += _rainy(record("Rain100L (rainy)", _images(Path(args.rain100l) / "rainy", "rain-*")), "Rain100L", size, n)
    if args.cbsd68:
        items += _noise_and_blur(record("CBSD68", _images(Path(args.cbsd68))), "CBSD68", size)
    if args.live1:
        items += _pillow_jpeg(record("LIVE1", _images(Path(args.live1))), "LIVE1", size, n)
    if getattr(args, "dev_rain", None):
        items += _rainy(record("dev rain", _images(Path(args.dev_rain), "rain-*")), "dev rain", size, n)
    if getattr(args, "dev_photos", None):
        held = record("dev photos (held out)", _photos(args.dev_photos, args.holdout_every, "holdout"))
        items += _noise_and_blur(held, "dev photos", size) + _pillow_jpeg(held, "dev photos", size, 1)
    return items, manifests


def fit_items(args: argparse.Namespace, names: Sequence[str]) -> Tuple[List[Dict], Dict]:
    """The classifier's crops from ``--fit-photos`` (their training part): ``--fit-crops`` per type, each a
    seeded crop of a seeded photo degraded by every generator, with parameters drawn from ``--fit-ranges``
    when given. Returns the items (``{'degradation', 'lq'}``) and what was used, for the report."""
    from constyle_plugin.data import degradations as deg
    from constyle_plugin.data.pretrain_sources import DegradationRanges

    files = _photos(args.fit_photos, args.holdout_every, "train")
    ranges = DegradationRanges(_fit_ranges(args.fit_ranges) if args.fit_ranges else None)
    rng = np.random.default_rng([PROBE_SEED, 1])
    items = []
    for k in range(args.fit_crops):
        f = files[int(rng.integers(len(files)))]
        crop = _crops(_read_rgb(f), args.crop, 1, f"{f.name}/{k}")[0]
        for name in names:
            lq = deg.ALL_IN_ONE[name](crop, rng, **ranges.draw(name, rng))
            items.append({"degradation": name, "lq": np.asarray(lq, dtype=np.float32)})
    return items, {"photos": len(files), "folders": list(args.fit_photos), "ranges": ranges.ranges,
                   "ranges_from": args.fit_ranges}


def _fit_ranges(path: str) -> Dict:
    import yaml

    try:
        opt = yaml.safe_load(Path(path).read_text())
        return dict(opt["datasets"]["train"].get("degradation_ranges") or {})
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise SystemExit(f"--fit-ranges {path}: cannot read datasets.train.degradation_ranges "
                         f"({type(exc).__name__}: {exc})")


def smoke_sets(root: Path) -> argparse.Namespace:
    """Miniature stand-ins for the three real sets, from the offline photos (a pipeline check only)."""
    import cv2

    from constyle_plugin.data import degradations as deg
    from constyle_plugin.data.samples import sample_photos

    photos = [img for _, img in sorted(sample_photos())[:4]]
    rng = np.random.default_rng(0)
    for sub in ("rain/rainy", "cbsd", "live"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(photos):
        x = cv2.resize(img, (160, 144)).astype(np.float32) / 255.0
        rainy = deg.rain(x, rng)
        cv2.imwrite(str(root / "rain/rainy" / f"rain-{i:03d}.png"), (rainy[..., ::-1] * 255).astype(np.uint8))
        cv2.imwrite(str(root / "cbsd" / f"{i}.png"), (x[..., ::-1] * 255).astype(np.uint8))
        cv2.imwrite(str(root / "live" / f"{i}.bmp"), (x[..., ::-1] * 255).astype(np.uint8))
    return argparse.Namespace(rain100l=str(root / "rain"), cbsd68=str(root / "cbsd"), live1=str(root / "live"))


def score(prompter, probe_items: List[Dict], test_items: List[Dict], real: List[Dict], names: Sequence[str],
          batch: int, fit: Optional[List[Dict]] = None) -> Dict:
    """The held-out probe (fitted on ``probe_items``, scored on ``test_items``) and the recall on ``real`` of
    a classifier fitted on ``fit`` (default: ``probe_items``)."""
    index = {d: i for i, d in enumerate(names)}
    y_train = torch.tensor([index[it["degradation"]] for it in probe_items])
    y_test = torch.tensor([index[it["degradation"]] for it in test_items])
    device = torch.device("cpu")
    z_train = prompter_latents(prompter, to_tensor([it["lq"] for it in probe_items]), device, batch)["z2"]
    z_test = prompter_latents(prompter, to_tensor([it["lq"] for it in test_items]), device, batch)["z2"]
    held = fit_probe(z_train, y_train, z_test, y_test, len(names))
    if fit is None:
        predict = linear_classifier(z_train, y_train, len(names))
    else:
        z_fit = prompter_latents(prompter, to_tensor([it["lq"] for it in fit]), device, batch)["z2"]
        predict = linear_classifier(z_fit, torch.tensor([index[it["degradation"]] for it in fit]), len(names))
    out = {"heldout_probe_accuracy": held["test_accuracy"],
           "heldout_probe_recall": dict(zip(names, held["test_recall"])), "real": {}}
    if real:
        z_real = prompter_latents(prompter, to_tensor([it["image"] for it in real]), device, batch)["z2"]
        pred = [names[int(k)] for k in predict(z_real)]
        groups: Dict[Tuple[str, str], List[Tuple[bool, str]]] = {}
        for it, p in zip(real, pred):
            groups.setdefault((it["set"], it["condition"]), []).append((p in it["expected"], p))
        for (set_name, condition), hits in groups.items():
            counts: Dict[str, int] = {}
            for _, p in hits:
                counts[p] = counts.get(p, 0) + 1
            out["real"][f"{set_name}: {condition}"] = {
                "recall": sum(h for h, _ in hits) / len(hits), "n": len(hits),
                "predicted": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}
    return out


def by_type(real_scores: Dict[str, Dict]) -> Dict[str, float]:
    """Recall per real set and expected type, pooled over its conditions."""
    pooled: Dict[str, List[float]] = {}
    for key, r in real_scores.items():
        set_name, condition = key.split(": ", 1)
        kind = condition.split(" ")[0] if not condition.startswith("Pillow") else "blur"
        pooled.setdefault(f"{set_name} {kind}", []).extend([r["recall"]] * r["n"])
    return {k: float(np.mean(v)) for k, v in pooled.items()}


def _fitted_on(report: Dict) -> str:
    c = report.get("classifier") or {"fitted_on": "offline_photos", "n": report["n_probe"]}
    if c["fitted_on"] == "offline_photos":
        return f"{c['n']} crops of the offline training photos degraded by the package's eight generators " \
               "(their default parameters)"
    ranges = (f"with the parameter ranges of `{c['ranges_from']}` ("
              + "; ".join(f"{k}: " + ", ".join(f"{p} {lo}-{hi}" for p, (lo, hi) in v.items())
                          for k, v in c["ranges"].items()) + ")") if c.get("ranges_from") else "(their default parameters)"
    return (f"{c['n']} crops of {c['photos']} training photos (`{'`, `'.join(c['folders'])}`, the training part) "
            f"degraded by the package's eight generators {ranges}")


def markdown(report: Dict) -> str:
    names = list(report["prompters"])
    title = ("# What the prompter recognises on development sets made from training data"
             if report.get("development") else "# What the prompter recognises on real degraded images")
    lines = [title, "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; {report['device_name']}, {report['torch_threads']} torch thread(s), "
             f"torch {report['torch']}; load average at start {report['load_average_start']}; "
             f"{report['time_s']:.0f} s", "",
             "A linear classifier (multinomial logistic regression on the latent prompt `z2`) fitted on "
             + _fitted_on(report) + ", then shown "
             + ("development inputs made from training data (no test set read)"
                if report.get("development") else "real inputs it never saw")
             + ". Recall: the share of crops it assigns to the right type (blur: `defocus_blur` or "
             "`motion_blur`). Chance: 12.5 %.", "",
             ("| inputs | " if report.get("development") else "| real inputs | ") + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    kinds = list(by_type(report["prompters"][names[0]]["real"]))
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(
            f"{100 * by_type(report['prompters'][n]['real'])[kind]:.1f} %" for n in names) + " |")
    lines += ["", "Per condition (recall; the classifier's most frequent answers for the first prompter):", "",
              "| condition | crops | " + " | ".join(names) + " | answers |", "|---|---|" + "---|" * (len(names) + 1)]
    first = report["prompters"][names[0]]["real"]
    for key in first:
        top = ", ".join(f"{k} {v}" for k, v in list(first[key]["predicted"].items())[:3])
        lines.append(f"| {key} | {first[key]['n']} | " + " | ".join(
            f"{100 * report['prompters'][n]['real'][key]['recall']:.1f} %" for n in names) + f" | {top} |")
    lines += ["", f"Linear probe of the eight types on the held-out offline photos ({report['n_test']} crops, "
              "as `benchmarks/allinone.py --probe-only`):", "",
              "| prompter | accuracy |", "|---|---|"]
    for n in names:
        lines.append(f"| {n} | {100 * report['prompters'][n]['heldout_probe_accuracy']:.1f} % |")
    lines += ["", "Prompters: " + "; ".join(f"{n}: `{p['path']}` (sha256 `{p['sha256'][:16]}…`)"
                                              for n, p in report["prompter_files"].items()), "",
              "Data read (SHA-256 of every file in the JSON report):", ""]
    for name, m in report["manifests"].items():
        digest = hashlib.sha256("".join(f"{k}{v}" for k, v in sorted(m["sha256"].items())).encode()).hexdigest()
        lines.append(f"- {name}: {m['files']} files in `{m['folder']}`, manifest digest `{digest[:16]}…`")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    from constyle_plugin.data import degradations as deg
    from constyle_plugin.core.prompter import default_prompter_path
    from constyle_plugin.data.samples import sample_photos, split_by_photo

    tmp = tempfile.TemporaryDirectory(prefix="constyle_transfer_")
    if args.smoke:
        vars(args).update(vars(smoke_sets(Path(tmp.name))))
        args.crops_per_image, args.probe_crops = 1, 1
    out = Path(args.out) if args.out else (Path(tmp.name) / "out" if args.smoke else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    names = list(deg.ALL_IN_ONE)
    photos = dict(sample_photos())
    train_photos, test_photos = split_by_photo(sorted(photos), val_fraction=args.holdout, seed=args.split_seed)
    probe_items = fixed_crops(photos, train_photos, args.probe_crops, args.crop, PROBE_SEED, names)
    test_items = fixed_crops(photos, test_photos, 2, args.crop, TEST_SEED, names)
    real, manifests = real_sets(args)
    fit, fit_info = fit_items(args, names) if args.fit_photos else (None, None)
    print(f"[transfer] {len(fit or probe_items)} classifier crops, {len(test_items)} held-out crops, "
          f"{len(real)} {'development' if args.dev_photos or args.dev_rain else 'real'} crops", flush=True)
    files = {"packaged": Path(args.prompter) if args.prompter else default_prompter_path(), **args.compare}
    prompters = {name: load_prompter(path) for name, path in files.items()}
    prompters["random network"] = random_prompter(UNTRAINED_PROMPTER_SEED)
    scores = {}
    for name, prompter in prompters.items():
        scores[name] = score(prompter, probe_items, test_items, real, names, args.batch, fit)
        print(f"[transfer] {name}: held-out probe {100 * scores[name]['heldout_probe_accuracy']:.1f} %; "
              + ", ".join(f"{k} {100 * v:.0f} %" for k, v in by_type(scores[name]["real"]).items()), flush=True)
    report = {**report_header("prompter_transfer.py", argv if argv is not None else sys.argv[1:], torch.device("cpu")),
              "time_s": time.perf_counter() - t0,
              "n_probe": len(probe_items), "n_test": len(test_items), "crop": args.crop,
              "classifier": ({"fitted_on": "fit_photos", "n": len(fit), **fit_info} if fit is not None
                             else {"fitted_on": "offline_photos", "n": len(probe_items), "ranges": {}}),
              "development": bool(args.dev_photos or args.dev_rain),
              "prompter_files": {n: {"path": str(p), "sha256": file_sha256(Path(p))} for n, p in files.items()},
              "manifests": manifests, "prompters": scores}
    stem = "prompter_transfer_dev" if report["development"] else "prompter_transfer"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"[transfer] wrote {out / (stem + '.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

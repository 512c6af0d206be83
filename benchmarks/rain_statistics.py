"""Rain streak statistics of real rainy/clean pairs against the package's ``rain`` generator.

For each pair, the streaks are taken as the achromatic, positive part of the residual
(``min over channels of rainy - clean``, clipped at 0: rain adds light equally to R, G and B,
misalignment and colour shifts do not). Reported per image: the share of pixels above 0.04
(density), their mean value (intensity), and the dominant streak orientation with its coherence
(structure tensor of the residual; 90 degrees is vertical, coherence 1 is perfectly oriented).
The generator is measured the same way on flat grey images of the same sizes, at its default
parameters and at the stage-1 ranges of ``options/constyle_v2_pretrain_real.yml``.

    python benchmarks/rain_statistics.py --pairs data/raw/prenet/datasets/train/RainTrainL

``--smoke`` measures generated pairs only (no data needed).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from _host import report_header  # benchmarks/_host.py

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 0.04


def streak_stats(rainy: np.ndarray, clean: np.ndarray) -> Dict[str, float]:
    """Density, intensity, orientation (degrees, 90 = vertical) and coherence of the streaks."""
    layer = np.clip((rainy - clean).min(axis=2), 0, 1).astype(np.float32)
    mask = layer > THRESHOLD
    gx = cv2.Sobel(layer, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(layer, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    # the gradient's dominant direction is across the streaks; the streaks run perpendicular to it
    theta = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    streak = (theta + 90.0) % 180.0
    coherence = np.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-12)
    return {"density": float(mask.mean()), "intensity": float(layer[mask].mean()) if mask.any() else 0.0,
            "orientation_deg": float(180.0 - streak if streak > 0 else streak), "coherence": float(coherence)}


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: not a readable image")
    return img[..., ::-1].astype(np.float32) / 255.0


def real_pairs(folder: Path) -> List[Dict]:
    rows = []
    for rainy in sorted(folder.glob("rain-*.png"), key=lambda p: int(p.stem.split("-")[1])):
        clean = folder / f"no{rainy.name}"
        if not clean.is_file():
            continue
        a, b = _read(rainy), _read(clean)
        row = {"file": rainy.name, "size": list(a.shape[:2]),
               "identical": bool(np.array_equal(a, b)),
               "mean_abs_diff_255": float(np.abs(a - b).mean() * 255),
               "chromatic_share": float(np.abs((a - b) - (a - b).mean(axis=2, keepdims=True)).mean()
                                        / max(np.abs(a - b).mean(), 1e-12))}
        row.update(streak_stats(a, b))
        rows.append(row)
    return rows


def generated(sizes: Sequence[Sequence[int]], ranges: Optional[Dict] = None, seed: int = 0) -> List[Dict]:
    from constyle_plugin.data import degradations as deg

    rng = np.random.default_rng(seed)
    rows = []
    for h, w in sizes:
        clean = np.full((h, w, 3), 0.4, np.float32)
        kwargs = {k: float(rng.uniform(*v)) for k, v in (ranges or {}).items()}
        rows.append({"size": [h, w], **streak_stats(deg.rain(clean, rng, **kwargs), clean)})
    return rows


def summary(rows: List[Dict]) -> Dict[str, List[float]]:
    keys = ("density", "intensity", "orientation_deg", "coherence")
    return {k: [float(np.min([r[k] for r in rows])), float(np.median([r[k] for r in rows])),
                float(np.max([r[k] for r in rows]))] for k in keys}


def markdown(report: Dict) -> str:
    lines = ["# Rain streaks: real pairs against the `rain` generator", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}", "",
             "Streaks: the achromatic positive residual `min_c(rainy - clean)`; density: share of pixels above "
             f"{THRESHOLD}; intensity: their mean; orientation: dominant streak direction (90 = vertical); "
             "coherence: 1 = perfectly oriented.", "",
             "| source | images | density (min / median / max) | intensity | orientation (deg) | coherence |",
             "|---|---|---|---|---|---|"]
    for name, rows in report["sources"].items():
        s = summary(rows)
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(
            " / ".join(f"{v:.3f}" if k != "orientation_deg" else f"{v:.0f}" for v in s[k])
            for k in ("density", "intensity", "orientation_deg", "coherence")) + " |")
    if report.get("real"):
        lines += ["", "Real pairs, one by one (mean absolute difference in grey levels; chromatic share: how much "
                  "of the difference is not common to R, G and B):", "",
                  "| file | size | identical | mean abs diff | chromatic share | density | intensity | orientation | coherence |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["real"]:
            lines.append(f"| {r['file']} | {r['size'][0]} x {r['size'][1]} | {r['identical']} | "
                         f"{r['mean_abs_diff_255']:.1f} | {r['chromatic_share']:.2f} | {r['density']:.3f} | "
                         f"{r['intensity']:.3f} | {r['orientation_deg']:.0f} | {r['coherence']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=None, help="folder of rain-N.png / norain-N.png pairs")
    p.add_argument("--out", default=None, help="folder for rain_statistics.{md,json} (default benchmarks/results)")
    p.add_argument("--smoke", action="store_true", help="generated pairs only, a temporary --out")
    args = p.parse_args(argv)
    if not args.pairs and not args.smoke:
        p.error("give --pairs (or --smoke)")
    argv = list(argv if argv is not None else sys.argv[1:])
    tmp = tempfile.TemporaryDirectory(prefix="constyle_rainstats_")
    out = Path(args.out) if args.out else (Path(tmp.name) if args.smoke else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    real = real_pairs(Path(args.pairs)) if args.pairs else []
    usable = [r for r in real if not r["identical"]]
    sizes = [r["size"] for r in usable] or [[96, 128]] * 4
    report = {**report_header("rain_statistics.py", argv, torch.device("cpu")), "real": real, "sources": {}}
    if usable:
        report["sources"][f"real pairs ({Path(args.pairs).name}, identical pairs left out)"] = usable
    report["sources"]["rain generator, default parameters"] = generated(sizes)
    report["sources"]["rain generator, stage-1 ranges (strength 0.15-0.9, density 0.001-0.01)"] = generated(
        sizes, {"strength": (0.15, 0.9), "density": (0.001, 0.01)}, seed=1)
    (out / "rain_statistics.json").write_text(json.dumps(report, indent=1))
    (out / "rain_statistics.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

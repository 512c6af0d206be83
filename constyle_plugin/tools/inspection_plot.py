"""The picture of ``constyle inspect``: the images' latent prompts on the map of the reference degradations.

Drawn with matplotlib when it is installed (it is not a core dependency: ``pip install matplotlib``, or
the ``[inspect]`` extra); :func:`draw_projection` says so in one line otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .inspection import CLEAN, Inspection
from ..files import atomic_write

__all__ = ["MATPLOTLIB_MISSING", "draw_projection"]

MATPLOTLIB_MISSING = ('no picture: it is drawn with matplotlib, which is not installed here '
                      '(pip install matplotlib, or pip install "constyle-plugin[inspect]")')
LABELLED_IMAGES = 16  # name each image's point when there are at most this many


def draw_projection(result: Inspection, path: Union[str, os.PathLike]) -> Optional[str]:
    """Write the projection of ``result`` as a PNG at ``path`` (atomically); returns ``None``, or
    :data:`MATPLOTLIB_MISSING` (and writes nothing) without matplotlib.

    Faint points: the references, coloured by type, each type's name at its centroid. Large points:
    the images, coloured by their predicted type (the head's, else the nearest reference type); filled
    when the image lies near a reference cluster, hollow when it lies far from all of them.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib import patheffects
        from matplotlib.lines import Line2D
    except ImportError:
        return MATPLOTLIB_MISSING
    refs = result.references
    ref_xy = result.projection(refs.latents)
    types = refs.type_names() + sorted({r.predicted for r in result.images} - set(refs.type_names()))
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey, kept for clean
    others = [t for t in types if t != CLEAN]
    colour = {t: palette[i % len(palette)] for i, t in enumerate(others)}
    colour[CLEAN] = (0.35, 0.35, 0.35, 1.0)

    fig, ax = plt.subplots(figsize=(8, 6.4), dpi=110)
    ref_types = np.array(refs.types)
    for t in refs.type_names():
        pts = ref_xy[ref_types == t]
        ax.scatter(pts[:, 0], pts[:, 1], s=22, color=colour[t], alpha=0.3, linewidths=0)
        cx, cy = pts.mean(0)
        ax.annotate(t, (cx, cy), color=colour[t], fontsize=8, ha="center", va="center", fontweight="bold",
                    zorder=5, path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
    for r in result.images:
        c = colour[r.predicted]
        ax.scatter([r.xy[0]], [r.xy[1]], s=70, facecolors=c if r.near else "none", edgecolors=c if not r.near
                   else "black", linewidths=1.6 if not r.near else 0.8, zorder=3)
    if len(result.images) <= LABELLED_IMAGES:
        for r in result.images:
            ax.annotate(Path(result.name(r.path)).stem, (r.xy[0], r.xy[1]), xytext=(5, 4),
                        textcoords="offset points", fontsize=7, zorder=4)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[t], label=t) for t in types]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.6", alpha=0.3, label="reference (faint)"),
                Line2D([], [], marker="o", linestyle="", markerfacecolor="0.6", markeredgecolor="black",
                       label="image near a reference cluster"),
                Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.3",
                       label="image far from every cluster")]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ev = result.projection.explained
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f} % of the references' variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f} %)")
    what = "coloured by the head's prediction" if result.head is not None else \
        "no degradation head: coloured by the nearest reference type"
    ax.set_title(f"latent prompt z2 of {len(result.images)} image(s), {Path(result.prompter).name}\n{what}",
                 fontsize=9)
    ax.grid(alpha=0.15)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return None

"""Inference with a trained network: padding to the size multiple, tiling with overlap, image files.

Used by ``constyle restore``; the functions work on any ``B x C x H x W -> B x C x H x W`` module.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .archs._padding import pad_to_multiple as pad_bottom_right
from .prompter import CheckpointError, atomic_write, read_state_dict

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_network", "pad_to_multiple", "read_image",
           "restore_images", "size_multiple_of", "tiled_forward", "write_image"]

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------ tensors
def size_multiple_of(net: nn.Module) -> int:
    """The input-size multiple a network needs: ``size_multiple`` of the network or its backbone, else 1."""
    for module in (net, getattr(net, "backbone", None), getattr(net, "module", None)):
        value = getattr(module, "size_multiple", None)
        if isinstance(value, int) and value > 0:
            return value
    return 1


def pad_to_multiple(x: Tensor, multiple: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Pad bottom/right (reflect where possible, else replicate) so H and W divide ``multiple``;
    also returns the original ``(H, W)`` to crop back to."""
    return pad_bottom_right(x, multiple, "reflect"), tuple(x.shape[-2:])


def _image_output(out: Any, like: Tensor) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)):  # multi-output networks: the full-resolution image
        for item in reversed(out):
            if isinstance(item, Tensor) and item.shape[-2:] == like.shape[-2:]:
                return item
    raise TypeError(f"the network returned {type(out).__name__}, not an image tensor")


def padded_forward(net: Callable[[Tensor], Any], x: Tensor, multiple: int = 1) -> Tensor:
    """``net(x)`` on ``x`` padded to ``multiple``, cropped back to ``x``'s size."""
    padded, (h, w) = pad_to_multiple(x, multiple)
    return _image_output(net(padded), padded)[..., :h, :w]


def _starts(length: int, tile: int, stride: int) -> List[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _window(n: int, overlap: int, lead: bool, trail: bool, device, dtype) -> Tensor:
    """Blending weights along one tile side: on a side shared with another tile, zero over the outer
    quarter of the overlap (where a tile's border effects live), then a linear ramp over the middle
    half; one on sides at the image border."""
    w = torch.ones(n, device=device, dtype=dtype)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    ramp = torch.arange(1, ramp_len + 1, device=device, dtype=dtype) / (ramp_len + 1)
    for interior, flip in ((lead, False), (trail, True)):
        if interior and overlap > 0:
            edge = torch.cat([torch.zeros(margin, device=device, dtype=dtype), ramp])
            if flip:
                w[n - len(edge):] = torch.minimum(w[n - len(edge):], edge.flip(0))
            else:
                w[:len(edge)] = torch.minimum(w[:len(edge)], edge)
    return w


def tiled_forward(net: Callable[[Tensor], Any], x: Tensor, tile: Optional[int] = None, overlap: int = 32,
                  multiple: int = 1, progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """Run ``net`` on ``x`` (``B x C x H x W``) in ``tile x tile`` pieces that overlap by ``overlap``.

    Overlapping outputs are blended: on shared sides a tile's outer ``overlap / 4`` pixels are dropped
    and the next ``overlap / 2`` ramp linearly, so a network whose receptive field reaches no further
    than ``overlap / 4`` gives exactly the whole-image result, and seams do not show. Each tile is padded to
    ``multiple`` and cropped back. ``tile=None`` (or an image no larger than one tile) runs whole.
    With a prompter, every tile gets its own prompt (it sees only that tile).
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return padded_forward(net, x, multiple)
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile: need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    stride = tile - overlap
    out: Optional[Tensor] = None
    weight = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            patch = x[..., top:top + tile, left:left + tile]
            y = padded_forward(net, patch, multiple).float()
            ph, pw = y.shape[-2:]
            rows = _window(ph, overlap, top > 0, top + ph < h, y.device, y.dtype)
            cols = _window(pw, overlap, left > 0, left + pw < w, y.device, y.dtype)
            win = rows[:, None] * cols[None, :]
            if out is None:
                out = torch.zeros(x.shape[0], y.shape[1], h, w, device=x.device, dtype=torch.float32)
            out[..., top:top + ph, left:left + pw] += y * win
            weight[..., top:top + ph, left:left + pw] += win
            if progress is not None:
                progress(1)
    return (out / weight).to(x.dtype)


def count_tiles(h: int, w: int, tile: Optional[int], overlap: int) -> int:
    if tile is None or (h <= tile and w <= tile):
        return 1
    stride = tile - overlap
    return len(_starts(h, tile, stride)) * len(_starts(w, tile, stride))


# ------------------------------------------------------------------------------------------ files
def find_images(path: Union[str, os.PathLike]) -> List[Path]:
    """The image files at ``path`` (a file, or a folder searched recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input: {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"--input: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return files


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file as ``H x W x 3`` float32 RGB in [0, 1] (grey replicated, alpha dropped, 16-bit scaled)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    img = img.astype(np.float32) / scale
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.clip(img, 0.0, 1.0)


def write_image(path: Union[str, os.PathLike], img: np.ndarray) -> None:
    """Write ``H x W x 3`` RGB in [0, 1] as an 8-bit PNG, atomically."""
    import cv2

    bgr = cv2.cvtColor((np.clip(img, 0, 1) * 255.0).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


# ------------------------------------------------------------------------------------------ networks
def _apply_force_yml(opt: Dict[str, Any], entries: Sequence[str]) -> None:
    """BasicSR's ``--force_yml a:b:c=value`` overrides, applied to a parsed options dict."""
    import yaml

    for entry in entries:
        keys, _, value = entry.partition("=")
        node = opt
        parts = [k.strip() for k in keys.split(":")]
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[parts[-1]] = yaml.safe_load(value.strip()) if value.strip() not in ("~", "None") else None


def _basicsr_options(config: Path) -> Dict[str, Any]:
    """A BasicSR options file, with the ``--force_yml`` overrides that BasicSR records in the copy it
    keeps beside the experiment (``# CMD: ... --force_yml k=v``)."""
    import yaml

    text = config.read_text()
    opt = yaml.safe_load(text)
    if not isinstance(opt, dict) or "network_g" not in opt:
        raise ValueError(f"--config {config}: no network_g section: not a BasicSR options file")
    forced: List[str] = []
    for line in text.splitlines():
        if line.startswith("#") and "--force_yml" in line:
            tail = line.split("--force_yml", 1)[1]
            forced += [tok for tok in re.split(r"\s+", tail.strip()) if "=" in tok and not tok.startswith("-")]
    _apply_force_yml(opt, forced)
    return opt


def _find_config(checkpoint: Path) -> Optional[Path]:
    """The config the trainer left beside its checkpoints: BasicSR copies the options file into
    ``experiments/NAME/`` (checkpoints in ``NAME/models/``); MMEngine dumps the merged config into
    the work dir, beside its checkpoints."""
    for folder, pattern in ((checkpoint.parent.parent, "*.yml"), (checkpoint.parent, "*.yml"),
                            (checkpoint.parent, "*.py")):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
    return None


def load_network(checkpoint: Union[str, os.PathLike], config: Optional[Union[str, os.PathLike]] = None,
                 device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild a trained network from its checkpoint, in eval mode on ``device``.

    BasicSR: ``checkpoint`` is ``net_g_*.pth`` (``params_ema`` preferred) and ``config`` the options
    file (found beside the experiment when omitted). MMEngine: ``checkpoint`` is the Runner's
    ``.pth`` and ``config`` the config file (found in the work dir when omitted). Weights are read with
    safe loading and loaded with ``strict=True``.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: {checkpoint} not found")
    config = Path(config) if config is not None else _find_config(checkpoint)
    if config is None:
        raise FileNotFoundError(f"--config: no options file found beside {checkpoint}; pass --config")
    if not config.is_file():
        raise FileNotFoundError(f"--config: {config} not found")
    if config.suffix in (".yml", ".yaml"):
        net = _build_basicsr(config)
        state = read_state_dict(checkpoint)
    elif config.suffix == ".py":
        net = _build_mmengine(config)
        state = _mmengine_state(checkpoint)
    else:
        raise ValueError(f"--config {config}: expected a BasicSR .yml or an MMEngine .py config")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: does not fit the network of {config}: "
                              f"{str(exc).splitlines()[0]} {str(exc).splitlines()[1:2]}") from None
    return net.to(device).eval()


def _without_prompter_file(prompter_opt: Any) -> Any:
    """The checkpoint holds the prompter's weights: the file the training run loaded is not needed."""
    if isinstance(prompter_opt, Mapping) and prompter_opt.get("pretrained") is not None:
        return {**prompter_opt, "pretrained": None}
    return prompter_opt


def _build_basicsr(config: Path) -> nn.Module:
    from .compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    import constyle_plugin  # noqa: F401  (registers the plugin's archs)
    from basicsr.archs import build_network

    opt = _basicsr_options(config)
    network_opt = dict(opt["network_g"])
    if "prompter" in network_opt:
        network_opt["prompter"] = _without_prompter_file(network_opt["prompter"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prompter is untrained.*")
        return build_network(network_opt)


def _build_mmengine(config: Path) -> nn.Module:
    import constyle_plugin  # noqa: F401  (registers the plugin's models)
    from mmengine.registry import MODELS

    from .integrations.mmengine_runner import load_config

    cfg = load_config(str(config))
    model_cfg = cfg.model.copy()
    if "prompter" in model_cfg:
        model_cfg["prompter"] = _without_prompter_file(model_cfg["prompter"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prompter is untrained.*")
        model = MODELS.build(model_cfg)
    if not hasattr(model, "net"):
        raise ValueError(f"--config {config}: model type {cfg.model.get('type')!r} is not a restorer "
                         f"(expected ConStyleRestorer)")
    return model.net


def _mmengine_state(checkpoint: Path) -> Dict[str, Tensor]:
    """The restorer's weights from a Runner checkpoint: the EMA copy when the run kept one."""
    from .integrations.mmengine_runner import mmengine_checkpoint_globals

    try:
        with mmengine_checkpoint_globals():
            raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (reported with the file's name, nothing run)
        raise CheckpointError(f"{checkpoint}: not a readable MMEngine checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{checkpoint}: expected an MMEngine checkpoint dict")
    state = raw.get("ema_state_dict") or raw.get("state_dict") or raw
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
             if isinstance(v, Tensor) and k != "steps"}
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


# ------------------------------------------------------------------------------------------ the job
def restore_images(net: nn.Module, inputs: Sequence[Path], output: Union[str, os.PathLike],
                   tile: Optional[int] = None, overlap: int = 32, compare: bool = False,
                   device: Union[str, torch.device] = "cpu", root: Optional[Path] = None,
                   show_progress: bool = True) -> List[Path]:
    """Restore each image file into ``output`` as PNG (``--compare``: also an input | output panel).

    Files that cannot be read are skipped with one warning each. Returns the written paths.
    """
    from tqdm import tqdm

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    multiple = size_multiple_of(net)
    written: List[Path] = []
    bar = tqdm(inputs, desc="restore", unit="img", disable=not show_progress)
    for path in bar:
        try:
            img = read_image(path)
        except ValueError as exc:
            warnings.warn(f"skipped: {exc}")
            continue
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            y = tiled_forward(net, x, tile=tile, overlap=overlap, multiple=multiple)
        restored = y[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
        rel = path.relative_to(root) if root is not None and root in path.parents else Path(path.name)
        target = output / rel.with_suffix(".png")
        write_image(target, restored)
        written.append(target)
        if compare:
            panel = np.concatenate([img, np.ones((img.shape[0], 8, 3), np.float32), restored], axis=1)
            write_image(target.with_name(target.stem + "_compare.png"), panel)
        bar.set_postfix(file=path.name)
    return written


def add_restore_arguments(parser) -> None:
    """The ``constyle restore`` options."""
    parser.add_argument("--checkpoint", required=True, help="trained network: BasicSR net_g_*.pth or MMEngine .pth")
    parser.add_argument("--config", default=None,
                        help="its BasicSR .yml or MMEngine .py (default: found beside the checkpoint)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the restored PNG files")
    parser.add_argument("--tile", type=int, default=None,
                        help="run in tiles of this size (pixels) for images too large for memory")
    parser.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles (default 32)")
    parser.add_argument("--compare", action="store_true", help="also write NAME_compare.png: input | output")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")


def restore_main(args) -> int:
    """Run ``constyle restore`` from parsed arguments."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    inputs = find_images(args.input)
    net = load_network(args.checkpoint, args.config, device=device)
    root = Path(args.input) if Path(args.input).is_dir() else None
    written = restore_images(net, inputs, args.output, tile=args.tile, overlap=args.tile_overlap,
                             compare=args.compare, device=device, root=root)
    print(f"restored {len(written)} image(s) into {args.output}")
    return 0 if written else 1

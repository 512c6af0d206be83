"""Inference with a trained network: padding to the size multiple, tiling with overlap, image files.

Used by ``constyle restore``; the functions work on any ``B x C x H x W -> B x C x H x W`` module. A
trainer's run is read by the reader its integration registered (:mod:`constyle_plugin.runs`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.padding import pad_to_multiple, size_multiple_of
from ..core.pretrained import carried_config, is_pretrained_dir, load_carried
from ..core.promptmaps import parse_prompt_size
from ..core.unet import ConStyleUNet
from ..data.imageio import IMAGE_EXTENSIONS, encode_png, read_image, read_image_file
from ..errors import CheckpointError, ConStyleTypeError, MissingFileError, OptionError, RestoreError
from ..files import atomic_write
from ..runs import TrainingRun, no_recorded_config, run_reader

__all__ = ["IMAGE_EXTENSIONS", "RestoreError", "check_device", "check_output_folder", "check_tiling", "find_images",
           "TrainingRun", "load_network", "plan_outputs", "read_image", "read_training_run",
           "restore_images", "size_multiple_of", "tiled_forward", "write_image"]

logger = logging.getLogger(__name__)
BASICSR_COPY_HEADER = "# GENERATE TIME:"  # first line of the options copy BasicSR's copy_opt_file writes


# ------------------------------------------------------------------------------------------ tensors
def _image_output(out: Any, like: Tensor) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)):  # multi-output networks: the full-resolution image
        for item in reversed(out):
            if isinstance(item, Tensor) and item.shape[-2:] == like.shape[-2:]:
                return item
    raise ConStyleTypeError(f"the network returned {type(out).__name__}, not an image tensor")


def padded_forward(net: Callable[[Tensor], Any], x: Tensor, multiple: int = 1) -> Tensor:
    """``net(x)`` on ``x`` padded to ``multiple`` (reflected where possible, else replicated), cropped
    back to ``x``'s size."""
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, multiple, "reflect")
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
    ``multiple`` and cropped back. ``tile=None`` or ``0`` (or an image no larger than one tile) runs whole.

    A wrapped net (:class:`~constyle_plugin.core.unet.ConStyleUNet`) gets one prompt per image: the prompter
    runs once on the whole image (at the net's ``prompt_size``) and each tile gets the image's latent
    and the part of the feature maps under it (:meth:`~constyle_plugin.core.unet.ConStyleUNet.use_prompt`).
    Other callables (an exported ONNX graph, which holds its prompter inside) prompt each tile alone.
    """
    h, w = x.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        return padded_forward(net, x, multiple)
    if tile < 0 or overlap < 0 or overlap >= tile:
        raise RestoreError(f"tile: need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    prompt = net.compute_prompt(x) if isinstance(net, ConStyleUNet) else None
    stride = tile - overlap
    out: Optional[Tensor] = None
    weight = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            patch = x[..., top:top + tile, left:left + tile]
            with (net.use_prompt(prompt, (h, w), offset=(top, left)) if prompt is not None
                  else contextlib.nullcontext()):
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
    if not tile or (h <= tile and w <= tile):
        return 1
    stride = tile - overlap
    return len(_starts(h, tile, stride)) * len(_starts(w, tile, stride))


# ------------------------------------------------------------------------------------------ files
def find_images(path: Union[str, os.PathLike], exclude: Optional[Union[str, os.PathLike]] = None) -> List[Path]:
    """The image files at ``path`` (a file, or a folder searched recursively), sorted.

    Nothing under ``exclude`` (the output folder, when it lies inside the input folder) is taken.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"--input: {path} does not exist")
    skip = Path(exclude).resolve() if exclude is not None else None
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not (skip is not None and (skip == p.resolve() or skip in p.resolve().parents)))
    if not files:
        inside = skip is not None and path.resolve() in skip.parents
        where = f" (outside the output folder {exclude})" if inside else ""
        raise MissingFileError(f"--input: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}{where}")
    return files


def write_image(path: Union[str, os.PathLike], img: np.ndarray, bits: int = 8,
                alpha: Optional[np.ndarray] = None) -> None:
    """Write ``H x W x 3`` RGB in [0, 1] as an 8- or 16-bit PNG, with ``alpha`` if given, atomically."""
    data = encode_png(img, path, bits=bits, alpha=alpha)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


# ------------------------------------------------------------------------------------------ networks
def load_network(checkpoint: Union[str, os.PathLike], config: Optional[Union[str, os.PathLike]] = None,
                 device: Union[str, torch.device] = "cpu") -> Any:
    """Rebuild a trained network from its checkpoint, in eval mode on ``device``.

    BasicSR: ``checkpoint`` is ``net_g_*.pth`` (``params_ema`` preferred) and ``config`` the options
    file. MMEngine: ``checkpoint`` is the Runner's ``.pth`` (the EMA copy preferred) and ``config``
    the config file. Without ``config``, only the config the trainer itself recorded for that run is
    used: the options copy BasicSR writes into ``experiments/NAME/`` (checkpoint in
    ``experiments/NAME/models/``), or the config MMEngine recorded in the checkpoint's ``meta`` and
    dumped into the work dir, read as plain values without running it. Any other file beside the
    checkpoint is never read or run (:class:`RestoreError` asks for ``config``). Weights are read with
    safe loading and loaded with ``strict=True``.

    Also: a folder written by ``save_pretrained`` (its EMA weights preferred) and an ONNX file
    (run by onnxruntime, see :mod:`constyle_plugin.tools.export`).
    """
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".onnx" and checkpoint.is_file():
        from .export import load_onnx

        return load_onnx(checkpoint, device=device)
    if checkpoint.is_dir():
        if is_pretrained_dir(checkpoint):
            return ConStyleUNet.from_pretrained(checkpoint, map_location=device)
    run = read_training_run(checkpoint, config)
    return run.load("ema" if "ema" in run.states else "model").to(device).eval()


def read_training_run(checkpoint: Union[str, os.PathLike],
                      config: Optional[Union[str, os.PathLike]] = None) -> TrainingRun:
    """The network of a BasicSR or MMEngine run (built from ``config`` or the config its trainer
    recorded, as :func:`load_network` finds it) and the checkpoint's weights, EMA copy apart."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        raise MissingFileError(f"--checkpoint: {checkpoint} is a directory; pass the checkpoint file in it")
    if not checkpoint.is_file():
        raise MissingFileError(f"--checkpoint: {checkpoint} not found")
    raw = _plain_checkpoint(checkpoint)
    if isinstance(raw, dict) and {"optimizers", "schedulers"} <= set(raw) and "params" not in raw:
        raise CheckpointError(f"{checkpoint}: a BasicSR training state (optimisers and schedulers, for resuming), "
                              f"not the network's weights; pass the checkpoint of the same iteration in the run's "
                              f"models/ folder (net_g_{raw.get('iter', 'N')}.pth)")
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise MissingFileError(f"--config: {config} " + ("is a directory" if config.is_dir() else "not found"))
        if config.suffix in (".yml", ".yaml"):
            return run_reader("basicsr").read_run(checkpoint, config)
        if config.suffix == ".py":
            return run_reader("mmengine").read_run(checkpoint, config)
        raise RestoreError(f"--config {config}: expected a BasicSR .yml or an MMEngine .py config")
    carried = carried_config(raw)
    if carried is not None:  # written by constyle convert --to from a saved folder
        return _carried_run(checkpoint, raw, carried)
    basicsr = run_reader("basicsr")
    options = basicsr.recorded_options(checkpoint)
    if options is not None:
        return basicsr.read_run(checkpoint, options)
    try:
        mmengine = run_reader("mmengine")
    except ImportError:  # a core install: nothing here could have recorded an MMEngine config
        raise no_recorded_config(checkpoint) from None
    return mmengine.read_run(checkpoint, None)


def _plain_checkpoint(checkpoint: Path) -> Any:
    """The checkpoint as ``torch.load(weights_only=True)`` reads it with no extra globals, or None (a
    safetensors file, a trainer's checkpoint that needs its reader's globals, a damaged file: the
    readers name what is wrong)."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (left to the trainer's reader, which names the problem)
        return None


def _carried_run(checkpoint: Path, raw: Dict[str, Any], config: Dict[str, Any]) -> TrainingRun:
    """A checkpoint :func:`~constyle_plugin.tools.convert.to_trainer_checkpoint` wrote, read back in its
    layout: BasicSR's ``params`` / ``params_ema``, or MMEngine's ``state_dict`` (the EMA where there is
    one) and ``ema_state_dict`` (``module.net.*``: the trained model's own); the net from its config.json."""
    def weights(state: Any, prefix: str) -> Dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in (state or {}).items() if isinstance(v, Tensor) and k.startswith(prefix)}

    if "params" in raw:
        states = {"model": weights(raw["params"], "")}
        if isinstance(raw.get("params_ema"), dict):
            states["ema"] = weights(raw["params_ema"], "")
    elif raw.get("ema_state_dict"):
        states = {"model": weights(raw["ema_state_dict"], "module.net."), "ema": weights(raw["state_dict"], "net.")}
    else:
        states = {"model": weights(raw.get("state_dict"), "net.")}
    net = load_carried(ConStyleUNet, config, states["model"], str(checkpoint))
    return TrainingRun(net, states, f"the config.json carried in {checkpoint}", None, checkpoint)


# ------------------------------------------------------------------------------------------ the job
PROMPT_SIZE_HELP = ("longer side (pixels) of the image copy the prompter sees, or 'full'; default: the network's "
                    "own setting (prompt_size of its options, full resolution unless set)")


def apply_prompt_size(net: Any, value: Optional[str], option: str = "--prompt-size",
                      error: type = RestoreError) -> None:
    """Set a loaded network's ``prompt_size`` from a command-line value (``'full'`` or pixels); ``None``
    leaves the network's own. :class:`RestoreError` (or ``error``) naming ``option`` for a bad value or a
    network without a prompter to resize for."""
    if value is None:
        return
    if not isinstance(net, ConStyleUNet):
        what = ("an exported ONNX graph, whose prompt size was fixed at export" if hasattr(net, "session")
                else "a network without the prompter")
        raise error(f"{option}: the network is {what}; nothing to set")
    try:
        net.prompt_size = parse_prompt_size(value, option)
    except OptionError as exc:
        raise error(str(exc)) from None


def check_tiling(tile: Optional[int], overlap: int) -> None:
    """``--tile`` / ``--tile-overlap`` must allow tiling any image: ``tile > overlap >= 0``; ``tile``
    None or 0 (Real-ESRGAN's "no tiling") runs every image whole."""
    if overlap < 0:
        raise RestoreError(f"--tile-overlap: must be >= 0, got {overlap}")
    if tile is not None and tile < 0:
        raise RestoreError(f"--tile: must be >= 0 (0: no tiling), got {tile}")
    if tile and tile <= overlap:
        raise RestoreError(f"--tile: must be larger than --tile-overlap ({overlap}), got {tile}")


def check_device(spec: Union[str, torch.device]) -> torch.device:
    """The device ``spec`` names (``auto``: CUDA when available, else the CPU), refused with a clear
    message when it is not a device name or that device is not available here."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise RestoreError(f"--device: {spec!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RestoreError(f"--device {spec}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RestoreError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RestoreError(f"--device {spec}: MPS is not available here; use --device cpu")
        return device
    raise RestoreError(f"--device: {spec!r} is not supported for restoring (auto, cpu, cuda, cuda:N, mps)")


def check_output_folder(output: Union[str, os.PathLike]) -> Path:
    """``--output`` must be a folder that exists or can be made, and that this process can write;
    nothing is created here."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RestoreError(f"--output: {output} is an existing file, not a folder")
    existing = output
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RestoreError(f"--output: {output} lies under {existing}, which is a file")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == output else f" (its nearest existing folder {existing} is not writable)"
        raise RestoreError(f"--output: {output} is not writable{what}")
    return output


def plan_outputs(inputs: Sequence[Path], output: Union[str, os.PathLike], root: Optional[Path] = None,
                 compare: bool = False) -> List[Tuple[Path, Path, Optional[Path]]]:
    """``(input, restored PNG, comparison panel or None)`` for each input, all distinct.

    Each input keeps its path relative to ``root`` with a ``.png`` suffix; inputs that differ only in
    their extension (``photo.png``, ``photo.jpg``) keep it in the name (``photo_png.png``,
    ``photo_jpg.png``). Raises :class:`RestoreError` when two files would still share a name (an input
    ``photo_compare.png`` beside ``photo.png``'s panel) or an output would replace an input.
    """
    output = Path(output)

    def rel(path: Path) -> Path:
        return path.relative_to(root) if root is not None and root in path.parents else Path(path.name)

    by_target: Dict[Path, List[Path]] = {}
    for path in inputs:
        by_target.setdefault(rel(path).with_suffix(""), []).append(path)
    plan: List[Tuple[Path, Path, Optional[Path]]] = []
    for stem, paths in by_target.items():
        for path in paths:
            name = stem.name if len(paths) == 1 else f"{stem.name}_{path.suffix.lstrip('.').lower()}"
            target = output / stem.parent / f"{name}.png"
            plan.append((path, target, target.with_name(f"{name}_compare.png") if compare else None))
    owner: Dict[Path, Path] = {}
    sources = {p.resolve(): p for p in inputs}
    for path, target, panel in sorted(plan):
        for out, what in ((target, "restored image"), (panel, "comparison panel")):
            if out is None:
                continue
            key = out.resolve()
            if key in sources:
                raise RestoreError(f"--output: the {what} of {path} would replace the input {sources[key]}; "
                                   f"choose an --output folder that holds no inputs")
            if key in owner:
                raise RestoreError(f"--output: {path} and {owner[key]} would both be written as {out}; rename "
                                   f"one of them" + (" or drop --compare" if compare else ""))
            owner[key] = path
    return plan


def restore_images(net: nn.Module, inputs: Sequence[Path], output: Union[str, os.PathLike],
                   tile: Optional[int] = None, overlap: int = 32, compare: bool = False,
                   device: Union[str, torch.device] = "cpu", root: Optional[Path] = None,
                   show_progress: bool = True) -> List[Path]:
    """Restore each image file into ``output`` as PNG (``--compare``: also an input | output panel).

    The PNG keeps the input's depth (16-bit in, 16-bit out; floating-point inputs become 16-bit, said
    once) and its alpha channel, passed through untouched (the network restores the colour only).

    Everything that can be checked is checked before the first file is written: the tiling, the
    output names (:func:`plan_outputs`: distinct, never an input), the output folder, and that each
    image reads (files that cannot be read are skipped with one warning each). Returns the written
    paths (the restored images).
    """
    check_tiling(tile, overlap)
    output = check_output_folder(output)
    plan = plan_outputs(inputs, output, root, compare)
    readable = []
    for item in plan:
        try:
            read_image(item[0])
        except ValueError as exc:
            warnings.warn(f"skipped: {exc}")
            continue
        readable.append(item)
    if not readable:
        return []
    missing = [p for p in (output, *output.parents) if not p.exists()]  # the folders made here
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".constyle-write-test-"):
            pass
    except OSError as exc:
        for folder in missing:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise RestoreError(f"--output: cannot write into {output} ({exc.strerror or exc})") from None
    multiple = size_multiple_of(net)
    written: List[Path] = []
    bar = tqdm(readable, desc="restore", unit="img", disable=not show_progress)
    noted = False
    for path, target, panel in bar:
        source = read_image_file(path)
        img = source.rgb
        if source.stored not in ("uint8", "uint16") and not noted:
            noted = True
            print(f"note: {path} holds {source.stored} samples; it and any like it are written as 16-bit PNG "
                  f"(PNG holds no floating-point samples)", file=sys.stderr)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            y = tiled_forward(net, x, tile=tile, overlap=overlap, multiple=multiple)
        restored = y[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
        write_image(target, restored, bits=source.bits, alpha=source.alpha)
        written.append(target)
        if panel is not None:
            write_image(panel, np.concatenate([img, np.ones((img.shape[0], 8, 3), np.float32), restored], axis=1))
        bar.set_postfix(file=path.name)
    return written


def add_restore_arguments(parser) -> None:
    """The ``constyle restore`` options."""
    parser.add_argument("--checkpoint", required=True,
                        help="trained network: BasicSR net_g_*.pth, MMEngine .pth, a save_pretrained folder or an "
                             "exported .onnx file (run by onnxruntime)")
    parser.add_argument("--config", default=None,
                        help="its BasicSR .yml or MMEngine .py (default: the config its trainer recorded for "
                             "that run: BasicSR's options copy in experiments/<name>/, MMEngine's config in the "
                             "checkpoint and its work dir, read without running it; no other file is used)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True,
                        help="folder for the restored PNG files (never read as input; inputs that differ only "
                             "in extension, photo.png and photo.jpg, become photo_png.png and photo_jpg.png)")
    parser.add_argument("--tile", type=int, default=None,
                        help="run in tiles of this size (pixels) for images too large for memory (0 or "
                             "omitted: every image whole)")
    parser.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles (default 32)")
    parser.add_argument("--prompt-size", dest="prompt_size", default=None, metavar="full|PIXELS",
                        help=PROMPT_SIZE_HELP)
    parser.add_argument("--compare", action="store_true", help="also write NAME_compare.png: input | output")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")


def restore_main(args) -> int:
    """Run ``constyle restore`` from parsed arguments. Every option is checked before anything is
    written (:class:`RestoreError` names the option at fault)."""
    device = check_device(args.device)
    check_tiling(args.tile, args.tile_overlap)
    output = check_output_folder(args.output)
    if Path(args.input).is_dir() and output.resolve() == Path(args.input).resolve():
        raise RestoreError(f"--output: {output} is the --input folder: the restored images would replace the "
                           f"inputs; choose another folder")
    inputs = find_images(args.input, exclude=output)
    root = Path(args.input) if Path(args.input).is_dir() else None
    for path, target, _ in plan_outputs(inputs, output, root, args.compare):
        if target.stem != path.stem:
            print(f"note: {path} is written as {target.name} (another input differs from it only in extension)",
                  file=sys.stderr)
    net = load_network(args.checkpoint, args.config, device=device)
    apply_prompt_size(net, getattr(args, "prompt_size", None))
    written = restore_images(net, inputs, output, tile=args.tile, overlap=args.tile_overlap,
                             compare=args.compare, device=device, root=root)
    print(f"restored {len(written)} image(s) into {args.output}")
    return 0 if written else 1

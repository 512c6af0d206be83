"""ONNX export of a wrapped U-Net (prompter inside the graph), and running the exported file.

``export_onnx(net, "net.onnx")`` traces ``net`` once and writes a graph with one input ``image``
(``batch x C x height x width``, all three dynamic, floats in [0, 1]) and one output ``restored``
of the same size. Opset 17, which onnxruntime 1.14 and later run. Inside the graph the reference
archs pad to their size multiple and the prompt maps are resized to each stage at any input size
(under tracing both always run, see ``core/padding.py`` and ``core/injection.py``), so sizes the trace never
saw give the eager output. The file's metadata records ``size_multiple``, which
``constyle restore`` uses to pad tiles as it does for the torch network.

Where a backbone cannot be exported, :class:`OnnxExportError` names the unsupported operator and
the module whose forward calls it. The file is checked with onnxruntime before it is put in place (at
sizes padded to the network's size multiple, as restore pads), so a failed export or check leaves no
file; the error says whether the network itself, onnxruntime, or the agreement between them failed.

Core module: torch and the standard library; ``onnx`` and ``onnxruntime`` are imported only here, when
used (``pip install "constyle-plugin[export]"``).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConStyleError, ConStyleTypeError, MissingDependencyError, MissingFileError
from ..core.padding import size_multiple_of
from ..core.prompter import ConStyleV2
from ..files import atomic_write

__all__ = ["DEFAULT_OPSET", "OnnxExportError", "OnnxInputError", "OnnxNetwork", "check_onnx", "export_onnx",
           "load_onnx"]

PathLike = Union[str, os.PathLike]
DEFAULT_OPSET = 17
FORMAT = "constyle_plugin.onnx/1"
INPUT_NAME, OUTPUT_NAME = "image", "restored"
INSTALL_HINT = 'pip install "constyle-plugin[export]"'


class OnnxExportError(ConStyleError):
    """The network cannot be exported to ONNX, or the exported graph does not match it."""


class OnnxInputError(ConStyleTypeError):
    """An exported network called with a tensor it does not take (integers instead of floats in [0, 1])."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"ONNX export and ONNX restore need {module}: {INSTALL_HINT}") from None


def _image_of(out: Any, like: Tensor) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)):
        for item in reversed(out):
            if isinstance(item, Tensor) and item.dim() == 4:
                return item
    raise OnnxExportError(f"the network returned {type(out).__name__}, not an image tensor")


class _ImageGraph(nn.Module):
    """``net`` with one image in and one image out (the full-resolution output of a multi-output net)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return _image_of(self.net(image), image)


def _in_channels(net: nn.Module) -> int:
    """The input channels of the network's first convolution (the backbone's, for a wrapped net)."""
    root = getattr(net, "backbone", net)
    return next((m.in_channels for m in root.modules() if isinstance(m, nn.Conv2d)), 3)


@contextlib.contextmanager
def _graph_mode(net: nn.Module) -> Iterator[None]:
    """Eval mode, and the prompter's eager-only NaN/Inf check off (a graph cannot raise), restored after."""
    modes = {m: m.training for m in net.modules()}
    prompters = [(m, m.check_finite) for m in net.modules() if isinstance(m, ConStyleV2)]
    net.eval()
    for prompter, _ in prompters:
        prompter.check_finite = False
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for prompter, value in prompters:
            prompter.check_finite = value


def _locate(net: nn.Module, operator: str, sample: Tensor) -> Tuple[Optional[str], Optional[str]]:
    """The module (as in ``named_modules()``) whose own forward runs the aten operator ``operator``, found
    by an eager re-run on ``sample``, or ``None``; and why that re-run stopped early (``'Type: message'``),
    or ``None`` when it ran through."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: List[str] = []
    found: List[str] = []

    class Finder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = getattr(getattr(func, "overloadpacket", None), "__name__", None)
            if not found and stack and packet == operator:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def enter(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name or "(top level)")
        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    for name, module in net.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    failed = None
    try:
        with torch.no_grad(), Finder():
            net(sample)
    except Exception as exc:  # noqa: BLE001  (reported beside the export error, which stays the one raised)
        failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    finally:
        for handle in handles:
            handle.remove()
    return (found[0] if found else None), failed


def _explain(exc: BaseException, graph: nn.Module, sample: Tensor, opset: int) -> OnnxExportError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"operator '([\w:.]+)'", str(exc)) or re.search(r"(aten::[\w.]+)", str(exc))
    if match is None:
        return OnnxExportError(f"ONNX export (opset {opset}) failed: {type(exc).__name__}: {message}")
    operator = match.group(1)
    where, failed = _locate(graph, operator.split("::")[-1].split(".")[0], sample)
    module = "module not found by a re-run" if where is None else f"in module {where.removeprefix('net.')!r}"
    if where is None and failed:
        module += f" (the eager re-run itself failed: {failed})"
    if where is not None:
        found = dict(graph.named_modules()).get(where)
        module += f" ({type(found).__name__})" if found is not None else ""
    return OnnxExportError(
        f"ONNX export (opset {opset}): operator {operator} has no ONNX form, called {module}; rewrite that "
        f"part with exportable ops (e.g. convolutions instead of an antialiased resize, timm's LayerNorm2d "
        f"instead of a custom autograd LayerNorm)")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null for the block (C++ code writes there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _sample_size(multiple: int, size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if size is not None:
        return tuple(size)  # type: ignore[return-value]
    side = multiple * max(1, -(-64 // multiple))
    return side, side


def export_onnx(net: nn.Module, path: PathLike, *, opset: int = DEFAULT_OPSET,
                sample_size: Optional[Tuple[int, int]] = None, check: bool = True,
                atol: float = 1e-4,
                report: Optional[Callable[[float, List[Tuple[int, int, int]]], None]] = None) -> Path:
    """Export ``net`` (``B x C x H x W`` in [0, 1] -> same) to the ONNX file ``path``, atomically.

    Args:
        net: a wrapped U-Net (prompter inside the graph) or any image-to-image network, fp32, on any device.
        opset: ONNX opset (default 17).
        sample_size: ``H x W`` of the trace input (default: 64, or the network's size multiple above).
        check: before the file is put in place, run it with onnxruntime at two sizes the trace did not
            see (padded up to the network's size multiple, as restore pads) and compare with the eager
            output (raises :class:`OnnxExportError` above ``atol``).
        report: called with the check's ``(max abs difference, sizes)`` when it passed.

    Returns ``path``. Raises :class:`OnnxExportError` naming the operator and module when a part of the
    network has no ONNX form, or the size and the cause when the check fails; either way no file is
    left at ``path`` (a file already there stays as it was).
    """
    onnx = _require("onnx")
    path = Path(path)
    graph = _ImageGraph(net)
    multiple = size_multiple_of(net)
    height, width = _sample_size(multiple, sample_size)
    generator = torch.Generator().manual_seed(0)
    param = next(iter(net.parameters()), None)
    sample = torch.rand(1, _in_channels(net), height, width, generator=generator).to(
        param.device if param is not None else "cpu")
    axes = {0: "batch", 2: "height", 3: "width"}
    with _graph_mode(net), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on the eager-only shape checks
        try:
            with _quiet_stdout():  # the exporter's C++ side prints its whole graph on failure
                tmp_model = _export_to_proto(graph, sample, opset, axes)
        except Exception as exc:  # noqa: BLE001  (reported with the operator and module)
            raise _explain(exc, graph, sample, opset) from exc
    model = onnx.load_from_string(tmp_model)
    metadata = {"format": FORMAT, "size_multiple": str(multiple), "in_channels": str(sample.shape[1]),
                "producer": "constyle_plugin"}
    prompt_size = getattr(net, "prompt_size", None)
    if prompt_size is not None:  # informative: the graph itself resizes the prompter's input
        metadata["prompt_size"] = str(prompt_size)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value

    checked: List[Tuple[float, List[Tuple[int, int, int]]]] = []

    def write_and_check(tmp: str) -> None:  # the file is put in place only once it passed the check
        onnx.save(model, tmp)
        if check:
            sizes = _check_sizes(multiple)
            diff = _compare(net, OnnxNetwork(tmp, sample.device), sizes, 0, str(path))
            if diff > atol:
                raise OnnxExportError(f"{path}: onnxruntime's output differs from the eager network's by {diff:.3g} "
                                      f"(more than {atol:g}) at {sizes}; no file written")
            checked.append((diff, sizes))

    atomic_write(path, write_and_check)
    if report is not None and checked:
        report(*checked[0])
    return path


def _export_to_proto(graph: nn.Module, sample: Tensor, opset: int, axes: Dict[int, str]) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(graph, (sample,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, opset_version=opset,
                      do_constant_folding=True, dynamo=False, verbose=False)
    return buffer.getvalue()


CHECK_SIZES = ((2, 37, 53), (1, 71, 46))  # (batch, H, W), odd: sizes no trace used


def _check_sizes(multiple: int) -> List[Tuple[int, int, int]]:
    """:data:`CHECK_SIZES` padded up to ``multiple``, as restore pads each image or tile."""
    return [(b, h + (-h) % multiple, w + (-w) % multiple) for b, h, w in CHECK_SIZES]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _compare(net: nn.Module, runner: "OnnxNetwork", sizes: Sequence[Tuple[int, int, int]], seed: int,
             label: str) -> float:
    generator = torch.Generator().manual_seed(seed)
    param = next(iter(net.parameters()), None)
    worst = 0.0
    with _graph_mode(net), torch.no_grad():
        for batch, h, w in sizes:
            shape = f"{batch} x {runner.in_channels} x {h} x {w}"
            x = torch.rand(batch, runner.in_channels, h, w, generator=generator).to(
                param.device if param is not None else "cpu")
            try:
                eager = _image_of(net(x), x)
            except Exception as exc:  # noqa: BLE001  (the network's own error, named with the size)
                raise OnnxExportError(
                    f"{label}: checking the export, the network itself fails on a {shape} input ({_first_line(exc)}); "
                    f"its size multiple is {runner.size_multiple}: set `size_multiple` on the network to the one its "
                    f"inputs need (restore pads to it), or pass check=False") from exc
            try:
                out = runner(x)
            except Exception as exc:  # noqa: BLE001  (onnxruntime's own exception types)
                raise OnnxExportError(
                    f"{label}: onnxruntime cannot run the exported graph on a {shape} input ({_first_line(exc)}): "
                    f"the trace fixed a size that changes with the input") from exc
            worst = max(worst, float((out - eager).abs().max()))
    return worst


def check_onnx(net: nn.Module, path: PathLike, sizes: Optional[Sequence[Tuple[int, int, int]]] = None,
               seed: int = 0) -> Tuple[float, List[Tuple[int, int, int]]]:
    """Largest absolute difference between onnxruntime on ``path`` and ``net`` in eager mode, over
    random inputs of ``sizes`` (``(batch, H, W)``; default: two odd sizes no trace used, padded up to
    the file's ``size_multiple`` as restore pads). Returns ``(max abs difference, sizes)``; raises
    :class:`OnnxExportError` naming the size where the network or onnxruntime fails."""
    runner = load_onnx(path)
    sizes = list(sizes or _check_sizes(runner.size_multiple))
    return _compare(net, runner, sizes, seed, str(path)), sizes


class OnnxNetwork:
    """An exported ONNX file run by onnxruntime, called like the torch network: ``B x C x H x W``
    tensor in [0, 1] -> restored tensor of the same size (on the input's device).

    ``size_multiple`` (from the file's metadata) lets tiled inference pad as for the torch network.
    """

    def __init__(self, path: PathLike, device: Union[str, torch.device] = "cpu") -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's own exception types)
            raise OnnxExportError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.size_multiple = int(meta.get("size_multiple", "1"))
        self.in_channels = int(meta.get("in_channels", "3"))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise OnnxInputError(f"{self.path}: the input image tensor is {got}; the network takes floats in [0, 1] "
                                 f"(B x {self.in_channels} x H x W): pass x.float() / 255 for 8-bit images")
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device, x.dtype)

    def eval(self) -> "OnnxNetwork":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OnnxNetwork":
        return self


def load_onnx(path: PathLike, device: Union[str, torch.device] = "cpu") -> OnnxNetwork:
    """An ONNX file (exported by :func:`export_onnx`, or any with one image input and output) as a
    callable network."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: ONNX file not found")
    return OnnxNetwork(path, device)

"""The ``constyle`` command line: ``constyle <subcommand> ...``.

Subcommands:

- ``constyle restore --checkpoint CKPT [--config CFG] --input DIR_OR_FILE --output DIR [--tile N
  --tile-overlap N] [--prompt-size full|N] [--compare]``: restore images with a trained network (see
  :mod:`constyle_plugin.tools.restore`).
- ``constyle train CONFIG [--work-dir D] [--cfg-options k=v ...] [--resume [CKPT]] [--amp]
  [--launcher none|pytorch|slurm|mpi]``: train from an MMEngine config with MMEngine's Runner
  (both ConStyle v2 stages; configs in ``options/mmengine/``).

- ``constyle convert --checkpoint CKPT_OR_DIR [--config CFG] --output DIR_OR_FILE [--to basicsr|mmengine]``:
  a trainer checkpoint to a ``save_pretrained`` folder, or back, or to the other trainer's checkpoint (see
  :mod:`constyle_plugin.tools.convert`).
- ``constyle export --checkpoint CKPT_OR_DIR [--config CFG] --onnx OUT.onnx``: ONNX export, checked with
  onnxruntime (see :mod:`constyle_plugin.tools.export`).
- ``constyle evaluate --checkpoint CKPT_OR_DIR (--benchmark SETTING --root DIR [--tasks T ...] | --lq DIR --gt DIR
  [--name TASK]) [--y-channel] [--crop-border N] [--tile N] [--prompt-size full|N] --output DIR``: PSNR / SSIM
  of a restored test set, as BasicSR computes them, in the papers' table (see :mod:`constyle_plugin.tools.evaluate`).
- ``constyle data {check,prepare} SRC... [--root R] [--copy]``: the field's standard sets found, checked
  against the packaged SHA-256 manifest and laid out (see :mod:`constyle_plugin.tools.data`).
- ``constyle inspect IMAGE|FOLDER... [--output DIR] [--json] [--prompter PATH] [--top K] [--size N]``: the
  degradations the prompter recognises in each image, and a picture of their latent prompts among the
  package's reference degradations (see :mod:`constyle_plugin.tools.inspection`).

Each subcommand is a function adding its subparser, in :data:`SUBCOMMANDS`; the ones whose module in
``constyle_plugin/tools/`` defines ``add_<name>_arguments`` and ``<name>_main`` are a :class:`ToolCommand`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

from .errors import ConStyleError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


MMENGINE_MISSING = 'constyle train needs MMEngine: pip install "constyle-plugin[mmengine]"'


class CfgOptions(argparse.Action):
    """``--cfg-options KEY=VALUE ...`` parsed by MMEngine's DictAction, imported only when the option
    is given (the other subcommands work without MMEngine); an entry that is not KEY=VALUE is a
    usage error naming it."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if "=" not in v or v.startswith("=")]
        if bad:
            parser.error(f"argument {option_string}: {bad[0]!r} is not KEY=VALUE "
                         f"(e.g. train_cfg.max_iters=1000)")
        try:
            from mmengine.config import DictAction
        except ImportError:
            parser.error(MMENGINE_MISSING)
        try:
            DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)
        except (ValueError, TypeError) as exc:
            parser.error(f"argument {option_string}: {exc}")


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train from an MMEngine config (Runner.from_cfg)",
        description="Train from an MMEngine Python config with MMEngine's Runner, e.g. "
                    "constyle train options/mmengine/nafnet_constyle.py --work-dir work_dirs/run1")
    p.add_argument("config", metavar="CONFIG", help="path of the MMEngine config (.py)")
    p.add_argument("--work-dir", dest="work_dir", default=None,
                   help="where logs and checkpoints go (default: the config's work_dir, else "
                        "./work_dirs/<config name>)")
    p.add_argument("--cfg-options", dest="cfg_options", nargs="+", action=CfgOptions, default=None,
                   metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=1000 model.backbone.width=16 "
                        "'model.backbone.enc_blk_nums=[1,1,1,1]'")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume training: from CKPT, or without a value from the latest checkpoint "
                        "in the work dir (iteration, optimiser and LR scheduler state included)")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (needs a CUDA device)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="job launcher for distributed training")
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                   help="set by torch.distributed.launch (older PyTorch)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    try:
        import mmengine  # noqa: F401
    except ImportError:
        print(f"constyle: {MMENGINE_MISSING}", file=sys.stderr)
        return 2
    from .integrations.mmengine import train
    from .threads import pick_torch_threads

    note = pick_torch_threads()
    if note:
        print(f"constyle train: {note}", file=sys.stderr)

    from .interrupt import TrainingStopped, signal_name

    try:
        train(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, resume=args.resume,
              amp=args.amp, launcher=args.launcher, local_rank=args.local_rank)
    except TrainingStopped as exc:
        import shlex

        again = list(getattr(args, "argv", None) or [])
        if "--resume" in again:  # and its checkpoint, if one was given
            at = again.index("--resume")
            del again[at:at + (2 if at + 1 < len(again) and again[at + 1].endswith((".pth", ".pt")) else 1)]
        print(f"constyle train: stopped by {signal_name(exc.signum)} after iteration {exc.iteration}; saved "
              f"{', '.join(exc.saved)}. Resume with: constyle {shlex.join(again + ['--resume'])}",
              file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("constyle train: stopped at once by Ctrl-C; nothing was saved after the last checkpoint",
              file=sys.stderr, flush=True)
        return 130
    return 0


class ToolCommand(NamedTuple):
    """A subcommand whose module ``constyle_plugin.tools.<module>`` defines ``add_<name>_arguments(parser)``
    and ``<name>_main(args) -> int``; imported when the parser is built."""

    name: str
    module: str
    help: str
    description: str

    def add(self, subparsers) -> None:
        tool = importlib.import_module(f"{__package__}.tools.{self.module}")
        p = subparsers.add_parser(self.name, help=self.help, description=self.description)
        getattr(tool, f"add_{self.name}_arguments")(p)
        p.set_defaults(func=getattr(tool, f"{self.name}_main"))


TOOL_COMMANDS = (
    ToolCommand(
        "restore", "restore", "restore images with a trained network (BasicSR or MMEngine checkpoint)",
        "Restore an image or a folder of images with a trained network, e.g. constyle restore "
        "--checkpoint experiments/NAFNet_ConStyle/models/net_g_latest.pth --input lq/ --output out/ "
        "--tile 512 --tile-overlap 32 --compare"),
    ToolCommand(
        "evaluate", "evaluate", "restore a test set and report PSNR / SSIM (BasicSR's metrics) as the papers' table",
        "Restore every test image of an all-in-one setting (--benchmark three-task|five-task|constyle-v2 "
        "--root DIR) or of a folder pair (--lq / --gt, paired by file stem) and write PSNR / SSIM "
        "(BasicSR's calculate_psnr / calculate_ssim, RGB or --y-channel) as the papers' table: "
        "metrics.json / .md / .csv with side-by-side panels, e.g. constyle evaluate --checkpoint run/ "
        "--benchmark three-task --root data/test --output eval/"),
    ToolCommand(
        "data", "data", "find, check (SHA-256 manifest) and lay out the field's standard data sets",
        "The field's standard sets (CBSD68, Rain100L test, BSD400, LIVE1, RainTrainL) from what you "
        "downloaded: `constyle data check SRC...` says whether each is the standard copy, which files "
        "differ and how, and what is missing; `constyle data prepare SRC... --root R [--copy]` lays them "
        "out under R in the settings' layouts, e.g. constyle data prepare ~/Downloads/CBSD68 "
        "~/Downloads/Rain100L --root data/"),
    ToolCommand(
        "inspect", "inspect_command",
        "what the prompter sees: each image's likely degradations, and a picture of the prompts",
        "Print each image's most likely degradations as the prompter's pre-training head sees them "
        "(or, for a prompter without a head, the nearest of the package's reference degradations) "
        "and whether its latent prompt lies near a reference cluster; with --output, draw the "
        "prompts on a 2-D map of the reference degradations, e.g. constyle inspect my_photos/ "
        "--output inspect/"),
)
_TOOLS = {t.name: t for t in TOOL_COMMANDS}


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="trainer checkpoint <-> save_pretrained folder (config.json + model.safetensors)",
        description="Convert a BasicSR (params / params_ema) or MMEngine checkpoint of a wrapped net into a "
                    "save_pretrained folder (or, with --to, into the other trainer's checkpoint), or a folder into a "
                    "BasicSR / MMEngine checkpoint, e.g. constyle "
                    "convert --checkpoint experiments/NAFNet_ConStyle_v2/models/net_g_latest.pth --output run/; "
                    "constyle convert --checkpoint run/ --to mmengine --output run.pth")
    p.add_argument("--checkpoint", required=True, help="a BasicSR / MMEngine .pth, or a save_pretrained folder")
    p.add_argument("--config", default=None,
                   help="the run's BasicSR .yml or MMEngine .py (default: the config its trainer recorded)")
    p.add_argument("--output", required=True, help="the folder to write (from a checkpoint) or the .pth file "
                                                   "(from a folder)")
    p.add_argument("--to", choices=["basicsr", "mmengine"], default=None,
                   help="write a trainer checkpoint of this layout: from a folder (default basicsr), or from the "
                        "other trainer's checkpoint")
    p.add_argument("--include-prompter", dest="include_prompter", action="store_true", default=None,
                   help="store the prompter's weights in the folder (default: only when it is not the packaged one)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .tools.convert import from_trainer_checkpoint, to_trainer_checkpoint, trainer_to_trainer
    from .core.pretrained import is_pretrained_dir

    if is_pretrained_dir(args.checkpoint):
        out = to_trainer_checkpoint(args.checkpoint, args.output, trainer=args.to or "basicsr")
        print(f"wrote the {args.to or 'basicsr'} checkpoint {out}")
    elif args.to is not None:
        out = trainer_to_trainer(args.checkpoint, args.output, args.to, config=args.config)
        print(f"wrote the {args.to} checkpoint {out}")
    else:
        out = from_trainer_checkpoint(args.checkpoint, args.output, config=args.config,
                                      include_prompter=args.include_prompter)
        print(f"wrote {out}/config.json and its weights")
    return 0


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained net to ONNX (prompter inside the graph)",
        description="Export a save_pretrained folder or a BasicSR / MMEngine checkpoint to ONNX (dynamic batch, "
                    "height and width), checked with onnxruntime against the eager network, e.g. constyle export "
                    "--checkpoint run/ --onnx net.onnx")
    p.add_argument("--checkpoint", required=True, help="a save_pretrained folder or a BasicSR / MMEngine .pth")
    p.add_argument("--config", default=None,
                   help="the run's BasicSR .yml or MMEngine .py (default: the config its trainer recorded)")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the file with onnxruntime against the eager network")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .tools.export import DEFAULT_OPSET, export_onnx
    from .tools.restore import load_network

    if str(args.checkpoint).endswith(".onnx"):
        raise ConStyleError(f"--checkpoint: {args.checkpoint} is already an ONNX file")
    net = load_network(args.checkpoint, args.config, device="cpu")
    checked: List[str] = []

    def report(diff: float, sizes: List[Tuple[int, int, int]]) -> None:
        where = ", ".join(f"{b}x{h}x{w}" for b, h, w in sizes)
        checked.append(f"; onnxruntime vs eager at {where}: max abs diff {diff:.2e}")

    out = export_onnx(net, args.onnx, opset=args.opset or DEFAULT_OPSET, check=args.check, report=report)
    print(f"wrote {out}" + "".join(checked))
    return 0


# (name, function adding the subparser); each subparser sets ``func`` returning an exit code.
SUBCOMMANDS: List[Tuple[str, Callable]] = [("train", _add_train), ("restore", _TOOLS["restore"].add),
                                           ("convert", _add_convert), ("export", _add_export),
                                           ("evaluate", _TOOLS["evaluate"].add), ("data", _TOOLS["data"].add),
                                           ("inspect", _TOOLS["inspect"].add)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="constyle", description="ConStyle v2 prompter for any U-Net: training and tools.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"constyle-plugin {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for _, add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``constyle`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the resume line of a stopped run
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # Configuration mistakes get one clear line (the key at fault), not a traceback.
        from .errors import ConfigError
        from .core.prompter import CheckpointError

        restore_errors = (OSError, CheckpointError, ValueError)  # RestoreError is a ValueError
        if isinstance(exc, ConfigError) or (args.command in ("restore", "convert", "export", "evaluate", "data", "inspect")
                                             and isinstance(exc, restore_errors)):
            print(f"constyle {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

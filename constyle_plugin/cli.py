"""The ``constyle`` command line: ``constyle <subcommand> ...``.

Subcommands:

- ``constyle restore --checkpoint CKPT [--config CFG] --input DIR_OR_FILE --output DIR [--tile N
  --tile-overlap N] [--compare]``: restore images with a trained network (see
  :mod:`constyle_plugin.inference`).
- ``constyle train CONFIG [--work-dir D] [--cfg-options k=v ...] [--resume [CKPT]] [--amp]
  [--launcher none|pytorch|slurm|mpi]``: train from an MMEngine config with MMEngine's Runner
  (both ConStyle v2 stages; configs in ``options/mmengine/``).

More subcommands are added with :func:`add_subcommand`-style functions in :data:`SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _add_train(subparsers) -> None:
    from mmengine.config import DictAction

    class CfgOptions(DictAction):
        """MMEngine's DictAction; an entry that is not KEY=VALUE is a usage error naming it."""

        def __call__(self, parser, namespace, values, option_string=None):
            bad = [v for v in values if "=" not in v or v.startswith("=")]
            if bad:
                parser.error(f"argument {option_string}: {bad[0]!r} is not KEY=VALUE "
                             f"(e.g. train_cfg.max_iters=1000)")
            try:
                super().__call__(parser, namespace, values, option_string)
            except (ValueError, TypeError) as exc:
                parser.error(f"argument {option_string}: {exc}")

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
    from .integrations.mmengine import train
    from .threads import pick_torch_threads

    note = pick_torch_threads()
    if note:
        print(f"constyle train: {note}", file=sys.stderr)

    train(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, resume=args.resume,
          amp=args.amp, launcher=args.launcher, local_rank=args.local_rank)
    return 0


def _add_restore(subparsers) -> None:
    from .inference import add_restore_arguments, restore_main

    p = subparsers.add_parser(
        "restore", help="restore images with a trained network (BasicSR or MMEngine checkpoint)",
        description="Restore an image or a folder of images with a trained network, e.g. constyle restore "
                    "--checkpoint experiments/NAFNet_ConStyle/models/net_g_latest.pth --input lq/ --output out/ "
                    "--tile 512 --tile-overlap 32 --compare")
    add_restore_arguments(p)
    p.set_defaults(func=restore_main)


# (name, function adding the subparser); each subparser sets ``func`` returning an exit code.
SUBCOMMANDS: List[Tuple[str, Callable]] = [("train", _add_train), ("restore", _add_restore)]


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
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # Configuration mistakes get one clear line (the key at fault), not a traceback.
        from .errors import ConfigError
        from .prompter import CheckpointError

        restore_errors = (OSError, CheckpointError, ValueError)  # RestoreError is a ValueError
        if isinstance(exc, ConfigError) or (args.command == "restore" and isinstance(exc, restore_errors)):
            print(f"constyle {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

"""The ``constyle inspect`` command: its options, and the run that prints the table and writes the picture
(:mod:`constyle_plugin.tools.inspection` computes, :mod:`constyle_plugin.tools.inspection_plot` draws)."""
from __future__ import annotations

import json
import sys

from ..core.degradation_head import head_path
from .inspection import DEFAULT_SIZE, NO_HEAD_NOTE, format_table, inspect_images
from .inspection_plot import draw_projection
from .restore import check_device, check_output_folder

__all__ = ["add_inspect_arguments", "inspect_main"]


def add_inspect_arguments(parser) -> None:
    """The ``constyle inspect`` options."""
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER",
                        help="image files and folders (searched recursively)")
    parser.add_argument("--output", default=None,
                        help="folder for inspect.png (the projection) and inspect.json")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of the table (notes go to stderr)")
    parser.add_argument("--prompter", default=None,
                        help="prompter file (default: the packaged one); its degradation head is read from "
                             "NAME.head.safetensors beside it, or from a stage-1 net_g_<iter>.pth itself")
    parser.add_argument("--top", type=int, default=3, help="how many degradation types per image (default 3)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"longer side the prompter sees, in px: larger images are shrunk to it, smaller "
                             f"ones kept (default {DEFAULT_SIZE}; 0: whole images)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, auto ...")


def inspect_main(args) -> int:
    """Run ``constyle inspect`` from parsed arguments."""
    device = check_device(args.device)
    output = check_output_folder(args.output) if args.output else None
    result = inspect_images(args.inputs, prompter=args.prompter, size=args.size, top=args.top, device=device)
    notes = []
    if result.head is None:
        notes.append(NO_HEAD_NOTE.format(path=result.prompter, sidecar=head_path(result.prompter).name))
    notes += [f"skipped: {why}" for _, why in result.skipped]
    report = result.to_json()
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "inspect.json").write_text(json.dumps(report, indent=1) + "\n")
        picture = output / "inspect.png"
        missing = draw_projection(result, picture)
        notes.append(missing or f"wrote {picture} and {output / 'inspect.json'}")
    else:
        notes.append("add --output DIR for the picture (inspect.png) and inspect.json")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(result, args.top))
    for note in notes:
        print(note, file=sys.stderr if args.json else sys.stdout)
    return 0

#!/usr/bin/env python
"""How fast ``constyle restore`` runs on one large image: whole or in tiles, at each prompt size.

One process builds NAFNet (default: width 32, the GoPro configuration) bare and wrapped with the
packaged prompter (the weights do not change the cost), makes one ``--height x --width`` image and
restores it the way ``constyle restore`` does (:func:`constyle_plugin.tools.restore.tiled_forward`, padded
to the network's size multiple):

* ``bare``: the backbone alone, whole and with ``--tile``;
* ``wrapped, prompt P``: the wrapped net at each ``--prompt-size``, whole and with ``--tile`` (one
  prompt per image: the prompter runs once on the whole image at that prompt size);
* ``wrapped, prompt per tile``: each tile prompted from itself alone (what an exported ONNX graph does),
  for comparison.

Each variant runs ``--repeats`` times, the variants interleaved (bare first in one round, last in the
next) so that a change of machine load hits them alike; the report gives the median seconds, the
ratio to the bare backbone run the same way, and how often the prompter ran.

Outputs in ``--out``: ``restore_speed_<device>.json`` and ``.md``. ``--smoke`` runs in seconds (tiny
net, 96 x 128 image, tiles of 64) for CI; its numbers mean nothing.

Example (the CPU run recorded in benchmarks/results)::

    python benchmarks/restore_speed.py --device cpu --threads 1 --height 1536 --width 2048 --tile 512 \\
        --prompt-size full 256 --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from _host import finish_report, report_header, resolve_device, sync  # noqa: E402  (benchmarks/_host.py)

from constyle_plugin import wrap_unet
from constyle_plugin.archs import NAFNet
from constyle_plugin.tools.restore import size_multiple_of, tiled_forward
from constyle_plugin.core.promptmaps import parse_prompt_size

SMOKE_NAFNET = {"width": 8, "enc_blk_nums": (1, 1, 1, 1), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--tile-overlap", dest="overlap", type=int, default=32)
    parser.add_argument("--prompt-size", dest="prompt_sizes", nargs="+", default=[None, 256],
                        metavar="full|PIXELS", type=parse_prompt_size)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu (CPU device, --threads 1): the thread's CPU time, which leaves "
                             "out the time spent waiting for a core on a shared machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds-long CI run (numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    s = report["settings"]
    lines = [f"# Restore speed of one {s['height']} x {s['width']} image: {report['device']} "
             f"({report['device_name']})", "", "Command:", "", "```", report["command"], "```", "",
             f"{report['date']}; torch {report['torch']}; {report['torch_threads']} torch thread(s) on "
             f"{report['cpu_count']} CPUs; load average (1/5/15 min) {report['load_average_start']} at start, "
             f"{report['load_average_end']} at end; wall time {report['wall_time_s']:.0f} s. NAFNet "
             f"{s['nafnet'] or 'width 32 (class defaults)'}; tiles {s['tile']} px, overlap {s['overlap']}; "
             f"{s['repeats']} timed run(s) of each variant, interleaved; "
             + ("seconds of CPU time of the one torch thread (time.thread_time: waiting for a core on the shared "
                "machine left out)." if s.get("clock") == "cpu" else "wall-clock seconds."), "",
             "| variant | whole image (s) | ratio to bare | tiled (s) | ratio to bare tiled | prompter runs "
             "whole / tiled |", "|---|---|---|---|---|---|"]
    bare = report["results"]["bare"]
    for name, res in report["results"].items():
        whole, tiled = res.get("whole"), res["tiled"]
        whole_cells = (f"{whole['median']:.2f} | {whole['median'] / bare['whole']['median']:.3f}" if whole
                       else "- | -")
        lines.append(f"| {name} | {whole_cells} | {tiled['median']:.2f} | "
                     f"{tiled['median'] / bare['tiled']['median']:.3f} | "
                     f"{res.get('prompter_calls_whole', '-')} / {res['prompter_calls_tiled']} |")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.height, args.width, args.tile, args.overlap = 96, 128, 64, 16
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or args.threads != 1):
        raise SystemExit("--clock cpu: measures one thread's CPU time; use it with --device cpu --threads 1")
    prompt_sizes = list(args.prompt_sizes)
    torch.manual_seed(args.seed)
    config = SMOKE_NAFNET if args.smoke else {}
    bare = NAFNet(**config).to(device).eval()
    wrapped = wrap_unet(NAFNet(**config), prompt_size=None).to(device).eval()
    wrapped.backbone.load_state_dict(bare.state_dict())
    calls: List[int] = [0]
    wrapped.prompter.register_forward_pre_hook(lambda module, inputs: calls.__setitem__(0, calls[0] + 1))
    multiple = size_multiple_of(bare)
    x = torch.rand(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(args.seed)).to(device)

    def run(net: Callable, prompt_size: Optional[int], tile: Optional[int]) -> Callable[[], float]:
        def timed() -> float:
            wrapped.prompt_size = prompt_size
            now = time.thread_time if args.clock == "cpu" else time.perf_counter
            sync(device)
            start = now()
            with torch.no_grad():
                tiled_forward(net, x, tile=tile, overlap=args.overlap, multiple=multiple)
            sync(device)
            return now() - start
        return timed

    variants: Dict[str, Dict[str, Callable[[], float]]] = {
        "bare": {"whole": run(bare, None, None), "tiled": run(bare, None, args.tile)}}
    for size in prompt_sizes:
        label = f"wrapped, prompt {size or 'full'}"
        variants[label] = {"whole": run(wrapped, size, None), "tiled": run(wrapped, size, args.tile)}
    variants["wrapped, prompt per tile (full)"] = {"tiled": run(lambda tile: wrapped(tile), None, args.tile)}

    started = time.time()
    report: Dict[str, Any] = {
        **report_header("restore_speed.py", argv, device),
        "settings": {"height": args.height, "width": args.width, "tile": args.tile, "overlap": args.overlap,
                     "prompt_sizes": prompt_sizes, "repeats": args.repeats, "seed": args.seed, "clock": args.clock,
                     "nafnet": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                     "smoke": args.smoke},
        "results": {}, "notes": [],
    }
    print(f"restore speed on {device}, {torch.get_num_threads()} thread(s), load {report['load_average_start']}",
          flush=True)
    times: Dict[str, Dict[str, List[float]]] = {n: {m: [] for m in v} for n, v in variants.items()}
    prompter_calls: Dict[str, Dict[str, int]] = {n: {} for n in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            for mode, fn in variants[name].items():
                calls[0] = 0
                times[name][mode].append(fn())
                prompter_calls[name][mode] = calls[0]
                print(f"  {name}, {mode}: {times[name][mode][-1]:.2f} s, prompter ran {calls[0]} time(s)", flush=True)
    for name in variants:
        res: Dict[str, Any] = {}
        for mode, values in times[name].items():
            res[mode] = {"median": statistics.median(values), "seconds": values}
            if name != "bare":
                res[f"prompter_calls_{mode}"] = prompter_calls[name][mode]
        if name == "bare":
            res["prompter_calls_whole"] = res["prompter_calls_tiled"] = 0
        report["results"][name] = res
    report["notes"].append("Tiled restore of a wrapped net runs the prompter once per image (on the whole image, "
                           "at the prompt size); 'per tile' prompts each tile from itself, as an exported ONNX "
                           "graph does.")
    path = finish_report(report, started, args.out, f"restore_speed_{device.type}", write_markdown)
    print(f"wrote {path}.json, .md", flush=True)
    return report


if __name__ == "__main__":
    main()

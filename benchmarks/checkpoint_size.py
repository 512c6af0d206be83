#!/usr/bin/env python
"""How much smaller a save_pretrained folder is than the BasicSR checkpoint of the same wrapped net.

Builds the network of ``options/nafnet_constyle.yml`` (``network_g``: NAFNet width 32 wrapped with the
packaged prompter), writes its BasicSR checkpoint the way BasicSR's ``save_network`` does
(``torch.save({"params": ..., "params_ema": ...})``, the EMA copy as the options' EMA run keeps it) into
an ``experiments/<name>/models/`` layout beside BasicSR's options copy, converts it with
``constyle convert`` (the prompter not stored), and compares sizes: the difference should be the
prompter's size once per weight copy. The same without an EMA copy (``params`` only).

Outputs in ``--out``: ``checkpoint_size.json`` (command, versions, every size) and ``checkpoint_size.md``.
``--smoke`` uses a width-8 NAFNet and writes into a temporary folder's report; its numbers mean nothing.

Example (the run recorded in benchmarks/results)::

    python benchmarks/checkpoint_size.py
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _host import report_header  # noqa: E402

from constyle_plugin import wrap_unet  # noqa: E402
from constyle_plugin.archs import NAFNet  # noqa: E402
from constyle_plugin.cli import main as constyle  # noqa: E402

OPTIONS = ROOT / "options" / "nafnet_constyle.yml"


def _bytes(state: Dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _folder_bytes(folder: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def measure(work: Path, width: Optional[int], ema: bool) -> Dict[str, Any]:
    opt = yaml.safe_load(OPTIONS.read_text())
    backbone = {k: v for k, v in opt["network_g"]["backbone"].items() if k != "type"}
    if width is not None:
        backbone["width"] = width
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = wrap_unet(NAFNet(**backbone))
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    exp = work / ("ema" if ema else "params_only") / "experiments" / opt["name"]
    (exp / "models").mkdir(parents=True)
    options = dict(opt, network_g={**opt["network_g"], "backbone": {"type": "NAFNet", **backbone}})
    (exp / f"{opt['name']}.yml").write_text("# GENERATE TIME: benchmark\n" + yaml.safe_dump(options))
    checkpoint = exp / "models" / "net_g_latest.pth"
    ema_state = {k: v.clone() for k, v in state.items()}  # BasicSR keeps the EMA copy in a module of its own
    torch.save({"params": state, **({"params_ema": ema_state} if ema else {})}, checkpoint)
    folder = exp.parent.parent / "run"
    command = ["convert", "--checkpoint", str(checkpoint), "--output", str(folder)]
    if constyle(command) != 0:
        raise SystemExit("constyle convert failed")
    prompter = {k: v for k, v in state.items() if k.startswith("prompter.")}
    copies = 2 if ema else 1
    files = _folder_bytes(folder)
    saved = sum(files.values())
    basicsr = checkpoint.stat().st_size
    return {
        "ema": ema, "backbone": backbone, "copies": copies,
        "basicsr_checkpoint_bytes": basicsr, "saved_folder_bytes": saved, "saved_files": files,
        "difference_bytes": basicsr - saved,
        "prompter_tensor_bytes": _bytes(prompter), "prompter_tensors": len(prompter),
        "expected_difference_bytes": copies * _bytes(prompter),
        "difference_over_expected": (basicsr - saved) / (copies * _bytes(prompter)),
        "convert_command": "constyle " + " ".join(command[:2] + ["experiments/NAME/models/net_g_latest.pth"]
                                                  + command[3:4] + ["run/"]),
    }


def write_markdown(report: Dict[str, Any], path: Path) -> None:
    lines: List[str] = [
        "# save_pretrained folder vs BasicSR checkpoint (NAFNet, options/nafnet_constyle.yml)", "",
        f"Command: `{report['command']}` ({report['date']}, torch {report['torch']}).", "",
        "| run keeps | BasicSR checkpoint | saved folder | difference | prompter x copies | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(f"| {'params + params_ema' if r['ema'] else 'params only'} | {r['basicsr_checkpoint_bytes']:,} B "
                     f"| {r['saved_folder_bytes']:,} B | {r['difference_bytes']:,} B "
                     f"| {r['prompter_tensor_bytes']:,} B x {r['copies']} | {r['difference_over_expected']:.4f} |")
    lines += ["", "Saved folder: `config.json` + `model.safetensors` (+ `model_ema.safetensors`), written by "
              "`constyle convert` without the prompter. Prompter: its state-dict tensors (weights, BatchNorm "
              "buffers, pretext classifier) as the BasicSR checkpoint holds them. The rest of the difference is "
              "the container formats (pickle names per tensor vs one safetensors header) and config.json.", ""]
    path.write_text("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--smoke", action="store_true", help="width 8: seconds, numbers mean nothing")
    args = parser.parse_args(argv)
    report = report_header("checkpoint_size.py", sys.argv[1:] if argv is None else argv, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        report["results"] = [measure(Path(tmp), 8 if args.smoke else None, ema) for ema in (True, False)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint_size.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "checkpoint_size.md")
    for r in report["results"]:
        print(f"{'ema' if r['ema'] else 'params'}: BasicSR {r['basicsr_checkpoint_bytes']:,} B, folder "
              f"{r['saved_folder_bytes']:,} B, smaller by {r['difference_bytes']:,} B = "
              f"{r['difference_over_expected']:.4f} x {r['copies']} prompter(s) of {r['prompter_tensor_bytes']:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())

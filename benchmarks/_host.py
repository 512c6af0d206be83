"""Host helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this
folder is on ``sys.path``): the device, its name, the load average, synchronisation."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report_header(script: str, argv: Sequence[str], device: torch.device) -> Dict[str, Any]:
    """The first entries of a benchmark report: the command, when, and on what (software, device, load)."""
    return {
        "command": shlex.join(["python", f"benchmarks/{script}"] + list(argv)),
        "argv": list(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device.type, "device_name": device_name(device), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average_start": load_average(),
    }


def finish_report(report: Dict[str, Any], started: float, out: Path, stem: str,
                  write_markdown: Callable[[Path, Dict[str, Any]], None]) -> Path:
    """Close a report (load average at the end, wall time since ``started``) and write ``stem.json`` and
    ``stem.md`` into ``out``; returns ``out / stem``."""
    report["load_average_end"] = load_average()
    report["wall_time_s"] = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_markdown(out / f"{stem}.md", report)
    return out / stem

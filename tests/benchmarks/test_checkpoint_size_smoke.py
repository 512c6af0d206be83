"""benchmarks/checkpoint_size.py end to end (width 8): a save_pretrained folder without the prompter is
smaller than the BasicSR checkpoint of the same net by the prompter's size, once per weight copy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_checkpoint_size_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "checkpoint_size.py"), "--smoke", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "checkpoint_size.json").read_text())
    assert report["command"] == "python benchmarks/checkpoint_size.py --smoke --out " + str(tmp_path)
    assert [r["ema"] for r in report["results"]] == [True, False]
    for r in report["results"]:
        assert r["backbone"]["width"] == 8
        assert set(r["saved_files"]) == {"config.json", "model.safetensors"} | (
            {"model_ema.safetensors"} if r["ema"] else set())
        # smaller by the prompter's tensors per copy; pickle records of its tensors add a little on top
        assert 1.0 <= r["difference_over_expected"] < 1.1, r
    assert (tmp_path / "checkpoint_size.md").read_text().startswith("# save_pretrained folder vs BasicSR checkpoint")

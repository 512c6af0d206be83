"""``--runs-from`` (benchmarks/_runs.py) knows reused runs by the prompter file they were trained with, so
that runs of a replaced prompter never pass for the packaged one's."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    from _runs import RunsFromError, runs_from, runs_named
finally:
    sys.path.pop(0)

OLD, NEW, PREVIOUS = "a" * 64, "b" * 64, "c" * 64
SETTINGS = {"iters": 10}


def _report(tmp_path: Path, name: str, runs, prompter=OLD, compared=None) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "config": dict(SETTINGS), "command": f"made {name}", "date": "2026-12-06",
        "prompter": {"path": "p.safetensors", "sha256": prompter, "random": False},
        "compared": {n: {"path": f"{n}.safetensors", "sha256": h} for n, h in (compared or {}).items()},
        "runs": [{"variant": v, "seed": s, "psnr": 20.0 + s} for v, s in runs]}))
    return str(path)


def _merge(sources, variants=(), seeds=(0, 1), prompters=None):
    return runs_from(sources, SETTINGS, ["iters"], list(variants), list(seeds), "a report", lambda e: {},
                     prompters=prompters)


def test_runs_of_a_replaced_prompter_become_the_row_given_its_file(tmp_path):
    src = _report(tmp_path, "old", [("origin", 0), ("origin", 1), ("constyle", 0), ("constyle", 1)], prompter=OLD)
    runs, records = _merge([src], prompters={"constyle": NEW, "packaged_old": OLD})
    assert sorted((r["variant"], r["seed"]) for r in runs) == [
        ("origin", 0), ("origin", 1), ("packaged_old", 0), ("packaged_old", 1)]
    assert all(r["prompter_sha256"] == OLD for r in runs if r["variant"] == "packaged_old")
    assert all("prompter_sha256" not in r for r in runs if r["variant"] == "origin")
    assert records[0]["renamed"] == {"constyle": "packaged_old"}
    assert runs_named(records[0]) == "origin, packaged_old (its constyle runs)"


def test_runs_of_a_prompter_no_row_uses_are_refused_with_the_file_and_the_hashes(tmp_path):
    src = _report(tmp_path, "old", [("constyle", 0), ("constyle", 1)], prompter=OLD)
    with pytest.raises(RunsFromError) as exc:
        _merge([src], prompters={"constyle": NEW})
    message = str(exc.value)
    assert src in message and OLD[:16] in message and NEW[:16] in message and "--compare" in message


def test_runs_of_the_same_file_keep_their_row_and_yield_to_the_rows_trained_here(tmp_path):
    src = _report(tmp_path, "same", [("constyle", 0), ("constyle", 1), ("previous", 0), ("previous", 1)], prompter=NEW,
                  compared={"previous": PREVIOUS})
    runs, records = _merge([src], prompters={"constyle": NEW, "previous": PREVIOUS})
    assert sorted(r["variant"] for r in runs) == ["constyle", "constyle", "previous", "previous"]
    assert "renamed" not in records[0]
    runs, _ = _merge([src], variants=["constyle"], prompters={"constyle": NEW, "previous": PREVIOUS})
    assert [r["variant"] for r in runs] == ["previous", "previous"]


def test_a_merged_report_is_read_by_the_hash_each_run_carries(tmp_path):
    # a report of merged runs records no single prompter; each run says which file it was trained with
    path = tmp_path / "merged.json"
    path.write_text(json.dumps({
        "config": dict(SETTINGS), "prompter": {"path": None, "sha256": None, "random": False}, "compared": {},
        "runs": [{"variant": "constyle", "seed": 0, "prompter_sha256": OLD},
                 {"variant": "constyle", "seed": 1, "prompter_sha256": OLD}]}))
    runs, _ = _merge([str(path)], prompters={"constyle": NEW, "old": OLD})
    assert {r["variant"] for r in runs} == {"old"}
    with pytest.raises(RunsFromError):
        _merge([str(path)], prompters={"constyle": NEW})


def test_a_random_prompter_and_rows_without_a_file_are_taken_by_name(tmp_path):
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps({
        "config": dict(SETTINGS), "prompter": {"path": "/tmp/random.safetensors", "sha256": OLD, "random": True},
        "runs": [{"variant": "constyle", "seed": 0}, {"variant": "learned", "seed": 0}]}))
    runs, _ = _merge([str(path)], seeds=[0], prompters={"constyle": NEW})
    assert sorted(r["variant"] for r in runs) == ["constyle", "learned"]


def test_a_replaced_prompters_runs_yield_to_the_row_an_earlier_file_gave(tmp_path):
    new = _report(tmp_path, "new", [("constyle", 0), ("constyle", 1)], prompter=NEW)
    old = _report(tmp_path, "old", [("origin", 0), ("origin", 1), ("constyle", 0), ("constyle", 1)], prompter=OLD)
    runs, _ = _merge([new, old], prompters={"constyle": NEW})
    assert sorted((r["variant"], r.get("prompter_sha256")) for r in runs) == [
        ("constyle", NEW), ("constyle", NEW), ("origin", None), ("origin", None)]
    with pytest.raises(RunsFromError):  # in the other order the old file's runs would fill the row: refused
        _merge([old, new], prompters={"constyle": NEW})

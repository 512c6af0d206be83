"""``--runs-from`` shared by the benchmark scripts that train variants over seeds (run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path``): take the runs of the variants this
invocation does not train from earlier reports of the same script, made with the same settings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple


class RunsFromError(ValueError):
    """A report given to ``--runs-from`` cannot serve this run; the message names the file and the reason."""


def runs_from(sources: Sequence[str], settings: Mapping[str, Any], must_match: Sequence[str],
              variants: Sequence[str], seeds: Sequence[int], report: str,
              record: Callable[[Dict[str, Any]], Dict[str, Any]],
              every_seed: bool = True) -> Tuple[List[Dict], List[Dict]]:
    """Merge the runs of earlier reports (JSON files, each ``{"config": {...}, "runs": [{"variant", "seed",
    ...}], "command", "date", ...}``) into this invocation.

    ``settings`` are this invocation's (``vars(args)``); every key of ``must_match`` must have the same value in
    each report's ``config``. From each report, in the order given, come the runs of the variants neither in
    ``variants`` (trained here) nor taken from an earlier file, for each of ``seeds``; a report that has a
    variant must have it for every seed (with ``every_seed=False``, for at least one: variants may then be
    run with different numbers of seeds). ``report`` names the expected file in messages (``"an allinone.json
    report"``); ``record(earlier report)`` gives the entries recorded about a source beyond its file, command,
    date and variants (what the caller checks against this run later: its layout, its test set).

    Returns ``(runs, sources)``: the runs taken (as the reports hold them) and one record a source file.
    Raises :class:`RunsFromError` on an unreadable report, other settings or missing seeds, and when
    ``variants`` is empty and no run was taken.
    """
    reused: List[Dict] = []
    records: List[Dict] = []
    for source in sources:
        try:
            earlier = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise RunsFromError(f"--runs-from {source}: cannot read {report} ({exc})") from None
        if not isinstance(earlier, dict):
            raise RunsFromError(f"--runs-from {source}: cannot read {report} (not a JSON object)")
        config = earlier.get("config", {})
        differ = [k for k in must_match if config.get(k) != settings[k]]
        if differ:
            raise RunsFromError(f"--runs-from {source}: made with other settings ("
                                + ", ".join(f"{k}: {config.get(k)!r} there, {settings[k]!r} here" for k in differ)
                                + ")")
        taken = {r["variant"] for r in reused}
        runs = [r for r in earlier.get("runs", []) if r["variant"] not in variants
                and r["variant"] not in taken and r["seed"] in seeds]
        missing = {(v, s) for v in {r["variant"] for r in runs} for s in seeds} - \
            {(r["variant"], r["seed"]) for r in runs}
        if missing and every_seed:
            raise RunsFromError(f"--runs-from {source}: lacks runs {sorted(missing)}")
        reused += runs
        records.append({"file": source, "command": earlier.get("command"), "date": earlier.get("date"),
                        "variants": sorted({r["variant"] for r in runs}), **record(earlier)})
    if not variants and not reused:
        raise RunsFromError("--variants: nothing to train and no --runs-from to report on")
    return reused, records

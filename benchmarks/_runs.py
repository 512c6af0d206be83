"""``--runs-from`` shared by the benchmark scripts that train variants over seeds (run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path``): take the runs of the variants this
invocation does not train from earlier reports of the same script, made with the same settings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple


class RunsFromError(ValueError):
    """A report given to ``--runs-from`` cannot serve this run; the message names the file and the reason."""


def prompter_hashes(report: Mapping[str, Any]) -> Dict[str, str]:
    """``{variant: sha256}`` of the prompter files a report's rows were trained with: ``constyle`` (its
    ``"prompter"``, unless a random network) and each ``--compare`` name (its ``"compared"``)."""
    hashes = {}
    prompter = report.get("prompter") or {}
    if prompter.get("sha256") and not prompter.get("random"):
        hashes["constyle"] = prompter["sha256"]
    for name, entry in (report.get("compared") or {}).items():
        if entry.get("sha256"):
            hashes[name] = entry["sha256"]
    return hashes


def runs_from(sources: Sequence[str], settings: Mapping[str, Any], must_match: Sequence[str],
              variants: Sequence[str], seeds: Sequence[int], report: str,
              record: Callable[[Dict[str, Any]], Dict[str, Any]],
              every_seed: bool = True,
              prompters: Optional[Mapping[str, Optional[str]]] = None) -> Tuple[List[Dict], List[Dict]]:
    """Merge the runs of earlier reports (JSON files, each ``{"config": {...}, "runs": [{"variant", "seed",
    ...}], "command", "date", ...}``) into this invocation.

    ``settings`` are this invocation's (``vars(args)``); every key of ``must_match`` must have the same value in
    each report's ``config``. From each report, in the order given, come the runs of the variants neither in
    ``variants`` (trained here) nor taken from an earlier file, for each of ``seeds``; a report that has a
    variant must have it for every seed (with ``every_seed=False``, for at least one: variants may then be
    run with different numbers of seeds). ``report`` names the expected file in messages (``"an allinone.json
    report"``); ``record(earlier report)`` gives the entries recorded about a source beyond its file, command,
    date and variants (what the caller checks against this run later: its layout, its test set).

    ``prompters`` (``{variant: sha256}``, this invocation's rows trained with a prompter file): an earlier run
    is then known by its prompter file, not its name. A run trained with the file of a row here becomes that
    row (the ``constyle`` runs of a report made with a prompter since replaced become the ``--compare`` row
    given that file), and carries the file's hash as ``prompter_sha256``; a run whose file no row here uses is
    refused (left out when its variant is trained here or taken from an earlier file), so that two
    prompters never share a row.

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
        renamed: Dict[str, str] = {}
        runs_here = []
        taken = {r["variant"] for r in reused}
        # a run's prompter file: recorded on the run, or else its report's file for its variant; none for
        # origin, the untrained prompter and the learned conditioning
        files = prompter_hashes(earlier) if prompters is not None else {}
        for run in earlier.get("runs", []):
            sha = (run.get("prompter_sha256") or files.get(run["variant"])) if prompters is not None else None
            if sha is not None:
                name = next((v for v, h in prompters.items() if h == sha), None)
                if name is None and (run["variant"] in variants or run["variant"] in taken):
                    continue  # its row is trained here or came from an earlier file: it would not be taken
                if name is None:
                    used = ", ".join(f"{v}: {h[:16]}…" for v, h in prompters.items() if h) or "none"
                    raise RunsFromError(
                        f"--runs-from {source}: its {run['variant']} runs were trained with the prompter file of "
                        f"sha256 {sha[:16]}…, which no row here uses ({used}); give that file as --compare "
                        f"NAME=PATH to keep them as a row of their own")
                if name != run["variant"]:
                    renamed[run["variant"]] = name
                run = {**run, "variant": name, "prompter_sha256": sha}
            runs_here.append(run)
        runs = [r for r in runs_here if r["variant"] not in variants
                and r["variant"] not in taken and r["seed"] in seeds]
        missing = {(v, s) for v in {r["variant"] for r in runs} for s in seeds} - \
            {(r["variant"], r["seed"]) for r in runs}
        if missing and every_seed:
            raise RunsFromError(f"--runs-from {source}: lacks runs {sorted(missing)}")
        reused += runs
        records.append({"file": source, "command": earlier.get("command"), "date": earlier.get("date"),
                        "variants": sorted({r["variant"] for r in runs}),
                        **({"renamed": {old: new for old, new in renamed.items()
                                        if any(r["variant"] == new for r in runs)}} if renamed else {}),
                        **record(earlier)})
    if not variants and not reused:
        raise RunsFromError("--variants: nothing to train and no --runs-from to report on")
    return reused, records


def runs_named(source: Mapping[str, Any]) -> str:
    """The variants a ``--runs-from`` source gave, for a report's header: ``"origin, previous (its constyle
    runs)"`` when runs were renamed after their prompter file."""
    renamed = {new: old for old, new in (source.get("renamed") or {}).items()}
    return ", ".join(f"{v} (its {renamed[v]} runs)" if v in renamed else v for v in source["variants"])

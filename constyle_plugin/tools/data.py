"""``constyle data``: the field's standard sets, found in what a user has downloaded, laid out in the
settings' layouts and checked against the manifest (:mod:`constyle_plugin.data.standard_sets`).

- ``constyle data check SRC...``: finds the standard sets under the given folders (official folders as
  released, the copies in the field's repositories, a PromptIR / AdaIR / ConStyle v2 layout, a root
  ``prepare`` wrote) and says for each whether it is the standard copy, which files differ and how,
  and what is missing with where the field gets it. Exit status 1 when a file differs.
- ``constyle data prepare SRC... --root R [--copy]``: the same check, then the sets found laid out under
  ``R`` (symbolic links; a hard link where symbolic links cannot be made; copies with ``--copy``) in the
  settings' layouts (``R/test``, ``R/Train``, ``R/Test_small``, ``R/LIVE1``) with PromptIR-style list
  files in ``R/data_dir``. Archives (.zip, .tar, .tar.gz, .tgz) given as SRC are unpacked into
  ``R/downloads`` first.

Files are found by content (SHA-256, for files whose byte size is a standard file's) and by name in the
folders that hold a set's names; only files named like a standard file are decoded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..core.pretrained import file_sha256
from ..data.imageio import IMAGE_EXTENSIONS
from ..data.standard_sets import ELSEWHERE, STANDARD_SETS, Verdict, compare_file, load_manifest
from ..errors import LayoutError, MissingFileError
from ..progress import progress

__all__ = ["Found", "add_data_arguments", "data_main", "find_standard_sets", "lay_out", "report_lines",
           "write_list_files"]

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")
LIST_FILES = {"BSD400": ("data_dir/noisy/denoise.txt", "Train/Denoise"),
              "RainTrainL": ("data_dir/rainy/rainTrain.txt", "Train/Derain")}
_TRAIN_RAIN = re.compile(r"^(no)?rain-([1-9][0-9]*)$")  # RainTrainL's names; Rain100L's are zero-padded
_SAY = {"differs": "differ", "same-pixels": "with the standard pixels"}
_SHOWN = 12  # differing files listed per set (all of them go to --report)


@dataclass(frozen=True)
class Found:
    """One file of a standard set: ``name`` its path in the set as released, ``role`` ``gt`` / ``lq``,
    ``path`` the user's file (None: missing), ``verdict`` the comparison with the manifest (None: the set
    has no manifest)."""

    set: str
    name: str
    role: str
    path: Optional[Path]
    verdict: Optional[Verdict]


# ------------------------------------------------------------------------------------------ finding
def _walk(sources: Sequence[Path], skip: Sequence[Path]) -> List[Path]:
    files = []
    for src in sources:
        if src.is_file():
            files.append(src)
            continue
        for folder, dirs, names in os.walk(src):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
            files += [here / n for n in sorted(names) if not n.startswith(".")]
    return [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]


def _stem(name: str) -> str:
    return Path(name).stem.casefold()


def find_standard_sets(sources: Sequence[os.PathLike], skip: Sequence[os.PathLike] = (),
                       manifest: Optional[str] = None, show_progress: bool = True) -> Dict[str, List[Found]]:
    """Every file of every standard set, found under ``sources`` (folders or image files; ``skip``: a
    folders not searched below the sources) and compared with ``manifest`` (default: the packaged one).

    Returns ``{set key: [Found, ...]}`` in :data:`STANDARD_SETS` order; a set none of whose files was found
    has all its files with ``path`` None (RainTrainL, without a manifest: an empty list).
    """
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise MissingFileError(f"{p}: no such file or folder")
    files = _walk(paths, [Path(s).resolve() for s in skip])
    sets = load_manifest(manifest)
    by_size: Dict[int, List[Path]] = defaultdict(list)
    by_folder: Dict[Path, Dict[str, Path]] = defaultdict(dict)
    for f in files:
        by_size[f.stat().st_size].append(f)
        by_folder[f.parent].setdefault(_stem(f.name), f)
    sha_cache: Dict[Path, str] = {}

    def sha(path: Path) -> str:
        if path not in sha_cache:
            sha_cache[path] = file_sha256(path)
        return sha_cache[path]

    total = sum(len(s["files"]) for s in sets.values())
    found: Dict[str, List[Found]] = {}
    with progress(total, "constyle data", unit="file", enabled=show_progress) as bar:
        for key, spec in sets.items():
            folders = _folders_of(spec["files"], by_folder)
            rows = []
            for name, record in spec["files"].items():
                stem = _stem(name)
                same = [p for p in by_size.get(record["bytes"], []) if sha(p) == record["sha256"]]
                if same:
                    path = next((p for p in same if _stem(p.name) == stem), same[0])
                    rows.append(Found(key, name, record["role"], path, Verdict("identical")))
                else:
                    path = next((by_folder[d][stem] for d in folders[record["role"]] if stem in by_folder[d]), None)
                    verdict = compare_file(record, path, sha_cache.get(path)) if path is not None else None
                    rows.append(Found(key, name, record["role"], path, verdict))
                bar.update(1)
            found[key] = rows
    used = {r.path for rows in found.values() for r in rows}
    found["RainTrainL"] = _rain_train_pairs([f for f in files if f not in used])
    return {k: found[k] for k in STANDARD_SETS if k in found}


def _folders_of(files: Dict[str, dict], by_folder: Dict[Path, Dict[str, Path]]) -> Dict[str, List[Path]]:
    """Per role, the folders that hold the set's file names (at least three of them, or all when fewer,
    and at least half of the folder's images or half of the role's files), most names first."""
    out: Dict[str, List[Path]] = {}
    for role in {r["role"] for r in files.values()}:
        stems = {_stem(n) for n, r in files.items() if r["role"] == role}
        scored = []
        for folder, names in by_folder.items():
            hits = len(stems & names.keys())
            if hits >= min(3, len(stems)) and (2 * hits >= len(names) or 2 * hits >= len(stems)):
                scored.append((-hits, str(folder), folder))
        out[role] = [f for _, _, f in sorted(scored)]
    return out


def _rain_train_pairs(files: Sequence[Path]) -> List[Found]:
    """RainTrainL pairs by their names (``rain-N`` with ``norain-N``, N not zero-padded), first found first."""
    rain: Dict[int, Path] = {}
    clean: Dict[int, Path] = {}
    for f in files:
        m = _TRAIN_RAIN.match(f.stem)
        if m:
            (clean if m.group(1) else rain).setdefault(int(m.group(2)), f)
    rows = []
    for n in sorted(rain.keys() & clean.keys()):
        rows.append(Found("RainTrainL", f"rainy/rain-{n}{rain[n].suffix}", "lq", rain[n], None))
        rows.append(Found("RainTrainL", f"norain-{n}{clean[n].suffix}", "gt", clean[n], None))
    return rows


# ------------------------------------------------------------------------------------------ laying out
def unpack(archive: Path, into: Path) -> Path:
    """``archive`` (.zip / .tar / .tar.gz / .tgz) unpacked into ``into/<its name>``; members that would
    land outside it are refused. An existing folder of that name is taken as already unpacked."""
    name = archive.name
    for ext in ARCHIVES:
        if name.lower().endswith(ext):
            name = name[:-len(ext)]
    target = into / name
    if target.is_dir():
        return target
    part = into / (name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise LayoutError(f"{archive}: member {member} would be written outside {target}")
            z.extractall(part)
    else:
        with tarfile.open(archive) as t:
            t.extractall(part, filter="data")  # refuses absolute paths, '..' and links leaving the folder
    part.rename(target)
    return target


def _place(src: Path, dst: Path, copy: bool) -> str:
    """``dst`` made a link to (or copy of) ``src``; returns how: linked, hard-linked, copied or kept."""
    if dst.is_symlink() and not dst.exists():  # a link left by an earlier run to a file since moved
        dst.unlink()
    if dst.exists():
        if os.path.samefile(src, dst) or file_sha256(src) == file_sha256(dst):
            return "kept"
        raise LayoutError(f"{dst} exists and is another file than {src}; move it away or choose another --root")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dst)
        return "copied"
    try:
        os.symlink(src.resolve(), dst)
        return "linked"
    except (OSError, NotImplementedError):  # Windows without the symlink privilege, FAT / exFAT, some shares
        pass
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError as exc:
        raise LayoutError(f"{dst}: cannot link to {src} ({exc.strerror or exc}); run again with --copy") from None


def lay_out(found: Dict[str, List[Found]], root: os.PathLike, copy: bool = False) -> Dict[str, Counter]:
    """The files found placed under ``root`` in the settings' layouts (see :data:`STANDARD_SETS` roles):
    each file under its standard name (its own suffix kept). Returns ``{folder: Counter(how)}``."""
    root = Path(root)
    placed: Dict[str, Counter] = defaultdict(Counter)
    for key, rows in found.items():
        for row in rows:
            if row.path is None:
                continue
            name = Path(row.name).stem + row.path.suffix
            for folder in STANDARD_SETS[key].roles[row.role]:
                placed[folder][_place(row.path, root / folder / name, copy)] += 1
    return dict(placed)


def write_list_files(root: os.PathLike) -> Dict[str, int]:
    """PromptIR-style list files for the training sets under ``root``: ``data_dir/noisy/denoise.txt``
    (every image of ``Train/Denoise``) and ``data_dir/rainy/rainTrain.txt`` (``rainy/rain-N.png`` of each
    pair in ``Train/Derain``), lines relative to the task folder as the training set reads them.
    Returns ``{list file: lines}`` for those written."""
    root = Path(root)
    written = {}
    denoise = root / "Train/Denoise"
    if denoise.is_dir():
        lines = sorted(p.name for p in denoise.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        written[LIST_FILES["BSD400"][0]] = lines
    rainy, gt = root / "Train/Derain/rainy", root / "Train/Derain/gt"
    if rainy.is_dir() and gt.is_dir():
        clean = {p.stem for p in gt.iterdir()}
        lines = sorted((f"rainy/{p.name}" for p in rainy.iterdir() if "no" + p.stem in clean),
                       key=lambda s: (len(s), s))
        written[LIST_FILES["RainTrainL"][0]] = lines
    for rel, lines in written.items():
        if lines:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {rel: len(lines) for rel, lines in written.items() if lines}


# ------------------------------------------------------------------------------------------ report
def _folders(rows: Iterable[Found]) -> str:
    return ", ".join(sorted({str(r.path.parent) for r in rows if r.path is not None}))


def report_lines(found: Dict[str, List[Found]], manifest: Optional[str] = None) -> Tuple[List[str], bool]:
    """The check's report, one paragraph per set, and whether every file found is standard (``manifest``:
    the one :func:`find_standard_sets` read)."""
    lines, clean = [], True
    sets = load_manifest(manifest)
    for key, spec in STANDARD_SETS.items():
        rows = found.get(key, [])
        present = [r for r in rows if r.path is not None]
        if not present:
            lines.append(f"{spec.title}: missing; get it from {spec.get} (needed for {spec.used})")
            continue
        if not spec.verifiable:
            lines.append(f"{spec.title}: {len(present) // 2} pairs found in {_folders(present)} (not verifiable "
                         f"here: no manifest; needed for {spec.used})")
            continue
        counts = Counter(r.verdict.status for r in present)
        missing = [r for r in rows if r.path is None]
        differ = [r for r in present if not r.verdict.standard]
        source = sets[key]["source"]
        if not differ and not missing:
            how = "identical" if counts["identical"] == len(rows) else \
                f"identical or with the standard pixels ({counts['same-pixels']} stored differently)"
            lines.append(f"{spec.title}: the standard copy, {len(rows)} of {len(rows)} files {how} "
                         f"(manifest: {source}); in {_folders(present)}")
            continue
        clean = clean and not differ
        parts = [f"{n} {_SAY.get(status, status)}" for status, n in sorted(counts.items())]
        lines.append(f"{spec.title}: {len(present)} of {len(rows)} files found ({', '.join(parts)}; manifest: "
                     f"{source}); in {_folders(present)}")
        kinds = Counter(r.verdict.detail.split(" (")[0].split(";")[0] for r in differ)
        if differ:
            lines.append("  differ: " + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
        for r in differ[:_SHOWN]:
            lines.append(f"  {r.name} ({r.path}): {r.verdict.detail}")
        if len(differ) > _SHOWN:
            lines.append(f"  ... and {len(differ) - _SHOWN} more (every file in --report FILE)")
        if missing:
            names = ", ".join(r.name for r in missing[:5]) + (" ..." if len(missing) > 5 else "")
            lines.append(f"  missing {len(missing)}: {names}; get them from {spec.get}")
    return lines, clean


def _elsewhere_lines() -> List[str]:
    return [f"{name}: not verifiable here; goes to {where}; get it from {get}"
            for name, (where, get) in ELSEWHERE.items()]


def _report_json(found: Dict[str, List[Found]], path: Path) -> None:
    data = {key: [{"name": r.name, "role": r.role, "path": str(r.path) if r.path else None,
                   "status": r.verdict.status if r.verdict else ("found" if r.path else "missing"),
                   "detail": r.verdict.detail if r.verdict else ""} for r in rows] for key, rows in found.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ command
def add_data_arguments(parser) -> None:
    """The ``constyle data {check,prepare}`` subcommands."""
    verbs = parser.add_subparsers(dest="verb", metavar="{check,prepare}")
    verbs.required = True
    check = verbs.add_parser("check", help="find the standard sets under SRC and check them against the manifest",
                             description="Find the field's standard sets (CBSD68, Rain100L test, BSD400, LIVE1, "
                                         "RainTrainL) under the folders given and check each file against the "
                                         "packaged SHA-256 manifest: the standard copy, which files differ and how "
                                         "(recompressed, resized, rotated ...), what is missing and where to get it. "
                                         "Exit status 1 when a file differs.")
    prepare = verbs.add_parser("prepare", help="check, then lay the sets out under --root in the settings' layouts",
                               description="Check as `constyle data check` does, then lay the sets found out under "
                                           "--root in the settings' layouts (test/, Train/, Test_small/, LIVE1/) "
                                           "with symbolic links (hard links where symbolic links cannot be made; "
                                           "--copy to copy) and write PromptIR-style list files in data_dir/.")
    for p in (check, prepare):
        p.add_argument("sources", nargs="+", metavar="SRC",
                       help="folders (or image files) holding downloaded sets, as released or in a repository's or "
                            "a paper's layout" + ("; .zip / .tar / .tar.gz / .tgz archives are unpacked into "
                                                  "ROOT/downloads" if p is prepare else ""))
        p.add_argument("--report", default=None, metavar="FILE", help="write every file's verdict to FILE (JSON)")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress report")
    prepare.add_argument("--root", required=True, help="the data root to lay the sets out in")
    prepare.add_argument("--copy", action="store_true", help="copy the files instead of linking them")


def data_main(args) -> int:
    """Run ``constyle data check`` / ``prepare`` from parsed arguments; returns the exit status."""
    sources = [Path(s) for s in args.sources]
    root = Path(args.root) if args.verb == "prepare" else None
    if root is not None:
        if root.exists() and not root.is_dir():
            raise LayoutError(f"--root: {root} is a file, not a folder")
        for i, src in enumerate(sources):
            if src.is_file() and src.name.lower().endswith(ARCHIVES):
                sources[i] = unpack(src, root / "downloads")
                print(f"unpacked {src} into {sources[i]}")
    for src in sources:
        if src.is_file() and src.name.lower().endswith(ARCHIVES):
            raise LayoutError(f"{src}: an archive; `constyle data check` reads folders (prepare unpacks archives)")
    laid_out = [] if root is None else [root / folder for s in STANDARD_SETS.values() for folders in s.roles.values()
                                        for folder in folders]
    found = find_standard_sets(sources, skip=laid_out, show_progress=args.progress)
    lines, clean = report_lines(found)
    print("\n".join(lines))
    if args.report:
        _report_json(found, Path(args.report))
        print(f"wrote {args.report}")
    if root is not None:
        placed = lay_out(found, root, copy=args.copy)
        if not placed:
            raise LayoutError(f"no standard set found under {', '.join(map(str, args.sources))}; nothing laid out "
                              f"in {root}")
        for folder, how in sorted(placed.items()):
            print(f"{root / folder}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(how.items())))
        for rel, n in write_list_files(root).items():
            print(f"wrote {root / rel} ({n} lines)")
        if not clean:
            print("note: files that differ from the standard ones were laid out too; numbers measured on them do "
                  "not compare with the papers'", file=sys.stderr)
    print("\n".join(_elsewhere_lines()))
    return 0 if clean else 1

"""Write the SHA-256 manifest of the standard sets (``constyle_plugin/data/manifests/standard_sets.json``) from
copies of the public repositories that ship them, recording where each set came from.

    python benchmarks/standard_sets_manifest.py --ircnn IRCNN --prenet PreNet --bsds ssn_pytorch --dncnn DnCNN

Each argument is a checkout of the repository (cszn/IRCNN, Arvaesri/PreNet, Sisso16/ssn_pytorch, cszn/DnCNN);
``--commit-<name>`` records the commit read. Every image file of each set's folder is recorded
(:func:`constyle_plugin.data.standard_sets.image_record`), under its path in the set as released.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from constyle_plugin.data.imageio import IMAGE_EXTENSIONS
from constyle_plugin.data.standard_sets import MANIFEST, image_record

# set -> (argument, repository, folder in it, {sub-folder: role}); the sub-folder "" is the folder itself.
SOURCES = {
    "CBSD68": ("ircnn", "cszn/IRCNN", "testsets/CBSD68", {"": "gt"}),
    "Rain100L": ("prenet", "Arvaesri/PreNet", "datasets/test/Rain100L", {"": "gt", "rainy": "lq"}),
    "BSD400": ("bsds", "Sisso16/ssn_pytorch", "BSR/BSDS500/data/images", {"train": "gt", "test": "gt"}),
    "LIVE1": ("dncnn", "cszn/DnCNN", "testsets/LIVE1", {"": "gt"}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for arg, repo, _, _ in SOURCES.values():
        parser.add_argument(f"--{arg}", required=True, help=f"a checkout of {repo}")
        parser.add_argument(f"--commit-{arg}", dest=f"commit_{arg}", default=None, help=f"the {repo} commit read")
    parser.add_argument("--output", default=str(MANIFEST))
    args = parser.parse_args(argv)
    sets = {}
    for key, (arg, repo, folder, roles) in SOURCES.items():
        base = Path(getattr(args, arg)) / folder
        commit = getattr(args, f"commit_{arg}")
        files = {}
        for sub, role in roles.items():
            for path in sorted((base / sub).iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    name = f"{sub}/{path.name}" if sub else path.name
                    files[name] = {"role": role, **image_record(path)}
        sets[key] = {"source": f"{repo}{'@' + commit if commit else ''} {folder}", "files": files}
        print(f"{key}: {len(files)} files from {repo} {folder}")
    lines = ['{"format": 1, "sets": {']
    for i, (key, one) in enumerate(sets.items()):  # one line per file, so a change reads as a diff of lines
        lines.append(f' {json.dumps(key)}: {{"source": {json.dumps(one["source"])}, "files": {{')
        rows = [f'  {json.dumps(name)}: {json.dumps(rec, sort_keys=True)}' for name, rec in one["files"].items()]
        lines.append(",\n".join(rows))
        lines.append(" }}" + ("," if i < len(sets) - 1 else ""))
    lines.append("}}")
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``benchmarks/standard_sets_manifest.py`` on miniature checkouts of the four repositories: the manifest it
writes records every file under its path in the set, with the repository and commit, and the same folders
then check as the standard copies."""
from __future__ import annotations

import importlib.util

from constyle_plugin.data.standard_sets import load_manifest
from constyle_plugin.tools.data import find_standard_sets

from cli_runs import ROOT
from layouts import picture, write


def _script():
    spec = importlib.util.spec_from_file_location("standard_sets_manifest",
                                                  ROOT / "benchmarks" / "standard_sets_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_manifest_it_writes_checks_the_same_folders_as_standard(tmp_path):
    repos = {"ircnn": tmp_path / "IRCNN", "prenet": tmp_path / "PreNet", "bsds": tmp_path / "ssn",
             "dncnn": tmp_path / "DnCNN"}
    write(repos["ircnn"] / "testsets/CBSD68/101085.png", picture(0, (48, 64)))
    write(repos["prenet"] / "datasets/test/Rain100L/norain-001.png", picture(1, (48, 64)))
    write(repos["prenet"] / "datasets/test/Rain100L/rainy/rain-001.png", picture(2, (48, 64)))
    write(repos["bsds"] / "BSR/BSDS500/data/images/train/100075.jpg", picture(3, (48, 64)))
    write(repos["bsds"] / "BSR/BSDS500/data/images/test/100007.jpg", picture(4, (48, 64)))
    (repos["bsds"] / "BSR/BSDS500/data/images/train/Thumbs.db").write_bytes(b"not an image")
    write(repos["dncnn"] / "testsets/LIVE1/bikes.bmp", picture(5, (48, 64)))
    out = tmp_path / "manifest.json"
    args = [a for key, path in repos.items() for a in (f"--{key}", str(path), f"--commit-{key}", "abc123")]
    assert _script().main([*args, "--output", str(out)]) == 0

    sets = load_manifest(str(out))
    assert {k: sorted(v["files"]) for k, v in sets.items()} == {
        "CBSD68": ["101085.png"], "Rain100L": ["norain-001.png", "rainy/rain-001.png"],
        "BSD400": ["test/100007.jpg", "train/100075.jpg"], "LIVE1": ["bikes.bmp"]}
    assert sets["Rain100L"]["source"] == "Arvaesri/PreNet@abc123 datasets/test/Rain100L"
    assert sets["Rain100L"]["files"]["rainy/rain-001.png"]["role"] == "lq"
    found = find_standard_sets(list(repos.values()), manifest=str(out), show_progress=False)
    for key in sets:
        statuses = [(r.path is not None, r.verdict.status) for r in found[key]]
        assert statuses == [(True, "identical")] * len(sets[key]["files"])

"""Packaging: the wheel's contents, the public API, and CI running the README's commands."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict:
    text = (ROOT / "README.md").read_text()
    found = dict(re.findall(r"<!-- (install|test|main) -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S))
    assert set(found) >= {"install", "test", "main"}, "README must mark its install, test and main commands"
    return found


def test_ci_runs_the_readme_commands():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = readme_commands()
    assert commands["test"].strip() in ci, "the README's test command is not what .ci/run runs"
    for key in ("test", "main"):  # each one command that does the whole set-up on a fresh machine
        assert commands[key].startswith(commands["install"].strip() + " && "), key
    assert "pytest" in commands["test"] and "basicsr train -opt options/" in commands["main"]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # build from a clean copy: a stale build/ folder in the checkout must not leak into the wheel
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "experiments", "work_dirs"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("constyle_plugin-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist(), zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()


def test_wheel_ships_the_package_and_adapters_inside_it(wheel_files):
    names, metadata = wheel_files
    assert "constyle_plugin/adapters/__init__.py" in names
    for module in ("prompter", "injection", "unet", "compat"):
        assert f"constyle_plugin/{module}.py" in names
    assert any(n.startswith("constyle_plugin/archs/") for n in names)
    assert "constyle_plugin/weights/constyle_v2_prompter.safetensors" in names  # the packaged prompter
    assert "constyle_plugin/weights/constyle_v2_prompter.json" in names  # and its card
    assert any(n.startswith("constyle_plugin/integrations/") for n in names)
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"constyle_plugin"}, f"unexpected top-level entries: {top_level}"  # no 'adapters', 'tests'
    assert "Name: constyle-plugin" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for dep in ("torch", "torchvision", "basicsr", "mmengine", "timm", "einops"):
        assert any(re.match(rf"Requires-Dist: {dep}\b", r) for r in requires), dep
    assert not any("<" in r.split(";")[0] for r in requires), "no upper caps on dependencies"


def test_public_api():
    import constyle_plugin

    for name in ("ConStyleV2", "Prompt", "wrap_unet", "unwrap_unet", "StageSpec"):
        assert hasattr(constyle_plugin, name)
    from constyle_plugin.adapters import stage_spec_for  # installed inside the package

    assert callable(stage_spec_for)

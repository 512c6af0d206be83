"""Packaging: the wheel's contents, the public API, and CI running the README's commands."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    if re.search(r"\s-n\s", commands["test"]):  # parallel workers: the [test] extra installs pytest-xdist
        import configparser

        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        assert "pytest-xdist" in cfg["options.extras_require"]["test"], "-n needs pytest-xdist in [test]"


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
        return zf.namelist(), zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode(), wheel


def test_wheel_ships_the_package_and_adapters_inside_it(wheel_files):
    names, metadata, _ = wheel_files
    assert "constyle_plugin/adapters/__init__.py" in names
    for module in ("core/prompter", "core/injection", "core/unet", "compat"):
        assert f"constyle_plugin/{module}.py" in names
    for layer in ("core", "data", "training", "tools"):  # every layer folder is in the wheel
        assert f"constyle_plugin/{layer}/__init__.py" in names
    assert any(n.startswith("constyle_plugin/archs/") for n in names)
    assert "constyle_plugin/weights/constyle_v2_prompter.safetensors" in names  # the packaged prompter
    assert "constyle_plugin/weights/constyle_v2_prompter.json" in names  # and its card
    assert "constyle_plugin/data/manifests/standard_sets.json" in names  # what constyle data checks copies against
    assert any(n.startswith("constyle_plugin/integrations/") for n in names)
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"constyle_plugin"}, f"unexpected top-level entries: {top_level}"  # no 'adapters', 'tests'
    assert "Name: constyle-plugin" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if ";" not in r]
    for dep in ("torch", "timm", "einops", "safetensors"):
        assert any(re.match(rf"Requires-Dist: {dep}\b", r) for r in core), dep
    # The trainers are extras only: installing the plugin never replaces a host's framework.
    for dep in ("basicsr", "mmengine", "torchvision"):
        assert not any(re.match(rf"Requires-Dist: {dep}\b", r) for r in core), dep
        assert any(re.match(rf"Requires-Dist: {dep}\b.*extra == \"all\"", r) for r in requires), dep
    assert any(re.match(r'Requires-Dist: basicsr\b.*extra == "basicsr"', r) for r in requires)
    assert any(re.match(r'Requires-Dist: mmengine\b.*extra == "mmengine"', r) for r in requires)
    assert not any("<" in r.split(";")[0] for r in requires), "no upper caps on dependencies"


FAKE_FORK_INIT = "FORK_MARKER = 'the fork stays'\n"


def test_pip_install_leaves_a_forks_basicsr_in_place(wheel_files, tmp_path):
    """A venv holding a BasicSR fork's basicsr 1.2.0 (as `setup.py develop` leaves it) keeps it when
    the plugin is installed without extras; torch & co come from this test's own environment (a
    .pth file), and the package index is off, so nothing is downloaded."""
    import site
    import venv

    _, _, wheel = wheel_files
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    fork = tmp_path / "fork"
    (fork / "basicsr").mkdir(parents=True)
    (fork / "basicsr" / "__init__.py").write_text(FAKE_FORK_INIT)
    info = purelib / "basicsr-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: basicsr\nVersion: 1.2.0\n")
    (info / "RECORD").write_text("")
    (info / "INSTALLER").write_text("setup.py develop\n")
    (purelib / "basicsr-fork.pth").write_text(f"{fork}\n")
    (purelib / "zz-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # torch, timm, ...
    for old in purelib.glob("setuptools*"):  # venv's own old setuptools would shadow the one torch requires
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "basicsr" not in proc.stdout.split("Successfully installed")[-1]
    check = subprocess.run([str(py), "-c", "import importlib.metadata as m, basicsr, constyle_plugin; "
                                           "print(m.version('basicsr'), basicsr.FORK_MARKER, constyle_plugin.__file__)"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)  # not the checkout: the wheel
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.split()[:2] == ["1.2.0", "the"]
    assert Path(check.stdout.split()[-1]).is_relative_to(purelib)  # the installed plugin was the one imported


def test_public_api():
    import constyle_plugin

    for name in ("ConStyleV2", "Prompt", "wrap_unet", "unwrap_unet", "StageSpec"):
        assert hasattr(constyle_plugin, name)
    from constyle_plugin.adapters import stage_spec_for  # installed inside the package

    assert callable(stage_spec_for)

"""The README and docs/ as a checked artefact: every test they name exists, every relative link
resolves, every command block is run by a test or marked as not run (the README's quickstarts run
here, as written), and the claims of docs/wrapping.md that had no test of their own.

The command-block convention (docs/design.md, "Writing docs"): a fenced block in bash / sh / shell /
console / python / yaml has, on the lines just above its opening fence, one HTML comment
``<!-- run: quickstart -->`` (run below), ``<!-- run: ci -->`` (.ci/run runs it),
``<!-- run: tests/<file>.py::<test> -->`` (that test runs it) or ``<!-- not run...: reason -->``;
or its first line is a comment ``# not run by tests...``. Other blocks say ``text``."""
from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import pytest
import torch
import yaml
from torch import nn

from constyle_plugin import ConStyleV2, StageSpec, wrap_unet
from constyle_plugin.core.unet import discover_stages

from unets import FunctionalUNet, ModuleListUNet

ROOT = Path(__file__).resolve().parents[2]
while not (ROOT / "setup.cfg").is_file() and ROOT != ROOT.parent:  # wherever this file sits under tests/
    ROOT = ROOT.parent
TESTS = ROOT / "tests"
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOC_PAGES]  # what a user reads: the guide and its pages
README_MAX_LINES = 200
# Pages linked before they are in the tree (none now); a link to any other page must resolve.
PAGES_BEING_WRITTEN: set = set()
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py", "yaml", "yml"}
ALLOWED_LANGUAGES = COMMAND_LANGUAGES | {"text"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------------------- the pages name real tests
def _test_functions(path: Path) -> set:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def _named_tests(text: str):
    """``tests/f.py::test_x`` references, and ``::test_y`` ones that continue the last file named; also
    ids written without backticks (in HTML comments: the command-block markers)."""
    current = None
    for match in re.finditer(r"`(tests/[\w/]+\.py)?::(test_\w+)(\[[^\]`]*\])?`|`(tests/[\w/]+\.py)`", text):
        file_, name, _, bare_file = match.groups()
        if bare_file:
            current = bare_file
            continue
        current = file_ or current
        yield current, name
    for match in re.finditer(r"(?<![`\w/])(tests/[\w/]+\.py)::(test_\w+)", text):
        yield match.group(1), match.group(2)


def _missing_tests(text: str) -> List[str]:
    return [f"{f}::{n}" for f, n in _named_tests(text) if f is None or not (ROOT / f).is_file()
            or n not in _test_functions(ROOT / f)]


def _pages_and_maps():
    pages = [_rel(p) for p in PAGES]
    if (TESTS / "README.md").is_file():
        pages.append(_rel(TESTS / "README.md"))
    return pages


@pytest.mark.parametrize("page", _pages_and_maps())
def test_every_test_a_page_names_exists(page):
    text = (ROOT / page).read_text()
    missing = _missing_tests(text)
    assert not missing, f"{page} names tests that do not exist: {missing}"
    # every test file or folder a page names exists too
    prose = re.sub(r"<!--.*?-->", "", text, flags=re.S)  # notes to the authors may name paths to come
    paths = set(re.findall(r"(?<![\w/.])(tests/[\w/]+(?:\.py)?)", prose))
    gone = sorted(p for p in paths if not (ROOT / p).exists())
    assert not gone, f"{page} names test files that do not exist: {gone}"


def test_the_guarantees_page_maps_the_promises_to_tests():
    named = list(_named_tests((ROOT / "docs" / "guarantees.md").read_text()))
    assert len(named) >= 100, f"docs/guarantees.md: expected the whole map, found {len(named)} test references"


# ---------------------------------------------------------------------------- the guide's shape
def test_readme_is_a_guide_of_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; details belong in docs/"
    for page in ("wrapping", "basicsr", "basicsr-forks", "mmengine", "checkpoints", "restore", "benchmarks",
                 "guarantees", "design"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md" in README.read_text(), f"the README does not link docs/{page}.md"
    assert (ROOT / "CHANGELOG.md").is_file()


HISTORY = [
    (re.compile(r"\bissues?\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"\bSPEC\b"), "a reference to a specification that is not in the repository"),
    (re.compile(r"\(was an? [^)]*\)", re.I), "development history ('(was a ...)')"),
]


@pytest.mark.parametrize("page", [_rel(p) for p in PAGES])
def test_no_issue_numbers_or_history_in_the_guide_and_docs(page):
    text = (ROOT / page).read_text()
    found = [f"line {text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r} ({what})"
             for pattern, what in HISTORY for m in pattern.finditer(text)]
    assert not found, f"{page}: history belongs in CHANGELOG.md: {found}"


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code (where brackets are code, not links)."""
    text = re.sub(r"^(\s*)(```+).*?^\1\2[ \t]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", [_rel(p) for p in PAGES] + ["CHANGELOG.md"])
def test_relative_links_point_at_files_that_exist(page):
    path = ROOT / page
    text = _prose(path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        if not resolved.exists() and resolved.relative_to(ROOT).as_posix() not in PAGES_BEING_WRITTEN:
            broken.append(target)
    assert not broken, f"{page} links to files that do not exist: {broken}"


# ---------------------------------------------------------------------------- command blocks
class Block(NamedTuple):
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    body: str
    marker: Optional[Tuple[str, str]]  # ("run", what) or ("not run", reason)


MARKER = re.compile(r"<!--\s*(not run|run)\b([^:>]*):\s*(.*?)\s*-->", re.S)
IN_BLOCK = re.compile(r"#\s*not run by tests\b\s*(.*)")


def _blocks(path: Path) -> List[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        # the HTML comments just above the fence (blank lines and other comments, e.g. <!-- main -->, between)
        above, k = [], i - 1
        while k >= 0 and (not lines[k].strip() or lines[k].strip().endswith("-->")):
            if lines[k].strip():
                start = k
                while "<!--" not in lines[start] and start > 0:
                    start -= 1
                above.insert(0, "\n".join(lines[start:k + 1]))
                k = start
            k -= 1
        marker = None
        for comment in above:
            m = MARKER.search(comment)
            if m:
                marker = (m.group(1), m.group(3).strip())
        first = body.lstrip().splitlines()[0] if body.strip() else ""
        m = IN_BLOCK.match(first)
        if marker is None and m:
            marker = ("not run", m.group(1).strip(" :;-") or "")
        blocks.append(Block(_rel(path), i + 1, info.strip().split()[0] if info.strip() else "", body, marker))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in _blocks(page)]


def test_the_pages_have_command_blocks():
    assert sum(b.page == "README.md" for b in ALL_BLOCKS) >= 8
    assert len({b.page for b in ALL_BLOCKS}) >= 6


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: f"{b.page}:{b.line}")
def test_every_command_block_is_run_by_a_test_or_marked_as_not_run(block):
    where = f"{block.page} line {block.line}"
    assert block.language in ALLOWED_LANGUAGES, (
        f"{where}: a fence needs a language ({sorted(ALLOWED_LANGUAGES)}); layouts and output are `text`")
    if block.language not in COMMAND_LANGUAGES:
        return
    assert block.marker is not None, (
        f"{where}: mark the block `<!-- run: quickstart | ci | tests/<file>.py::<test> -->` "
        f"or `<!-- not run: reason -->` (docs/design.md, Writing docs)")
    kind, what = block.marker
    if kind == "not run":
        assert len(what) >= 8, f"{where}: say why the block is not run"
    elif what == "quickstart":
        assert block.page == "README.md", f"{where}: only the README's quickstarts run as a sequence"
    elif what == "ci":
        ci = (ROOT / ".ci" / "run").read_text()
        assert block.body.strip() in ci, f"{where}: .ci/run does not run this command"
    else:
        assert re.fullmatch(r"tests/[\w/]+\.py::test_\w+", what), f"{where}: unknown marker {what!r}"
        assert not _missing_tests(what), f"{where}: {what} does not exist"
    if block.language in ("python", "py"):
        ast.parse(block.body, filename=where)  # run or not, a Python block is valid Python
    if block.language in ("yaml", "yml"):
        yaml.safe_load(block.body)


def test_the_readme_quickstarts_run_as_written(tmp_path):
    """The README's quickstart blocks (own loop, BasicSR options, MMEngine config, restore and inspect), in order, in
    one scratch folder with the repository's options/ linked in: a file block (first line ``# NAME``) is
    saved, other Python blocks run as scripts, bash blocks run as written."""
    blocks = [b for b in _blocks(README) if b.marker == ("run", "quickstart")]
    languages = [b.language for b in blocks]
    assert languages.count("bash") >= 3 and languages.count("python") >= 2 and "yaml" in languages, languages
    (tmp_path / "options").symlink_to(ROOT / "options")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    for n, block in enumerate(blocks):
        first = block.body.splitlines()[0]
        named = re.fullmatch(r"#\s*([\w.-]+\.(?:py|ya?ml))\s*", first)
        if named:
            (tmp_path / named.group(1)).write_text(block.body + "\n")
            continue
        if block.language == "python":
            script = tmp_path / f"quickstart_{n}.py"
            script.write_text(block.body + "\n")
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-euo", "pipefail", "-c", block.body]
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (f"README line {block.line} failed:\n{block.body}\n"
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    # what the quickstarts say they make
    assert (tmp_path / "experiments" / "my_nafnet_constyle" / "models" / "net_g_latest.pth").is_file()
    assert list((tmp_path / "work_dirs" / "my_config").glob("iter_*.pth"))
    assert {p.name for p in (tmp_path / "restored").iterdir()} >= {"camera.png", "camera_compare.png"}
    assert {p.name for p in (tmp_path / "inspect").iterdir()} == {"inspect.png", "inspect.json"}


# ---------------------------------------------------------------------------- "Stage discovery"
def test_discovery_is_one_probe_forward_on_a_random_non_square_image():
    """docs/wrapping.md: "One probe forward (a random 2 x C x 256 x 192 input ...)"; explicit specs are checked
    with one probe too."""
    for stages in (None, StageSpec(encoder=("down.0", "down.1", "down.2"), bottleneck="mid")):
        torch.manual_seed(0)
        unet = ModuleListUNet()
        seen = []
        handle = unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        wrap_unet(unet, prompter=ConStyleV2(), stages=stages)
        handle.remove()
        assert len(seen) == 1, stages
        (probe,) = seen
        assert probe.shape == (2, 3, 256, 192)
        assert 0 <= probe.min() and probe.max() <= 1 and probe.std() > 0.2  # random in [0, 1], not a constant


class AttentionUNet(ModuleListUNet):
    """A U-Net with squeeze-and-excitation (a global pooling to 1 x 1) on every level and the bottleneck,
    the way NAFNet's channel attention and many restoration U-Nets have it."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width=width)
        chans = [width * 2 ** i for i in range(4)]
        self.se = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid())
                                for c in chans)

    def forward(self, x):
        y = self.head(x)
        skips = []
        for k, (enc, down) in enumerate(zip(self.enc, self.down)):
            y = enc(y)
            y = y * self.se[k](y)
            skips.append(y)
            y = down(y)
        y = self.mid(y)
        y = y * self.se[3](y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.tail(y) + x


@pytest.mark.parametrize("probe_size", [(256, 192), (64, 64), (16, 16)])
def test_a_global_pooling_is_never_a_stage(probe_size):
    """docs/wrapping.md: "... not square so a global pooling never passes for a stage". At 16 x 16 the bottleneck
    is 2 x 2, so its 1 x 1 pooling is exactly one more halving: it must still not count."""
    spec, infos = discover_stages(AttentionUNet(), probe_size=probe_size)
    assert spec == StageSpec(encoder=("down.0", "down.1", "down.2"), bottleneck="mid",
                             decoder=("up.0", "up.1", "up.2")), (probe_size, spec)
    assert not any(name.startswith("se") for name in spec.names())


def test_functional_downsampling_the_first_module_at_the_new_scale_stands_in():
    """docs/wrapping.md: "where downsampling is functional (F.max_pool2d inside forward), the first module that
    runs at the new scale stands in"; FunctionalUNet pools before e2 and before e3."""
    spec, infos = discover_stages(FunctionalUNet())
    assert spec.encoder == ("e2", "e3")
    assert [i.scale for i in infos if i.role == "encoder"] == [1, 2]
    assert spec.bottleneck == "e3"


# ---------------------------------------------------------------------------- "Serialisable"
def test_state_dict_keys_are_backbone_prompter_and_injections():
    """docs/wrapping.md: "state_dict() round-trips (keys backbone.*, prompter.*, injections.*)"."""
    torch.manual_seed(0)
    unet = ModuleListUNet()
    net = wrap_unet(unet, prompter=ConStyleV2(), inject=("encoder", "bottleneck", "decoder"))
    state = net.state_dict()
    assert {k.split(".", 1)[0] for k in state} == {"backbone", "prompter", "injections"}
    assert {k[len("backbone."):] for k in state if k.startswith("backbone.")} == set(unet.state_dict())
    assert {k[len("prompter."):] for k in state if k.startswith("prompter.")} == set(net.prompter.state_dict())
    assert {k.split(".")[1] for k in state if k.startswith("injections.")} == {
        "encoder1", "encoder2", "encoder3", "bottleneck", "decoder1", "decoder2", "decoder3"}
    # the backbone's own entries are exactly the bare network's: loadable into an unwrapped copy
    bare = ModuleListUNet()
    bare.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()


# ---------------------------------------------------------------------------- "Precision and device"
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_after_wrapping_converts_everything_prompter_included(dtype):
    """docs/wrapping.md: "`net.half()` after wrapping converts everything, prompter included" (and the identity at
    wrap time still holds in that precision)."""
    torch.manual_seed(0)
    unet = ModuleListUNet(width=4)
    reference = ModuleListUNet(width=4)
    reference.load_state_dict(unet.state_dict())
    net = wrap_unet(unet, prompter=ConStyleV2()).to(dtype).eval()
    floats = [t for t in net.state_dict().values() if t.is_floating_point()]
    assert floats and all(t.dtype == dtype for t in floats)
    assert all(t.dtype == dtype for t in net.prompter.state_dict().values() if t.is_floating_point())
    x = torch.rand(2, 3, 16, 16).to(dtype)
    seen = []
    net.prompter.register_forward_hook(lambda m, a, out: seen.append(out.latent.dtype))
    with torch.no_grad():
        out = net(x)
        expected = reference.to(dtype).eval()(x)
    assert seen == [dtype]  # the prompter ran in that precision
    assert out.dtype == dtype and torch.equal(out, expected)


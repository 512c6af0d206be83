"""``constyle restore`` never runs a file the user did not name, never overwrites its own outputs, and
checks every option before its first write (tiling, output folder, device)."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from constyle_plugin.integrations.mmengine.restore import read_dumped_config
from constyle_plugin.tools.restore import RestoreError, load_network, read_image

from cli_runs import STRAY, constyle, run_cli, tree, write_png


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "lq"
    write_png(folder / "a.png", 21, 30, seed=1)
    write_png(folder / "b.png", 40, 33, seed=2)
    return folder


# ------------------------------------------------------------- item 1: restore runs no stray code
def test_restore_never_runs_a_stray_python_file_beside_a_checkpoint(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    marker = tmp_path / "MARKER"
    (d / "helper.py").write_text(STRAY.format(marker=str(marker)))
    torch.save({"params": {"w": torch.zeros(1)}}, d / "net_g_latest.pth")
    write_png(tmp_path / "photo.png", 16, 16)
    proc = constyle("restore", "--checkpoint", str(d / "net_g_latest.pth"), "--input", str(tmp_path / "photo.png"),
                    "--output", str(tmp_path / "out"), cwd=d)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not marker.exists() and not (d / "MARKER").exists()
    assert "--config" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_restore_finds_the_basicsr_options_copy_and_ignores_stray_files(basicsr_experiment, tmp_path):
    marker = tmp_path / "MARKER"
    for folder in (basicsr_experiment, basicsr_experiment / "models"):
        (folder / "helper.py").write_text(STRAY.format(marker=str(marker)))
    (basicsr_experiment / "notes.yaml").write_text("network_g: {type: Nope}\n")  # not BasicSR's copy
    checkpoint = basicsr_experiment / "models" / "net_g_latest.pth"
    net = load_network(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["params"]
    assert net.backbone.intro.out_channels == 8
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert not marker.exists()


def test_restore_finds_the_config_mmengine_recorded_for_the_run(mmengine_checkpoint, tmp_path):
    saved = torch.load(mmengine_checkpoint, map_location="cpu", weights_only=False)
    # the EMA weights: MMEngine's EMAHook saves the average in state_dict (the trained ones in ema_state_dict)
    expected = {k[len("net."):]: v for k, v in saved["state_dict"].items() if k.startswith("net.")}
    # the work dir as the run left it (the config dumps are found by the run name in the checkpoint)
    net = load_network(mmengine_checkpoint)
    assert net.backbone.intro.out_channels == 8
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    # the checkpoint alone, elsewhere: the config recorded in its meta
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(mmengine_checkpoint, alone / "iter_2.pth")
    marker = tmp_path / "MARKER"
    (alone / "helper.py").write_text(STRAY.format(marker=str(marker)))
    net = load_network(alone / "iter_2.pth")
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    # a file planted under the recorded name is read as plain values, never run
    (alone / "nafnet_constyle.py").write_text(STRAY.format(marker=str(marker)) + "model = dict(type='X')\n")
    with pytest.raises(RestoreError, match="--config"):
        load_network(alone / "iter_2.pth")
    assert not marker.exists()


def test_dumped_config_reader_refuses_code(tmp_path):
    marker = tmp_path / "MARKER"
    assert read_dumped_config("a = dict(b=[1, -2.5, (3, 'x')], c={'k': None}, d=True)\n", "cfg.py") == \
        {"a": {"b": [1, -2.5, (3, "x")], "c": {"k": None}, "d": True}}
    for code in (f"import os\nos.system('touch {marker}')\n", f"a = __import__('os').system('touch {marker}')\n",
                 f"a = dict(**__import__('os').system('touch {marker}'))\n", f"a = [open({str(marker)!r}, 'w')]\n"):
        with pytest.raises(RestoreError, match="--config"):
            read_dumped_config(code, "cfg.py")
    assert not marker.exists()


# -------------------------------------------------------------------- item 3: output collisions
def test_restore_same_stem_inputs_get_distinct_outputs(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "photo.png", 21, 30, seed=1)
    write_png(src / "photo.bmp", 40, 33, seed=2)  # lossless, so the inputs keep their pixels
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                                "--output", str(out), "--device", "cpu")
    assert code == 0 and "restored 2 image(s)" in stdout
    assert f"{src / 'photo.bmp'} is written as photo_bmp.png" in err
    assert tree(out) == ["photo_bmp.png", "photo_png.png"]
    assert read_image(out / "photo_png.png").shape == (21, 30, 3)
    assert read_image(out / "photo_bmp.png").shape == (40, 33, 3)


def test_restore_refuses_an_input_named_like_a_comparison_panel(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "photo.png", 16, 16, seed=1)
    write_png(src / "photo_compare.png", 16, 40, seed=2)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                           "--output", str(out), "--compare", "--device", "cpu")
    assert code == 2 and "photo_compare.png" in err and "--compare" in err
    assert not out.exists()
    code, _, _ = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                         "--output", str(out), "--device", "cpu")
    assert code == 0 and tree(out) == ["photo.png", "photo_compare.png"]


def test_restore_never_reads_its_outputs_as_inputs(mmengine_checkpoint, images, capsys):
    out = images / "restored"
    for _ in range(2):
        code, stdout, _ = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input",
                                  str(images), "--output", str(out), "--compare", "--device", "cpu")
        assert code == 0 and "restored 2 image(s)" in stdout
    assert tree(out) == ["a.png", "a_compare.png", "b.png", "b_compare.png"]
    # --output the input folder itself: the outputs would replace the inputs
    before = {p.name: p.read_bytes() for p in images.glob("*.png")}
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(images), "--device", "cpu")
    assert code == 2 and "--output" in err and "replace the input" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in images.glob("*.png")} == before


# ------------------------------------------------------------ item 4: every check before a write
def test_restore_checks_tiling_for_every_image_before_writing(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "a_small.png", 16, 16, seed=1)  # fits one tile: the tile size is never used on it
    write_png(src / "b_large.png", 48, 48, seed=2)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                           "--output", str(out), "--tile", "20", "--tile-overlap", "20", "--device", "cpu")
    assert code == 2 and "--tile" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_restore_refuses_an_output_that_is_or_lies_under_a_file(mmengine_checkpoint, images, tmp_path, capsys,
                                                                where):
    blocker = tmp_path / "taken.png"
    blocker.write_bytes(b"not a folder")
    output = blocker if where == "file" else blocker / "sub" / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(output), "--device", "cpu")
    assert code == 2 and err.startswith("constyle restore: error: --output") and "file" in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_bytes() == b"not a folder"


def test_restore_refuses_a_read_only_output(tmp_path):
    # A folder the running user cannot write: root writes anywhere, so as root the command runs as nobody.
    user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no user for whom a folder is read-only")
        user = 65534
    base = Path(tempfile.mkdtemp(prefix="constyle-ro-"))
    try:
        base.chmod(0o755)
        write_png(base / "in" / "a.png", 16, 16)
        (base / "in").chmod(0o755)
        (base / "in" / "a.png").chmod(0o644)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        for output in (ro, ro / "new" / "out"):
            proc = constyle("restore", "--checkpoint", str(base / "absent.pth"), "--input", str(base / "in"),
                            "--output", str(output), "--device", "cpu", cwd=base, user=user)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "--output" in proc.stderr and "not writable" in proc.stderr
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def test_restore_refuses_devices_it_cannot_use(mmengine_checkpoint, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(out), "--device", "foo")
    assert code == 2 and "--device" in err and "'foo'" in err and "Traceback" not in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(out), "--device", "cuda")
    assert code == 2 and "--device cuda" in err and "no CUDA device" in err
    assert not out.exists()

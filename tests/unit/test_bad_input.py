"""Bad input gives one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cellcut.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", str(tmp_path / "nope.tif"))
    assert_one_line_error(code, err, "cannot read volume in", "nope.tif", "does not exist")


def test_unknown_format(capsys, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    code, _, err = run_cli(capsys, "info", str(path))
    assert_one_line_error(code, err, "unknown format", "'.png'", "use .tif")


def test_truncated_tiff(capsys, tmp_path, rng):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, rng.integers(0, 9, (8, 32, 32)).astype(np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, _, err = run_cli(capsys, "info", str(path))
    assert_one_line_error(code, err, "t.tif", "truncated or corrupt", "re-export")


def test_garbage_tiff(capsys, tmp_path):
    path = tmp_path / "g.tif"
    path.write_bytes(b"this is not a tiff at all" * 10)
    code, _, err = run_cli(capsys, "info", str(path))
    assert_one_line_error(code, err, "truncated or corrupt")


def test_2d_image(capsys, tmp_path, rng):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "p.npy", rng.random((32, 32))))
    assert_one_line_error(code, err, "not a 3D volume", "2D", "give a z-stack")


def test_4d_without_channel(capsys, tmp_path, rng):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "c.npy", rng.random((3, 4, 8, 8))))
    assert_one_line_error(code, err, "ambiguous volume", "channel axis of length 3", "--channel N")


def test_5d_without_time(capsys, tmp_path, rng):
    path = save(tmp_path, "t.npy", rng.random((2, 1, 4, 8, 8)))
    code, _, err = run_cli(capsys, "info", path)
    assert_one_line_error(code, err, "time axis of length 2", "--time N (N from 0 to 1)")


def test_empty_axis(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "e.npy", np.zeros((0, 8, 8))))
    assert_one_line_error(code, err, "empty volume", "(0, 8, 8)")


def test_all_nan(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "n.npy", np.full((4, 8, 8), np.nan)))
    assert_one_line_error(code, err, "invalid values", "all values are NaN", "replace them")


def test_some_inf(capsys, tmp_path, rng):
    a = rng.random((4, 8, 8))
    a[0, 0, :3] = np.inf
    a[1, 1, 1] = np.nan
    code, _, err = run_cli(capsys, "info", save(tmp_path, "i.npy", a))
    assert_one_line_error(code, err, "1 NaN and 3 infinite values")


def test_constant_image(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "k.npy", np.full((4, 8, 8), 7.0)))
    assert_one_line_error(code, err, "constant image", "value 7.0", "nothing to segment")


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtype(capsys, tmp_path, dtype):
    code, _, err = run_cli(capsys, "info", save(tmp_path, "d.npy", np.ones((4, 8, 8), dtype)))
    assert_one_line_error(code, err, "unsupported data type", np.dtype(dtype).name)


def test_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "synth", str(blocker / "out.tif"), "--shape", "8", "8", "8")
    assert_one_line_error(code, err, "cannot write output", "out.tif", "folder")


def test_existing_output(capsys, tmp_path):
    out = tmp_path / "s.tif"
    assert run_cli(capsys, "synth", str(out), "--shape", "8", "16", "16")[0] == 0
    code, _, err = run_cli(capsys, "synth", str(out), "--shape", "8", "16", "16")
    assert_one_line_error(code, err, "output exists", "--overwrite")


def test_console_script_prints_no_traceback_and_debug_does(tmp_path):
    missing = str(tmp_path / "missing.tif")
    plain = subprocess.run(
        [sys.executable, "-m", "cellcut.cli", "info", missing], capture_output=True, text=True
    )
    assert plain.returncode == 2
    assert plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "cellcut.cli", "--debug", "info", missing],
        capture_output=True,
        text=True,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_synth_writes_a_named_regime_and_substructure(capsys, tmp_path):
    import tifffile

    from cellcut.synthetic import regime_volume

    out = tmp_path / "r.tif"
    assert run_cli(capsys, "synth", str(out), "--regime", "small-nuclei", "--seed", "2")[0] == 0
    want = regime_volume("small-nuclei", 2)
    np.testing.assert_array_equal(tifffile.imread(out), want.image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "r_labels.tif"), want.labels)
    plain, sub = tmp_path / "p.tif", tmp_path / "s.tif"
    args = ["--shape", "16", "48", "48", "--seed", "1"]
    assert run_cli(capsys, "synth", str(plain), *args)[0] == 0
    assert (
        run_cli(capsys, "synth", str(sub), *args, "--nucleoli", "1", "--chromocenters", "4")[0] == 0
    )
    assert not np.array_equal(tifffile.imread(plain), tifffile.imread(sub))


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(["--regime", "no-such-regime"], "unknown regime"), (["--nucleoli", "2"], "nucleoli")],
)
def test_synth_bad_regime_or_substructure(capsys, tmp_path, flags, fragment):
    code, _, err = run_cli(capsys, "synth", str(tmp_path / "x.tif"), *flags)
    assert_one_line_error(code, err, "invalid option", fragment)

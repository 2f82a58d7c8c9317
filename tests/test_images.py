import copy
import logging

import numpy as np
import pytest
from PIL import Image

from diffusion_report import images
from diffusion_report.images import (
    check_image,
    image_name,
    load_image,
    shipped_names,
    to_rgb_array,
)


def test_shipped_samples_are_found():
    names = shipped_names()
    for n in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
        assert n in names
        assert check_image(n) is None


def test_grayscale_rgba_and_non_square_inputs(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((30, 50), 200, np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    arr = np.zeros((40, 20, 4), np.uint8)
    arr[..., 0] = 255  # red, fully transparent -> white after compositing
    arr[:20, :, 3] = 255  # top half opaque red
    Image.fromarray(arr, "RGBA").save(rgba)
    g = load_image(str(gray), 16)
    assert g.shape == (3, 16, 16)
    assert torch_allclose(g, 200 / 127.5 - 1)
    r = load_image(str(rgba), 20)
    assert r.shape == (3, 20, 20)
    # centre crop of a 20x40 image keeps rows 10..29: top half red, bottom half white
    assert float(r[1, 0, 0]) == pytest.approx(-1.0) and float(r[1, -1, 0]) == pytest.approx(1.0)
    assert float(r.min()) >= -1.0 and float(r.max()) <= 1.0


def _write(path, data):
    path.write_bytes(data)
    return path


def torch_allclose(t, value):
    return bool(((t - value).abs() < 1e-5).all())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "neither an existing file"),
        (lambda p: (p / "adir.png").mkdir() or p / "adir.png", "is a directory"),
        (lambda p: _write(p / "empty.png", b""), "empty file"),
        (lambda p: _write(p / "text.png", b"not an image"), "not a readable image"),
    ],
)
def test_bad_image_files_are_explained(tmp_path, make, message):
    path = make(tmp_path)
    problem = check_image(str(path))
    assert problem is not None and message in problem and str(path.name) in problem


def test_image_names_are_file_name_safe():
    assert image_name("../x/My Photo!.png") == "My_Photo_"
    assert image_name("astronaut") == "astronaut"


# ---------------------------------------------------------------------------------------------
# Every pixel type by its real range: one file per case, written here, loaded at its own size
# (no resampling, so the expected values are exact up to the file format's own loss).

N = 16  # images are N x N unless a case says otherwise
RAMP = np.linspace(0.0, 1.0, N * N).reshape(N, N)  # 0 (top left) .. 1 (bottom right), row-major
CHECKER = (np.indices((N, N)).sum(axis=0) % 2).astype(bool)


def _gray(unit):
    """(N, N) values in [0, 1] -> the expected (N, N, 3) in [-1, 1]."""
    return np.repeat((np.asarray(unit, np.float64) * 2 - 1)[..., None], 3, axis=2)


def _rgb8(arr):
    return np.asarray(arr, np.float64) / 127.5 - 1


def _tifffile():
    return pytest.importorskip("tifffile")  # a dependency of scikit-image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def _ramp16(path):
    return _save(Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)), path)


def _ramp16_big_endian(path):
    return _save(Image.fromarray(np.round(RAMP * 65535).astype(">u2")), path)


def _int32(values):
    return lambda path: _save(Image.fromarray(values.astype(np.int32)), path)


def _pgm16(path):
    return _save(Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)), path)


def _float32(scale):
    return lambda path: _save(Image.fromarray((RAMP * scale).astype(np.float32)), path)


def _signed_tiff(dtype):
    info = np.iinfo(dtype)

    def make(path):
        _tifffile().imwrite(path, np.round(info.min + RAMP * (int(info.max) - int(info.min))).astype(dtype))
        return path

    return make


def _unsigned32_tiff(path):
    _tifffile().imwrite(path, np.round(RAMP * (2.0**32 - 1)).astype(np.uint32))  # PIL reads these as signed
    return path


def _rgb16_tiff(path):
    _tifffile().imwrite(path, np.full((N, N, 3), [0, 0x8000, 0xFFFF], np.uint16), photometric="rgb")
    return path


def _one_bit(path):
    return _save(Image.fromarray(CHECKER), path)


def _gray8(path):
    return _save(Image.fromarray(np.round(RAMP * 255).astype(np.uint8)), path)


PALETTE = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)  # index 0 red, 1 blue


def _palette(transparent):
    def make(path):
        im = Image.fromarray(CHECKER.astype(np.uint8), "P")
        im.putpalette(PALETTE)
        return _save(im, path, **({"transparency": 0} if transparent else {}))

    return make


def _rgb8_file(path):
    arr = np.zeros((N, N, 3), np.uint8)
    arr[..., 0] = np.round(RAMP * 255)
    arr[..., 1] = 7
    arr[..., 2] = 255 - arr[..., 0]
    return _save(Image.fromarray(arr), path)


def _rgba(path):
    arr = np.zeros((N, N, 4), np.uint8)
    arr[..., 0] = 255
    arr[: N // 2, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    return _save(Image.fromarray(arr, "RGBA"), path)


def _la(path):
    arr = np.zeros((N, N, 2), np.uint8)
    arr[..., 1] = 255
    arr[:, N // 2 :, 1] = 0  # right half transparent -> white
    return _save(Image.fromarray(arr, "LA"), path)


def _cmyk(path):
    return _save(Image.new("CMYK", (N, N), (255, 0, 0, 0)), path, **({"quality": 100} if path.suffix == ".jpg" else {}))


def _ycbcr(path):
    return _save(Image.new("YCbCr", (N, N), (128, 128, 128)), path)


def _exif_rotated(path):
    arr = np.zeros((N // 2, N, 3), np.uint8)  # stored 16 wide x 8 tall, left half white
    arr[:, : N // 2] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return _save(im, path, exif=exif, quality=100)


def _frames(path):
    frames = [Image.new("L", (N, N), v) for v in (10, 250)]
    return _save(frames[0], path, save_all=True, append_images=frames[1:], **({"duration": 100} if path.suffix == ".gif" else {}))


_exif_expected = np.full((N // 2, N // 2, 3), -1.0)
_exif_expected[: N // 4] = 1.0  # upright: 8 wide x 16 tall, top half white; centre crop rows 4..11

# (id, file name, writer, size to load at, expected (size, size, 3) values, tolerance)
IMAGE_CASES = [
    ("8-bit RGB", "rgb.png", _rgb8_file, N, _rgb8(np.stack([np.round(RAMP * 255), np.full((N, N), 7), 255 - np.round(RAMP * 255)], axis=2)), 1e-6),
    ("8-bit L", "gray.png", _gray8, N, _gray(np.round(RAMP * 255) / 255), 1e-6),
    ("1-bit", "bits.png", _one_bit, N, _gray(CHECKER), 0),
    ("palette", "pal.png", _palette(False), N, np.where(CHECKER[..., None], [-1, -1, 1], [1, -1, -1]), 0),
    ("palette transparency png", "palt.png", _palette(True), N, np.where(CHECKER[..., None], [-1, -1, 1], [1, 1, 1]), 0),
    ("palette transparency gif", "palt.gif", _palette(True), N, np.where(CHECKER[..., None], [-1, -1, 1], [1, 1, 1]), 0),
    ("RGBA", "rgba.png", _rgba, N, np.concatenate([np.tile([1, -1, -1], (N // 2, N, 1)), np.ones((N // 2, N, 3))]), 0),
    ("LA", "la.png", _la, N, np.concatenate([np.full((N, N // 2, 3), -1.0), np.ones((N, N // 2, 3))], axis=1), 0),
    ("16-bit PNG ramp", "ramp16.png", _ramp16, N, _gray(np.round(RAMP * 65535) / 65535), 1e-6),
    ("16-bit TIFF ramp", "ramp16.tif", _ramp16, N, _gray(np.round(RAMP * 65535) / 65535), 1e-6),
    ("16-bit big-endian TIFF", "ramp16b.tif", _ramp16_big_endian, N, _gray(np.round(RAMP * 65535) / 65535), 1e-6),
    ("16-bit PGM (mode I)", "ramp16.pgm", _pgm16, N, _gray(np.round(RAMP * 65535) / 65535), 1e-6),
    ("int32 within 0..65535", "i32_16.tif", _int32(np.round(RAMP * 65535)), N, _gray(np.round(RAMP * 65535) / 65535), 1e-6),
    ("int32 full range", "i32.tif", _int32(np.round(-(2.0**31) + RAMP * (2.0**32 - 1))), N, _gray(RAMP), 1e-6),
    ("signed 16-bit TIFF", "i16.tif", _signed_tiff(np.int16), N, _gray(RAMP), 1e-4),
    ("unsigned 32-bit TIFF", "u32.tif", _unsigned32_tiff, N, _gray(np.round(RAMP * (2.0**32 - 1)) / (2.0**32 - 1)), 1e-6),
    ("signed 8-bit TIFF", "i8.tif", _signed_tiff(np.int8), N, _gray(np.round(RAMP * 255) / 255), 1e-6),
    ("16-bit RGB TIFF", "rgb16.tif", _rgb16_tiff, N, np.tile(_rgb8([0, 0x80, 0xFF]), (N, N, 1)), 1e-6),
    ("float32 TIFF in [0, 1]", "f01.tif", _float32(1.0), N, _gray(RAMP), 1e-6),
    ("float32 TIFF in [0, 255]", "f255.tif", _float32(255.0), N, _gray(RAMP), 1e-6),
    ("CMYK TIFF", "cmyk.tif", _cmyk, N, np.tile([-1, 1, 1], (N, N, 1)), 0),
    ("CMYK JPEG", "cmyk.jpg", _cmyk, N, np.tile([-1, 1, 1], (N, N, 1)), 0.05),
    ("YCbCr TIFF", "ycbcr.tif", _ycbcr, N, np.full((N, N, 3), _rgb8(128)), 2 / 127.5),
    ("EXIF-rotated JPEG", "rot.jpg", _exif_rotated, N // 2, _exif_expected, 0.1),
    ("2-frame GIF", "anim.gif", _frames, N, np.full((N, N, 3), _rgb8(10)), 1e-6),
    ("2-page TIFF", "pages.tif", _frames, N, np.full((N, N, 3), _rgb8(10)), 1e-6),
]


@pytest.mark.parametrize("name, writer, size, expected, atol", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_every_pixel_type_maps_by_its_real_range(tmp_path, name, writer, size, expected, atol):
    path = writer(tmp_path / name)
    assert check_image(str(path)) is None
    got = load_image(str(path), size).permute(1, 2, 0).numpy().astype(np.float64)
    assert got.shape == (size, size, 3)
    assert float(got.min()) >= -1.0 and float(got.max()) <= 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol + 1e-7)


def test_a_16_bit_ramp_is_a_ramp_not_saturated_white(tmp_path):
    """The bug this guards: 16-bit values clipped to 255 made 98% of the ramp white."""
    path = _ramp16(tmp_path / "ramp16.png")
    got = load_image(str(path), 8)  # resampled this time
    assert float((got > 0.99).float().mean()) < 0.1
    assert float(got.min()) < -0.9 and float(got.max()) > 0.9
    rows = got[0].mean(dim=1)
    assert bool((rows[1:] > rows[:-1]).all()), rows  # still increasing from top to bottom


def test_float_range_detection_is_logged(tmp_path, caplog):
    path = _float32(1.0)(tmp_path / "f01.tif")
    with caplog.at_level(logging.INFO, logger="diffusion_report.images"):
        got = load_image(str(path), 4)
    assert float(got.max()) > 0.5  # not all black
    assert "float values within [0, 1]" in caplog.text and "f01.tif" in caplog.text


@pytest.mark.parametrize(
    "values, fragment",
    [
        (RAMP * 1000, "values in [0, 1000]"),
        (RAMP - 0.5, "values in [-0.5, 0.5]"),
        (np.where(CHECKER, np.nan, RAMP), "NaN or infinite"),
    ],
    ids=["above 255", "negative", "NaN"],
)
def test_float_images_outside_both_ranges_are_explained(tmp_path, values, fragment):
    path = tmp_path / "odd.tif"
    Image.fromarray(values.astype(np.float32)).save(path)
    problem = check_image(str(path))
    assert problem is not None and "odd.tif" in problem and "'F'" in problem and fragment in problem, problem
    with pytest.raises(ValueError, match="odd.tif"):
        load_image(str(path), 8)


@pytest.mark.parametrize(
    "mode, colour, expected",
    [("PA", (0, 0), [1, 1, 1]), ("RGBa", (255, 0, 0, 255), [1, -1, -1]), ("HSV", (0, 255, 255), [1, -1, -1]), ("RGBX", (0, 255, 0, 0), [-1, 1, -1])],
)
def test_modes_no_file_writer_produces(mode, colour, expected):
    im = Image.new(mode, (4, 4), colour)
    if mode == "PA":
        im.putpalette([255, 0, 0] * 256)  # red, fully transparent -> white
    np.testing.assert_allclose(to_rgb_array(im, 4, "'mem'"), np.tile(expected, (4, 4, 1)), atol=1e-6)


def test_unmappable_modes_are_errors_naming_image_and_mode(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'mem' has PIL mode 'La'"):
        to_rgb_array(Image.new("La", (4, 4)), 4, "'mem'")
    # a mode this module did not know: the config check's string and load_image's error
    path = _cmyk(tmp_path / "cmyk.tif")
    monkeypatch.setattr(images, "SUPPORTED_MODES", images.SUPPORTED_MODES - {"CMYK"})
    problem = check_image(str(path))
    assert problem is not None and "cmyk.tif" in problem and "PIL mode 'CMYK'" in problem and "cannot be mapped" in problem
    with pytest.raises(ValueError, match=r"forward\.images: .*cmyk\.tif.*'CMYK'"):
        load_image(str(path), 4)


def test_config_check_rejects_an_unusable_float_image(tmp_path):
    from conftest import ROOT, load_yaml

    from diffusion_report.config import ConfigError, validate_config

    path = tmp_path / "hdr.tif"
    Image.fromarray((RAMP * 1000).astype(np.float32)).save(path)
    cfg = copy.deepcopy(load_yaml(ROOT / "config.yaml"))
    cfg["forward"]["images"] = [str(path)]
    with pytest.raises(ConfigError, match=r"forward\.images\[0\]: .*hdr\.tif.*PIL mode 'F'"):
        validate_config(cfg, ROOT / "schemas" / "config.schema.yaml", base_dir=ROOT)


# ------------------------------------------------------------------ declared memory of image rules
def test_decode_memory_comes_from_the_headers(tmp_path):
    """decode_mem_mb: the largest image's pixels times its mode's bytes per pixel, from headers only."""
    from diffusion_report.images import DECODE_BYTES_OTHER, decode_mem_mb

    gray = tmp_path / "gray.png"
    Image.new("L", (2000, 1000), 200).save(gray)
    rgb = tmp_path / "rgb.jpg"
    Image.new("RGB", (1000, 1000), "white").save(rgb)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (1000, 1000)).save(rgba)
    pal = tmp_path / "pal.png"
    Image.new("P", (1000, 1000), 1).save(pal, transparency=1)
    assert decode_mem_mb([str(gray)]) == 24  # 2 Mpx x 12 B
    assert decode_mem_mb([str(rgb)]) == 18
    assert decode_mem_mb([str(rgba)]) == decode_mem_mb([str(pal)]) == DECODE_BYTES_OTHER
    assert decode_mem_mb([str(rgb), str(gray), str(rgba)]) == 26  # images load one at a time: the largest counts
    assert decode_mem_mb(["astronaut"]) == 5  # a scikit-image sample: 512 x 512 RGB
    assert decode_mem_mb([str(tmp_path / "missing.png"), str(tmp_path)]) == 0  # the config check names these


def test_forward_clean_declares_memory_for_a_large_input(tmp_path):
    """The dry run's job listing shows mem_mb grown with an 8000 x 8000 input (the header is read,
    the 64 Mpx are not decoded), and the default small images keep the old 1000 MB."""
    import re

    from conftest import copy_workflow, run_snakemake, write_config

    work = copy_workflow(tmp_path / "wf")
    Image.new("L", (8000, 8000), 128).save(work / "big.png")  # 64 Mpx, a few hundred kB on disk
    declared = {}
    for name, imgs in (("big", ["big.png", "camera"]), ("small", ["camera"])):
        overlay = write_config(tmp_path / f"{name}.yaml", {"forward": {"images": imgs}, "ddim": {"enabled": False}})
        proc = run_snakemake(work, "results/forward/x0.safetensors", "-n", "--configfile", str(overlay), timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        declared[name] = int(re.search(r"resources: .*\bmem_mb=(\d+)", out).group(1))
    assert declared == {"big": 1000 + 768, "small": 1000 + 4}  # 64 Mpx x 12 B (8-bit gray); camera 512 x 512


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGBA", "F"])
def test_declared_memory_covers_the_measured_peak(tmp_path, mode):
    """forward.forward_clean on a 4000 x 4000 image of the costliest modes peaks below what the rule declares."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    from diffusion_report.images import decode_mem_mb

    path = tmp_path / f"big_{mode}.tif"
    if mode == "F":
        Image.fromarray(np.linspace(0, 1, 4000 * 4000, dtype=np.float32).reshape(4000, 4000), "F").save(path)
    else:
        Image.new(mode, (4000, 4000), (200, 10, 10, 128)).save(path)
    code = (
        "import resource, sys; from diffusion_report.stages import forward; "
        f"forward.forward_clean([{str(path)!r}], 64, {str(tmp_path / 'x0.safetensors')!r}, {str(tmp_path / 'clean.png')!r}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})  # this checkout's package
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1])
    declared = 1000 + decode_mem_mb([str(path)])
    assert peak_mb < declared, (peak_mb, declared)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG"])
def test_truncated_pixel_data_is_a_config_error_or_a_clean_load_error(tmp_path, monkeypatch, fmt):
    """Cut-off pixel data: the config check decodes images up to CHECK_DECODE_MAX_PIXELS and names
    the file; above that (header checks only) load_image still fails with one ValueError naming it."""
    import io

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    problem = check_image(str(path))
    assert problem is not None and "is not a readable image" in problem and "cut." in problem
    monkeypatch.setattr(images, "CHECK_DECODE_MAX_PIXELS", 100)  # as if the image were large
    if check_image(str(path)) is None:  # a PNG's verify() already sees the damage
        with pytest.raises(ValueError, match=r"forward\.images: .*cut\..* is not a readable image"):
            load_image(str(path), 16)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_truncated_data_is_an_error_even_when_the_process_allows_it(tmp_path, monkeypatch, fmt):
    """Importing WeasyPrint sets PIL's global LOAD_TRUNCATED_IMAGES = True; the check and the loader
    still refuse cut-off pixel data, and leave the process's setting as they found it."""
    import io

    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    assert "is not a readable image" in (check_image(str(path)) or "")
    monkeypatch.setattr(images, "CHECK_DECODE_MAX_PIXELS", 100)  # header checks only: the loader decodes
    with pytest.raises(ValueError, match=r"is not a readable image"):
        load_image(str(path), 16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True

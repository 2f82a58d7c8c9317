import numpy as np
import pytest
from PIL import Image

from diffusion_report.images import check_image, image_name, load_image, shipped_names


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

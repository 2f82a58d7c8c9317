"""Property-based tests (hypothesis): whatever a user puts in the config or hands over as an image
file, the config check either accepts it or rejects it with lines naming the key or the file;
nothing ends in another exception, and what the check accepts loads."""

from __future__ import annotations

import copy
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, load_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusion_report.config import ConfigError, validate_config
from diffusion_report.images import load_image

SCHEMA = ROOT / "schemas" / "config.schema.yaml"
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _base_config() -> dict:
    cfg = load_yaml(ROOT / "config.yaml")
    # the shipped digits weights (models/ddim-digits) are not what these tests are about
    cfg["ddim"]["retrain"] = True
    return cfg


BASE = _base_config()


# ---------------------------------------------------------------------------------------- config
# Anything YAML (or --config) can produce: scalars of every type, lists, mappings.
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.from_regex(r"\A[-+]?\d{1,6}(\.\d{0,3})?\Z"),  # numbers given as text (a nested --config)
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=6),
    st.dictionaries(st.text(max_size=8), _SCALARS, max_size=3),
)

# Values that broke checks before: NaN and infinities (JSON schema bounds let NaN through), empty
# text and containers, booleans (ints to Python), numbers as text.
_NASTY = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0, -1, True, False, None, "", " ", "1e3", "64", [], {}, [math.nan]])

# (key as the config check names it, path into the config, values of the key's own type): an
# integer, a cross-field integer, a bounded float, a list, a string, a list of choices, a pair of floats
_KEYS = [
    ("seed", ("seed",), st.integers(min_value=-5, max_value=2**64)),
    ("schedule.T", ("schedule", "T"), st.integers(min_value=-5, max_value=200_000)),
    ("p2p.guidance_scale", ("p2p", "guidance_scale"), st.floats(min_value=-10, max_value=200)),
    ("forward.show_timesteps", ("forward", "show_timesteps"), st.lists(st.integers(min_value=-5, max_value=2000), max_size=6)),
    ("p2p.edits[0]", ("p2p", "edits", 0, "source"),
     st.lists(st.sampled_from(["a", "red", "big", "square", "circle", "on", "white", "background", "cat", "!", ""]), max_size=14).map(" ".join)),
    ("report.formats", ("report", "formats"), st.lists(st.sampled_from(["html", "pdf", "docx", "", "HTML"]), max_size=4)),
    ("t2i.data.radius", ("t2i", "data", "radius"), st.lists(st.floats(min_value=-2, max_value=20), max_size=3)),
]


def _set(cfg: dict, path: tuple, value) -> None:
    node = cfg
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@pytest.mark.parametrize("key, path, plausible", _KEYS, ids=[k[0] for k in _KEYS])
def test_any_config_value_is_accepted_or_rejected_naming_its_key(key, path, plausible):
    @FAST
    @given(value=st.one_of(plausible, _NASTY, _VALUES))
    def check(value):
        cfg = copy.deepcopy(BASE)
        _set(cfg, path, value)
        try:
            validate_config(cfg, SCHEMA, base_dir=ROOT)
        except ConfigError as exc:
            lines = str(exc).splitlines()[1:]
            assert lines, str(exc)
            for line in lines:
                assert line.strip().startswith("config error: "), str(exc)
                assert key in line, f"{key!r} not named in {line!r} (value {value!r})"
            return
        # accepted: then the value is one the stages can use (no NaN or infinity slipped through)
        leaf = cfg
        for part in path:
            leaf = leaf[part]
        for x in (leaf if isinstance(leaf, list) else list(leaf.values()) if isinstance(leaf, dict) else [leaf]):
            assert not (isinstance(x, float) and not math.isfinite(x)), f"{key} = {value!r} was accepted"

    check()


# ---------------------------------------------------------------------------------------- images
_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F", "RGBX", "La"]
_FORMATS = ["PNG", "TIFF", "GIF", "BMP", "JPEG", "WEBP", "PPM", "ICO", "TGA", "PCX", "EPS"]
_MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"P6\n"]


@st.composite
def image_files(draw) -> bytes:
    """The bytes of an image file: a real one of a random mode, format and size, maybe cut short or
    with bytes flipped, or random bytes behind the magic number of a format."""
    kind = draw(st.sampled_from(["image", "image", "truncated", "flipped", "noise"]))
    if kind == "noise":
        return draw(st.sampled_from(_MAGIC)) + draw(st.binary(max_size=600))
    mode = draw(st.sampled_from(_MODES))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    try:
        im = Image.frombytes(mode, (w, h), rng.bytes(len(Image.new(mode, (w, h)).tobytes())))
    except (ValueError, OSError):
        im = Image.new(mode, (w, h))
    buf = io.BytesIO()
    try:
        im.save(buf, format=draw(st.sampled_from(_FORMATS)))
    except (OSError, ValueError, KeyError, TypeError):  # this format cannot hold this mode: write noise instead
        return draw(st.binary(min_size=1, max_size=300))
    data = buf.getvalue()
    if kind == "truncated":
        return data[: draw(st.integers(1, max(1, len(data) - 1)))]
    if kind == "flipped":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    return data


@FAST
@given(data=image_files(), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif", ".bmp", ".webp", ""]))
def test_any_image_file_loads_or_is_rejected_naming_it(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        cfg = copy.deepcopy(BASE)
        cfg["forward"]["images"] = ["camera", str(path)]
        try:
            validate_config(cfg, SCHEMA, base_dir=ROOT)
        except ConfigError as exc:
            lines = str(exc).splitlines()[1:]
            assert lines and all("forward.images[1]" in line for line in lines), str(exc)
            return
        x = load_image(str(path), 16)  # what the check accepted, the stage can load
        assert tuple(x.shape) == (3, 16, 16)
        assert bool(x.isfinite().all()) and float(x.min()) >= -1 and float(x.max()) <= 1

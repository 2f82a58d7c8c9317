"""Procedural captioned shapes: the training data of the embedded text-to-image model.

One image holds one shape (circle, square, triangle, ...) of one colour, at a random position and
size, on a flat background colour, with its caption ("a big red circle on a white background")
and its ground truth (shape, colour, background, size word, mask, centre, radius). Everything is
drawn from an explicit ``torch.Generator``; the vocabulary and the attributes come from config
(``t2i.data``).

Geometry (pixel centres at ``i + 0.5``, ``r`` is the half-extent in pixels):

* circle   ``(x - cx)^2 + (y - cy)^2 <= r^2``
* square   ``|x - cx| <= r`` and ``|y - cy| <= r``
* triangle apex at ``(cx, cy - r)``, base ``y = cy + r`` from ``cx - r`` to ``cx + r``
* diamond  ``|x - cx| + |y - cy| <= r``

Edges are anti-aliased by supersampling; the ground-truth mask is coverage > 1/2, and every
shape spans ``2r`` pixels in both directions, so ``r`` is half the side of the mask's bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SHAPES = ("circle", "square", "triangle", "diamond")
SPECIAL_WORDS = ("a", "on", "background")


def hex_to_rgb(value: str) -> tuple[float, float, float]:
    """'#rrggbb' -> (r, g, b) in [-1, 1]."""
    value = value.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {value!r} is not of the form #rrggbb")
    return tuple(int(value[i : i + 2], 16) / 127.5 - 1.0 for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass(frozen=True)
class ShapeSpec:
    """The generator's vocabulary and attribute ranges (the ``t2i.data`` config block)."""

    image_size: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    colours: dict[str, str] = field(default_factory=lambda: {"red": "#e02020", "green": "#20b020", "blue": "#2040e0", "yellow": "#f0d020"})
    backgrounds: dict[str, str] = field(default_factory=lambda: {"white": "#ffffff", "black": "#000000", "gray": "#808080"})
    radius: tuple[float, float] = (3.0, 6.0)  # half-extent range in pixels
    small_below: float = 3.8  # radius < small_below may be called "small"
    big_above: float = 5.2  # radius > big_above may be called "big"
    size_word_prob: float = 0.5  # probability that an eligible size word appears in the caption
    supersample: int = 4

    def __post_init__(self):
        unknown = set(self.shapes) - set(SHAPES)
        if unknown:
            raise ValueError(f"t2i.data.shapes: unknown shapes {sorted(unknown)}; allowed: {', '.join(SHAPES)}")
        if set(self.colours) & set(self.backgrounds):
            raise ValueError("t2i.data: a word cannot be both a shape colour and a background colour")
        lo, hi = self.radius
        if not (1.0 <= lo < hi <= self.image_size / 2):
            raise ValueError(f"t2i.data.radius {self.radius} must satisfy 1 <= min < max <= image_size / 2")

    @classmethod
    def from_config(cls, data: dict) -> "ShapeSpec":
        return cls(
            image_size=int(data["image_size"]),
            shapes=tuple(data["shapes"]),
            colours=dict(data["colours"]),
            backgrounds=dict(data["backgrounds"]),
            radius=(float(data["radius"][0]), float(data["radius"][1])),
            small_below=float(data["small_below"]),
            big_above=float(data["big_above"]),
            size_word_prob=float(data["size_word_prob"]),
        )

    @property
    def size_words(self) -> tuple[str, str]:
        return ("small", "big")

    def size_word(self, radius: float) -> str:
        """The size word a shape of half-extent ``radius`` (pixels) may be captioned with: "small"
        below ``small_below``, "big" above ``big_above``, else ""."""
        return "small" if radius < self.small_below else "big" if radius > self.big_above else ""

    def vocabulary(self) -> list[str]:
        """Every word a caption can use, in a fixed order."""
        words = list(SPECIAL_WORDS) + list(self.size_words) + list(self.colours) + list(self.shapes) + list(self.backgrounds)
        return list(dict.fromkeys(words))


def caption(colour: str, shape: str, background: str, size_word: str = "") -> str:
    """'a [size] <colour> <shape> on a <background> background'."""
    size = f"{size_word} " if size_word else ""
    return f"a {size}{colour} {shape} on a {background} background"


def parse_caption(spec: "ShapeSpec", text: str) -> dict | None:
    """The attributes of a caption in :func:`caption`'s form ({size_word, colour, shape,
    background}), or None when the text is not such a caption in ``spec``'s vocabulary."""
    words = " ".join(str(text).lower().split()).split(" ")
    size = ""
    if len(words) == 8 and words[1] in spec.size_words:
        size = words.pop(1)
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        return None
    colour, shape, background = words[1], words[2], words[5]
    if colour not in spec.colours or shape not in spec.shapes or background not in spec.backgrounds:
        return None
    return {"size_word": size, "colour": colour, "shape": shape, "background": background}


def coverage(shape: str, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, size: int, supersample: int = 4) -> torch.Tensor:
    """Fraction of each pixel inside the shape. cx, cy, r: (B,) in pixels -> (B, size, size) in [0, 1]."""
    s = supersample
    coords = (torch.arange(size * s, dtype=torch.float64) + 0.5) / s  # sub-pixel centres
    y = coords.view(1, -1, 1)
    x = coords.view(1, 1, -1)
    cx, cy, r = (v.to(torch.float64).view(-1, 1, 1) for v in (cx, cy, r))
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        inside = (dx.abs() <= r) & (dy.abs() <= r)
    elif shape == "triangle":
        inside = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    elif shape == "diamond":
        inside = dx.abs() + dy.abs() <= r
    else:
        raise ValueError(f"unknown shape {shape!r}")
    b = inside.shape[0]
    return inside.to(torch.float64).view(b, size, s, size, s).mean(dim=(2, 4))


@dataclass
class ShapeBatch:
    """A batch of rendered shapes and their ground truth."""

    images: torch.Tensor  # (B, 3, H, W) float32 in [-1, 1]
    masks: torch.Tensor  # (B, H, W) bool, coverage > 1/2
    captions: list[str]
    shape: list[str]
    colour: list[str]
    background: list[str]
    size_word: list[str]  # "", "small" or "big" (the word in the caption)
    cx: torch.Tensor  # (B,) centre x in pixels
    cy: torch.Tensor  # (B,) centre y in pixels
    radius: torch.Tensor  # (B,) half-extent in pixels

    def __len__(self) -> int:
        return len(self.captions)


def render(spec: ShapeSpec, shape: list[str], colour: list[str], background: list[str], cx, cy, radius) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw given attributes. Lists of length B, cx/cy/radius (B,) -> images (B,3,H,W), masks (B,H,W)."""
    n = spec.image_size
    cx, cy, radius = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (cx, cy, radius))
    b = len(shape)
    cov = torch.zeros(b, n, n, dtype=torch.float64)
    for name in set(shape):
        idx = torch.tensor([i for i, s in enumerate(shape) if s == name])
        cov[idx] = coverage(name, cx[idx], cy[idx], radius[idx], n, spec.supersample)
    fg = torch.tensor([hex_to_rgb(spec.colours[c]) for c in colour], dtype=torch.float64).view(b, 3, 1, 1)
    bg = torch.tensor([hex_to_rgb(spec.backgrounds[c]) for c in background], dtype=torch.float64).view(b, 3, 1, 1)
    c = cov.unsqueeze(1)
    images = bg * (1 - c) + fg * c
    return images.to(torch.float32), cov > 0.5


def sample(spec: ShapeSpec, batch_size: int, generator: torch.Generator) -> ShapeBatch:
    """Draw ``batch_size`` random captioned shapes with ``generator`` (same generator state -> same batch)."""
    g = generator
    n = spec.image_size
    si = torch.randint(len(spec.shapes), (batch_size,), generator=g)
    ci = torch.randint(len(spec.colours), (batch_size,), generator=g)
    bi = torch.randint(len(spec.backgrounds), (batch_size,), generator=g)
    lo, hi = spec.radius
    radius = lo + (hi - lo) * torch.rand(batch_size, generator=g, dtype=torch.float64)
    # centre so the whole shape lies inside the image
    cx = radius + (n - 2 * radius) * torch.rand(batch_size, generator=g, dtype=torch.float64)
    cy = radius + (n - 2 * radius) * torch.rand(batch_size, generator=g, dtype=torch.float64)
    use_word = torch.rand(batch_size, generator=g) < spec.size_word_prob
    shapes = [spec.shapes[i] for i in si.tolist()]
    colours = [list(spec.colours)[i] for i in ci.tolist()]
    backgrounds = [list(spec.backgrounds)[i] for i in bi.tolist()]
    size_words = []
    for r, w in zip(radius.tolist(), use_word.tolist()):
        size_words.append(spec.size_word(r) if w else "")
    images, masks = render(spec, shapes, colours, backgrounds, cx, cy, radius)
    caps = [caption(c, s, b, w) for c, s, b, w in zip(colours, shapes, backgrounds, size_words)]
    return ShapeBatch(images, masks, caps, shapes, colours, backgrounds, size_words, cx, cy, radius)

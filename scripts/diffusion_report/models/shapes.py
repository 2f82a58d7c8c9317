"""Procedural captioned shapes: the training data of the embedded text-to-image model.

One image holds one shape (circle, square, triangle, ...) of one colour, at a random position and
size, on a flat background colour, with its caption ("a big red circle on a white background")
and its ground truth (shape, colour, background, size word, mask, centre, radius). With
``two_objects > 0`` that fraction of the images holds a pair instead, one object in each half of
the image, named left to right ("a red circle and a blue square on a white background"): the
caption's word order is the layout, which a text encoder without layers can carry (each token's
position embedding says which object it names). Everything is
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

from diffusion_report.core.prompts import PAIR_WORD, split_pair_caption

SHAPES = ("circle", "square", "triangle", "diamond")
SPECIAL_WORDS = ("a", "on", "background")
PAIR_GAP = 1.0  # pixels between a pair's two halves that neither object enters


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
    colour_word_prob: float = 1.0  # probability that a one-object caption names the colour (else "a circle on ...")
    two_objects: float = 0.0  # probability that an image holds two objects (left, right) instead of one
    pair_radius: tuple[float, float] = (2.5, 3.25)  # half-extent range of each object of a pair
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
        if not 0.0 <= self.two_objects <= 1.0:
            raise ValueError(f"t2i.data.two_objects {self.two_objects} must lie in [0, 1]")
        if not 0.0 <= self.colour_word_prob <= 1.0:
            raise ValueError(f"t2i.data.colour_word_prob {self.colour_word_prob} must lie in [0, 1]")
        lo, hi = self.pair_radius
        half = (self.image_size - PAIR_GAP) / 4
        if self.two_objects > 0 and not (1.0 <= lo <= hi <= half):
            raise ValueError(f"t2i.data.pair_radius {self.pair_radius} must satisfy 1 <= min <= max <= {half:g} "
                             f"(a quarter of image_size - {PAIR_GAP:g}: each object of a pair fits its half of the image)")

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
            colour_word_prob=float(data.get("colour_word_prob", 1.0)),
            two_objects=float(data.get("two_objects", 0.0)),
            pair_radius=tuple(float(v) for v in data.get("pair_radius", (2.5, 3.25))),
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
        if self.two_objects > 0:
            words.append(PAIR_WORD)  # last: a one-object model's token ids stay as they were
        return list(dict.fromkeys(words))


def caption(colour: str, shape: str, background: str, size_word: str = "") -> str:
    """'a [size] [colour] <shape> on a <background> background' (``colour`` "": no colour word)."""
    size = f"{size_word} " if size_word else ""
    col = f"{colour} " if colour else ""
    return f"a {size}{col}{shape} on a {background} background"


def pair_caption(objects: list[tuple[str, str]], background: str) -> str:
    """'a <colour> <shape> and a <colour> <shape> on a <background> background', objects
    [(colour, shape), (colour, shape)] named left to right."""
    (c1, s1), (c2, s2) = objects
    return f"a {c1} {s1} {PAIR_WORD} a {c2} {s2} on a {background} background"


def parse_pair_caption(spec: "ShapeSpec", text: str) -> dict | None:
    """{objects: [(colour, shape) left, (colour, shape) right], background} of a caption in
    :func:`pair_caption`'s form, or None when the text is not one in ``spec``'s vocabulary."""
    split = split_pair_caption(text)
    if split is None:
        return None
    objects, background = split
    if any(c not in spec.colours or s not in spec.shapes for c, s in objects) or background not in spec.backgrounds:
        return None
    return {"objects": objects, "background": background}


def parse_caption(spec: "ShapeSpec", text: str) -> dict | None:
    """The attributes of a caption in :func:`caption`'s form ({size_word, colour, shape,
    background}; ``colour`` "" when the caption names none), or None when the text is not such a
    caption in ``spec``'s vocabulary."""
    words = " ".join(str(text).lower().split()).split(" ")
    if len(words) < 6 or words[0] != "a" or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        return None
    *adjectives, shape = words[1:-4]  # [size] [colour] shape
    size = adjectives.pop(0) if adjectives and adjectives[0] in spec.size_words else ""
    colour = adjectives.pop(0) if adjectives and adjectives[0] in spec.colours else ""
    background = words[-2]
    if adjectives or shape not in spec.shapes or background not in spec.backgrounds:
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
    colour_named: list[bool] | None = None  # whether each caption names the colour (None: all do)

    def names_colour(self, i: int) -> bool:
        return self.colour_named is None or bool(self.colour_named[i])

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
    named = None
    if spec.colour_word_prob < 1.0:  # drawn after everything else: at 1 the batch is the same as without the key
        named = (torch.rand(batch_size, generator=g) < spec.colour_word_prob).tolist()
    images, masks = render(spec, shapes, colours, backgrounds, cx, cy, radius)
    caps = [caption(c if named is None or named[i] else "", s, b, w)
            for i, (c, s, b, w) in enumerate(zip(colours, shapes, backgrounds, size_words))]
    return ShapeBatch(images, masks, caps, shapes, colours, backgrounds, size_words, cx, cy, radius, named)


# --------------------------------------------------------------------------- two objects
@dataclass
class PairBatch:
    """A batch of two-object images (one object in each half, named left to right) and their truth."""

    images: torch.Tensor  # (B, 3, H, W) float32 in [-1, 1]
    masks: torch.Tensor  # (B, 2, H, W) bool: each object's coverage > 1/2 (left, right)
    captions: list[str]
    objects: list[list[tuple[str, str]]]  # per image [(colour, shape) left, (colour, shape) right]
    background: list[str]
    cx: torch.Tensor  # (B, 2) centres x in pixels
    cy: torch.Tensor  # (B, 2)
    radius: torch.Tensor  # (B, 2) half-extents in pixels

    def __len__(self) -> int:
        return len(self.captions)


def render_pair(spec: ShapeSpec, objects: list[list[tuple[str, str]]], background: list[str], cx, cy, radius) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw two objects per image. objects: B x [(colour, shape), (colour, shape)]; cx, cy,
    radius (B, 2) -> images (B, 3, H, W), masks (B, 2, H, W). The objects must not overlap."""
    n, b = spec.image_size, len(objects)
    cx, cy, radius = (torch.as_tensor(v, dtype=torch.float64).reshape(b, 2) for v in (cx, cy, radius))
    bg = torch.tensor([hex_to_rgb(spec.backgrounds[c]) for c in background], dtype=torch.float64).view(b, 3, 1, 1)
    images, masks = bg.expand(b, 3, n, n).clone(), torch.zeros(b, 2, n, n, dtype=torch.bool)
    for k in range(2):
        cov = torch.zeros(b, n, n, dtype=torch.float64)
        for name in {o[k][1] for o in objects}:
            idx = torch.tensor([i for i, o in enumerate(objects) if o[k][1] == name])
            cov[idx] = coverage(name, cx[idx, k], cy[idx, k], radius[idx, k], n, spec.supersample)
        fg = torch.tensor([hex_to_rgb(spec.colours[o[k][0]]) for o in objects], dtype=torch.float64).view(b, 3, 1, 1)
        c = cov.unsqueeze(1)
        images = images * (1 - c) + fg * c
        masks[:, k] = cov > 0.5
    return images.to(torch.float32), masks


def sample_pairs(spec: ShapeSpec, batch_size: int, generator: torch.Generator) -> PairBatch:
    """``batch_size`` random two-object images: each object's shape, colour and half-extent
    (``pair_radius``) drawn independently, the first inside the left half and the second inside
    the right half (``PAIR_GAP`` pixels between the halves stay background)."""
    g, n, b = generator, spec.image_size, batch_size
    si = torch.randint(len(spec.shapes), (b, 2), generator=g)
    ci = torch.randint(len(spec.colours), (b, 2), generator=g)
    bi = torch.randint(len(spec.backgrounds), (b,), generator=g)
    lo, hi = spec.pair_radius
    radius = lo + (hi - lo) * torch.rand(b, 2, generator=g, dtype=torch.float64)
    half = (n - PAIR_GAP) / 2  # width of each half
    left = torch.tensor([0.0, half + PAIR_GAP], dtype=torch.float64)  # where each half starts
    cx = left + radius + (half - 2 * radius) * torch.rand(b, 2, generator=g, dtype=torch.float64)
    cy = radius + (n - 2 * radius) * torch.rand(b, 2, generator=g, dtype=torch.float64)
    names, colours = list(spec.colours), list(spec.backgrounds)
    objects = [[(names[ci[i, k]], spec.shapes[si[i, k]]) for k in range(2)] for i in range(b)]
    background = [colours[i] for i in bi.tolist()]
    images, masks = render_pair(spec, objects, background, cx, cy, radius)
    return PairBatch(images, masks, [pair_caption(o, bg) for o, bg in zip(objects, background)], objects, background, cx, cy, radius)


def sample_mixed(spec: ShapeSpec, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Training data: each image holds two objects with probability ``two_objects``, else one.
    Returns images (B, 3, H, W) and captions. With ``two_objects == 0`` it is :func:`sample`'s
    images and captions, from the same draws."""
    if spec.two_objects <= 0:
        b = sample(spec, batch_size, generator)
        return b.images, b.captions
    two = torch.rand(batch_size, generator=generator) < spec.two_objects
    n2 = int(two.sum())
    one = sample(spec, batch_size - n2, generator)
    pair = sample_pairs(spec, n2, generator)
    images = torch.empty(batch_size, 3, spec.image_size, spec.image_size)
    images[~two], images[two] = one.images, pair.images
    it1, it2 = iter(one.captions), iter(pair.captions)
    return images, [next(it2) if t else next(it1) for t in two.tolist()]

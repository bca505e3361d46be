"""The miniature world: one coloured shape on a background, rendered procedurally with an exact object mask and a
caption from a small vocabulary; clips move the shape along a known straight path that bounces off the edges.

Everything is a pure function of a seed (numpy `Generator`s), so the data set is regenerated, never stored. A
`World` names its vocabulary and which (shape, colour) pairs pretraining never sees: the identities.
"""

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 35, 35), "blue": (35, 70, 230), "yellow": (240, 215, 30), "purple": (150, 40, 200),
           "cyan": (30, 205, 210)}
BACKGROUNDS = {"sand": (200, 170, 120), "grass": (45, 120, 45), "snow": (235, 235, 242), "night": (20, 22, 60)}
PREFIX = "a photo of a"


@dataclass(frozen=True)
class Scene:
    """What one picture shows: a shape of a colour on a background, at a centre (row, col) with a half size."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]
    half: float


@dataclass(frozen=True)
class World:
    """The vocabulary, the picture size and the (shape, colour) pairs held out of pretraining (identities)."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    held_out: tuple[tuple[str, str], ...] = (("triangle", "purple"),)
    size: int = 64
    half_range: tuple[float, float] = (11.0, 17.0)
    speed_range: tuple[float, float] = (1.5, 3.0)  # pixels per frame in clips
    words: tuple[str, ...] = field(default=())

    def vocabulary(self) -> list[str]:
        """Every word a caption can hold (the tokenizer gets one token per word)."""
        return sorted({*PREFIX.split(), "on", *self.shapes, *self.colours, *self.backgrounds, *self.words})

    def seen_pairs(self) -> list[tuple[str, str]]:
        return [(s, c) for s in self.shapes for c in self.colours if (s, c) not in self.held_out]


def caption(scene: Scene, with_background: bool = True) -> str:
    text = f"{PREFIX} {scene.colour} {scene.shape}"
    return f"{text} on {scene.background}" if with_background else text


def draw_scene(world: World, rng: np.random.Generator, pairs: list[tuple[str, str]] | None = None,
               background: str | None = None) -> Scene:
    """A random scene of one of `pairs` (default: the pairs pretraining sees) on `background` (default: random)."""
    pairs = pairs or world.seen_pairs()
    shape, colour = pairs[rng.integers(len(pairs))]
    half = float(rng.uniform(*world.half_range))
    centre = tuple(float(v) for v in rng.uniform(half + 1, world.size - half - 1, size=2))
    return Scene(shape, colour, background or world.backgrounds[rng.integers(len(world.backgrounds))], centre, half)


def shape_mask(shape: str, size: int, centre: tuple[float, float], half: float) -> np.ndarray:
    """(size, size) coverage in [0, 1] with a one-pixel soft edge, from each shape's signed distance."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    y, x = (rows - centre[0]) / half, (cols - centre[1]) / half
    if shape == "circle":
        inside = 1.0 - np.sqrt(x * x + y * y)
    elif shape == "square":
        inside = 0.85 - np.maximum(abs(x), abs(y))
    elif shape == "triangle":  # pointing up: below the two slanted edges, above the base
        inside = np.minimum.reduce([0.8 - y, (y + 1.0) * 0.5 - abs(x) * 0.95])
    elif shape == "cross":
        inside = np.maximum(np.minimum(0.95 - abs(x), 0.32 - abs(y)), np.minimum(0.95 - abs(y), 0.32 - abs(x)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(inside * half + 0.5, 0.0, 1.0)


def background_image(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background colour with its own texture (grain, stripes, stars), varied a little per picture."""
    base = np.asarray(BACKGROUNDS[name], np.float32) / 255.0 + rng.normal(0, 0.03, 3).astype(np.float32)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    if name == "sand":
        image += rng.normal(0, 0.04, (size, size, 1)).astype(np.float32)
    elif name == "grass":
        image[:, ::4] *= 0.8
    elif name == "night":
        stars = rng.integers(0, size, (12, 2))
        image[stars[:, 0], stars[:, 1]] = 0.9
    else:
        image -= np.linspace(0, 0.08, size, dtype=np.float32)[:, None, None]
    return np.clip(image, 0.0, 1.0)


def render(world: World, scene: Scene, rng: np.random.Generator,
           background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) float32 in [0, 1], exact object mask (H, W) in {0, 1})."""
    back = background if background is not None else background_image(scene.background, world.size, rng)
    colour = np.asarray(COLOURS[scene.colour], np.float32) / 255.0
    colour = np.clip(colour + rng.normal(0, 0.03, 3).astype(np.float32), 0.0, 1.0)
    cover = shape_mask(scene.shape, world.size, scene.centre, scene.half)[..., None]
    image = back * (1.0 - cover) + colour * cover
    return image.astype(np.float32), (cover[..., 0] >= 0.5).astype(np.float32)


def trajectory(world: World, scene: Scene, frames: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres of a straight path at a random speed and direction, reflected at the edges (a known trajectory)."""
    speed, angle = rng.uniform(*world.speed_range), rng.uniform(0, 2 * np.pi)
    low, high = scene.half + 1, world.size - scene.half - 1
    position, velocity = np.asarray(scene.centre), speed * np.asarray([np.sin(angle), np.cos(angle)])
    centres = []
    for _ in range(frames):
        centres.append((float(position[0]), float(position[1])))
        position = position + velocity
        for axis in range(2):
            if not low <= position[axis] <= high:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], low, high)
    return centres


def render_clip(world: World, scene: Scene, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames, H, W, 3) video and (frames, H, W) masks of the scene's shape moving over a still background."""
    back = background_image(scene.background, world.size, rng)
    colour_rng_seed = int(rng.integers(2**31))
    images, masks = [], []
    for centre in trajectory(world, scene, frames, rng):
        moved = Scene(scene.shape, scene.colour, scene.background, centre, scene.half)
        image, mask = render(world, moved, np.random.default_rng(colour_rng_seed), back)
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def image_batch(world: World, count: int, seed: int, pairs=None, background_rate: float = 0.85):
    """`count` random pictures: images (N, H, W, 3), masks, scenes and captions (a caption names the background with
    probability `background_rate`, so prompts without one also mean something)."""
    rng = np.random.default_rng(seed)
    images, masks, scenes, captions = [], [], [], []
    for _ in range(count):
        scene = draw_scene(world, rng, pairs)
        image, mask = render(world, scene, rng)
        images.append(image)
        masks.append(mask)
        scenes.append(scene)
        captions.append(caption(scene, rng.random() < background_rate))
    return np.stack(images), np.stack(masks), scenes, captions


# the CI test's reduced world: fewer words, so that minutes of pretraining suffice
CI_WORLD = World(shapes=("circle", "square", "triangle"), colours=("red", "blue", "purple"),
                 backgrounds=("sand", "snow", "night"))

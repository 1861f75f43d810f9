"""Values that flow between simulated nodes.

No tensors: an image batch is its size plus one seed per picture, which is all
the save nodes need to render deterministic files of the right size and count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Picture:
    """One image of a batch: rendered from ``seed``; ``variant`` picks the palette."""

    seed: int
    variant: int = 0


@dataclass(frozen=True)
class Images:
    """An IMAGE batch (or the frames of a clip)."""

    width: int
    height: int
    pictures: tuple[Picture, ...]

    @property
    def count(self) -> int:
        return len(self.pictures)

    def __repr__(self) -> str:  # shows up in execution_error.current_inputs
        return f"IMAGE(batch={self.count}, height={self.height}, width={self.width}, channels=3)"


@dataclass(frozen=True)
class Latent:
    """A LATENT batch; the batch size becomes the frame count of a video."""

    width: int
    height: int
    batch: int
    seed: int

    def __repr__(self) -> str:
        return f"LATENT(batch={self.batch}, height={self.height // 8}, width={self.width // 8})"


@dataclass(frozen=True)
class Handle:
    """An opaque model-side value (MODEL, CLIP, VAE, CONDITIONING, motion models...)."""

    kind: str
    name: str

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


@dataclass(frozen=True)
class Video:
    """A VIDEO made by CreateVideo."""

    images: Images
    fps: float


def derive_seed(seed: int, salt: str) -> int:
    """A new seed from an old one, stable across processes (no ``hash()``)."""
    digest = hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")

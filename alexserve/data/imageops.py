"""Opening one input image the way `prepare` and test-time prediction need it.

`load_rgb` checks a file and returns RGB pixels plus what had to be converted;
`rescale_center_crop` is the paper's one-time preprocessing (shorter side to S,
central SxS). Both `prepare` and `raw_images` use them, so an image predicted from
disk is treated exactly like a prepared training image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# ImageNet images are named .JPEG whatever they hold; these are the PIL formats we expect.
_JPEG = "JPEG"


class BadImage(Exception):
    """An input that cannot be turned into an RGB image; the message is the reason for the report."""


@dataclass
class Loaded:
    image: Image.Image
    conversions: list[str]


def load_rgb(path: Path, *, draft_size: tuple[int, int] | None = None) -> Loaded:
    """Decode `path` fully to RGB; raise BadImage with a reason when it cannot be.

    `draft_size` lets the JPEG decoder downscale in the DCT domain to no smaller than
    that size: a large speed-up for big photos, invisible after the final resize.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadImage(f"cannot read: {err.strerror}") from None
    if size == 0:
        raise BadImage("zero-byte file")
    conversions: list[str] = []
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) on some corrupt EXIF; that is not a reason to reject the pixels.
            warnings.simplefilter("ignore")
            img = Image.open(path)
            fmt = img.format or "unknown"
            if fmt != _JPEG:
                conversions.append(f"{fmt} data with a {path.suffix or 'missing'} extension, re-encoded as JPEG")
            if img.mode == "CMYK":
                conversions.append("CMYK converted to RGB")
            elif img.mode in ("L", "1", "I", "I;16", "F"):
                conversions.append(f"grayscale ({img.mode}) converted to RGB")
            elif img.mode != "RGB":
                conversions.append(f"mode {img.mode} converted to RGB")
            if draft_size is not None and fmt == _JPEG and img.mode in ("RGB", "L"):
                img.draft(img.mode, draft_size)
            img.load()
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated or corrupt data as OSError ("image file is truncated", "broken data stream").
        msg = str(err)
        reason = "truncated image" if "truncated" in msg else "corrupt image data"
        raise BadImage(f"{reason}: {msg}") from None
    if img.width < 1 or img.height < 1:
        raise BadImage(f"empty image ({img.width}x{img.height})")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white, as a viewer shows it, instead of letting convert() drop alpha onto black garbage.
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode in ("I", "I;16", "F"):
        # 16-bit / float grayscale: scale to 8 bits instead of letting convert() clip everything to white.
        values = np.asarray(img, np.float64)
        if values.max(initial=0.0) > 255:
            values = values / 257.0
        img = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")
    else:
        img = img.convert("RGB")
    return Loaded(img, conversions)


def scaled_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size with the shorter side exactly `shorter` and the aspect ratio kept."""
    if width <= height:
        return shorter, max(shorter, round(height * shorter / width))
    return max(shorter, round(width * shorter / height)), shorter


def rescale_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The paper's preprocessing: rescale so the shorter side is `size`, keep the central size x size."""
    w, h = scaled_size(img.width, img.height, size)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))

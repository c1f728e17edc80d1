"""Opening one input image the way `prepare` and test-time prediction need it.

`load_rgb` checks a file and returns RGB pixels plus what had to be converted;
`rescale_center_crop` is the paper's one-time preprocessing (shorter side to S,
central SxS). Both `prepare` and `raw_images` use them, so an image predicted from
disk is treated exactly like a prepared training image.

Untrusted input: `load_rgb` opens only regular files (a FIFO or device is
refused without blocking on it) and reads the image's size from its header
before decoding: above `max_pixels` (default `DEFAULT_MAX_IMAGE_PIXELS`, 100
megapixels, about 250 times an ImageNet image) it is refused, so a 17 KB PNG
that would decode to a gigabyte never does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexserve.untrusted_files import UntrustedFileError, open_regular_file

# ImageNet images are named .JPEG whatever they hold; these are the PIL formats we expect.
_JPEG = "JPEG"
# ILSVRC-2012's images average about 400x350 pixels, and few exceed 10 megapixels.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


class BadImage(Exception):
    """An input that cannot be turned into an RGB image; the message is the reason for the report."""


@dataclass
class Loaded:
    image: Image.Image
    conversions: list[str]


def load_rgb(
    path: Path, *, draft_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Loaded:
    """Decode `path` fully to RGB; raise BadImage with a reason when it cannot be.

    `draft_size` lets the JPEG decoder downscale in the DCT domain to no smaller than
    that size: a large speed-up for big photos, invisible after the final resize.
    `max_pixels`: an image whose header gives more pixels is refused before decoding.
    """
    path = Path(path)
    try:
        file, info = open_regular_file(path)
    except UntrustedFileError as err:
        raise BadImage(err.reason) from None
    with file:
        if info.st_size == 0:
            raise BadImage("zero-byte file")
        return _load_rgb(path, file, draft_size, max_pixels)


def _load_rgb(path: Path, file, draft_size: tuple[int, int] | None, max_pixels: int) -> Loaded:
    conversions: list[str] = []
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) on some corrupt EXIF; that is not a reason to reject the pixels.
            warnings.simplefilter("ignore")
            # Our limit decides, not PIL's own (which refuses at twice Image.MAX_IMAGE_PIXELS, 179 megapixels).
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels
            img = Image.open(file)  # lazy: reads the header only
            if img.width * img.height > max_pixels:
                raise BadImage(
                    f"{img.width}x{img.height} = {img.width * img.height:,} pixels, above the limit of "
                    f"{max_pixels:,} (--max-image-pixels); not decoded"
                )
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

"""Raw images of any size -> the paper's ten test-time crops, for `alexserve predict`.

Same steps as `prepare` (shorter side to scale_size, central square, same resampling)
followed by the eval loaders' mean subtraction and ten crops, so a photo from disk
is seen exactly as a prepared validation image would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from alexserve.data.augment import ten_crop_offsets
from alexserve.data.imageops import DEFAULT_MAX_IMAGE_PIXELS, BadImage, load_rgb, rescale_center_crop
from alexserve.data.pil_loader import crop_centred


def load_ten_crops(
    paths: Sequence[str | Path],
    mean_image: np.ndarray,
    input_size: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """[N, 10, 3, S, S] float32: 4 corners + centre, then the same 5 reflected, of (image - mean image).

    `mean_image` is the training set's [scale, scale, 3] mean (DatasetStats.mean_image, or an export's).
    Raises ValueError naming the file when one cannot be read as an image, or its header
    gives more than `max_pixels` pixels (checked before decoding).
    """
    scale = mean_image.shape[0]
    if input_size > scale:
        raise ValueError(f"input_size {input_size} is larger than the prepared scale {scale}")
    out = []
    for path in paths:
        try:
            image = np.asarray(rescale_center_crop(load_rgb(Path(path), max_pixels=max_pixels).image, scale))
        except BadImage as err:
            raise ValueError(f"{path}: {err}") from None
        out.append(
            np.stack(
                [
                    crop_centred(image, mean_image, x, y, input_size, f)
                    for x, y, f in ten_crop_offsets(scale, input_size)
                ]
            )
        )
    if not out:
        return torch.empty((0, 10, 3, input_size, input_size))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))

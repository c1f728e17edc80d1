"""Upper bounds on config fields, shared with the code that checks data against them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# Upper bounds: a value above them only wastes memory or processes (each is also said in its field's description).
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 1024
MAX_CHANNELS = 4096
MAX_KERNEL_SIDE = 15
MAX_FC_NEURONS = 16384
MAX_LOADER_WORKERS = 64
MAX_GENERATED_IMAGES = 100_000
MAX_BATCH_SIZE = 8192
MAX_STEPS = 10**9

ChannelCount = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
KernelSide = Annotated[int, Field(ge=1, le=MAX_KERNEL_SIDE)]

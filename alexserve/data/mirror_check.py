"""Does mirroring an image keep its class? Measured once by `alexserve prepare`, read when a job starts.

The paper flips training images at random (and averages mirrored patches at
test time) because on ImageNet a mirrored photo shows the same kind of object.
That is a property of the data, not of the network: a mirrored digit 3 is no
digit at all, and a net that must learn both orientations of every class
needs far more steps to reach the same error. So `data.flip_probability`
left unset takes the paper's 0.5 unless the training set shows that
mirroring loses the class.

The test is the simplest classifier there is, nearest class mean on 16x16
colour thumbnails of the prepared images: its accuracy on a sample of training
images (each left out of its own class's mean) against its accuracy on the
same images mirrored. Where mirroring keeps the class, as for photos of
objects that face either way, the two are alike. Mirroring is judged to lose
the class when the mirrored images keep less than half of the classifier's
margin over chance. When the classifier itself is near chance (under twice
chance) the test cannot tell, and the paper's choice stands.

    DST/mirror_check.json   {"nearest_mean_accuracy": .., "mirrored_accuracy": .., "chance": .., "images": ..}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from alexserve.data.prepared_tree import DatasetError
from alexserve.durable import write_atomically
from alexserve.untrusted_files import UntrustedFileError, read_small_regular_file

MIRROR_CHECK_FILE = "mirror_check.json"
THUMBNAIL_SIDE = 16
# Images per class whose (mirrored) class is predicted: enough for a stable accuracy, small for 1,000 classes.
SAMPLE_PER_CLASS = 20
# Mirrored images must keep at least this share of the classifier's margin over chance for flips to stay on.
MIN_KEPT_MARGIN = 0.5
# Below this multiple of chance the classifier sees too little to judge mirroring.
MIN_INFORMATIVE_ACCURACY = 2.0
QUERY_BLOCK = 1024


def thumbnail(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 [side, side, 3] thumbnail, by area averaging (colour kept: it tells classes apart)."""
    side = min(THUMBNAIL_SIDE, image.shape[0], image.shape[1])
    small = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((side, side), Image.BOX)
    return np.asarray(small, dtype=np.float32)


@dataclass
class MirrorAccumulator:
    """Per-class sums of thumbnails and a per-class sample; partial accumulators from workers merge in any order."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # (path, thumbnail), the SAMPLE_PER_CLASS first paths of each class, whatever order the workers merged in.
    samples: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)

    def add(self, class_name: str, path: str, image: np.ndarray) -> None:
        thumb = thumbnail(image)
        if class_name in self.sums:
            self.sums[class_name] = self.sums[class_name] + thumb
        else:
            self.sums[class_name] = thumb.astype(np.float64)
        self.counts[class_name] = self.counts.get(class_name, 0) + 1
        self._keep(class_name, [(path, thumb)])

    def merge(self, other: MirrorAccumulator) -> None:
        for name, total in other.sums.items():
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]
        for name, sample in other.samples.items():
            self._keep(name, sample)

    def _keep(self, class_name: str, sample: list[tuple[str, np.ndarray]]) -> None:
        kept = sorted(self.samples.get(class_name, []) + sample, key=lambda item: item[0])
        self.samples[class_name] = kept[:SAMPLE_PER_CLASS]

    def finish(self) -> MirrorCheck:
        """Nearest-class-mean accuracy on the sample, as it is and mirrored (each image left out of its mean)."""
        names = sorted(self.sums)
        if not names:
            raise DatasetError("no training images were prepared, so mirroring cannot be checked")
        counts = np.array([self.counts[n] for n in names], dtype=np.float64)
        sums = np.stack([self.sums[n].ravel() for n in names])
        means = sums / counts[:, None]
        rows, labels = [], []
        for index, name in enumerate(names):
            if self.counts[name] < 2:
                continue  # its only image cannot be left out of its own mean
            for _, thumb in self.samples[name]:
                rows.append(thumb.ravel())
                labels.append(index)
        if not rows:
            return MirrorCheck(nearest_mean_accuracy=0.0, mirrored_accuracy=0.0, chance=1.0 / len(names), images=0)
        shape = self.samples[names[0]][0][1].shape
        images = np.stack(rows).astype(np.float64)
        labels = np.array(labels)
        own_means = (sums[labels] - images) / (counts[labels, None] - 1.0)
        mirrored = images.reshape(-1, *shape)[:, :, ::-1].reshape(len(images), -1)

        mean_norms = (means**2).sum(axis=1)

        def accuracy(queries: np.ndarray) -> float:
            right = 0
            for start in range(0, len(queries), QUERY_BLOCK):  # blocks: [queries x classes] stays small
                q, own = queries[start : start + QUERY_BLOCK], slice(start, start + QUERY_BLOCK)
                distances = mean_norms[None, :] - 2.0 * q @ means.T
                distances[np.arange(len(q)), labels[own]] = ((q - own_means[own]) ** 2).sum(axis=1) - (q**2).sum(1)
                right += int((distances.argmin(axis=1) == labels[own]).sum())
            return right / len(queries)

        return MirrorCheck(
            nearest_mean_accuracy=accuracy(images),
            mirrored_accuracy=accuracy(mirrored),
            chance=1.0 / len(names),
            images=len(images),
        )


@dataclass(frozen=True)
class MirrorCheck:
    nearest_mean_accuracy: float
    mirrored_accuracy: float
    chance: float
    images: int

    @property
    def informative(self) -> bool:
        return self.images > 0 and self.nearest_mean_accuracy >= MIN_INFORMATIVE_ACCURACY * self.chance

    @property
    def kept_margin(self) -> float:
        """Share of the above-chance accuracy that mirrored images keep (1: mirroring changes nothing)."""
        margin = self.nearest_mean_accuracy - self.chance
        return (self.mirrored_accuracy - self.chance) / margin if margin > 0 else 1.0

    @property
    def mirroring_keeps_class(self) -> bool:
        return not self.informative or self.kept_margin >= MIN_KEPT_MARGIN

    def describe(self) -> str:
        return (
            f"a nearest-class-mean check on {self.images} training images is right on {self.nearest_mean_accuracy:.0%} "
            f"of them and on {self.mirrored_accuracy:.0%} of their mirror images (chance {self.chance:.0%})"
        )

    def save(self, path: Path) -> None:
        write_atomically(path, (json.dumps(asdict(self), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> MirrorCheck | None:
        """The check `alexserve prepare` wrote beside the tree, or None for a tree prepared before it existed."""
        if not Path(path).exists():
            return None
        try:
            fields = json.loads(read_small_regular_file(path))
            check = cls(
                nearest_mean_accuracy=float(fields["nearest_mean_accuracy"]),
                mirrored_accuracy=float(fields["mirrored_accuracy"]),
                chance=float(fields["chance"]),
                images=int(fields["images"]),
            )
        except (UntrustedFileError, OSError, ValueError, TypeError, KeyError) as err:
            raise DatasetError(f"{path}: not a mirror check written by `alexserve prepare`: {err}") from None
        shares = (check.nearest_mean_accuracy, check.mirrored_accuracy, check.chance)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in shares) or check.images < 0:
            raise DatasetError(f"{path}: accuracies must be shares in 0..1 and images a count; read {fields}")
        return check

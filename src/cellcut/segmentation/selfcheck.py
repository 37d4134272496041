"""A look at a finished segmentation, as the training diagnostics look at the loss curves.

The result is compared with the image's own :class:`~cellcut.fingerprint.Fingerprint`
(measured without the model). Each check that fails gives one line saying what looks wrong
and what to do about it; ``cellcut segment`` prints them and the summary JSON keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cellcut.fingerprint import Fingerprint
from cellcut.postprocess import spread_of_sizes

EMPTY = "empty"
SPECKLE = "speckle"
FOREGROUND = "foreground"
SIZE = "size"
MERGED = "merged"
SPREAD = "spread"

SPECKLE_SHARE = 0.5
"""Speckled: at least this share of the objects are specks (and there are many objects)."""
FOREGROUND_RATIO = 3.0
"""Found foreground this many times larger or smaller than the image's bright class."""
SIZE_RATIO = 2.5
"""Median object radius this many times larger or smaller than the image's typical radius."""
MERGED_SHARE = 0.25
"""Merged: one object holds at least this share of the labelled voxels ..."""
MERGED_SPAN = 0.5
"""... and its bounding box spans at least this share of the volume along every axis.

The largest true nucleus of each regime-suite, development and embryo volume spans at most a
third of the volume along its shortest-spanned axis (at most 0.55 along its longest); every
zero-shot result of the 60 development volumes whose largest object passed
both bounds had merged nuclei or background into it (F1 0.00-0.69). The fingerprint cannot
say so: where the model merges, Otsu's split of the image usually merges too. The remedy
says no fine-tune: on two such development volumes a 5-minute fine-tune changed nothing."""

SPREAD_LIMIT = 0.6
"""Sizes spread widely: the median absolute deviation of the objects' log-volumes is at least
this (half of them more than 1.8x off the median volume), with :data:`SPREAD_MIN_OBJECTS` or
more. The nuclei of one image are alike; a labelling that cuts large nuclei into fragments and
specks, or mixes them with merged clusters, is not. Zero-shot results with the shipped model
(scripts not in the repo): over 0.49 on no volume of the regime suite (seeds 0-3, 44 volumes,
with the nucleoli regime) or the embryo; on the 60 development volumes 0.60-0.81 on five, all
failures (F1 0.00-0.26; two of them, 0.00 and 0.19, said nothing before), and the highest good
one 0.56 (F1 0.96)."""
SPREAD_MIN_OBJECTS = 10

FINE_TUNE = (
    "fine-tune on this image (cellcut train IMAGE --from-pretrained default --out RUN, then "
    "cellcut segment --model RUN)"
)


@dataclass(frozen=True)
class Finding:
    kind: str
    message: str


def check_segmentation(
    volumes: np.ndarray,
    foreground_fraction: float,
    fingerprint: Fingerprint,
    voxel_volume: float = 1.0,
    spans: np.ndarray | None = None,
    image: Fingerprint | None = None,
) -> list[Finding]:
    """What looks wrong with a segmentation.

    Parameters
    ----------
    volumes
        Volume of each object (µm³, voxels without a voxel size).
    foreground_fraction
        Share of the volume's voxels labelled as cells.
    fingerprint
        The image's fingerprint (same units as ``volumes``).
    voxel_volume
        Volume of one voxel in those units.
    spans
        Each object's bounding-box extent as a share of the volume's along each axis
        (objects × axes), in the order of ``volumes``; without it the merge check is skipped.
    image
        The image's own fingerprint, before the model's radius was heard (``fingerprint``
        may hold the instance step's scale): the settings the spread check proposes come from
        its radius (default: ``fingerprint``).
    """
    units = "µm" if fingerprint.units == "µm" else "voxels"
    image_fg = fingerprint.foreground_fraction
    if len(volumes) == 0:
        return [
            Finding(
                EMPTY,
                f"no cells were found, while the image's bright class covers {image_fg:.0%} of "
                f"it: check the channel (--channel), try --instances watershed, or {FINE_TUNE}",
            )
        ]
    found: list[Finding] = []
    r = fingerprint.object_radius
    radii = np.cbrt(3 * np.asarray(volumes, dtype=np.float64) / (4 * math.pi))
    if r is not None:
        speck = max(fingerprint.speck_volume(), 2 * voxel_volume)
        share = float((np.asarray(volumes) < speck).mean())
        if share >= SPECKLE_SHARE and len(volumes) >= 20:
            found.append(
                Finding(
                    SPECKLE,
                    f"the result looks speckled: {share:.0%} of the {len(volumes)} objects are "
                    f"smaller than {speck:.3g} {units}³ while the image's nuclei have a radius "
                    f"of about {r:.3g} {units}: the cell probability is noisy; raise "
                    f"--min-volume (e.g. {speck:.3g}), or {FINE_TUNE}",
                )
            )
        median = float(np.median(radii))
        if not 1 / SIZE_RATIO <= median / r <= SIZE_RATIO:
            found.append(
                Finding(
                    SIZE,
                    f"the objects' median radius is {median:.3g} {units}, the image's nuclei "
                    f"about {r:.3g} {units}: check the voxel size (--voxel-size), set "
                    f"--spot-sigma near {0.5 * r:.3g}, or {FINE_TUNE}",
                )
            )
    found.extend(_spread(np.asarray(volumes, dtype=np.float64), image or fingerprint, units))
    if spans is not None and len(volumes):
        found.extend(_merged(np.asarray(volumes, dtype=np.float64), np.asarray(spans)))
    if image_fg > 0.005 and not (
        1 / FOREGROUND_RATIO <= foreground_fraction / image_fg <= FOREGROUND_RATIO
    ):
        found.append(
            Finding(
                FOREGROUND,
                f"the cells cover {foreground_fraction:.1%} of the volume where the image's "
                f"own bright class covers {image_fg:.1%}: the model's split does not suit this "
                f"image; {FINE_TUNE}",
            )
        )
    return found


def _spread(volumes: np.ndarray, image: Fingerprint, units: str) -> list[Finding]:
    """Object sizes far more varied than one image's nuclei (:data:`SPREAD_LIMIT`)."""
    spread = spread_of_sizes(volumes)
    if len(volumes) < SPREAD_MIN_OBJECTS or not spread >= SPREAD_LIMIT:
        return []
    settings = "--instances watershed with a --min-distance and --min-volume of the nuclei's size"
    if image.object_radius:
        settings = (
            f"--instances watershed --min-distance {image.seed_distance():.3g} --min-volume "
            f"{image.speck_volume():.3g} if the nuclei's radius is about "
            f"{image.object_radius:.3g} {units} (the image's own estimate; it measures a tissue "
            "body instead where nuclei lie in one)"
        )
    return [
        Finding(
            SPREAD,
            f"the objects' sizes spread widely (half of the {len(volumes)} are more than "
            f"{math.exp(spread):.2g}x off the median volume): nuclei cut into fragments or "
            f"merged into clusters; try {settings}, or {FINE_TUNE}",
        )
    ]


def _merged(volumes: np.ndarray, spans: np.ndarray) -> list[Finding]:
    """One object that holds much of the cells and stretches across the whole volume."""
    largest = int(np.argmax(volumes))
    share = float(volumes[largest] / volumes.sum())
    span = spans[largest]
    if share < MERGED_SHARE or float(np.min(span)) < MERGED_SPAN:
        return []
    extent = " × ".join(f"{s:.0%}" for s in span)
    return [
        Finding(
            MERGED,
            f"one object holds {share:.0%} of the cells' voxels and spans {extent} of the "
            f"volume: nuclei (or the background) have been merged into it, unless the image "
            f"holds a single cell; check the voxel size (--voxel-size) and try --instances "
            f"watershed with a smaller --min-distance",
        )
    ]

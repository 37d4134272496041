"""The one source of settings and their defaults: training (:class:`TrainConfig`) and
segmentation (:class:`SegmentOptions`).

The Python API, the command line and the napari widgets all read their defaults, choices and
ranges from here. Settings are validated when built: an invalid value fails with the field's
name and the allowed range, before any work starts.

A :class:`TrainConfig` holds every setting of a training run, grouped as model, loss, data,
augmentation, optimizer, schedule, stop and logging; it loads from YAML or TOML, takes
``key.sub=value`` overrides from the command line, and is written next to every run so that
the run can be reproduced.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cellcut.errors import CellcutError, ConfigError
from cellcut.normalize import METHODS as NORMALIZATIONS
from cellcut.outputs import atomic_output
from cellcut.postprocess import DEFAULT_SPOT_SIGMA, HALO_TRIM_STEPS, METHODS, OUTLINE_SIGMA

CONFIG_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The W-Net's architecture (see :class:`cellcut.model.WNetArchitecture`)."""

    preset: Literal["compact", "cellseg3d"] = "compact"
    n_classes: int = Field(2, ge=2, le=16, description="K, the number of soft classes")
    base_width: int | None = Field(None, ge=1, le=256, description="default: the preset's")
    depth: int | None = Field(None, ge=1, le=6, description="default: the preset's")
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    norm: Literal["group", "batch", "instance", "none"] | None = None

    def overrides(self) -> dict[str, Any]:
        fields = {
            "n_classes": self.n_classes,
            "base_width": self.base_width,
            "depth": self.depth,
            "dropout": self.dropout,
            "norm": self.norm,
        }
        return {k: v for k, v in fields.items() if v is not None}


class LossConfig(_Section):
    """Soft N-cut and reconstruction terms and their weights."""

    intensity_sigma: float | Literal["auto"] = Field(
        "auto", description="σ_I; 'auto' = suggest_intensity_sigma on the training volumes"
    )
    spatial_sigma: float = Field(4.0, gt=0, le=50)
    radius: float | None = Field(None, gt=0, le=50, description="default 2.5 σ_X")
    method: Literal["fast", "exact", "grid"] = "fast"
    ncut_weight: float = Field(0.5, ge=0)
    reconstruction: Literal["mse", "bce"] = "mse"
    rec_weight: float = Field(0.5, ge=0)
    intensity_weight: float = Field(
        1.0, ge=0, description="weight of the class-intensity term (losses.intensity)"
    )
    intensity_smoothing: float = Field(
        0.0,
        ge=0,
        le=5,
        description=(
            "Gaussian σ (voxels) of the image the class-intensity term compares with, so that "
            "it rewards regions of one brightness rather than copying voxel noise (0: raw)"
        ),
    )
    intensity_momentum: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "share of each batch's class means in the centres' moving average; default 0.01, "
            "and 0 (centres held) when they come from the starting model"
        ),
    )
    intensity_centres: Literal["auto", "otsu", "model"] = Field(
        "auto",
        description=(
            "initial class intensities: 'otsu' (multi-Otsu on the training volumes), 'model' "
            "(the starting model's own soft class means on them), 'auto' = 'model' when "
            "fine-tuning, else 'otsu'"
        ),
    )

    @model_validator(mode="after")
    def _weights(self) -> LossConfig:
        if self.ncut_weight == 0 and self.rec_weight == 0:
            raise ValueError("ncut_weight and rec_weight cannot both be 0")
        if isinstance(self.intensity_sigma, float) and not self.intensity_sigma > 0:
            raise ValueError("intensity_sigma must be > 0 or 'auto'")
        return self


def _number_or_auto(value: Any, name: str | None, kind: str, ok: Any) -> Any:
    """A setting that is "auto" or a number passing ``ok``, as float; else a ValueError."""
    if value == "auto":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ok(value):
        return float(value)
    raise ValueError(f"{name} must be {kind} or 'auto', got {value!r}")


class DataConfig(_Section):
    """Where patches come from."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = Field(1, ge=1, le=256)
    normalization: Literal[NORMALIZATIONS] = "percentile"  # type: ignore[valid-type]
    foreground_bias: float = Field(
        0.0, ge=0, le=1, description="share of patches centred on a bright voxel"
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of each volume (along z) held back for validation"
    )
    val_patches: int = Field(4, ge=0, le=1000)
    voxel_size: tuple[float, float, float] | None = None
    channel: int | None = None
    denoise: float | Literal["auto"] = Field(
        "auto",
        description=(
            "Gaussian blur of each volume before training, µm; 'auto': as segmentation's "
            "(a sixth of the typical nucleus radius on grainy volumes), so that a model trains "
            "on what it will see; 0: off"
        ),
    )

    @field_validator("denoise", mode="before")
    @classmethod
    def _denoise(cls, value: Any) -> Any:
        return _number_or_auto(value, "denoise", "a number >= 0", lambda v: v >= 0)

    @model_validator(mode="after")
    def _patch(self) -> DataConfig:
        if any(s < 8 for s in self.patch_size):
            raise ValueError(f"patch_size must be >= 8 per axis, got {self.patch_size}")
        if self.voxel_size is not None and any(v <= 0 for v in self.voxel_size):
            raise ValueError(f"voxel_size must be positive, got {self.voxel_size}")
        return self


class AugmentConfig(_Section):
    """Random transforms of training patches (none of validation patches)."""

    flips: bool = True
    rotations: bool = Field(True, description="90° rotations in the (y, x) plane")
    intensity_scale: float = Field(0.1, ge=0, le=1, description="± relative scale")
    intensity_shift: float = Field(0.05, ge=0, le=1, description="± shift, fraction of range")
    noise: float = Field(0.0, ge=0, le=1, description="Gaussian noise std, fraction of range")
    gamma: float = Field(
        0.0, ge=0, le=1, description="gamma drawn from exp(±gamma) (0: none), on 0..100 values"
    )
    blur: float = Field(0.0, ge=0, le=5, description="Gaussian blur σ up to this, voxels")
    input_only: bool = Field(
        False,
        description=(
            "intensity changes (scale, shift, gamma, blur, noise) alter only what the network "
            "sees; the losses compare its output with the unaltered patch, so it learns to "
            "give the same classes whatever the contrast and noise"
        ),
    )


AUTO_ANCHOR = 300.0
"""``optimizer.anchor="auto"`` when fine-tuning: with the default learning rate (1e-3) each step
pulls the weights 30% of the way back to the starting model's. Measured on the regime suite
(README, "Fine-tuning"): 5-minute fine-tunes from the shipped model lost less where fine-tuning
hurts (grainy, dim, unevenly lit) and scored higher on the embryo than without it."""


class OptimizerConfig(_Section):
    """AdamW with decoupled weight decay."""

    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    anchor: float | Literal["auto"] = Field(
        "auto",
        description="after every step pull the weights back toward those the run started "
        "from: w <- w - lr*anchor*(w - w0) (L2-SP); 'auto': "
        f"{AUTO_ANCHOR:g} when fine-tuning (unless the data's classes were adopted), else 0; "
        "0: off",
    )

    trainable: Literal["auto", "all", "norms"] = Field(
        "auto",
        description="which weights train: 'all'; 'norms': of the classifier (the U-Net that "
        "gives the classes) only its normalization layers' scale and shift and its last 1x1 "
        "layer, the decoder in full; 'auto': 'norms' for a fine-tune that keeps the starting "
        "model's classes (not adopted from the data, not loss.intensity_centres=otsu), else 'all'",
    )

    @field_validator("anchor", mode="before")
    @classmethod
    def _anchor(cls, value: Any) -> Any:
        return _number_or_auto(value, "anchor", "a number >= 0", lambda v: v >= 0)


class ScheduleConfig(_Section):
    """Learning-rate schedule."""

    kind: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)


class StopConfig(_Section):
    """When training ends: the first limit reached (at least one must be set)."""

    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)
    steps_per_epoch: int = Field(50, ge=1)
    early_stop_on_plateau: bool = False
    cell_share_drift: float | None = Field(
        1.25,
        gt=1,
        description="a fine-tune that keeps the starting model's classes stops when the "
        "cells' share of the validation patches (mean of the last 3 logs) grows beyond this "
        "factor of the starting model's, or shrinks beyond its square, and goes back to the "
        "last weights within 1.1x of it; null: off",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> StopConfig:
        if self.steps is None and self.epochs is None and self.minutes is None:
            raise ValueError("set at least one of steps, epochs or minutes")
        return self


class LogConfig(_Section):
    """What is written during a run."""

    every: int = Field(10, ge=1, description="log and validate every N steps")
    checkpoint_every: int = Field(100, ge=1)
    tensorboard: bool = False
    progress: bool = True
    plots: bool = True


class TrainConfig(_Section):
    """Everything that defines a training run."""

    version: Literal[1] = CONFIG_VERSION
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    stop: StopConfig = StopConfig(minutes=5.0)
    log: LogConfig = LogConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        target = Path(path)
        with atomic_output(target) as tmp:
            tmp.write_text(self.to_yaml())
        return target


class RefineConfig(_Section):
    """Everything that defines a refinement (``cellcut refine``): the supervised second stage
    trained on a W-Net's instances (:mod:`cellcut.refinement`)."""

    version: Literal[1] = CONFIG_VERSION
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    voxel_size: tuple[float, float, float] | None = None
    channel: int | None = Field(None, ge=0)
    # the network: a U-Net of the compact preset's blocks
    base_width: int = Field(8, ge=1, le=128)
    depth: int = Field(3, ge=1, le=6)
    # targets from the W-Net's instances (cellcut.refinement.targets)
    uncertain: tuple[float, float] | None = Field(
        (0.3, 0.7), description="foreground probabilities ignored by the loss (low, high)"
    )
    ignore_shell: bool = Field(True, description="ignore the one-voxel shell outside instances")
    doubtful_ratio: float = Field(
        4.0, gt=1, description="ignore instances this many times off the median volume"
    )
    # batches and augmentation
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = Field(2, ge=1, le=64)
    foreground_bias: float = Field(0.5, ge=0, le=1)
    artifacts: float = Field(
        0.5, ge=0, le=1, description="fraction of patches given random imaging artifacts"
    )
    gamma: float = Field(0.5, ge=0, le=2, description="± log-gamma of the intensity")
    intensity_scale: float = Field(0.3, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0, le=1)
    noise: float = Field(0.05, ge=0, le=1, description="Gaussian noise std up to, of range")
    blur: float = Field(1.0, ge=0, le=5, description="Gaussian blur σ up to, voxels")
    # optimization and stopping
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    dice_weight: float = Field(1.0, ge=0, description="Dice term (cross-entropy has weight 1)")
    minutes: float | None = Field(5.0, gt=0)
    steps: int | None = Field(None, ge=1)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    progress: bool = True
    plots: bool = True

    @field_validator("uncertain")
    @classmethod
    def _band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1] <= 1:
            raise ValueError("must be two probabilities, low < high, or null")
        return v

    def save(self, path: str | os.PathLike) -> Path:
        target = Path(path)
        with atomic_output(target) as tmp:
            tmp.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return target


REFINE_DEFAULTS = RefineConfig()


def refine_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings (values as YAML) -> settings of :class:`RefineConfig`."""
    out: dict[str, Any] = {}
    for text in items:
        key, value = _split(text)
        if key not in RefineConfig.model_fields:
            raise ConfigError(
                "invalid override",
                f"'{key}' names no refine setting",
                "use FIELD=VALUE with a field of cellcut.config.RefineConfig, e.g. lr=1e-3",
            )
        out[key] = value
    return out


def refine_config(
    config: RefineConfig | dict[str, Any] | None = None, **overrides: Any
) -> RefineConfig:
    """A :class:`RefineConfig` from an object or dict, with keyword settings on top."""
    data = config.model_dump() if isinstance(config, RefineConfig) else dict(config or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RefineConfig.model_validate(data)
    except ValidationError as e:
        raise _format_validation(
            e, None, "invalid refine setting", "fix the value(s) named (cellcut refine --help)"
        ) from None


INSTANCE_CHOICES: tuple[str, ...] = (*METHODS, "none")
"""Instance methods of :mod:`cellcut.postprocess`, plus ``none`` (probability and mask only)."""


class SegmentOptions(_Section):
    """Every setting of a segmentation run, with its default (read by API, CLI and widgets)."""

    voxel_size: tuple[float, ...] | None = Field(
        None, description="(z, y, x) µm; default: read from the file, else isotropic 1"
    )
    channel: int | None = Field(None, ge=0, description="channel of a multichannel file")
    time: int | None = Field(None, ge=0, description="time point of a time series")
    instances: Literal[INSTANCE_CHOICES] = Field(  # type: ignore[valid-type]
        "auto", description="how the foreground becomes one id per nucleus"
    )
    window: int | tuple[int, int, int] = Field(64, description="sliding window, voxels")
    overlap: float = Field(0.25, ge=0, lt=1, description="overlap of windows, fraction")
    block: int | tuple[int, int, int] = Field(256, description="block for out-of-core work")
    halo: int | tuple[int, int, int] | None = Field(
        None, description="instance halo, voxels; default 32 µm and at least half a window"
    )
    batch_size: int = Field(2, ge=1, le=256, description="windows per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps")
    spot_sigma: float | Literal["auto"] = Field(
        "auto",
        description="Voronoi-Otsu seed blur, µm, or 'auto' (half the median nucleus radius)",
    )
    outline_sigma: float | Literal["auto"] = Field(
        "auto",
        description=(
            "Voronoi-Otsu mask blur, µm; 'auto': 1 µm, or a quarter of the image's typical "
            "nucleus radius where that is less"
        ),
    )
    min_distance: float | Literal["auto"] = Field(
        "auto",
        description="watershed seed distance, µm; 'auto': half the typical nucleus radius",
    )
    denoise: float | Literal["auto"] = Field(
        "auto",
        description=(
            "Gaussian blur of the image before the model, µm; 'auto': a sixth of the typical "
            "nucleus radius on grainy images (contrast-to-noise under 3), else none; 0: off"
        ),
    )
    min_volume: float | Literal["auto"] = Field(
        "auto",
        description=(
            "smaller objects are removed, µm³; 'auto': specks, smaller than a sphere of half the "
            "typical nucleus radius (from the image and the model's foreground)"
        ),
    )
    max_volume: float | None = Field(
        None, gt=0, description="larger objects are removed (artifacts), µm³"
    )
    trim_halo: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "trim each nucleus to half its height over its surroundings in the image (a "
            "blur halo), then split it again at the necks the trim opens (every method "
            f"but connected); 'auto': where the typical nucleus radius spans under "
            f"{HALO_TRIM_STEPS:g} voxels of the coarsest axis"
        ),
    )
    crf: bool = Field(
        False,
        description="dense CRF on the foreground probability before instances (the W-Net "
        "paper's post-processing; measured in the README)",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="arithmetic of the network at inference: bfloat16 autocast is faster on "
        "CPUs with AMX and on recent GPUs (figures in the README)",
    )
    cluster: str | None = Field(
        None,
        description="run the block work on dask workers: local:N, or a scheduler address "
        "(tcp://HOST:PORT); needs the distributed extra",
    )
    scratch: str | None = Field(
        None,
        description="folder for intermediate arrays (on a cluster: one every worker can reach); "
        "default: the system's temporary folder",
    )

    @field_validator("scratch", mode="before")
    @classmethod
    def _scratch(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: Any) -> Any:
        if value is None:
            return value
        count = value.removeprefix("local:")
        if value.startswith("local:") and not (count.isdigit() and int(count) >= 1):
            raise ValueError(f"{value}: use local:N with N >= 1 workers")
        if not value.startswith("local:") and "://" not in value:
            raise ValueError(f"{value}: use local:N or a scheduler address (tcp://HOST:8786)")
        return value

    @field_validator("voxel_size", mode="before")
    @classmethod
    def _voxel_size(cls, value: Any) -> Any:
        from cellcut.io import check_voxel_size

        return None if value is None else check_voxel_size(value)

    @field_validator("spot_sigma", "outline_sigma", "min_distance", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        return _number_or_auto(value, info.field_name, "a positive number", lambda v: v > 0)

    @field_validator("min_volume", "denoise", mode="before")
    @classmethod
    def _non_negative_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        return _number_or_auto(value, info.field_name, "a number >= 0", lambda v: v >= 0)

    @field_validator("trim_halo", mode="before")
    @classmethod
    def _on_off_auto(cls, value: Any) -> Any:
        words = {"on": True, "true": True, "off": False, "false": False, "auto": "auto"}
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        if isinstance(value, bool):
            return value
        raise ValueError(f"trim_halo must be auto, on or off, got {value!r}")

    @field_validator("window", "block", "halo")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        sizes = (value,) if isinstance(value, int) else value or ()
        if any(v < 1 for v in sizes):
            raise ValueError(f"sizes must be at least 1 voxel, got {value}")
        return value

    def triple(self, name: str) -> tuple[int, int, int] | None:
        """A size setting as (z, y, x) voxels."""
        value = getattr(self, name)
        if value is None or isinstance(value, tuple):
            return value
        return (value, value, value)

    def instance_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`cellcut.postprocess.instances`."""
        return self.model_dump(
            include={"spot_sigma", "outline_sigma", "min_distance", "min_volume", "max_volume"}
        )


SEGMENT_DEFAULTS = SegmentOptions()
MANUAL_SPOT_SIGMA = DEFAULT_SPOT_SIGMA
"""Seed blur offered when a user turns ``spot_sigma="auto"`` off, µm."""
MANUAL_OUTLINE_SIGMA = OUTLINE_SIGMA
"""Mask blur offered when a user turns ``outline_sigma="auto"`` off, µm."""


def segment_options(
    options: SegmentOptions | dict[str, Any] | None = None, **overrides: Any
) -> SegmentOptions:
    """Validated segmentation settings: ``options`` (defaults if None), then ``overrides``."""
    base = options.model_dump() if isinstance(options, SegmentOptions) else dict(options or {})
    unknown = sorted(set(overrides) - set(SegmentOptions.model_fields))
    if unknown:
        raise ConfigError(
            "invalid option",
            f"segmentation has no setting {', '.join(unknown)}",
            f"use one of {', '.join(SegmentOptions.model_fields)}",
        )
    try:
        return SegmentOptions.model_validate({**base, **overrides})
    except ValidationError as e:
        raise _format_validation(
            e, None, "invalid option", "see `cellcut segment --help` for the allowed values"
        ) from None


def _format_validation(
    e: ValidationError,
    source: str | None,
    what: str = "invalid configuration",
    hint: str = "fix the value(s) named (see `cellcut train --help` and the README)",
) -> Exception:
    """One error naming every invalid field; a cellcut error raised by a validator as is."""
    for err in e.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, CellcutError):
            return cause
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return ConfigError(what, "; ".join(parts), hint, file=source)


RETIRED_FIELDS = {"log": ("select_best",)}
"""Settings older versions wrote into run folders and checkpoints, ignored when read back."""


def build_config(data: dict[str, Any] | None = None, source: str | None = None) -> TrainConfig:
    """Validate a nested dict into a :class:`TrainConfig`; errors name the field."""
    data = dict(data or {})
    for section, names in RETIRED_FIELDS.items():
        if isinstance(data.get(section), dict):
            data[section] = {k: v for k, v in data[section].items() if k not in names}
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _format_validation(e, source) from None


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a :class:`TrainConfig`."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            "cannot read configuration", "the file does not exist", "check the path", file=p
        )
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(
                "cannot read configuration",
                f"unknown suffix '{p.suffix}'",
                "use .yaml, .yml or .toml",
                file=p,
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            "cannot read configuration", f"not valid: {e}", "fix the syntax", file=p
        ) from e
    if not isinstance(data, dict):
        raise ConfigError(
            "cannot read configuration",
            "the top level is not a mapping",
            "write key: value pairs",
            file=p,
        )
    return build_config(data, os.fspath(p))


def apply_overrides(config: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """Return a new config with ``section.field=value`` overrides applied (values as YAML)."""
    data = config.model_dump(mode="json")
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(
                    "invalid override",
                    f"'{key}' names no setting",
                    "use SECTION.FIELD=VALUE, e.g. loss.spatial_sigma=3",
                )
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(
                "invalid override",
                f"'{key}' names no setting",
                "use SECTION.FIELD=VALUE, e.g. loss.spatial_sigma=3",
            )
        node[parts[-1]] = value
    return build_config(data, "overrides")


def _split(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(
            "invalid override",
            f"'{text}' has no '='",
            "use SECTION.FIELD=VALUE, e.g. optimizer.lr=3e-4",
        )
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value

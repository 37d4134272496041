"""The ``cellcut`` command line: a thin layer over the Python API.

Each subcommand parses its arguments, calls the API and prints what it wrote. Errors of the
:class:`~cellcut.errors.CellcutError` family are printed as one line and exit with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from cellcut._version import __version__
from cellcut.config import INSTANCE_CHOICES, SEGMENT_DEFAULTS, SegmentOptions
from cellcut.errors import CellcutError
from cellcut.metrics import DEFAULT_THRESHOLDS

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


class _UsageError(Exception):
    """A command line argparse cannot parse; printed as one line by :func:`main`."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{message}; see `{prog} --help`")


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors become one ``error:`` line with a hint instead of the usage."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(self.prog, message)


def _command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _add_volume_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--channel", type=int, default=None, help="channel to use in a multichannel file"
    )
    p.add_argument("--time", type=int, default=None, help="time point to use in a time series")


_SEGMENT_FLAGS = {
    # option: (flag, argparse settings); defaults and help come from SegmentOptions
    "voxel_size": ("--voxel-size", {"type": float, "nargs": 3, "metavar": ("Z", "Y", "X")}),
    "instances": ("--instances", {"choices": INSTANCE_CHOICES}),
    "window": ("--window", {"type": int}),
    "overlap": ("--overlap", {"type": float}),
    "block": ("--block", {"type": int}),
    "batch_size": ("--batch-size", {"type": int}),
    "spot_sigma": ("--spot-sigma", {"type": "float_or_auto"}),
    "outline_sigma": ("--outline-sigma", {"type": "float_or_auto"}),
    "min_distance": ("--min-distance", {"type": "float_or_auto"}),
    "denoise": ("--denoise", {"type": "number_or_auto"}),
    "min_volume": ("--min-volume", {"type": "number_or_auto"}),
    "max_volume": ("--max-volume", {"type": float}),
    "crf": ("--crf", {"action": "store_true"}),
    "trim_halo": ("--trim-halo", {"choices": ("auto", "on", "off")}),
    "device": ("--device", {}),
    "channel": ("--channel", {"type": int}),
    "time": ("--time", {"type": int}),
    "precision": ("--precision", {"choices": ("float32", "bfloat16")}),
    "cluster": ("--cluster", {"metavar": "local:N|tcp://HOST:PORT"}),
    "scratch": ("--scratch", {"metavar": "FOLDER"}),
}


def _add_segment_options(p: argparse.ArgumentParser) -> None:
    """The segmentation flags, with the defaults and help of :class:`SegmentOptions`."""
    for name, (flag, settings) in _SEGMENT_FLAGS.items():
        field = SegmentOptions.model_fields[name]
        kwargs = dict(settings)
        if kwargs.get("type") == "float_or_auto":
            kwargs["type"] = _float_or_auto
        elif kwargs.get("type") == "number_or_auto":
            kwargs["type"] = _number_or_auto
        default = getattr(SEGMENT_DEFAULTS, name)
        shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
        help_text = f"{field.description}{shown}"
        p.add_argument(flag, dest=name, default=default, help=help_text, **kwargs)


def _add_run_flags(p: argparse.ArgumentParser, set_help: str) -> None:
    """The flags ``train`` and ``refine`` share."""
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--seed", type=int)
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"))
    p.add_argument("--channel", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help=set_help
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _segment_settings(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in _SEGMENT_FLAGS}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellcut",
        description="Unsupervised 3D cell segmentation with a W-Net and a soft normalized cut.",
    )
    parser.add_argument("--version", action="version", version=f"cellcut {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic nuclei volume and its ground truth")
    p.add_argument("out", help="output image (.tif, .zarr, .ome.zarr, .h5, .npy, .nii)")
    p.add_argument("--labels", help="where to write the ground truth (default: OUT_labels.*)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 96, 96), metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--voxel-size", type=float, nargs=3, default=(2.0, 1.0, 1.0), metavar=("Z", "Y", "X")
    )
    p.add_argument("--artifacts", type=int, default=0, help="number of bright non-cell blobs")
    p.add_argument("--dtype", choices=("float32", "uint16"), default="uint16")
    p.add_argument(
        "--nucleoli", type=float, default=0.0, help="share of nuclei with a dark nucleolus"
    )
    p.add_argument(
        "--chromocenters", type=int, default=0, help="up to this many bright foci per nucleus"
    )
    p.add_argument(
        "--regime",
        help="instead: the scoring volume of a named imaging regime (cellcut.synthetic.REGIMES; "
        "seed under 1000), with its own shape, voxel size and type; the generator flags above "
        "are then not used",
    )
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "train",
        help="train or fine-tune a W-Net on unlabelled volumes",
        description="Train a W-Net without labels. Settings come from the defaults, then "
        "--config FILE, then the flags below, then --set SECTION.FIELD=VALUE.",
    )
    p.add_argument("images", nargs="*", help="volume files, folders or glob patterns")
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics, pictures)")
    p.add_argument("--config", help="YAML or TOML file with settings")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--minutes", type=float, help="stop after this much training time")
    limit.add_argument("--epochs", type=int, help="stop after this many epochs")
    limit.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--from-pretrained", metavar="default|PATH", help="start from these weights")
    p.add_argument("--val-labels", nargs="+", help="label volumes for validation Dice/F1")
    p.add_argument("--val-images", nargs="+", help="images of --val-labels (default: IMAGES)")
    _add_run_flags(p, "any setting, e.g. loss.spatial_sigma=3 optimizer.lr=3e-4")

    p = sub.add_parser(
        "refine",
        help="train a supervised network on a W-Net's instances (the second stage)",
        description="Segment the images with a W-Net (or take --labels), turn the instances "
        "into background / boundary / interior targets (uncertain voxels ignored), and train a "
        "supervised network on them with artifact augmentation. The run folder is a model: "
        "cellcut segment IMAGE --model RUN.",
    )
    p.add_argument("images", nargs="*", help="volume files, folders or glob patterns")
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics, pictures)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="MODEL_OR_RUN",
        help="the W-Net whose instances are learned (default: the shipped model)",
    )
    p.add_argument("--labels", nargs="+", help="instance labels made earlier, one per image")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--minutes", type=float, help="stop after this much training time")
    limit.add_argument("--steps", type=int, help="stop after this many steps")
    _add_run_flags(p, "any setting of cellcut.config.RefineConfig, e.g. lr=1e-3 artifacts=0.8")

    p = sub.add_parser(
        "segment",
        help="segment volumes: labels, statistics, overview picture",
        description="One IMAGE: --out is the labels file. Several images, folders or glob "
        "patterns (or --stack-folder): --out is a folder; each input gets NAME_labels.tif, "
        "NAME_cells.csv (+ .summary.json) and NAME_overview.png there, and "
        "segment_summary.csv lists them all. Inputs whose labels exist are skipped unless "
        "--overwrite; a failing input is reported and the others go on (exit code 2 if any "
        "failed).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="files, folders or glob patterns")
    p.add_argument(
        "--out",
        required=True,
        help="labels output (.tif, .zarr, .ome.zarr, .h5:dataset, .npy, .nii), or the output "
        "folder of a batch",
    )
    p.add_argument(
        "--stack-folder",
        action="store_true",
        help="each IMAGE is a folder of 2D TIFF slices of one volume (natural order of names)",
    )
    p.add_argument(
        "--with-probability",
        action="store_true",
        help="in a batch, also write NAME_probability.tif",
    )
    p.add_argument("--model", default="default", help="default, a model name, or a path")
    _add_segment_options(p)
    p.add_argument("--stats", help="per-cell CSV (a .summary.json goes beside it)")
    p.add_argument("--probability", help="also write the foreground probability here")
    p.add_argument("--overview", help="overview PNG (default: OUT's name + _overview.png)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("truth")
    p.add_argument("prediction")
    p.add_argument("--json", help="write the scores here")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="IoU thresholds of the instance matching (default: 0.1 to 0.9)",
    )
    p.add_argument("--overwrite", action="store_true")

    sub.add_parser("models", help="list the available trained models and their cards")

    p = sub.add_parser(
        "export",
        help="write a model for other tools: bioimage.io package, ONNX, TorchScript",
        description="Export the encoder of a cellcut model (softmax class probabilities of an "
        "image normalized to 0..1; spatial sizes multiples of 8). Needs the interop extra: "
        "pip install 'cellcut[interop]'.",
    )
    p.add_argument("model", help="default, a model name, a run folder or a checkpoint")
    p.add_argument("--bioimageio", metavar="OUT.zip", help="a bioimage.io model package")
    p.add_argument("--onnx", metavar="OUT.onnx", help="ONNX (opset 17)")
    p.add_argument("--torchscript", metavar="OUT.pt", help="TorchScript (traced)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "demo",
        help="the whole story on the bundled sample: fine-tune, segment, statistics, pictures",
    )
    p.add_argument("--out", default="demo-output", help="folder for everything it writes")
    p.add_argument("--minutes", type=float, default=1.5, help="fine-tuning time")
    p.add_argument("--model", default="default", help="model to start from")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("info", help="describe a volume: shape, type, voxel size, value range")
    p.add_argument("image")
    _add_volume_selection(p)
    return parser


@_command("synth")
def _synth(args: argparse.Namespace) -> int:
    from cellcut.errors import ConfigError
    from cellcut.io import check_voxel_size, write_volume
    from cellcut.outputs import OutputSet, split_location
    from cellcut.synthetic import make_nuclei_volume, regime_volume

    out_path, _ = split_location(args.out)
    labels_path = args.labels or _sibling(args.out, "_labels")
    outputs = OutputSet({"image": args.out, "labels": labels_path}, overwrite=args.overwrite)
    outputs.check()
    try:
        if args.regime:
            vol = regime_volume(args.regime, args.seed)
        else:
            vol = make_nuclei_volume(
                args.shape,
                seed=args.seed,
                voxel_size=check_voxel_size(args.voxel_size),
                n_artifacts=args.artifacts,
                dtype=args.dtype,
                nucleoli=args.nucleoli,
                chromocenters=args.chromocenters,
            )
    except ValueError as e:
        raise ConfigError("invalid option", str(e), "see `cellcut synth --help`") from None
    with outputs:
        for role, data in (("image", vol.image), ("labels", vol.labels)):
            write_volume(outputs.staged(role), data, voxel_size=vol.voxel_size, overwrite=True)
        outputs.commit()
    print(f"image:  {out_path} {vol.image.shape} {vol.image.dtype}")
    print(f"labels: {split_location(labels_path)[0]} ({vol.n_nuclei} nuclei)")
    return 0


def _sibling(location: str, tag: str) -> str:
    path, key = split_location_str(location)
    lower = path.lower()
    for suffix in (".ome.zarr", ".ome.tif", ".nii.gz", ".tiff", ".tif", ".zarr", ".h5", ".npy"):
        if lower.endswith(suffix):
            base = path[: -len(suffix)] + tag + path[-len(suffix) :]
            return f"{base}:{key}" if key else base
    return path + tag


def split_location_str(location: str) -> tuple[str, str | None]:
    from cellcut.outputs import split_location

    path, key = split_location(location)
    return str(path), key


@_command("train")
def _train(args: argparse.Namespace) -> int:
    from cellcut.config import TrainConfig, apply_overrides, load_config
    from cellcut.errors import InputFileError
    from cellcut.training import train

    if not args.images and not args.resume:
        raise InputFileError(
            "no training volumes",
            "no image was given",
            "pass one or more files, folders or glob patterns",
        )
    config = load_config(args.config) if args.config else TrainConfig()
    flags: dict[str, object] = {}
    if args.minutes is not None:
        flags.update({"stop.minutes": args.minutes, "stop.steps": None, "stop.epochs": None})
    if args.epochs is not None:
        flags.update({"stop.epochs": args.epochs, "stop.steps": None, "stop.minutes": None})
    if args.steps is not None:
        flags.update({"stop.steps": args.steps, "stop.epochs": None, "stop.minutes": None})
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.voxel_size is not None:
        flags["data.voxel_size"] = list(args.voxel_size)
    if args.channel is not None:
        flags["data.channel"] = args.channel
    if args.device is not None:
        flags["device"] = args.device
    if args.quiet:
        flags["log.progress"] = False
    if flags and not args.resume:
        config = apply_overrides(config, flags)
    from cellcut.losses.ncut import NATIVE, native_status

    if NATIVE is None:
        print(f"note: {native_status()}")
    overrides = list(args.overrides)
    if args.resume:
        overrides += [f"{k}={'null' if v is None else v}" for k, v in flags.items()]
    run = train(
        args.images,
        args.out,
        config,
        val_images=args.val_images,
        val_labels=args.val_labels,
        from_pretrained=args.from_pretrained,
        resume=args.resume,
        overwrite=args.overwrite,
        overrides=overrides or None,
    )
    if os.environ.get("RANK", "0") != "0":
        return 0  # torchrun: rank 0 reports the run
    last = run.history[-1] if run.history else {}
    print(f"stopped after {run.step} steps ({run.stopped_by})")
    if last:
        print(f"last N-cut {last['ncut']:.4f}, reconstruction {last['reconstruction']:.4g}")
    for d in run.diagnoses:
        print(f"note: {d.message}")
    print(f"checkpoint: {run.checkpoint}")
    for name in ("config.yaml", "metrics.csv", "losses.png", "preview.png", "diagnostics.txt"):
        if (run.run_dir / name).exists():
            print(f"{name + ':':<17} {run.run_dir / name}")
    return 0


@_command("refine")
def _refine(args: argparse.Namespace) -> int:
    from cellcut.config import refine_overrides
    from cellcut.errors import InputFileError
    from cellcut.refinement import refine

    if not args.images:
        raise InputFileError(
            "no images to refine on",
            "no image was given",
            "pass the files, folders or glob patterns (again with --resume)",
        )
    settings = refine_overrides(args.overrides)
    if args.minutes is not None:
        settings.update(minutes=args.minutes, steps=None)
    if args.steps is not None:
        settings.update(steps=args.steps, minutes=None)
    for key in ("seed", "channel", "device"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.voxel_size is not None:
        settings["voxel_size"] = tuple(args.voxel_size)
    if args.quiet:
        settings["progress"] = False
    run = refine(
        args.images,
        args.out,
        model=args.source,
        labels=args.labels,
        resume=args.resume,
        overwrite=args.overwrite,
        **settings,
    )
    print(f"stopped after {run.step} steps ({run.stopped_by})")
    if run.history:
        last = run.history[-1]
        print(f"last loss {last['loss']:.4f}, agreement with targets {last['accuracy']:.3f}")
    print(f"checkpoint: {run.checkpoint}")
    for name in ("refine.yaml", "metrics.csv", "losses.png", "preview.png"):
        if (run.run_dir / name).exists():
            print(f"{name + ':':<13} {run.run_dir / name}")
    print(f"use it: cellcut segment IMAGE --model {run.run_dir}")
    return 0


def _progress_bars(quiet: bool) -> Callable[[str, int, int], None] | None:
    """tqdm bars per stage, on a terminal only (logs of cluster jobs stay readable)."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="block", leave=False)
        bar.update(done - bar.n)  # type: ignore[attr-defined]
        if done == total:
            bar.close()  # type: ignore[attr-defined]

    return progress


def _is_batch(args: argparse.Namespace) -> bool:
    import os

    if len(args.images) > 1 or args.stack_folder:
        return True
    if args.out.endswith(("/", os.sep)) or (_is_dir(args.out) and not _is_volume(args.out)):
        return True  # --out names a folder: the batch layout, for one input too
    text = args.images[0]
    if any(ch in text for ch in "*?["):
        return True
    return _is_dir(text) and not _is_volume(text)  # a zarr folder is one volume


def _is_dir(path: str) -> bool:
    from pathlib import Path

    try:
        return Path(path).is_dir()
    except OSError:  # e.g. a name too long to look up: the input/output checks report it
        return False


def _is_volume(path: str) -> bool:
    from cellcut.io import is_volume_path

    return is_volume_path(path)


@_command("segment")
def _segment(args: argparse.Namespace) -> int:
    from cellcut.segmentation import segment

    if _is_batch(args):
        return _segment_batch(args)
    overview = args.overview or _sibling_png(args.out, "_overview")
    progress = _progress_bars(args.quiet)
    result = segment(
        args.images[0],
        args.out,
        model=args.model,
        options=_segment_settings(args),
        stats=args.stats,
        probability_out=args.probability,
        overview=overview,
        overwrite=args.overwrite,
        progress=progress,
    )
    if args.instances != "none":
        print(f"cells:       {result.n_cells}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.summary.get("median_object_radius") is not None:
        print(
            f"spot sigma:  {result.summary['spot_sigma']:.3g} (auto: half the median object "
            f"radius, {result.summary['median_object_radius']:.3g})"
        )
    print(f"labels:      {result.labels_path}")
    if result.probability_path:
        print(f"probability: {result.probability_path}")
    if result.stats_path:
        print(f"statistics:  {result.stats_path}")
    print(f"overview:    {result.overview_path}")
    return 0


def _segment_batch(args: argparse.Namespace) -> int:
    from cellcut.errors import ConfigError
    from cellcut.segmentation.batch import segment_batch

    given = [f for f in ("stats", "probability", "overview") if getattr(args, f)]
    if given:
        raise ConfigError(
            "invalid option",
            f"--{given[0]} names one file, but a batch writes one per input into --out",
            "drop it (statistics and overviews are always written; --with-probability adds "
            "probabilities)",
        )

    def report(i: int, n: int, source: str, row: dict) -> None:
        status = {"done": f"{row['cells']} cells", "skipped": "skipped (labels exist)"}
        print(f"[{i + 1}/{n}] {source}: {status.get(row['status'], 'failed')}", flush=True)

    result = segment_batch(
        args.images,
        args.out,
        model=args.model,
        options=_segment_settings(args),
        probability=args.with_probability,
        stack_folders=args.stack_folder,
        overwrite=args.overwrite,
        on_input=report,
        progress=_progress_bars(args.quiet),
    )
    print(f"summary:     {result.summary_path}")
    for row in result.failed:
        print(f"error: {row['input']}: {row['error']}", file=sys.stderr)
    return 2 if result.failed else 0


def _number_or_auto(text: str) -> float | str:
    """'auto' or a number; its range is checked with the other settings (SegmentOptions)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _float_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return value


def _sibling_png(location: str, tag: str) -> str:
    path, _ = split_location_str(location)
    p = __import__("pathlib").Path(path)
    name = p.name
    for suffix in (".ome.zarr", ".ome.tif", ".nii.gz"):
        if name.lower().endswith(suffix):
            return str(p.with_name(name[: -len(suffix)] + tag + ".png"))
    return str(p.with_name(p.stem + tag + ".png"))


@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from cellcut.io import check_label_values, read_volume, write_json
    from cellcut.metrics import check_thresholds, evaluate
    from cellcut.outputs import OutputSet

    check_thresholds(args.thresholds)
    outputs = OutputSet(
        {"scores": args.json}, overwrite=args.overwrite, inputs=[args.truth, args.prediction]
    )
    outputs.check()
    truth = check_label_values(read_volume(args.truth, validate=False).numpy(), args.truth)
    pred = check_label_values(read_volume(args.prediction, validate=False).numpy(), args.prediction)
    if truth.shape != pred.shape:
        from cellcut.errors import VolumeError

        raise VolumeError(
            "cannot compare",
            f"ground truth {truth.shape} and prediction {pred.shape} differ in shape",
            "give labels of the same volume",
            file=args.prediction,
        )
    result = evaluate(truth, pred, thresholds=args.thresholds)
    if args.json:
        with outputs:
            write_json(outputs.staged("scores"), result.to_dict())
            outputs.commit()
    print(result.table())
    if args.json:
        print(f"written: {args.json}")
    return 0


@_command("models")
def _models(args: argparse.Namespace) -> int:
    from cellcut.model import list_models

    models = list_models()
    if not models:
        print("no models found")
    for m in models:
        kind = {"wnet": "W-Net", "refined": "refined (cellcut refine)"}.get(m["kind"], m["kind"])
        if m.get("origin") not in (None, "", "cellcut"):
            kind += f" from {m['origin']}"
        print(
            f"{m['name']}: {kind}, {m['path']} ({m['size_mb']:.1f} MB, sha256 {m['sha256'][:12]}…)"
        )
        if m.get("card"):
            for line in m["card"].splitlines():
                print(f"    {line}")
    return 0


@_command("export")
def _export(args: argparse.Namespace) -> int:
    from cellcut.errors import ConfigError
    from cellcut.model import load_model, resolve_model_path
    from cellcut.model.export import export_bioimageio, export_onnx, export_torchscript
    from cellcut.outputs import OutputSet

    targets = {"bioimageio": args.bioimageio, "onnx": args.onnx, "torchscript": args.torchscript}
    if not any(targets.values()):
        raise ConfigError(
            "nothing to export",
            "no output was given",
            "pass --bioimageio OUT.zip, --onnx OUT.onnx and/or --torchscript OUT.pt",
        )
    path = resolve_model_path(args.model)
    outputs = OutputSet(targets, overwrite=args.overwrite, inputs=[path])
    outputs.check()
    loaded = load_model(path)
    with outputs:
        if args.bioimageio:
            export_bioimageio(path, outputs.staged("bioimageio"), overwrite=True)
        if args.onnx:
            export_onnx(loaded, outputs.staged("onnx"))
        if args.torchscript:
            export_torchscript(loaded, outputs.staged("torchscript"))
        final = outputs.commit()
    for role, target in final.items():
        print(f"{role + ':':<12} {target}")
    return 0


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    import shutil
    import time
    from pathlib import Path

    from cellcut.samples import sample_path
    from cellcut.segmentation import segment
    from cellcut.training import train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            from cellcut.errors import OutputError

            raise OutputError(
                "output exists",
                "the demo folder is not empty",
                "pass --overwrite or choose another --out",
                file=out,
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    image = sample_path("mesospim")
    print(f"sample: {image} (mesoSPIM light-sheet crop, see ATTRIBUTION.md beside it)")
    t0 = time.perf_counter()
    print(f"1/2 fine-tuning the {args.model} model for {args.minutes:g} min on the sample")
    run = train(
        [image],
        out / "run",
        overrides=[f"stop.minutes={args.minutes}", "log.every=10", "log.checkpoint_every=1000"],
        from_pretrained=args.model,
    )
    t1 = time.perf_counter()
    print(
        f"   {run.step} steps in {t1 - t0:.0f} s, N-cut {run.history[-1]['ncut']:.3f}"
        if run.history
        else f"   {run.step} steps"
    )
    for d in run.diagnoses:
        print(f"   note: {d.message}")
    print("2/2 segmenting the sample with the fine-tuned model")
    result = segment(
        image,
        out / "labels.tif",
        model=str(run.checkpoint),
        stats=out / "cells.csv",
        overview=out / "overview.png",
        probability_out=out / "probability.tif",
    )
    t2 = time.perf_counter()
    print(f"   {result.n_cells} cells in {t2 - t1:.0f} s (total {t2 - t0:.0f} s)")
    print("outputs:")
    rows = [
        ("labels (one id per cell)", result.labels_path),
        ("foreground probability", result.probability_path),
        ("cell statistics (CSV)", result.stats_path),
        ("summary (JSON)", Path(str(result.stats_path)).with_suffix(".summary.json")),
        ("overview picture", result.overview_path),
        ("training curves", run.run_dir / "losses.png"),
        ("training preview", run.run_dir / "preview.png"),
        ("fine-tuned model", run.checkpoint),
        ("training metrics", run.run_dir / "metrics.csv"),
    ]
    for name, path in rows:
        print(f"  {name + ':':<27} {path}")
    return 0


@_command("info")
def _info(args: argparse.Namespace) -> int:
    import numpy as np

    from cellcut.io import read_volume

    vol = read_volume(args.image, channel=args.channel, time=args.time)
    data = vol.data
    vs = "unknown" if vol.voxel_size is None else " x ".join(f"{v:g}" for v in vol.voxel_size)
    print(f"file:       {vol.source}")
    print(f"shape:      {vol.shape} (z, y, x)")
    print(f"dtype:      {data.dtype}")
    print(f"voxel size: {vs} µm (z, y, x)")
    lo, p1, med, p99, hi = np.percentile(data, [0, 1, 50, 99, 100])
    print(f"values:     min {lo:g}, 1% {p1:g}, median {med:g}, 99% {p99:g}, max {hi:g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellcut`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    _quiet_third_party_logs()
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except CellcutError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _quiet_third_party_logs() -> None:
    """Libraries' log records (tifffile's page warnings...) are not printed: what matters to
    the user reaches them as cellcut's own errors and warnings."""
    import logging

    for name in ("tifffile", "imagecodecs", "h5py", "zarr", "numcodecs"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _reader_went_away() -> int:
    """Output piped into a program that stopped reading (``cellcut info X | head -3``): end
    quietly, with the exit status of a program killed by SIGPIPE."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())

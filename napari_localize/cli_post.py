"""The ``undrift`` and ``export`` subcommands of ``napari-localize`` (registered by :mod:`napari_localize.cli`)."""

from __future__ import annotations

import os


def _cli_error(message):
    from .cli import CliError

    return CliError(message)


def _check_locs_path(path):
    if not os.path.isfile(path):
        raise _cli_error(f"{path}: no such file")
    if not path.lower().endswith(".hdf5"):
        raise _cli_error(f"{path}: not a localization file (.hdf5)")


# ------------------------------------------------------------------------------------------------ undrift
def cmd_undrift(args) -> int:
    from .core.drift import DriftError
    from .io.locs import LocsFileError
    from .postprocess import undrift_file

    _check_locs_path(args.locs)
    if args.segmentation is not None and args.segmentation < 1:
        raise _cli_error(f"--segmentation must be >= 1 frame, got {args.segmentation}")
    options = {}
    pixel = None
    if args.method == "aim":
        for name in ("intersect_distance", "roi_radius"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
    elif args.max_shift is not None:
        options["max_shift"] = args.max_shift
    try:
        from .io.locs import get_metadata, load_locs

        if any(v is not None for v in (args.intersect_distance, args.roi_radius, args.max_shift)):
            pixel = float(get_metadata(load_locs(args.locs)[1], "Pixelsize", 130.0))
            options = {k: v / pixel for k, v in options.items()}  # the flags are in nm
        h5, txt, result = undrift_file(args.locs, args.method, args.segmentation, **options)
    except (DriftError, LocsFileError) as exc:
        raise _cli_error(str(exc)) from None
    d = result.drift
    print(f"{args.locs}: {args.method.upper()} drift over {len(d)} frames, {len(result.segment_drift)} segments; "
          f"range x {d[:, 0].min():+.3f} .. {d[:, 0].max():+.3f} px, y {d[:, 1].min():+.3f} .. "
          f"{d[:, 1].max():+.3f} px -> {h5}, {txt}")
    return 0


def add_undrift_parser(sub):
    from .core.drift import DEFAULT_SEGMENTATION, DRIFT_METHODS

    p = sub.add_parser("undrift", help="correct the drift of a localization file (RCC or AIM)",
                       description="Estimate the sample drift from the localizations themselves and write "
                                   "<LOCS base>_undrift.hdf5 (+ .yaml, the drift recorded) and "
                                   "<LOCS base>_drift.txt (Picasso's drift file: dx dy per frame, pixels).")
    p.add_argument("locs", metavar="LOCS", help="a _locs.hdf5 file (ours or Picasso's)")
    p.add_argument("--method", choices=DRIFT_METHODS, default="rcc",
                   help="rcc: redundant cross-correlation (Wang et al. 2014); aim: adaptive intersection "
                        "maximization (Ma et al. 2024), faster and finer for dense DNA-PAINT (default rcc)")
    p.add_argument("--segmentation", type=int, metavar="N",
                   help=f"frames per temporal segment (default {DEFAULT_SEGMENTATION['rcc']} for rcc, "
                        f"{DEFAULT_SEGMENTATION['aim']} for aim)")
    p.add_argument("--max-shift", type=float, metavar="NM",
                   help="rcc: largest drift between any two segments, nm (default 5 camera pixels)")
    p.add_argument("--intersect-distance", type=float, metavar="NM",
                   help="aim: localizations closer than this intersect, nm (default 20)")
    p.add_argument("--roi-radius", type=float, metavar="NM",
                   help="aim: largest drift between consecutive segments, nm (default 60)")
    p.set_defaults(func=cmd_undrift)


# ------------------------------------------------------------------------------------------------ export
def cmd_export(args) -> int:
    from .io.export import ExportError, export_csv, export_paths, export_thunderstorm
    from .io.locs import LocsFileError, get_metadata, load_locs

    _check_locs_path(args.locs)
    out = export_paths(args.locs, args.format, args.output)
    if os.path.abspath(out) == os.path.abspath(args.locs):
        raise _cli_error(f"--output {out} would overwrite the localization file")
    try:
        locs, info = load_locs(args.locs)
        if args.format == "csv":
            export_csv(out, locs)
        else:
            pixelsize = args.pixelsize if args.pixelsize is not None else get_metadata(info, "Pixelsize")
            export_thunderstorm(out, locs, pixelsize)
            _write_sidecar(out, info, pixelsize)
    except (ExportError, LocsFileError) as exc:
        raise _cli_error(str(exc)) from None
    print(f"{args.locs}: {len(locs)} localizations -> {out}")
    return 0


def _write_sidecar(csv_path, info, pixelsize):
    """``<csv base>.yaml``: the documents of the source file (its pixel size lets napari place the CSV)."""
    import yaml

    from .io.locs import _plain

    side = os.path.splitext(csv_path)[0] + ".yaml"
    docs = [_plain(d) for d in info] + [{"Generated by": "napari-localize export (ThunderSTORM CSV)",
                                          "Pixelsize": float(pixelsize)}]
    with open(side, "w") as fh:
        yaml.safe_dump_all(docs, fh, default_flow_style=False)


def add_export_parser(sub):
    from .io.export import FORMATS

    p = sub.add_parser("export", help="export localizations to CSV or ThunderSTORM CSV",
                       description="Export a localization file: csv (every column, camera pixels, frames from "
                                   "0) or thunderstorm (ThunderSTORM's CSV: nm, frames from 1, header such as "
                                   "\"x [nm]\"; read by ThunderSTORM, locan, napari-storm, SMAP, Picasso).")
    p.add_argument("locs", metavar="LOCS", help="a _locs.hdf5 file")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", metavar="PATH",
                   help="file to write (default <LOCS base>.csv, or <LOCS base>_ts.csv for thunderstorm)")
    p.add_argument("--pixelsize", type=float, metavar="NM", help="pixel size in nm (default: the file's)")
    p.set_defaults(func=cmd_export)

"""The ``undrift`` and ``export`` subcommands of ``napari-localize`` (registered by :mod:`napari_localize.cli`)."""

from __future__ import annotations

import os


def _cli_error(message):
    from ._usage import CliError

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
    nm = ({"intersect_distance": args.intersect_distance, "roi_radius": args.roi_radius}
          if args.method == "aim" else {"max_shift": args.max_shift})
    other = ({"max_shift": args.max_shift} if args.method == "aim"
             else {"intersect_distance": args.intersect_distance, "roi_radius": args.roi_radius})
    wrong = [k for k, v in other.items() if v is not None]
    if wrong:
        raise _cli_error(f"--{wrong[0].replace('_', '-')} is an option of the other method, not of "
                         f"--method {args.method}")
    nm = {k: v for k, v in nm.items() if v is not None}
    if any(not v > 0 for v in nm.values()):
        raise _cli_error("--max-shift, --intersect-distance and --roi-radius are distances > 0 (nm)")
    try:
        if nm:  # the flags are in nm, the algorithms work in camera pixels
            from .io.locs import get_metadata, load_locs

            pixelsize = float(get_metadata(load_locs(args.locs)[1], "Pixelsize", 130.0))
            nm = {k: v / pixelsize for k, v in nm.items()}
        h5, txt, result = undrift_file(args.locs, args.method, args.segmentation, **nm)
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


# ------------------------------------------------------------------------------------------------ localize extras
def region_parameters(p, args) -> list:
    """One parameter set per ``--roi`` for ``--regions-separately`` (its ROI, fit method and threshold)."""
    from .core.regions import clip_rois

    rois = [tuple(r) for r in (args.roi or [])]
    if not rois:
        raise _cli_error("--regions-separately fits each --roi on its own: give at least one --roi, e.g. "
                         "--roi 0 0 256 256 --roi 0 256 256 512")
    if clip_rois(rois) != [tuple(int(v) for v in r) for r in rois]:
        raise _cli_error("--regions-separately needs ROIs that do not overlap (each is a channel of the sensor)")
    values = {}
    for name, default in (("fit_method", "mle"), ("min_net_gradient", 5000.0)):
        given = getattr(args, name) or [default]
        if len(given) not in (1, len(rois)):
            raise _cli_error(f"{len(given)} --{name.replace('_', '-')} values for {len(rois)} --roi: give one "
                             "for all regions or one per region")
        values[name] = given * len(rois) if len(given) == 1 else given
    return [p.replace(roi=roi, rois=None, fit_method=values["fit_method"][k],
                      min_net_gradient=float(values["min_net_gradient"][k])) for k, roi in enumerate(rois)]


def check_repeated_flags(args):
    """Several --fit-method / --min-net-gradient values are per-region values of --regions-separately; without it
    the last one given wins (as for any other flag), so a script may append an override."""
    if getattr(args, "regions_separately", False):
        return
    for name in ("fit_method", "min_net_gradient"):
        values = getattr(args, name)
        if isinstance(values, list) and len(values) > 1:
            setattr(args, name, values[-1:])


def localize_regions_separately(movie, path, p, args, extra_fit_info=None, progress=None):
    """``--regions-separately``: each ROI localized with its own parameters and written to
    ``<base><suffix>_<ref|chN>_locs.hdf5`` in its own coordinates. Returns ``[(hdf5 path, rows)]``; a region
    without localizations writes nothing (and says so)."""
    import sys

    from .api import localize
    from .core.locs import sane
    from .core.regions import region_movie_info, region_suffix, to_region_coordinates
    from .io.locs import locs_paths, save_locs

    written = []
    params = region_parameters(p, args)
    for k, q in enumerate(params):
        result = localize(movie, q, progress=progress)
        locs, info, stats = result.locs, result.info, result.stats
        y0, x0, y1, x1 = q.roi
        table = to_region_coordinates(locs, q.roi)
        table = table[sane(table, x1 - x0, y1 - y0)]
        hdf5_path, _ = locs_paths(path, args.suffix + region_suffix(k), args.output_dir)
        if not len(table):
            print(f"napari-localize: note: {path}: region {region_suffix(k)[1:]} ({y0} {x0} {y1} {x1}): no "
                  "localizations, nothing written; lower its --min-net-gradient", file=sys.stderr)
            continue
        info = [region_movie_info(info[0], q.roi)] + list(info[1:])
        if extra_fit_info:
            info[-1] = {**info[-1], **extra_fit_info}
        info[-1] = {**info[-1], "Region": region_suffix(k)[1:], "Regions separately": len(params)}
        save_locs(hdf5_path, table, info)
        written.append((hdf5_path, len(table), stats))
    return written


def drift_after_localize(hdf5_path, segmentation: int) -> str | None:
    """``localize --drift N``: RCC on the file just written; a failure is reported, never fatal (the
    localizations are kept). Returns the undrifted file or None."""
    import sys

    from .core.drift import DriftError
    from .postprocess import undrift_file

    try:
        out, _, result = undrift_file(hdf5_path, "rcc", segmentation)
    except (DriftError, ValueError) as exc:
        print(f"napari-localize: note: {hdf5_path}: drift correction skipped ({exc})", file=sys.stderr)
        return None
    import numpy as np

    d = result.drift
    print(f"{hdf5_path}: RCC drift range x {np.ptp(d[:, 0]):.3f} px, y {np.ptp(d[:, 1]):.3f} px -> {out}")
    return out

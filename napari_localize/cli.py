"""The ``napari-localize`` command. Thin: it builds parameters, then calls the same API as the widgets."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ progress
class ProgressBar:
    """A tqdm progress bar of frames on stderr, fed as ``bar(done, total)`` (the API's progress callback).

    tqdm draws it only on a terminal (``disable=None``), so logs and pipes stay clean.
    """

    def __init__(self, label: str, stream=None):
        from tqdm import tqdm

        self._bar = tqdm(desc=label, unit=" frames", file=stream or sys.stderr, disable=None, dynamic_ncols=True,
                         leave=True)

    def __call__(self, done: int, total: int):
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self):
        self._bar.close()


# ------------------------------------------------------------------------------------------------ localize
def _movie_files(paths) -> list[str]:
    from .io.movies import is_movie_path, list_movies

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = list_movies(path)
            if not found:
                raise CliError(f"{path}: no movie files in this folder")
            files.extend(found)
        elif os.path.exists(path):
            if not is_movie_path(path):
                from .io.movies import MOVIE_EXTENSIONS

                raise CliError(f"{path}: not a movie file napari-localize reads ({', '.join(MOVIE_EXTENSIONS)})")
            files.append(path)
        else:
            raise CliError(f"{path}: no such file or folder")
    return files


def _parameters(args, movie_info: dict, match=None):
    """Parameters for one movie: an explicit flag wins, then the camera config match, then the defaults."""
    from .core.camera import DEFAULT_PHOTON_PARAMETERS
    from .core.parameters import LocalizeParameters

    photon = {}
    for field, flag in (("baseline", "baseline"), ("sensitivity", "sensitivity"), ("em_gain", "gain"),
                        ("qe", "qe"), ("pixelsize", "pixelsize")):
        value = getattr(args, flag)
        if value is None and match is not None:
            value = getattr(match, field)
        if value is None and field == "pixelsize":
            value = movie_info.get("Pixelsize") or None
        photon[field] = float(value if value is not None else DEFAULT_PHOTON_PARAMETERS[field])
    return LocalizeParameters(
        box_size=args.box_size,
        min_net_gradient=args.min_net_gradient,
        roi=tuple(args.roi) if args.roi else None,
        frame_range=tuple(args.frames) if args.frames else None,
        fit_method=args.fit_method,
        convergence=args.convergence,
        max_iterations=args.max_iterations,
        camera=match.camera if match is not None else None,
        **photon,
    )


def _camera_config(args):
    """The camera config to match movies against (``None`` if there is none), or a CliError."""
    from .core.camera import CameraConfigError
    from .io.camera_config import discover_camera_config

    try:
        config = discover_camera_config(args.camera_config)
        if args.camera is not None:
            if config is None:
                raise CliError(f"--camera {args.camera}: no camera config found; give one with --camera-config")
            config[args.camera]
    except CameraConfigError as exc:
        raise CliError(str(exc)) from None
    return config


def _camera_document(config, match) -> dict:
    """What the fit document of ``_locs.yaml`` records about the camera config match."""
    doc = {"Camera config": config.source}
    if match.selections:
        doc["Sensitivity categories"] = dict(match.selections)
    if match.wavelength is not None:
        doc["Emission wavelength"] = match.wavelength
    if match.notices:
        doc["Notices"] = list(match.notices)
    return doc


def cmd_localize(args) -> int:
    from .api import localize_to_file
    from .io.locs import locs_paths
    from .io.movies import open_movie

    if args.output_dir is not None and not os.path.isdir(args.output_dir):
        raise CliError(f"--output-dir {args.output_dir}: no such folder")
    files = _movie_files(args.paths)
    _set_device(args.device)
    calibration, z_options = _z_setup(args)
    if args.box_size is None:
        args.box_size = 7
    config = _camera_config(args)
    if args.scheduler:
        return _localize_distributed(args, files, config, calibration, z_options)
    failures = 0
    for path in files:
        try:
            with open_movie(path, channel=args.channel, position=args.position) as movie:
                match = None
                if config is not None:
                    from .core.camera import match_camera

                    match = match_camera(config, movie.info, camera=args.camera)
                    for notice in match.notices:
                        print(f"napari-localize: note: {path}: {notice}", file=sys.stderr)
                p = _parameters(args, movie.info, match)
                p.validate(*movie.shape)
                hdf5_path, _ = locs_paths(path, args.suffix, args.output_dir)
                camera_doc = _camera_document(config, match) if match is not None else None
                bar = ProgressBar(os.path.basename(path))
                try:
                    written, stats = localize_to_file(
                        movie, p, hdf5_path, progress=bar, calibration=calibration, z_options=z_options,
                        calibration_path=os.path.abspath(args.zcalib) if calibration is not None else None,
                        extra_fit_info=camera_doc)
                finally:
                    bar.close()
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"napari-localize: error: {exc}", file=sys.stderr)
            continue
        t = stats.seconds
        print(
            f"{path}: {stats.localized} localizations in {stats.frames} frames "
            f"({stats.identified} spots, {stats.not_converged} fits not converged) -> {written[0]} "
            f"[read {t['read']:.2f} s, identify {t['identify']:.2f} s, fit {t['fit']:.2f} s, "
            f"write {t['write']:.2f} s]"
        )
    return 0 if failures == 0 else 1


def _set_device(device):
    """Apply --device (through $NAPARI_LOCALIZE_DEVICE, so Dask workers started here inherit it) and check it."""
    from .core.device import DEVICE_ENV, DeviceError, check_device

    if device:
        os.environ[DEVICE_ENV] = device
    try:
        check_device()
    except DeviceError as exc:
        raise CliError(str(exc)) from None


def _movie_options(args) -> dict:
    return {"channel": args.channel, "position": args.position}


def _localize_distributed(args, files, config, calibration=None, z_options=None) -> int:
    from .distributed import localize_files_distributed
    from .io.movies import open_movie

    params = {}
    for path in files:  # parameters per movie, exactly as a serial run would choose them
        try:
            with open_movie(path, **_movie_options(args)) as movie:
                match = None
                if config is not None:
                    from .core.camera import match_camera

                    match = match_camera(config, movie.info, camera=args.camera)
                params[path] = _parameters(args, movie.info, match)
        except (ValueError, OSError):
            params[path] = _parameters(args, {})  # the worker reports the error for this movie
    p = params

    def report(path, hdf5_path, stats, error):
        if error:
            print(f"napari-localize: error: {error}", file=sys.stderr)
        else:
            print(f"{path}: {stats.localized} localizations in {stats.frames} frames -> {hdf5_path}")

    results = localize_files_distributed(files, p, args.scheduler, args.workers, args.suffix, args.output_dir,
                                         movie_options=_movie_options(args), on_done=report,
                                         calibration=calibration, z_options=z_options,
                                         calibration_path=os.path.abspath(args.zcalib) if calibration is not None
                                         else None)
    return 0 if all(r[3] is None for r in results) else 1


def _z_setup(args):
    """The calibration and z-fit options of ``localize --zcalib``; (None, None) for 2D."""
    if getattr(args, "zcalib", None) is None:
        if getattr(args, "magnification_factor", None) is not None:
            raise CliError("--magnification-factor needs --zcalib CALIBRATION.yaml")
        return None, None
    from .core.zfit import ZFitOptions
    from .io.calibration import load_calibration
    from .io.spline_calibration import is_spline_calibration_path, load_spline_calibration

    if args.magnification_factor is not None and not args.magnification_factor > 0:
        raise CliError(f"--magnification-factor must be positive, got {args.magnification_factor}")
    spline = is_spline_calibration_path(args.zcalib)
    try:
        if spline:
            calibration = load_spline_calibration(args.zcalib, args.magnification_factor)
        else:
            calibration = load_calibration(args.zcalib, args.magnification_factor)
    except ValueError as exc:
        raise CliError(f"--zcalib {exc}") from None
    if spline:
        _check_spline_options(args, calibration)
    elif args.box_size is None:
        args.box_size = 7
    options = ZFitOptions(method=args.z_method, filter=args.z_filter, extrapolation=args.z_extrapolation,
                          drop_out_of_range=args.z_drop_out_of_range, box_size=args.z_box_size,
                          neighbours=not args.z_no_neighbours, max_gof=args.z_max_gof)
    try:
        options.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return calibration, options


def _check_spline_options(args, psf):
    """What a spline PSF calibration changes: the box (default the calibration's) and the z options that apply."""
    for notice in psf.notices:
        print(f"napari-localize: note: --zcalib {args.zcalib}: {notice}", file=sys.stderr)
    if args.box_size is None:
        args.box_size = int(psf.box)
    grid = psf.n_nodes[-1]
    if args.box_size > grid:
        raise CliError(f"--box-size {args.box_size}: larger than the spline calibration's grid ({grid} px); "
                       f"use at most {grid if grid % 2 else grid - 1}")
    if args.fit_method == "avg":
        raise CliError("--fit-method avg has no PSF: a spline calibration needs mle or lq")
    if args.z_method != "mle":
        raise CliError("--z-method huang matches Gaussian widths: with a spline calibration z comes from the "
                       "spline PSF fit (leave --z-method at mle)")
    if args.z_filter > 0:
        raise CliError("--z-filter uses d_zcalib of the astigmatic width fit; a spline fit has none (use "
                       "--z-max-gof)")
    if args.z_box_size:
        raise CliError("--z-box-size: with a spline calibration the fit box is --box-size (default the "
                       "calibration's)")
    if getattr(args, "scheduler", None):
        raise CliError("--scheduler with a spline calibration is not supported yet: run without --scheduler")


def _add_z_options(p):
    g = p.add_argument_group("3D (astigmatism, spline PSF)")
    g.add_argument("--zcalib", metavar="PATH",
                   help="z calibration: an astigmatic calibration YAML (ours or Picasso's), or a spline PSF "
                        "calibration .hdf5 (ours or Picasso's spline-calibrate): fit z. A spline calibration "
                        "fits x, y, z, photons, bg with the experimental PSF (--fit-method mle or lq) in boxes "
                        "of --box-size, default the calibration's")
    g.add_argument("--magnification-factor", type=float,
                   help="actual/calibration height factor (default: the calibration's, else 0.79)")
    g.add_argument("--z-method", choices=("mle", "huang"), default="mle",
                   help="mle: astigmatic-PSF maximum likelihood of x, y, z, photons, bg; huang: width "
                        "matching (Huang 2008, as Picasso) (default mle)")
    g.add_argument("--z-filter", type=float, default=0.0,
                   help="drop localizations with d_zcalib > this x RMS(d_zcalib); 0 keeps all (default 0)")
    g.add_argument("--z-extrapolation", type=float, default=0.25,
                   help="search z up to this fraction of the calibrated range past each end; fits on the "
                        "bound are dropped (default 0.25)")
    g.add_argument("--z-drop-out-of-range", action="store_true",
                   help="drop localizations whose z lies beyond the calibrated range")
    g.add_argument("--z-box-size", type=int, default=0,
                   help="mle: box (odd, pixels) the astigmatic PSF is fitted in; 0: the 2D box + 4 (default 0)")
    g.add_argument("--z-no-neighbours", action="store_true",
                   help="mle: do not add the light of the frame's other localizations to the model")
    g.add_argument("--z-max-gof", type=float, default=0.0,
                   help="mle: drop localizations with z_gof (standardised Poisson deviance of the fit, about "
                        "N(0,1) for one clean spot) above this; 0 keeps all (default 0)")


def _add_parameter_options(p, frames_help: str, box_default=7, box_help="odd box side length in pixels (default 7)"):
    """Identification, photon-conversion and fit options shared by localize and calibrate-z.

    Returns the photon-conversion group, so a command can add its camera options to it.
    """
    from .core.parameters import FIT_METHODS

    g = p.add_argument_group("identification")
    g.add_argument("--box-size", type=int, default=box_default, help=box_help)
    g.add_argument("--min-net-gradient", type=float, default=5000.0,
                   help="keep spots whose net gradient (camera counts) is greater than this (default 5000)")
    g.add_argument("--roi", type=int, nargs=4, metavar=("Y0", "X0", "Y1", "X1"),
                   help="only spots centred in rows Y0..Y1-1 and columns X0..X1-1")
    g.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "LAST"), help=frames_help)
    photon = p.add_argument_group("photon conversion: photons = (counts - baseline) * sensitivity / gain")
    photon.add_argument("--baseline", type=float, help="camera offset in counts (default 0)")
    photon.add_argument("--sensitivity", type=float, help="electrons per count (default 1)")
    photon.add_argument("--gain", type=float, help="EM gain, 1 for sCMOS/CCD (default 1)")
    photon.add_argument("--qe", type=float, help="quantum efficiency, recorded only (default 1)")
    photon.add_argument("--pixelsize", type=float, help="pixel size in nm (default: from the movie, else 130)")
    g = p.add_argument_group("fit")
    g.add_argument("--fit-method", choices=FIT_METHODS, default="mle",
                   help="mle: Poisson maximum likelihood; lq: least squares; avg: box sum (default mle)")
    g.add_argument("--convergence", type=float, default=0.001, help="MLE/LQ step tolerance in pixels (0.001)")
    g.add_argument("--max-iterations", type=int, default=100, help="MLE/LQ iteration limit (100)")
    return photon


def add_localize_parser(sub):
    p = sub.add_parser("localize", help="find and fit spots in movies; write <movie>_locs.hdf5 + .yaml",
                       description="Localize single molecules in movie files (or every movie in a folder). "
                                   "Writes Picasso-compatible <movie base><suffix>_locs.hdf5 and _locs.yaml.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="movie files or folders of movies")
    p.add_argument("--channel", type=int, metavar="INT",
                   help="channel to localize in multi-channel movies (required there; the error lists them)")
    p.add_argument("--position", type=int, metavar="INT",
                   help="stage position to localize in multi-position acquisitions (required there)")
    photon = _add_parameter_options(p, frames_help="0-based inclusive frame range", box_default=None,
                                    box_help="odd box side length in pixels (default 7; with a spline "
                                             "calibration, the calibration's box)")
    photon.add_argument("--camera-config", metavar="PATH",
                        help="camera config (Picasso's config.yaml schema); default: $NAPARI_LOCALIZE_CAMERA_CONFIG, "
                             "the user's camera_config.yaml, else Picasso's config.yaml. Values not given as "
                             "flags come from the camera matched by the movie's metadata")
    photon.add_argument("--camera", metavar="NAME", help="use this camera of the config instead of matching it")
    g = p.add_argument_group("output")
    g.add_argument("--suffix", default="", help="inserted before _locs.hdf5")
    g.add_argument("--output-dir", help="write here instead of beside each movie")
    g = p.add_argument_group("distributed (Dask)")
    g.add_argument("--scheduler", metavar="{local,ADDRESS}",
                   help="run on a Dask cluster: 'local' starts one on this machine, or a scheduler address "
                        "such as tcp://10.0.0.5:8786 (the movies must be readable by every worker)")
    g.add_argument("--workers", type=int, help="worker processes of the local cluster (default: cores / 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="MLE/LQ fit engine: auto (a CUDA GPU if present, else the CPU), cpu, or cuda "
                        "(error without a GPU); default $NAPARI_LOCALIZE_DEVICE, else auto")
    _add_z_options(p)
    p.set_defaults(func=cmd_localize)


# ------------------------------------------------------------------------------------------------ calibrate-z
def cmd_calibrate_z(args) -> int:
    from .io.movies import open_movie

    stack = args.stack
    if not os.path.isfile(stack):
        raise CliError(f"{stack}: no such file")
    if not args.step_nm > 0:
        raise CliError(f"--step-nm must be positive (nm), got {args.step_nm}")
    if not args.magnification_factor > 0:
        raise CliError(f"--magnification-factor must be positive, got {args.magnification_factor}")
    if args.model == "spline":
        return _calibrate_spline(args)
    if args.frames_per_step != 1 or args.frame_order != "fov":
        raise CliError("--frames-per-step and --frame-order apply to --model spline only")
    if args.dimensions != "3d":
        raise CliError("--dimensions 2d applies to --model spline only")
    from .api import calibrate_z_stack
    from .io.calibration import calibration_paths, plot_calibration, save_calibration

    if args.box_size is None:
        args.box_size = 7
    yaml_path = args.output or calibration_paths(stack)[0]
    if not yaml_path.lower().endswith((".yaml", ".yml")):
        raise CliError(f"--output {yaml_path}: the calibration is written as .yaml")
    if not os.path.isdir(os.path.dirname(os.path.abspath(yaml_path))):
        raise CliError(f"--output {yaml_path}: the folder does not exist")
    with open_movie(stack) as movie:
        p = _parameters(args, movie.info)
        p.validate(*movie.shape)
        bar = ProgressBar(os.path.basename(stack))
        try:
            cal = calibrate_z_stack(movie, p, args.step_nm, args.magnification_factor,
                                    tuple(args.frames) if args.frames else None, not args.pooled,
                                    os.path.abspath(stack), progress=bar)
        finally:
            bar.close()
    save_calibration(yaml_path, cal)
    png_path = os.path.splitext(yaml_path)[0] + ".png"
    plot_calibration(cal, png_path)
    d = cal.diagnostics
    for notice in d.get("notices", []):
        print(f"napari-localize: notice: {notice}", file=sys.stderr)
    lo, hi = cal.z_range
    print(f"{stack}: {d.get('method', '')}; calibrated {lo:g} .. {hi:g} nm; calibration z precision "
          f"{d.get('z_precision_nm', float('nan')):.1f} nm (RMSE of its own spots) -> {yaml_path}, {png_path}")
    return 0


#: default fit box of a spline calibration (its grid is 2 pixels wider)
SPLINE_BOX = 13


def _calibrate_spline(args) -> int:
    from .core.spline_calibrate import SplineCalibrationOptions, calibrate_spline
    from .io.movies import open_movie
    from .io.spline_calibration import plot_spline_calibration, save_spline_calibration, spline_calibration_paths

    stack = args.stack
    if args.pooled:
        raise CliError("--pooled applies to --model poly only")
    out = args.output or spline_calibration_paths(stack)[0]
    if not out.lower().endswith((".hdf5", ".h5")):
        raise CliError(f"--output {out}: a spline calibration is written as .hdf5")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise CliError(f"--output {out}: the folder does not exist")
    if args.box_size is None:
        args.box_size = SPLINE_BOX
    options = SplineCalibrationOptions(
        box_size=args.box_size, frames_per_step=args.frames_per_step, frame_order=args.frame_order,
        frame_bounds=tuple(args.frames) if args.frames else None, dimensions=args.dimensions,
        magnification_factor=args.magnification_factor)
    try:
        options.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with open_movie(stack) as movie:
        p = _parameters(args, movie.info)
        p.validate(*movie.shape)
        psf = calibrate_spline(movie, p, args.step_nm, options, path=os.path.abspath(stack))
    save_spline_calibration(out, psf)
    png_path = os.path.splitext(out)[0] + ".png"
    plot_spline_calibration(psf, png_path)
    d = psf.diagnostics
    lo, hi = psf.z_range
    span = f"calibrated {lo:g} .. {hi:g} nm; " if psf.is_3d else ""
    prec = (f"calibration z precision {d.get('z_precision_nm', float('nan')):.1f} nm (RMSE of its own bead "
            "slices) " if psf.is_3d else "")
    print(f"{stack}: {d.get('method', '')}; {span}{prec}-> {out}, {png_path}")
    return 0


def add_calibrate_parser(sub):
    p = sub.add_parser("calibrate-z", help="z calibration from a bead z-stack: astigmatic polynomials (YAML) "
                                           "or an experimental cubic-spline PSF (HDF5), with a PNG",
                       description="Calibrate from a bead z-stack. --model poly (default): localize it, fit "
                                   "degree-6 polynomials to the widths sx(z), sy(z) and write Picasso's "
                                   "calibration YAML. --model spline: register and average the beads into an "
                                   "experimental PSF and write its cubic spline as HDF5 (a layout Picasso "
                                   "reads too). Both write a PNG of the result.")
    p.add_argument("stack", metavar="STACK", help="the bead z-stack movie")
    p.add_argument("--step-nm", type=float, required=True, help="stage step between z positions (nm)")
    p.add_argument("--model", choices=("poly", "spline"), default="poly",
                   help="poly: astigmatic Gaussian widths (Huang 2008); spline: experimental PSF (default poly)")
    p.add_argument("--dimensions", choices=("3d", "2d"), default="3d",
                   help="spline: 3d (z from the PSF shape) or 2d (the in-focus PSF only) (default 3d)")
    p.add_argument("--frames-per-step", type=int, default=1,
                   help="spline: frames (fields of view) acquired at each z position (default 1)")
    p.add_argument("--frame-order", choices=("fov", "z"), default="fov",
                   help="spline, with --frames-per-step > 1: fov = the fields of view of one z position follow "
                        "each other; z = each field of view is a whole stack (default fov)")
    p.add_argument("--magnification-factor", type=float, default=0.79,
                   help="actual/calibration height factor stored in the calibration (default 0.79)")
    p.add_argument("--output", help="calibration to write (default <stack base>_3d_calib.yaml, or "
                                    "<stack base>_spline_calib.hdf5 for --model spline)")
    p.add_argument("--pooled", action="store_true",
                   help="poly: pool all spots per frame as Picasso does instead of following each bead")
    _add_parameter_options(p, frames_help="calibrate on these frames only (0-based, inclusive): "
                                          "Picasso's frame bounds", box_default=None,
                           box_help=f"odd box side length in pixels (default 7; spline: {SPLINE_BOX}, the "
                                    "fit box the calibration is made for)")
    p.set_defaults(func=cmd_calibrate_z)


# ------------------------------------------------------------------------------------------------ simulate
def _parse_aberrations(text) -> dict:
    """``"astigmatism=80,spherical=25"`` (RMS nm; names of :data:`~.core.pupil.ZERNIKE_NOLL` or Noll indices)."""
    from .core.pupil import ZERNIKE_NOLL

    out = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise CliError(f"--aberrations: {item!r} is not NAME=NM (e.g. astigmatism=80)")
        if name not in ZERNIKE_NOLL and not name.isdigit():
            raise CliError(f"--aberrations: unknown aberration {name!r}; use a Noll index or one of "
                           f"{', '.join(ZERNIKE_NOLL)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise CliError(f"--aberrations: {value!r} is not a number (RMS nm)") from None
    return out


def _simulation_parameters(args):
    from .core.pupil import ASTIGMATIC_3D
    from .core.simulate import SimulationParameters

    pupil = None
    if args.psf == "pupil":
        aberr = dict(ASTIGMATIC_3D) if args.aberrations is None else _parse_aberrations(args.aberrations)
        pupil = {"na": args.na, "wavelength_nm": args.wavelength, "n_immersion": args.n_immersion,
                 "pixel_nm": args.pixelsize, "zernike_nm": aberr}
    elif args.aberrations is not None:
        raise CliError("--aberrations applies to --psf pupil only")
    if args.psf == "spline" and not args.spline_calibration:
        raise CliError("--psf spline needs --spline-calibration CAL.hdf5")
    if args.z_range is not None and not args.z_range[0] < args.z_range[1]:
        raise CliError(f"--z-range: LOW must be below HIGH, got {args.z_range}")
    try:
        p = SimulationParameters(
            n_frames=args.frames, height=args.height, width=args.width, spots_per_frame=args.spots_per_frame,
            photons=args.photons, photon_spread=args.photon_spread, bg=args.bg, sigma=args.sigma,
            baseline=args.baseline, sensitivity=args.sensitivity, em_gain=args.gain, read_noise=args.read_noise,
            n_sites=args.sites, seed=args.seed, min_separation=args.min_separation,
            poisson_count=args.poisson_count, z_range=tuple(args.z_range) if args.z_range else None,
            psf=args.psf, pupil=pupil, spline_calibration=args.spline_calibration)
        if pupil is not None:
            from .core.pupil import PupilPSF

            PupilPSF(**pupil)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return p


def cmd_simulate(args) -> int:
    from .core.locs import Z_FIELDS, ellipticity
    from .core.simulate import simulate_bead_stack, simulate_frames
    from .io.locs import locs_paths, save_locs
    from .io.movies import movie_info
    from .io.movies.write import write_movie

    out = args.output
    if not out.lower().endswith((".ome.tif", ".ome.tiff", ".tif", ".tiff", ".raw")):
        raise CliError(f"{out}: the simulated movie must end in .ome.tif, .tif, .tiff or .raw")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise CliError(f"{out}: the folder {folder} does not exist")
    p = _simulation_parameters(args)
    if min(p.n_frames, p.height, p.width) < 1:
        raise CliError("--frames, --height and --width must be positive")
    truths = []
    step = max(1, (8 << 20) // (p.height * p.width))
    bar = ProgressBar("simulate")
    shape = (p.n_frames, p.height, p.width)
    if args.beads:
        if not args.step_nm > 0:
            raise CliError(f"--step-nm must be positive, got {args.step_nm}")
        frames, truth = simulate_bead_stack(p, n_beads=args.beads, step_nm=args.step_nm,
                                            bead_z_offset_sd=args.bead_z_sd)
        truths.append(truth)
        write_movie(out, iter([frames]), shape, p.dtype, pixelsize_nm=args.pixelsize)
    else:
        def chunks():
            for a in range(0, p.n_frames, step):
                frames, truth = simulate_frames(p, a, a + step)
                truths.append(truth)
                bar(min(a + step, p.n_frames), p.n_frames)
                yield frames

        write_movie(out, chunks(), shape, p.dtype, pixelsize_nm=args.pixelsize)
    bar.close()
    import numpy as np

    from .core.locs import locs_dtype

    truth = np.concatenate(truths)
    three_d = "z" in truth.dtype.names
    dtype = np.dtype(locs_dtype("lq").descr + (Z_FIELDS if three_d else []))
    table = np.zeros(len(truth), dtype)
    for name in ("frame", "x", "y", "photons", "sx", "sy", "bg") + (("z",) if three_d else ()):
        table[name] = truth[name]
    table["ellipticity"] = ellipticity(truth["sx"], truth["sy"])
    truth_path, _ = locs_paths(out, "_truth")
    info = movie_info(shape, p.dtype, out, Pixelsize=args.pixelsize)
    doc = {"Generated by": f"napari-localize v{__version__} simulate", "Simulation": p.as_dict()}
    if args.beads:
        doc["Bead stack"] = {"beads": args.beads, "step nm": args.step_nm, "bead z sd nm": args.bead_z_sd}
    save_locs(truth_path, table, [info, doc])
    what = "bead z-stack" if args.beads else "frames"
    print(f"{out}: {p.n_frames} {what} of {p.height}x{p.width} ({p.psf} PSF), {len(truth)} spots; "
          f"ground truth -> {truth_path}")
    print(f"localize it with: napari-localize localize {out} --baseline {p.baseline:g} "
          f"--sensitivity {p.sensitivity:g} --gain {p.em_gain:g} --min-net-gradient "
          f"{suggested_min_net_gradient(p):.0f}")
    return 0


def suggested_min_net_gradient(p) -> float:
    """A threshold that keeps spots of the simulated brightness and rejects background noise (counts)."""
    import numpy as np

    from .core.identify import net_gradient_at
    from .core.simulate import expected_image

    box = 7
    img = expected_image(box + 2, box + 2, [4.0], [4.0], [p.photons], p.sigma, p.sigma, 0.0)
    ng = float(net_gradient_at(np.float32(img / p.sensitivity * p.em_gain), 4, 4, box // 2))
    return 0.3 * ng


def add_simulate_parser(sub):
    d = __import__("napari_localize.core.simulate", fromlist=["SimulationParameters"]).SimulationParameters()
    p = sub.add_parser("simulate", help="write a simulated blinking movie with its ground truth",
                       description="Simulate an SMLM movie (pixel-integrated Gaussian spots, Poisson noise, "
                                   "camera model) and write it with its ground truth (<base>_truth_locs.hdf5).")
    p.add_argument("output", metavar="OUT", help="movie to write: .ome.tif, .tif, .tiff or .raw")
    p.add_argument("--frames", type=int, default=d.n_frames)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--spots-per-frame", type=float, default=d.spots_per_frame)
    p.add_argument("--photons", type=float, default=d.photons, help="photons per spot")
    p.add_argument("--photon-spread", type=float, default=d.photon_spread,
                   help="relative standard deviation of the photons per spot (log-normal)")
    p.add_argument("--bg", type=float, default=d.bg, help="background photons per pixel")
    p.add_argument("--sigma", type=float, default=d.sigma, help="PSF standard deviation in pixels")
    p.add_argument("--baseline", type=float, default=d.baseline, help="camera offset (counts)")
    p.add_argument("--sensitivity", type=float, default=d.sensitivity, help="electrons per count")
    p.add_argument("--gain", type=float, default=d.em_gain, help="EM gain")
    p.add_argument("--read-noise", type=float, default=d.read_noise, help="read noise (electrons rms)")
    p.add_argument("--sites", type=int, default=d.n_sites,
                   help="blink on this many fixed binding sites (0: anywhere)")
    p.add_argument("--min-separation", type=float, default=d.min_separation,
                   help="minimum distance between spots of one frame (pixels)")
    p.add_argument("--poisson-count", action="store_true",
                   help="Poisson-distributed number of spots per frame (mean --spots-per-frame)")
    p.add_argument("--pixelsize", type=float, default=130.0,
                   help="pixel size in nm (metadata; the pupil PSF's pixel in the sample)")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("PSF and 3D")
    g.add_argument("--psf", choices=("gaussian", "pupil", "spline"), default="gaussian",
                   help="gaussian: pixel-integrated Gaussian (astigmatic with --z-range); pupil: scalar "
                        "pupil-function PSF with Zernike aberrations; spline: the PSF of a spline calibration "
                        "(default gaussian)")
    g.add_argument("--z-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="heights (nm) drawn uniformly: a 3D movie with a z truth column")
    g.add_argument("--na", type=float, default=1.45, help="pupil: numerical aperture (default 1.45)")
    g.add_argument("--wavelength", type=float, default=680.0, help="pupil: emission wavelength, nm (680)")
    g.add_argument("--n-immersion", type=float, default=1.518, help="pupil: immersion refractive index (1.518)")
    g.add_argument("--aberrations", metavar="NAME=NM,...",
                   help="pupil: RMS wavefront error per Zernike term, e.g. astigmatism=80,spherical=25,coma_x=15 "
                        "(default: an astigmatic, moderately aberrated objective)")
    g.add_argument("--spline-calibration", metavar="CAL.hdf5", help="spline: the calibration whose PSF is drawn")
    g.add_argument("--beads", type=int, default=0,
                   help="write a bead z-stack of this many beads instead of a blinking movie (frame f at "
                        "stage height -(f - (F-1)/2) * --step-nm)")
    g.add_argument("--step-nm", type=float, default=20.0, help="bead stack: z step (nm, default 20)")
    g.add_argument("--bead-z-sd", type=float, default=0.0, help="bead stack: sd of the beads' own heights (nm)")
    p.set_defaults(func=cmd_simulate)


# ------------------------------------------------------------------------------------------------ demo
def cmd_demo(args) -> int:
    from ._napari._demo import run_demo

    if args.quit_after is not None and args.quit_after < 0:
        raise CliError("--quit-after must be >= 0 seconds")
    return run_demo(args.quit_after)


def add_demo_parser(sub):
    p = sub.add_parser("demo", help="open napari with a simulated DNA-PAINT movie and the localize panels",
                       description="Open napari with a simulated DNA-PAINT movie, the identification preview "
                                   "on and the napari-localize dock widgets; press Localize to see the "
                                   "super-resolution image.")
    p.add_argument("--quit-after", type=float, metavar="SECONDS", help="close napari after this many seconds")
    p.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-localize",
        description="Single-molecule localization: find, fit and save blinking spots (Picasso-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"napari-localize {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_localize_parser(sub)
    add_calibrate_parser(sub)
    add_simulate_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"napari-localize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-localize: interrupted; nothing was written for the unfinished movie", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"napari-localize: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

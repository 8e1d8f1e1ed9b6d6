"""The ``napari-localize`` command. Thin: it builds parameters, then calls the same API as the widgets."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ progress
class ProgressBar:
    """A one-line terminal progress bar on stderr (silent when stderr is not a terminal, except the end)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int):
        now = time.perf_counter()
        if not self.tty or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} frames, {rate:,.0f} frames/s")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


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


def _parameters(args, movie_info: dict):
    from .core.parameters import LocalizeParameters

    pixelsize = args.pixelsize
    if pixelsize is None:
        pixelsize = movie_info.get("Pixelsize") or 130.0
    return LocalizeParameters(
        box_size=args.box_size,
        min_net_gradient=args.min_net_gradient,
        roi=tuple(args.roi) if args.roi else None,
        frame_range=tuple(args.frames) if args.frames else None,
        fit_method=args.fit_method,
        baseline=args.baseline if args.baseline is not None else 0.0,
        sensitivity=args.sensitivity if args.sensitivity is not None else 1.0,
        em_gain=args.gain if args.gain is not None else 1.0,
        qe=args.qe if args.qe is not None else 1.0,
        pixelsize=float(pixelsize),
        convergence=args.convergence,
        max_iterations=args.max_iterations,
    )


def cmd_localize(args) -> int:
    from .api import localize_movie
    from .io.locs import locs_paths, save_locs
    from .io.movies import open_movie

    if args.output_dir is not None and not os.path.isdir(args.output_dir):
        raise CliError(f"--output-dir {args.output_dir}: no such folder")
    files = _movie_files(args.paths)
    failures = 0
    for path in files:
        try:
            with open_movie(path) as movie:
                p = _parameters(args, movie.info)
                p.validate(*movie.shape)
                bar = ProgressBar(os.path.basename(path))
                try:
                    locs, info, stats = localize_movie(movie, p, progress=bar)
                finally:
                    bar.close()
            hdf5_path, _ = locs_paths(path, args.suffix, args.output_dir)
            written = save_locs(hdf5_path, locs, info)
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"napari-localize: error: {exc}", file=sys.stderr)
            continue
        t = stats.seconds
        print(
            f"{path}: {stats.localized} localizations in {stats.frames} frames "
            f"({stats.identified} spots, {stats.not_converged} fits not converged) -> {written[0]} "
            f"[read {t['read']:.2f} s, identify {t['identify']:.2f} s, fit {t['fit']:.2f} s]"
        )
    return 0 if failures == 0 else 1


def add_localize_parser(sub):
    from .core.parameters import FIT_METHODS

    p = sub.add_parser("localize", help="find and fit spots in movies; write <movie>_locs.hdf5 + .yaml",
                       description="Localize single molecules in movie files (or every movie in a folder). "
                                   "Writes Picasso-compatible <movie base><suffix>_locs.hdf5 and _locs.yaml.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="movie files or folders of movies")
    g = p.add_argument_group("identification")
    g.add_argument("--box-size", type=int, default=7, help="odd box side length in pixels (default 7)")
    g.add_argument("--min-net-gradient", type=float, default=5000.0,
                   help="keep spots whose net gradient (camera counts) is greater than this (default 5000)")
    g.add_argument("--roi", type=int, nargs=4, metavar=("Y0", "X0", "Y1", "X1"),
                   help="only spots centred in rows Y0..Y1-1 and columns X0..X1-1")
    g.add_argument("--frames", type=int, nargs=2, metavar=("FIRST", "LAST"),
                   help="0-based inclusive frame range")
    g = p.add_argument_group("photon conversion: photons = (counts - baseline) * sensitivity / gain")
    g.add_argument("--baseline", type=float, help="camera offset in counts (default 0)")
    g.add_argument("--sensitivity", type=float, help="electrons per count (default 1)")
    g.add_argument("--gain", type=float, help="EM gain, 1 for sCMOS/CCD (default 1)")
    g.add_argument("--qe", type=float, help="quantum efficiency, recorded only (default 1)")
    g.add_argument("--pixelsize", type=float, help="pixel size in nm (default: from the movie, else 130)")
    g = p.add_argument_group("fit")
    g.add_argument("--fit-method", choices=FIT_METHODS, default="mle",
                   help="mle: Poisson maximum likelihood; lq: least squares; avg: box sum (default mle)")
    g.add_argument("--convergence", type=float, default=0.001, help="MLE/LQ step tolerance in pixels (0.001)")
    g.add_argument("--max-iterations", type=int, default=100, help="MLE/LQ iteration limit (100)")
    g = p.add_argument_group("output")
    g.add_argument("--suffix", default="", help="inserted before _locs.hdf5")
    g.add_argument("--output-dir", help="write here instead of beside each movie")
    p.set_defaults(func=cmd_localize)


# ------------------------------------------------------------------------------------------------ simulate
def cmd_simulate(args) -> int:
    from .core.locs import ellipticity
    from .core.simulate import SimulationParameters, simulate_frames
    from .io.locs import locs_paths, save_locs
    from .io.movies import movie_info
    from .io.movies.write import write_movie

    out = args.output
    if not out.lower().endswith((".ome.tif", ".ome.tiff", ".tif", ".tiff", ".raw")):
        raise CliError(f"{out}: the simulated movie must end in .ome.tif, .tif, .tiff or .raw")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise CliError(f"{out}: the folder {folder} does not exist")
    p = SimulationParameters(
        n_frames=args.frames, height=args.height, width=args.width, spots_per_frame=args.spots_per_frame,
        photons=args.photons, photon_spread=args.photon_spread, bg=args.bg, sigma=args.sigma,
        baseline=args.baseline, sensitivity=args.sensitivity, em_gain=args.gain, read_noise=args.read_noise,
        n_sites=args.sites, seed=args.seed, min_separation=args.min_separation,
    )
    if min(p.n_frames, p.height, p.width) < 1:
        raise CliError("--frames, --height and --width must be positive")
    truths = []
    step = max(1, (8 << 20) // (p.height * p.width))
    bar = ProgressBar("simulate")

    def chunks():
        for a in range(0, p.n_frames, step):
            frames, truth = simulate_frames(p, a, a + step)
            truths.append(truth)
            bar(min(a + step, p.n_frames), p.n_frames)
            yield frames

    shape = (p.n_frames, p.height, p.width)
    write_movie(out, chunks(), shape, p.dtype, pixelsize_nm=args.pixelsize)
    bar.close()
    import numpy as np

    from .core.locs import locs_dtype

    truth = np.concatenate(truths)
    table = np.zeros(len(truth), locs_dtype("lq"))
    for name in ("frame", "x", "y", "photons", "sx", "sy", "bg"):
        table[name] = truth[name]
    table["ellipticity"] = ellipticity(truth["sx"], truth["sy"])
    truth_path, _ = locs_paths(out, "_truth")
    info = movie_info(shape, p.dtype, out, Pixelsize=args.pixelsize)
    save_locs(truth_path, table, [info, {"Generated by": f"napari-localize v{__version__} simulate",
                                         "Simulation": p.as_dict()}])
    print(f"{out}: {p.n_frames} frames of {p.height}x{p.width}, {len(truth)} spots; ground truth -> {truth_path}")
    print(f"localize it with: napari-localize localize {out} --baseline {p.baseline:g} "
          f"--sensitivity {p.sensitivity:g} --gain {p.em_gain:g} --min-net-gradient "
          f"{suggested_min_net_gradient(p):.0f}")
    return 0


def suggested_min_net_gradient(p) -> float:
    """A threshold that keeps spots of the simulated brightness and rejects background noise (counts)."""
    from .core.identify import net_gradient_at

    import numpy as np

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
    p.add_argument("--pixelsize", type=float, default=130.0, help="pixel size in nm (metadata)")
    p.add_argument("--seed", type=int, default=d.seed)
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

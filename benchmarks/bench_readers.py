"""Reading speed (frames/s) and peak resident memory per movie format.

Generates one movie per format in a temporary folder (default about 1.05 GB each: 2000 frames of 512 x 512
uint16), then reads every frame in chunks of 100 through ``open_movie`` in a fresh subprocess per format and
prints frames/s and that process's peak RSS. A reader that held the movie in memory would show a peak RSS near
the movie size.

    python benchmarks/bench_readers.py [--frames 2000] [--size 512] [--formats ome.tif raw ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FORMATS = ("ome.tif", "raw", "raw-big-endian", "zlib.tif", "ims")


def _chunks(frames, size, step=100):
    rng = np.random.default_rng(0)
    for start in range(0, frames, step):
        n = min(step, frames - start)
        yield (rng.poisson(200, (n, size, size)) + 100).astype(np.uint16)


def generate(fmt, folder, frames, size):
    import tifffile

    if fmt == "ome.tif":
        from napari_localize.io.movies.write import write_movie

        path = os.path.join(folder, "m.ome.tif")
        write_movie(path, _chunks(frames, size), (frames, size, size), np.uint16)
    elif fmt in ("raw", "raw-big-endian"):
        order = ">" if fmt.endswith("endian") else "<"
        path = os.path.join(folder, f"m{'_be' if order == '>' else ''}.raw")
        with open(path, "wb") as fh:
            for c in _chunks(frames, size):
                c.astype(np.dtype(np.uint16).newbyteorder(order)).tofile(fh)
        with open(os.path.splitext(path)[0] + ".yaml", "w") as fh:
            fh.write(f"Byte Order: '{order}'\nData Type: uint16\nFrames: {frames}\nHeight: {size}\nWidth: {size}\n")
    elif fmt == "zlib.tif":
        path = os.path.join(folder, "m_zlib.tif")
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for c in _chunks(frames, size):
                for f in c:
                    tw.write(f, compression="zlib", compressionargs={"level": 1}, metadata=None)
    elif fmt == "ims":
        import h5py

        path = os.path.join(folder, "m.ims")
        with h5py.File(path, "w") as f:
            level = f.create_group("DataSet/ResolutionLevel 0")
            t = 0
            for c in _chunks(frames, size):
                for frame in c:
                    g = level.create_group(f"TimePoint {t}/Channel 0")
                    g.create_dataset("Data", data=frame[None])
                    for k in ("ImageSizeX", "ImageSizeY"):
                        g.attrs[k] = np.array(list(str(size)), "S1")
                    g.attrs["ImageSizeZ"] = np.array(["1"], "S1")
                    t += 1
    else:
        raise ValueError(fmt)
    return path


def read_all(path, chunk=100):
    """Child process: read every frame; print JSON with frames/s and peak RSS."""
    import resource

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from napari_localize.io.movies import open_movie

    t0 = time.perf_counter()
    total = 0.0
    with open_movie(path) as movie:
        n = len(movie)
        for start in range(0, n, chunk):
            total += float(movie[start:start + chunk].sum(dtype=np.float64))
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": n, "seconds": seconds, "peak_rss_mb": peak_kb / 1024, "checksum": total}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--read", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.read:
        read_all(args.read)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    movie_mb = args.frames * args.size * args.size * 2 / 1e6
    print(f"movie: {args.frames} frames of {args.size}x{args.size} uint16 = {movie_mb:.0f} MB per format")
    print(f"{'format':16s} {'frames/s':>10s} {'MB/s':>8s} {'peak RSS MB':>12s}")
    with tempfile.TemporaryDirectory() as folder:
        for fmt in args.formats:
            path = generate(fmt, folder, args.frames, args.size)
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--read", path],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            fps = r["frames"] / r["seconds"]
            print(f"{fmt:16s} {fps:10.0f} {fps * args.size * args.size * 2 / 1e6:8.0f} {r['peak_rss_mb']:12.0f}")
            os.remove(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

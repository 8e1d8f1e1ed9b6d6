"""A movie read from several threads at once (napari display, preview, worker) returns the right frames."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tifffile

from napari_localize.io.movies import open_movie


def test_concurrent_reads_are_correct(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (64, 40, 48)).astype(np.uint16)
    for name, kwargs in (("a.ome.tif", {"metadata": {"axes": "TYX"}}), ("b.tif", {"compression": "zlib"})):
        path = tmp_path / name
        tifffile.imwrite(path, data, **kwargs)
        with open_movie(path) as movie:
            def read(i):
                a = i % 60
                return a, movie[a:a + 4]

            with ThreadPoolExecutor(8) as pool:
                for a, frames in pool.map(read, range(400)):
                    np.testing.assert_array_equal(frames, data[a:a + 4])

"""npe2 sample data: a simulated DNA-PAINT movie, generated locally in well under a second."""

from __future__ import annotations

from ..core.simulate import SimulationParameters, simulate_frames
from ..io.movies import movie_info

#: a 128x128 px, 1000-frame DNA-PAINT movie: spots blink on 60 fixed binding sites, baseline 100 counts
SAMPLE = SimulationParameters(
    n_frames=1000, height=128, width=128, spots_per_frame=6, poisson_count=True, n_sites=60, photons=1500,
    photon_spread=0.3, bg=15, sigma=1.0, baseline=100, sensitivity=1.0, em_gain=1.0, min_separation=6.0,
    margin=6.0, seed=7,
)
#: parameters that suit the sample (camera counts): the demo and the README use them
SAMPLE_PARAMETERS = {"baseline": 100.0, "sensitivity": 1.0, "em_gain": 1.0, "min_net_gradient": 800.0,
                     "box_size": 7, "pixelsize": 130.0}


def sample_movie(p: SimulationParameters = SAMPLE):
    """The simulated movie ``(frames, height, width)`` uint16 and its ground truth."""
    return simulate_frames(p, 0, p.n_frames)


def make_dna_paint_sample():
    """npe2 sample-data hook: the simulated DNA-PAINT movie as an image layer."""
    frames, _truth = sample_movie()
    info = movie_info(frames.shape, frames.dtype, None, Camera="simulated", Pixelsize=SAMPLE_PARAMETERS["pixelsize"])
    meta = {"movie_info": info, "movie_path": None, "suggested_parameters": dict(SAMPLE_PARAMETERS)}
    kwargs = {"name": "DNA-PAINT (simulated)", "metadata": meta, "contrast_limits": (100.0, 200.0)}
    return [(frames, kwargs, "image")]


#: an astigmatic bead z-stack: 121 frames 10 nm apart (±600 nm), 20 beads, for 3D calibration
BEAD_STACK = SimulationParameters(n_frames=121, height=96, width=96, photons=20000, bg=30, sigma=1.0, baseline=100,
                                  min_separation=14.0, margin=8.0, seed=11)
BEAD_STEP_NM = 10.0


def make_bead_stack_sample():
    """npe2 sample-data hook: a simulated astigmatic bead z-stack (step 10 nm) for ``calibrate-z``."""
    from ..core.simulate import simulate_bead_stack

    frames, _truth = simulate_bead_stack(BEAD_STACK, n_beads=20, step_nm=BEAD_STEP_NM)
    info = movie_info(frames.shape, frames.dtype, None, Camera="simulated", Pixelsize=130.0,
                      **{"Step size in nm": BEAD_STEP_NM})
    kwargs = {"name": "astigmatic beads (simulated, 10 nm steps)", "metadata": {"movie_info": info,
                                                                                 "movie_path": None}}
    return [(frames, kwargs, "image")]

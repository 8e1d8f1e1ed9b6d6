"""Conversion of camera counts (ADU) to photons."""

from __future__ import annotations

import numpy as np


def adu_to_photons(adu, baseline, sensitivity, em_gain):
    """``photons = (ADU - baseline) * sensitivity / em_gain``.

    Parameters
    ----------
    adu : array
        Camera counts.
    baseline : float
        Camera offset (ADU).
    sensitivity : float
        Electrons per ADU.
    em_gain : float
        EM gain (1 without electron multiplication).

    Quantum efficiency is deliberately not applied: as in Picasso since 0.6, "photons" are photoelectrons,
    which is what sets the localization precision.
    """
    out = np.asarray(adu, dtype=np.float32) - np.float32(baseline)
    out *= np.float32(sensitivity / em_gain)
    return out

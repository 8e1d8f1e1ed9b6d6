"""3D by astigmatism (Huang et al., Science 319, 810 (2008)), one module per concern:

* :mod:`.zcalib`: calibrations from bead z-stacks (:class:`ZCalibration`, pooled and bead-tracking), fit range
* :mod:`.zmodel`: z fits (Huang's D on the widths; the astigmatic-PSF MLE on the engine), neighbours' light, lpz
* :mod:`.zpolicy`: :class:`ZFitOptions`, :func:`fit_z` (locs -> 3D locs, filters), the 3D document

This module re-exports their public names (the import path used by the API, CLI, widgets and tests).
"""

from .zcalib import (  # noqa: F401
    DEFAULT_EXTRAPOLATION,
    DEFAULT_MAGNIFICATION,
    POLY_DEGREE,
    ZCalibration,
    bead_boxes,
    calibrate_widths,
    calibrate_z,
    calibrate_z_beads,
    fit_range,
    stage_positions,
    track_beads,
    within_one_sd,
)
from .zmodel import (  # noqa: F401
    _deviance_moments,
    axial_precision,
    fit_z_huang,
    fit_z_mle,
    neighbour_light,
    width_se_nm,
)
from .zpolicy import (  # noqa: F401
    Z_BOX_MARGIN,
    Z_EXTRA_FIELDS,
    Z_METHODS,
    ZFitOptions,
    cut_boxes,
    cut_boxes_scmos,
    fit_z,
    with_z_fields,
    z_document,
)

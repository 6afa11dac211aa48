"""2D–3D registration: find the plane of a CT volume that a histology section shows.

:func:`register_section` searches a rigid plane (depth, two tilts, in-plane rotation and
shifts, mirrored or not) maximizing Mattes mutual information with SimpleITK, coarse to fine
on the CT's pyramid, then fits the section's 2D affine distortion; :func:`add_registered_pair`
writes the CT plane and the registered histology into a pairs store with the registration
record (``vstain-dask register``).
"""

from vstain_dask.register._run import (
    RegisterConfig,
    RegistrationError,
    plane_errors,
    register_section,
    score_against_truth,
)
from vstain_dask.register._search import SearchSettings

__all__ = [
    "RegisterConfig",
    "RegistrationError",
    "SearchSettings",
    "plane_errors",
    "register_section",
    "score_against_truth",
]

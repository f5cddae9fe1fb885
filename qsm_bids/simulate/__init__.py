"""Digital brain cohort simulator with known susceptibility.

Modules
-------
phantom   the digital head in template space (tissues, skull, sinuses, atlas)
cohort    participants, planted regional susceptibilities and ALS effects
forward   pure kernels: dipole field by k-space convolution, voxel averaging,
          GRE signal, coils, noise, phase wrapping, geometry
subject   :func:`simulate_subject`, one subject in memory (arrays + affines)
writer    :func:`write_cohort`, a BIDS dataset with ground truth
cli       the ``qsm-bids-simulate`` console script

See ``docs/simulator.md``.
"""

from __future__ import annotations

__all__ = ["simulate_subject", "write_cohort"]


def __getattr__(name):  # lazy: importing the package does not build anything
    if name == "simulate_subject":
        from .subject import simulate_subject

        return simulate_subject
    if name == "write_cohort":
        from .writer import write_cohort

        return write_cohort
    raise AttributeError(name)

"""The VBM truth is the simulator's own mapping (run: .venv/bin/python -m pytest benchmarks/test_registration_jacobian.py)."""

import numpy as np
from scipy import ndimage

from bench_registration_jacobian import true_jacobian
from qsm_bids.simulate.subject import _BRAIN_CENTRE_MM, Pose, _template_coords


def test_true_jacobian_matches_finite_differences_of_the_simulators_mapping():
    # scale and two shape modes (a rotation and a translation do not change a volume)
    modes = [((1.5, -1.0, 0.8), (0.006, 0.004, -0.008), 0.3), ((-1.2, 0.9, 1.1), (-0.005, 0.009, 0.003), 2.0)]
    pose = Pose((4.0, -2.0, 3.0), (2.0, -3.0, 1.0), (1.05, 0.97, 1.02), modes)
    head_affine = np.eye(4)
    head_affine[:3, 3] = np.asarray(_BRAIN_CENTRE_MM) - 40.0  # template voxel (mm) grid around the brain centre
    step = 1.0
    grid_affine = np.diag([step, step, step, 1.0])
    grid_affine[:3, 3] = np.asarray(_BRAIN_CENTRE_MM) - 20.0
    shape = (40, 40, 40)
    v = _template_coords(grid_affine, shape, pose, head_affine)  # template voxel coordinates of scanner points
    # scanner volume per template volume: 1 / det(dv/dw), by central differences inside the grid
    grad = np.stack([np.stack(np.gradient(v[c], step), axis=0) for c in range(3)])
    det = np.linalg.det(np.moveaxis(grad, (0, 1), (-2, -1)))[2:-2, 2:-2, 2:-2]
    fd = 1.0 / det
    tpl_shape = (80, 80, 80)
    truth = true_jacobian(pose.to_dict(), tpl_shape, head_affine)
    at = ndimage.map_coordinates(truth, [c[2:-2, 2:-2, 2:-2] for c in v], order=3)
    assert fd.std() > 0.03  # the modes vary the volume by several percent
    np.testing.assert_allclose(at, fd, rtol=1e-3)  # measured 3.5e-5; a missing scale is 0.037 off

"""Permutation chunks on a Dask cluster: bit-identical to one process (LocalCluster, 2 worker processes)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from qsm_bids.group.glm import design_matrix
from qsm_bids.group.permutation import DaskSpec, permutation_test, voxel_adjacency

distributed = pytest.importorskip("distributed")

_KEYS = ("t", "tfce", "p_tfce", "p_tfce_neg", "p_t", "p_t_neg")


def _study(n_per_group=7, shape=(9, 9, 7), seed=3):
    rng = np.random.default_rng(seed)
    mask = np.ones(shape, bool)
    mask[0] = False
    n = 2 * n_per_group
    maps = ndimage.gaussian_filter(rng.standard_normal((n, *shape)), (0, 1.2, 1.2, 1.2))
    maps[:n_per_group, 3:6, 3:6, 2:5] += 0.4  # an effect in the patients
    Y = maps[:, mask].astype(np.float32)
    frame = pd.DataFrame({"group": ["ALS"] * n_per_group + ["control"] * n_per_group,
                          "age": rng.uniform(40, 75, n)})
    des = design_matrix(frame, "group", ("ALS", "control"), ["age"])
    first = next(iter(des.contrasts))
    return Y, des.X, des.contrasts[first], voxel_adjacency(mask, 26)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.WARNING)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_dask_chunks_equal_one_process(client, caplog):
    Y, X, c, adj = _study()
    kwargs = {"n_permutations": 200, "seed": 11}
    one = permutation_test(Y, X, c, adj, chunk_size=200, n_jobs=1, **kwargs)
    with caplog.at_level(logging.INFO, logger="qsm_bids.group.permutation"):
        # chunk sizes that do not align with the 16-permutation GEMM blocks
        dask = permutation_test(Y, X, c, adj, chunk_size=37, backend="dask", dask=DaskSpec(client=client),
                                **kwargs)
    for key in _KEYS:
        np.testing.assert_array_equal(dask[key], one[key], err_msg=key)
    for name in ("max_t", "max_neg_t", "max_tfce", "max_neg_tfce"):
        np.testing.assert_array_equal(getattr(dask["null"], name), getattr(one["null"], name), err_msg=name)
    # the data went to each worker once, and the progress line reports the total
    text = caplog.text
    assert "sending the data" in text and "2 worker(s)" in text
    assert "permutations 200/200" in text and "per second" in text
    # the effect is found: the test is not vacuous
    assert one["p_tfce"].min() < 0.05


def test_dask_different_seed_differs(client):
    Y, X, c, adj = _study()
    a = permutation_test(Y, X, c, adj, n_permutations=64, chunk_size=32, seed=1, backend="dask",
                         dask=DaskSpec(client=client))
    b = permutation_test(Y, X, c, adj, n_permutations=64, chunk_size=32, seed=2, backend="dask",
                         dask=DaskSpec(client=client))
    assert not np.array_equal(a["null"].max_tfce, b["null"].max_tfce)


def test_dask_scheduler_address_and_spec_parsing(client):
    Y, X, c, adj = _study(n_per_group=5)
    address = client.scheduler.address
    one = permutation_test(Y, X, c, adj, n_permutations=48, chunk_size=48, seed=5)
    by_address = permutation_test(Y, X, c, adj, n_permutations=48, chunk_size=16, seed=5, backend="dask",
                                  dask=address)
    np.testing.assert_array_equal(by_address["p_tfce"], one["p_tfce"])
    assert DaskSpec.from_config({"address": address}).address == address
    with pytest.raises(ValueError, match="unknown dask option"):
        DaskSpec.from_config({"adress": address})
    with pytest.raises(ValueError, match="needs a scheduler address"):
        permutation_test(Y, X, c, adj, n_permutations=16, backend="dask")
    with pytest.raises(ValueError, match="'processes' or 'dask'"):
        permutation_test(Y, X, c, adj, n_permutations=16, backend="threads")

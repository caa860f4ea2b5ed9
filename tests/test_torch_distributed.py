"""``ZeroRedundancyOptimizer`` with DDP on two gloo processes (CPU), started here: with
``fastgd.torch.AdamW`` (and the NumPy face's ``fastgd.AdamW``) as the local optimizer it
trains to torch.optim's result (with ``parameters_as_bucket_view=True`` too), and a run
resumed from ZeRO's consolidated state dict equals the uninterrupted one. The ranks run
``zero_worker.py``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

WORKER = Path(__file__).with_name("zero_worker.py")
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("zero") / "params.npz"
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(WORLD), port,
                               str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    logs = []
    try:
        for rank in ranks:
            logs.append(rank.communicate(timeout=600)[0])
    finally:
        for rank in ranks:
            rank.kill()
    assert all(r.returncode == 0 for r in ranks), "\n".join(logs)
    with np.load(out) as data:
        found: dict[str, list[np.ndarray]] = {}
        for key in sorted(data.files, key=lambda k: (k.split("/")[0], int(k.split("/")[1]))):
            found.setdefault(key.split("/")[0], []).append(data[key])
    return found


@pytest.mark.parametrize("name", ["fastgd.torch", "fastgd", "buckets"])
def test_zero_trains_to_torch_optims_result(results: dict[str, list[np.ndarray]],
                                            name: str) -> None:
    expected = results["torch"]
    assert len(results[name]) == len(expected) == 6
    for ours, theirs in zip(results[name], expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    start = [p.detach().numpy() for p in __import__("zero_worker").model().parameters()]
    assert any(not np.allclose(a, b) for a, b in zip(expected, start, strict=True))


def test_zero_resumes_from_its_consolidated_state_dict(results: dict[str, list[np.ndarray]]
                                                       ) -> None:
    for resumed, whole in zip(results["resumed"], results["fastgd.torch"], strict=True):
        np.testing.assert_array_equal(resumed, whole)

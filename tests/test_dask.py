"""fastgd.dask on a local cluster of two worker processes: every algorithm equals the NumPy
face bit for bit over several chunkings; clipping, schedules, groups, low precision, state
dicts and checkpoints between the faces; a killed worker; 1,000 steps in bounded memory."""

import math
import os
import signal

import cases
import numpy as np
import pytest

import fastgd
from fastgd import cpu
from fastgd.arrays import bfloat16

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
import fastgd.dask as fd  # noqa: E402

STEPS = 21
#: per parameter shape, three chunkings (the last of each: the gradients chunked otherwise)
CHUNKINGS = {(37, 29): [(19, 15), (37, 29), (10, 29)], (1025,): [(300,), (1025,), (512,)],
             (3, 5, 4): [(2, 5, 3), (1, 5, 4), (3, 5, 4)], (16, 40): [(9, 25), (16, 40), (5, 40)]}
GRAD_CHUNKS = {(37, 29): (37, 10), (1025,): (400,), (3, 5, 4): (3, 2, 4), (16, 40): (16, 15)}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as client:
        yield client


def _shapes(name):
    return [(37, 29), (16, 40)] if cases.ALGORITHMS[name].matrices else [
        (37, 29), (1025,), (3, 5, 4)]


def _run_both(name, hp, shapes, dtype, chunking, rng, steps=STEPS, **step):
    """``steps`` steps of the NumPy face and of fastgd.dask (parameters chunked by
    ``chunking``, an index of :data:`CHUNKINGS`) on the same gradients."""
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ref = cases.optimizer_class(name)([p.copy() for p in params], **hp)
    opt = getattr(fd, name)([da.from_array(p, chunks=CHUNKINGS[s][chunking])
                             for p, s in zip(params, shapes, strict=True)], **hp)
    if cases.ALGORITHMS[name].schedule_free:
        opt.train()
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ref.step(grads, **step)
        opt.step([da.from_array(g, chunks=GRAD_CHUNKS[s] if chunking == 2 else
                                CHUNKINGS[s][chunking]) for g, s in zip(grads, shapes,
                                                                         strict=True)],
                 **step)
    if cases.ALGORITHMS[name].schedule_free:
        ref.eval()
        opt.eval()
    return ref, opt


def _assert_same(ref, opt):
    for ours, theirs in zip(opt.params, ref.parameters(), strict=True):
        assert ours.dtype == theirs.dtype
        assert ours.compute().tobytes() == theirs.tobytes()
    ours, theirs = opt.state_dict(), ref.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert ours["state"][i].keys() == entry.keys()
        for key, value in entry.items():
            assert np.asarray(ours["state"][i][key]).tobytes() == np.asarray(value).tobytes(), (
                i, key)


@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_every_algorithm_equals_the_numpy_face_bit_for_bit(client, name):
    """21 steps with every option on: float32 on the cluster, over three chunkings (the
    gradients of the last chunked otherwise), and float64 on Dask's synchronous scheduler
    (the same tasks, in this process) over two; clipped by global norm, within 1e-12."""
    hp = cases.example(name, seed=11)
    for dtype, scheduler, chunkings in [(np.float32, None, (0, 1, 2)),
                                        (np.float64, "sync", (0, 2))]:
        for chunking in chunkings:
            rng = np.random.default_rng(chunking)
            with dask.config.set(scheduler=scheduler or client):
                ref, opt = _run_both(name, hp, _shapes(name), dtype, chunking, rng)
                _assert_same(ref, opt)
    with dask.config.set(scheduler="sync"):  # (clipped: the norm is summed per chunk)
        ref, opt = _run_both(name, hp, _shapes(name), np.float64, 0,
                             np.random.default_rng(4), max_norm=0.5)
    for ours, theirs in zip(opt.params, ref.parameters(), strict=True):
        assert cases.relative(ours.compute(), theirs) <= 1e-12
    for i, entry in ref.state_dict()["state"].items():
        for key, value in entry.items():
            assert cases.relative(opt.state_dict()["state"][i][key], value) <= 1e-12, key


@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB", "Adafactor"])
def test_clipping_skipping_schedules_and_groups(client, name):
    rng = np.random.default_rng(5)
    shapes = [(37, 29), (1025,)]
    params = [rng.standard_normal(s) for s in shapes]
    lr = fastgd.schedules.cosine(0.05, 10)

    def groups(arrays):
        return [{"params": [arrays[0]], "lr": lr}, {"params": [arrays[1]], "lr": 0.01,
                                                    "weight_decay": 0.25}]

    ref = cases.optimizer_class(name)(groups([p.copy() for p in params]))
    opt = getattr(fd, name)(groups([da.from_array(p, chunks=CHUNKINGS[s][0])
                                    for p, s in zip(params, shapes, strict=True)]))
    for _ in range(6):
        grads = [rng.standard_normal(s) for s in shapes]
        info = ref.step(grads, max_norm=0.5)
        opt.step([da.from_array(g, chunks=GRAD_CHUNKS[s]) for g, s in zip(grads, shapes,
                                                                          strict=True)],
                 max_norm=0.5)
        assert math.isclose(opt.info.grad_norm, info.grad_norm, rel_tol=1e-12)
        assert not opt.info.skipped
    for ours, theirs in zip(opt.params, ref.parameters(), strict=True):
        assert cases.relative(ours.compute(), theirs) <= 1e-12
    before = [p.compute() for p in opt.params]
    steps = [e["step"] for e in opt.state.values()]
    bad = [rng.standard_normal(s) for s in shapes]
    bad[1][3] = np.nan
    new = opt.step([da.from_array(g) for g in bad], skip_if_nonfinite=True)
    assert opt.info.skipped and not opt.info.finite
    for p, b in zip(new, before, strict=True):
        np.testing.assert_array_equal(p.compute(), b)
    assert [e["step"] for e in opt.state.values()] == steps


@pytest.mark.parametrize("options", [
    {"dtype": np.float16, "master_weights": True},
    {"dtype": "bfloat16", "master_weights": False},
    {"dtype": "bfloat16", "master_weights": True, "state_precision": "bf16"},
    {"dtype": np.float32, "state_precision": "bf16"},
])
@pytest.mark.parametrize("name", ["AdamW", "ScheduleFreeAdamW", "Lion"])
def test_low_precision_equals_the_numpy_face(client, name, options):
    options = dict(options)
    dtype = options.pop("dtype")
    dtype = bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(9)
    shape = (37, 29)
    ref, opt = _run_both(name, options, [shape], dtype, 0, rng, steps=8)
    _assert_same(ref, opt)


def test_state_dicts_and_checkpoints_both_ways(client, tmp_path):
    rng = np.random.default_rng(3)
    shapes = [(37, 29), (1025,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(12)]
    numpy_run = fastgd.NAdam([p.copy() for p in params], lr=0.01, decoupled_weight_decay=True,
                             weight_decay=0.1)
    for g in grads:
        numpy_run.step(g)

    def dask_params(values):
        return [da.from_array(v, chunks=CHUNKINGS[s][0]) for v, s in zip(values, shapes,
                                                                        strict=True)]

    # NumPy face -> Dask (state dict), Dask -> NumPy face (checkpoint), and back
    first = fastgd.NAdam([p.copy() for p in params], lr=0.01, decoupled_weight_decay=True,
                         weight_decay=0.1)
    for g in grads[:4]:
        first.step(g)
    second = fd.NAdam(dask_params(first.parameters()), lr=0.01, decoupled_weight_decay=True,
                      weight_decay=0.1)
    second.load_state_dict(first.state_dict())
    for g in grads[4:8]:
        second.step([da.from_array(x) for x in g])
    fastgd.save(tmp_path / "dask.npz", second)
    third = fastgd.NAdam([np.zeros_like(p) for p in params], lr=0.01,
                         decoupled_weight_decay=True, weight_decay=0.1)
    fastgd.load(tmp_path / "dask.npz", third)
    for g in grads[8:10]:
        third.step(g)
    fastgd.save(tmp_path / "numpy.npz", third)
    fourth = fd.NAdam(dask_params([np.zeros_like(p) for p in params]), lr=0.01,
                      decoupled_weight_decay=True, weight_decay=0.1)
    fastgd.load(tmp_path / "numpy.npz", fourth)
    for g in grads[10:]:
        fourth.step(g)  # (NumPy gradients are taken too)
    _assert_same(numpy_run, fourth)
    with pytest.raises(ValueError, match="parameter groups"):
        fourth.load_state_dict({"state": {}, "param_groups": []})


def test_a_killed_worker_does_not_change_the_result():
    rng = np.random.default_rng(4)
    shape = (400, 300)
    p0 = rng.standard_normal(shape).astype(np.float32)
    target = rng.standard_normal(shape).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        data = da.from_array(target, chunks=(100, 150)).persist()
        runs = {name: (getattr(fastgd, name)([p0.copy()], lr=0.01),
                       getattr(fd, name)([da.from_array(p0, chunks=(100, 150))], lr=0.01,
                                         lineage=5))
                for name in ("Adam", "LAMB")}
        for t in range(12):
            for ref, opt in runs.values():
                ref.step([(ref.parameters()[0] - target) * np.float32(0.5)])
                opt.step([(opt.params[0] - data) * np.float32(0.5)])
            if t == 6:  # (between two steps: its chunks, persisted or written, are lost)
                pid = next(iter(client.run(os.getpid).values()))
                os.kill(pid, signal.SIGKILL)
        for ref, opt in runs.values():
            np.testing.assert_array_equal(opt.params[0].compute(), ref.parameters()[0])


def test_a_thousand_steps_keep_the_graph_and_the_memory_bounded(client):
    rng = np.random.default_rng(6)
    shape = (1000, 500)
    target = da.from_array(rng.standard_normal(shape).astype(np.float32),
                           chunks=(250, 500)).persist()
    opt = fd.Adam([da.from_array(rng.standard_normal(shape).astype(np.float32),
                                 chunks=(250, 500))], lr=1e-3)

    def tasks(dask_scheduler):
        return len(dask_scheduler.tasks)

    def rss():
        import psutil

        return sum(client.run(lambda: psutil.Process().memory_info().rss).values())

    counts, memory = [], []
    for t in range(1, 1001):
        opt.step([(opt.params[0] - target) * np.float32(0.5)])
        if t % 100 == 50:
            distributed.wait(opt.params[0])
            counts.append(client.run_on_scheduler(tasks))
            memory.append(rss())
    assert len(opt.params[0].__dask_graph__()) == 4  # (the persisted chunks alone)
    assert max(counts[3:]) <= max(counts[:3]) * 1.2, counts
    assert memory[-1] - memory[2] < 64e6, memory
    expected = opt.params[0].compute()
    assert np.isfinite(expected).all()


def test_bad_input_is_refused_with_nothing_changed(client):
    p = da.ones((10, 10), chunks=5)
    with pytest.raises(TypeError, match=r"params\[0\].*Dask"):
        fd.Adam([np.ones(3)])
    with pytest.raises(TypeError, match="dtype"):
        fd.Adam([da.ones(3, dtype=np.int32)])
    with pytest.raises(ValueError, match="8bit"):
        fd.Adam([p], state_precision="8bit")
    with pytest.raises(ValueError, match="stochastic_rounding"):
        fd.Adam([p], state_precision="bf16", stochastic_rounding=True)
    with pytest.raises(ValueError, match="lineage"):
        fd.Adam([p], lineage=0)
    with pytest.raises(TypeError, match="store"):
        fd.Adam([p], store=3)
    with pytest.raises(ValueError, match="2D"):
        fd.Muon([da.ones(3)])
    opt = fd.Adam([p, da.ones(4)], lr=0.1)
    for grads, error, match in [
            ([da.ones((10, 9)), None], ValueError, r"grads\[0\].*shape"),
            ([da.ones((10, 10), dtype=np.float32), None], TypeError, r"grads\[0\].*dtype"),
            ([None, [1.0] * 4], TypeError, r"grads\[1\]"),
            ([p], ValueError, "1 gradients for 2")]:
        with pytest.raises(error, match=match):
            opt.step(grads)
    with pytest.raises(TypeError, match="step\\(grads\\)"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match="lr"):
        fd.Adam([p], lr=-1.0)
    assert opt.state == {} and opt.params[0] is p


def test_chunk_kernels_use_the_worker_threads_once(client):
    """A worker of one thread runs each chunk's kernel serially (no thread pool), and the
    result is that of the multi-threaded kernel."""
    assert set(client.run(lambda: fd._threads()).values()) == {1}

    def threads_of_a_task():
        return fd._threads()

    assert client.submit(threads_of_a_task, pure=False).result() == 1
    rng = np.random.default_rng(8)
    p, g, m, v = (rng.standard_normal(200_000).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    expected = [a.copy() for a in (p, m, v)]
    fastgd.functional.adam(expected[0], g, expected[1], expected[2], step=2)
    with cpu.threads(1):
        assert cpu.serial_only(10**9)
        fastgd.functional.adam(p, g, m, v, step=2)
    assert not cpu.serial_only(10**9)
    for a, b in zip((p, m, v), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_lineage_cuts_write_chunk_files_to_the_store(client, tmp_path):
    rng = np.random.default_rng(10)
    p0 = rng.standard_normal((37, 29)).astype(np.float32)
    ref = fastgd.RMSprop([p0.copy()], lr=0.01, momentum=0.9)
    opt = fd.RMSprop([da.from_array(p0, chunks=(19, 15))], lr=0.01, momentum=0.9,
                     lineage=3, store=tmp_path / "run")
    other = fd.RMSprop([da.from_array(-p0, chunks=(19, 15))], lr=0.01, lineage=1,
                       store=tmp_path / "run")  # (the same store: a directory each)
    for t in range(1, 8):
        g = rng.standard_normal((37, 29)).astype(np.float32)
        ref.step([g])
        opt.step([da.from_array(g, chunks=(37, 10))])
        other.step([g])
        cuts = [] if opt._run is None else sorted(p.name for p in opt._run.glob("cut-*"))
        assert cuts == ([f"cut-{t // 3}"] if t >= 3 else []), cuts  # (the last one only)
    run = opt._run
    assert run.parent == tmp_path / "run" and other._run.parent == run.parent != other._run
    files = sorted(p.name for p in (run / "cut-2").iterdir())
    assert files == ["0-momentum_buffer", "0-param", "0-square_avg"]
    assert len(list((run / "cut-2" / "0-param").glob("*.npy"))) == 4
    _assert_same(ref, opt)
    del opt, other
    import gc

    gc.collect()
    assert list((tmp_path / "run").iterdir()) == []  # (each removed with its optimizer)
    (tmp_path / "file.txt").write_text("not a directory")
    with pytest.raises(ValueError, match="store"):
        fd.Adam([da.ones(3)], store=tmp_path / "file.txt" / "below")


def test_options_changed_between_steps_as_in_the_numpy_face(client):
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal((37, 29)).astype(np.float16)
    ref = fastgd.AdamW([p0.copy()], lr=0.01, master_weights=True)
    opt = fd.AdamW([da.from_array(p0, chunks=(19, 15))], lr=0.01, master_weights=True)
    changes = {3: {"state_precision": "bf16"}, 6: {"master_weights": False},
               9: {"state_precision": "full"}, 12: {"master_weights": True}}
    for t in range(1, 16):
        for key, value in changes.get(t, {}).items():
            ref.param_groups[0][key] = value
            opt.param_groups[0][key] = value
        g = rng.standard_normal((37, 29)).astype(np.float16)
        ref.step([g])
        opt.step([g])
    _assert_same(ref, opt)
    before = {k: v for k, v in opt.state[0].items()}
    for key, value in [("state_precision", "8bit"), ("stochastic_rounding", True)]:
        opt.param_groups[0][key] = value
        if key == "stochastic_rounding":
            opt.param_groups[0]["state_precision"] = "bf16"
        with pytest.raises(ValueError, match=key.split("_")[0]):
            opt.step([g])
        assert opt.state[0] == before
        opt.param_groups[0].update(state_precision="full", stochastic_rounding=False)


def test_parameters_that_are_equal_or_of_other_types(client):
    opt = fd.SGD([da.zeros(5), da.zeros(5)], lr=0.1)  # (equal contents: two parameters)
    opt.step([np.ones(5), np.full(5, 2.0)])
    np.testing.assert_array_equal(opt.params[1].compute(), np.full(5, -0.2))
    scalar = fd.SGD([da.from_array(np.array(1.0))], lr=0.5)
    scalar.step([np.float64(1.0)])  # (a NumPy scalar gradient)
    assert float(scalar.params[0].compute()) == 0.5
    with pytest.raises(TypeError, match="dtype"):
        fd.SGD([da.ones(3, dtype=np.longdouble)])


def test_output_memory_is_recycled_only_once_released():
    dtype = np.dtype(np.float32)
    a, b = fd._fresh((1000,), dtype), fd._fresh((1000,), dtype)
    assert not np.shares_memory(a, b)
    a[:] = 1.0
    address = a.__array_interface__["data"][0]
    del a
    c = fd._fresh((1000,), dtype)  # (a's memory, now that nothing holds it)
    assert c.__array_interface__["data"][0] == address and not np.shares_memory(b, c)
    view = c[10:20]
    del c
    d = fd._fresh((1000,), dtype)  # (a view keeps it: new memory)
    assert not np.shares_memory(view, d) and not np.shares_memory(b, d)


@pytest.mark.parametrize("name", ["Adam", "LAMB", "Adafactor", "ScheduleFreeSGD"])
def test_scalar_and_empty_parameters(name):
    values = [np.array(1.5), np.zeros(0), np.zeros((0, 3)), np.arange(6.0).reshape(2, 3)]
    with dask.config.set(scheduler="sync"):
        ref = cases.optimizer_class(name)([v.copy() for v in values], lr=0.1)
        opt = getattr(fd, name)([da.from_array(v) for v in values], lr=0.1, lineage=2)
        if cases.ALGORITHMS[name].schedule_free:
            opt.train()
        for t in range(5):  # (through two lineage cuts)
            grads = [np.full(v.shape, 0.3 + t) for v in values]
            ref.step(grads)
            opt.step(grads)
        for ours, theirs in zip(opt.params, ref.parameters(), strict=True):
            got = ours.compute()
            assert got.shape == theirs.shape and got.tobytes() == theirs.tobytes()


def test_bench_dask_runs(tmp_path):
    import json

    from fastgd import cli

    out = tmp_path / "dask.json"
    assert cli.main(["bench", "--dask", "1", "--sizes", "5000", "--repeat", "1",
                     "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["dask"]
    assert result["workers"] == 1 and result["size"] == 5000
    assert set(result["seconds"]) == {"single process", "out of place", "fastgd.dask",
                                      "64 small chunks", "1 small chunk"}
    assert all(v > 0 for v in result["seconds"].values())


def test_output_memory_is_never_shared_between_threads():
    from concurrent.futures import ThreadPoolExecutor

    def work(mark):
        for _ in range(2000):
            a = fd._fresh((64,), np.dtype(np.float64))
            a[:] = mark
            b = fd._fresh((64,), np.dtype(np.float64))
            b[:] = -mark
            if not ((a == mark).all() and (b == -mark).all()):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(1, 9)))

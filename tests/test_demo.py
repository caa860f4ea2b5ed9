"""`fastgd demo`: the experiments' numbers, the pictures (written, non-empty) and the CLI."""

import io
import sys

import numpy as np
import pytest

from fastgd import cli, demo

ALL_SURFACES = [*demo.SURFACES.values(), demo.regression_problem()]


@pytest.fixture(scope="module")
def regression():
    return demo.regression_experiment()[1]


# -- 1. L(x) = x^2 -----------------------------------------------------------------------------

def test_parabola_lr_06_converges_6_to_minus_1_2_to_0_24():
    converging, _ = demo.parabola_experiment()
    xs = converging.path[:, 0]
    assert xs[0] == 6.0
    np.testing.assert_allclose(xs[:5], [6.0, -1.2, 0.24, -0.048, 0.0096], rtol=1e-12)
    np.testing.assert_allclose(xs, 6.0 * (-0.2) ** np.arange(11), rtol=1e-12)
    assert converging.steps_to_tol is not None and not converging.diverged
    assert converging.config.lr == 0.6 and converging.config.cls.__name__ == "SGD"


def test_parabola_lr_1_oscillates_between_3_and_minus_3_forever():
    _, bouncing = demo.parabola_experiment()
    xs = bouncing.path[:, 0]
    assert np.array_equal(xs, [3.0, -3.0] * 5 + [3.0])  # exactly, every step
    assert np.array_equal(bouncing.losses, np.full(11, 9.0))
    assert bouncing.steps_to_tol is None and not bouncing.diverged
    assert demo._fate(bouncing) == "oscillates forever"


def test_parabola_lines_show_the_sequences():
    text = demo._parabola_lines(demo.parabola_experiment())
    assert "6 -> -1.2 -> 0.24 -> -0.048" in text
    assert "3 -> -3 -> 3 -> -3" in text


# -- 2. linear regression ----------------------------------------------------------------------

def test_regression_gradient_is_the_sum_form():
    x = np.arange(20.0)
    y = 3 * x + 5
    problem = demo.regression_problem()
    w, b = 0.7, -1.3
    r = w * x + b - y
    gw, gb = problem.gradient(w, b)
    assert gw == pytest.approx(np.sum(r * x), rel=1e-12)
    assert gb == pytest.approx(np.sum(r), rel=1e-12)
    assert problem.value(w, b) == pytest.approx(np.mean(r ** 2) / 2, rel=1e-12)
    assert problem.value(3.0, 5.0) == 0.0 and problem.min_value == 0.0
    grid = problem.value(np.array([[w, 3.0]]), np.array([[b, 5.0]]))  # grids work too
    assert grid.shape == (1, 2) and grid[0, 1] == 0.0


def test_regression_optimizers_reach_w3_b5(regression):
    assert [tr.name for tr in regression] == ["sgd", "adagrad", "rmsprop", "momentum", "adam"]
    for tr in regression:
        w, b = tr.final
        assert w == pytest.approx(3.0, abs=0.02), tr.label
        assert b == pytest.approx(5.0, abs=0.1), tr.label
        assert tr.final_loss <= 1e-3 and not tr.diverged
        assert tr.steps_to_tol == tr.steps  # ran exactly the iterations it needed
        assert np.array_equal(tr.path[0], [0.0, 0.0])


def test_regression_gd_uses_inverse_sqrt_and_is_the_slowest(regression):
    gd = regression[0]
    assert gd.label == "sgd: SGD(lr=0.002/sqrt(t))"
    optimizer = gd.config.build(np.zeros(2), 10)
    assert repr(optimizer.lr) == "inverse_sqrt(lr=0.002)"
    assert gd.steps > 10 * max(tr.steps for tr in regression[1:])


def test_regression_table(regression):
    table = demo.format_table(regression, point_names=("w", "b"), until_tol=True)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["optimizer", "w", "b", "final"]
    assert "iterations" in lines[0] and len(lines) == 2 + len(regression)
    assert "adam: Adam(lr=0.5, betas=(0.9, 0.999))" in table


# -- 3. surfaces -------------------------------------------------------------------------------

@pytest.mark.parametrize("surface", ALL_SURFACES, ids=lambda s: s.name)
def test_gradients_match_finite_differences(surface):
    # the regression's gradient is the sum form: n = 20 times that of its (mean) loss
    scale = 20.0 if surface.name == "regression" else 1.0
    rng = np.random.default_rng(0)
    h = 1e-6
    for x, y in rng.uniform(-1.5, 1.5, size=(5, 2)):
        gx, gy = surface.gradient(x, y)
        fx = scale * (surface.value(x + h, y) - surface.value(x - h, y)) / (2 * h)
        fy = scale * (surface.value(x, y + h) - surface.value(x, y - h)) / (2 * h)
        assert gx == pytest.approx(fx, rel=1e-5, abs=1e-5)
        assert gy == pytest.approx(fy, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("surface", ALL_SURFACES, ids=lambda s: s.name)
def test_minima_are_minima(surface):
    for x, y in surface.minima:
        assert np.allclose(surface.gradient(x, y), 0.0, atol=1e-12)
        assert surface.value(x, y) == surface.min_value
    xs, ys = np.meshgrid(np.linspace(*surface.xlim, 60), np.linspace(*surface.ylim, 60))
    assert surface.value(xs, ys).min() >= surface.min_value - 1e-12


def test_every_optimizer_reduces_the_loss_on_the_bowl():
    traces = demo.surface_experiment("bowl")
    assert [tr.name for tr in traces] == list(demo.OPTIMIZERS)
    for tr in traces:
        assert tr.steps == demo.SURFACES["bowl"].steps and not tr.diverged
        assert tr.final_loss < 0.1 * tr.losses[0], tr.label
        assert np.array_equal(tr.path[0], demo.SURFACES["bowl"].start)
    labels = [tr.label for tr in traces]
    assert len(set(labels)) == len(labels)  # every optimizer named distinctly


def test_paths_start_at_the_given_point_and_record_every_step():
    traces = demo.surface_experiment("rosenbrock", ["sgd", "adam", "nadam"], steps=7,
                                     start=(0.5, -0.5))
    for tr in traces:
        assert tr.path.shape == (8, 2) and tr.losses.shape == (8,)
        assert np.array_equal(tr.path[0], [0.5, -0.5])
        assert tr.losses[0] == demo.rosenbrock_value(0.5, -0.5)
        assert tr.losses[-1] == pytest.approx(demo.rosenbrock_value(*tr.final))


def test_the_optimizer_steps_are_fastgds():
    """The path of a demo run is exactly what stepping fastgd.Adam by hand gives."""
    surface = demo.SURFACES["saddle"]
    trace = demo.surface_experiment(surface, ["adam"], steps=5, lr={"adam": 0.1})[0]
    import fastgd

    p = np.array(surface.start)
    opt = fastgd.Adam(p, lr=0.1)
    for k in range(1, 6):
        opt.step(surface.grad(p))
        assert np.array_equal(trace.path[k], p)


def test_diverged_detection():
    bowl = demo.SURFACES["bowl"]
    blown = demo.descend(bowl, (1.0, 1.0), demo.make_config("sgd", 0.5), 200)
    assert blown.diverged and blown.steps < 200 and blown.steps_to_tol is None
    calm = demo.descend(bowl, (1.0, 1.0), demo.make_config("sgd", 0.05), 200)
    assert not calm.diverged and calm.steps == 200 and calm.steps_to_tol is not None
    table = demo.format_table([blown, calm]).splitlines()
    assert table[2].endswith("yes") and table[3].endswith("no")
    assert table[2].split()[-2] == "-"  # never reached the tolerance


def test_steps_to_tol_is_the_first_step_within_tolerance():
    bowl = demo.SURFACES["bowl"]
    tr = demo.descend(bowl, bowl.start, demo.make_config("sgd", 0.05), 300, tol=1e-4)
    k = tr.steps_to_tol
    assert tr.gaps[k] <= 1e-4 < tr.gaps[k - 1]
    stopped = demo.descend(bowl, bowl.start, demo.make_config("sgd", 0.05), 300, tol=1e-4,
                           stop_at_tol=True)
    assert stopped.steps == k and np.array_equal(stopped.path, tr.path[:k + 1])


def test_labels_carry_hyperparameters_and_schedules():
    assert demo.make_config("momentum", 0.01).label == "momentum: SGD(lr=0.01, momentum=0.9)"
    assert demo.make_config("sgd", 0.1).label == "sgd: SGD(lr=0.1)"
    assert (demo.make_config("rmsprop", 0.01, options={"centered": True}).label
            == "rmsprop: RMSprop(lr=0.01, alpha=0.99, centered=True)")
    config = demo.make_config("adam", 0.3, schedule="cosine")
    assert config.label == "adam: Adam(lr=cosine(0.3->0), betas=(0.9, 0.999))"
    assert repr(config.build(np.zeros(2), 50).lr) == "cosine(lr=0.3, total_steps=50, min_lr=0.0)"
    with pytest.raises(ValueError, match="unknown optimizer"):
        demo.make_config("lbfgs")


# -- pictures and the command line -------------------------------------------------------------

def test_pngs_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    out = io.StringIO()
    result = demo.run(tmp_path / "pics", surfaces=["bowl", "saddle"], steps=30,
                      regression_steps=300, stream=out)
    names = sorted(p.name for p in result.files)
    assert names == ["bowl.png", "parabola.png", "regression.png", "saddle.png"]
    for path in result.files:
        assert path.parent == tmp_path / "pics"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    text = out.getvalue()
    assert "wrote 4 files" in text and demo.PLOT_HINT not in text
    assert "3.2 Saddle" in text and "steps to loss-min<=0.001" in text


def test_animated_gif(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    result = demo.run(tmp_path, experiments=["surfaces"], surfaces=["bowl"],
                      optimizers=["sgd", "adam"], steps=4, animate=True, stream=io.StringIO())
    gif = tmp_path / "bowl.gif"
    assert gif in result.files and gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")


def test_without_matplotlib_the_tables_print_and_the_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert demo._pyplot() is None
    assert cli.main(["demo", "--out", str(tmp_path / "pics"), "--experiments",
                     "parabola,surfaces", "--surfaces", "bowl", "--steps", "10"]) == 0
    text = capsys.readouterr().out
    assert "6 -> -1.2 -> 0.24" in text and "Ill-conditioned bowl" in text
    assert "matplotlib is not installed" in text and "pip install 'fastgd[plot]'" in text
    assert not (tmp_path / "pics").exists()


def test_cli_demo(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo-out"
    assert cli.main(["demo", "--out", str(out), "--experiments", "parabola,surfaces",
                     "--surfaces", "bowl,bumpy", "--optimizers", "sgd,momentum,adam",
                     "--steps", "25", "--lr", "adam=0.1,sgd=0.01",
                     "--hp", "momentum.momentum=0.5,adam.betas=0.8/0.99"]) == 0
    text = capsys.readouterr().out
    assert "sgd: SGD(lr=0.01)" in text
    assert "adam: Adam(lr=0.1, betas=(0.8, 0.99))" in text
    assert "momentum: SGD(lr=0.03, momentum=0.5)" in text  # the bumpy bowl's lr
    assert "25 steps" in text and "done in" in text
    assert sorted(p.name for p in out.iterdir()) == ["bowl.png", "bumpy.png", "parabola.png"]
    assert all(p.stat().st_size > 10_000 for p in out.iterdir())


def test_cli_demo_tables_only_with_regression_options(tmp_path, capsys):
    assert cli.main(["demo", "--no-plots", "--out", str(tmp_path / "x"), "--experiments",
                     "regression", "--optimizers", "adam,momentum", "--regression-lr",
                     "adam=0.3"]) == 0
    text = capsys.readouterr().out
    assert "adam: Adam(lr=0.3" in text and "momentum: SGD(lr=0.0005" in text
    assert "iterations" in text and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [
    ["demo", "--lr", "nope=1"], ["demo", "--lr", "adam=abc"], ["demo", "--lr", "adam"],
    ["demo", "--lr", "adam=warp:0.1"], ["demo", "--surfaces", "flat"],
    ["demo", "--optimizers", "lbfgs"], ["demo", "--hp", "adam.nonsense=1"],
    ["demo", "--hp", "adam.lr=1"], ["demo", "--steps", "0"], ["demo", "--start", "1"],
    ["demo", "--no-plots", "--experiments", "surfaces", "--surfaces", "bowl", "--hp",
     "adam.betas=0.9"],  # fastgd itself refuses it
    ["demo", "--experiments", "everything"],
    ["demo", "--no-plots", "--experiments", "surfaces", "--optimizers", "sgd", "--lr",
     "adam=0.1"],
])
def test_cli_demo_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code != 0

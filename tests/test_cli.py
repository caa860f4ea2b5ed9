"""`fastgd bench`: table, JSON and plot on tiny sizes."""

import json

import pytest

from fastgd import bench, cli


def test_bench_json(capsys):
    assert cli.main(["bench", "--algorithms", "adam,sgd", "--sizes", "1000,2**12",
                     "--dtypes", "float32", "--repeat", "2", "--quiet", "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    results = payload["results"]
    assert {(r["algorithm"], r["size"]) for r in results} == {
        ("adam", 1000), ("adam", 4096), ("sgd", 1000), ("sgd", 4096)}
    for r in results:
        assert r["seconds"] > 0 and r["gbps"] > 0 and r["pct_roofline"] > 0
        assert r["numpy_speedup"] > 0
        assert set(r) >= {"dtype", "roofline_seconds", "torch_speedup", "torch_impl"}


def test_bench_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    assert cli.main(["bench", "--algorithms", "nadam", "--sizes", "100", "--dtypes",
                     "float64", "--repeat", "1", "--quiet", "--no-baselines",
                     "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nadam" in text and "% roofline" in text
    assert out.stat().st_size > 1000


def test_bytes_per_step_counts_reads_and_writes():
    assert bench.bytes_per_step(bench.CASES["adam"], 10, "float32") == 7 * 10 * 4
    assert bench.bytes_per_step(bench.CASES["rmsprop"], 10, "float64") == 5 * 10 * 8


@pytest.mark.parametrize("argv", [["bench", "--algorithms", "nope"],
                                  ["bench", "--sizes", "1.5"], ["bench", "--sizes", "0"]])
def test_bench_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        cli.main(argv)


def test_many_tensor_case_and_sizes():
    sizes = bench.many_tensor_sizes()
    assert len(sizes) == 161 and max(sizes) == 2_400_000
    assert 14_000_000 < sum(sizes) < 18_000_000 and min(sizes) >= 1
    result = bench.run_case(bench.CASES["adam"], 0, "float32", repeat=1,
                            tensors=[5, 3000, 70000])
    assert result.tensors == 3 and result.size == 73005 and result.seconds > 0
    assert result.torch_speedup is None or result.torch_speedup > 0


def test_bench_markdown(tmp_path):
    out = tmp_path / "r.md"
    assert cli.main(["bench", "--algorithms", "sgd", "--sizes", "1000", "--dtypes", "float32",
                     "--repeat", "1", "--quiet", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| sgd | float32 | 1000 |" in text and "Targets:" in text

"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    source = BLOCKS[index]
    if "import torch" in source:
        pytest.importorskip("torch")
    namespace: dict = {}
    exec(compile(source, f"README.md[{index}]", "exec"), namespace)
    if "param" in namespace and "exp_avg" in namespace:   # the functional example
        assert abs(namespace["param"]).mean() < 0.9    # moved towards the minimum at 0

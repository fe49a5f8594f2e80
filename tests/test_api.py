"""The public API of `jaxloop/__init__.py`: every name resolves, `import jaxloop` stays light, the README runs."""

import pathlib
import re
import subprocess
import sys

import jaxloop

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves():
    for name in jaxloop.__all__:
        assert getattr(jaxloop, name) is not None, name
    assert callable(jaxloop.load_scenarios) and callable(jaxloop.make_train) and callable(jaxloop.gate)


def test_import_jaxloop_does_not_import_jax():
    code = "import sys, jaxloop; print('jax' in sys.modules, jaxloop.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", jaxloop.__version__]


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"## Python in thirty seconds\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "from jaxloop." not in block and "import jaxloop." not in block  # the public API only
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["xs"].shape[:2] == (8, 80)
    assert namespace["report"].aggregate["num_scenarios"] == 8
    assert "failure_rate" in capsys.readouterr().out

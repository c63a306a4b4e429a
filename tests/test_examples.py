"""The examples in examples/ run in their quick mode and their training loss falls."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NAMES = ["forecasting", "classify", "char_generation", "seq2seq"]  # side_by_side.py is their shared helper


def load(name):
    # As when run as a script: examples/ on the path, for the helpers they share (side_by_side.py).
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(f"examples_{name}", os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_example_quick_mode_learns(name, capsys):
    result = load(name).main(["--quick"])
    out = capsys.readouterr().out
    assert "ms per training step" in out
    first, last = result["first_loss"], result["last_loss"]
    assert math.isfinite(first) and math.isfinite(last), result
    assert last < first, f"{name}: loss did not fall ({first:.4f} -> {last:.4f})"
    for name_, seconds in result["train_step_s"].items():
        assert seconds > 0, name_


def test_example_runs_as_a_script():
    script = os.path.join(EXAMPLES, "classify.py")
    proc = subprocess.run([sys.executable, script, "--quick", "--steps", "20"], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(EXAMPLES))
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stdout and "lstm_fused" in proc.stdout

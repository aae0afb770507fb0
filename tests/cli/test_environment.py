"""Run outside the project's .venv (a Python without the packages), every
entry point says so in one line (which module is missing, how to set up and
use .venv) with exit status 2, before any third-party import: no traceback,
even for --help."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from centernet import environment
from centernet.environment import problem
from centernet.errors import cli

SCRIPTS = ["CenterNet_preprocess.py", "CenterNet_pth2onnx.py", "CenterNet_infer.py", "CenterNet_postprocess_s1.py",
           "CenterNet_postprocess_s2.py", "CenterNet_eval.py", "CenterNet_benchmark.py", "CenterNet_demo.py",
           "benchmarks/bench_data_stages.py", "benchmarks/bench_ray.py", "benchmarks/gpu_torch.py"]
MODULES = ["centernet.cli.check_weights", "centernet.cli.make_demo", "centernet.cli.plots", "centernet.cli.report"]

# Imported by site at start-up: `import X` of each module named in
# BLOCK_MODULES fails as if X were not installed.
BLOCKER = """\
import os, sys

class _Blocker:
    blocked = set(os.environ.get("BLOCK_MODULES", "").split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
"""


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def run(command, env=None):
    return subprocess.run([sys.executable, *command], cwd=ROOT, env=env or clean_env(), capture_output=True,
                          text=True, timeout=300)


def one_error_line(r):
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("command", [[s, "--help"] for s in SCRIPTS] + [["-m", m, "--help"] for m in MODULES],
                         ids=lambda c: c[-2])
def test_no_packages_is_one_line_saying_how_to_use_the_venv(command):
    # -S: no site-packages at all, as a bare system python3
    r = run(["-S", *command])
    line = one_error_line(r)
    assert re.match(r"error: no module named '\w+'", line), line
    assert ".venv/bin/python " + command[-2] in line or ".venv/bin/python -m " + command[-2] in line
    assert ".venv/bin/activate" in line
    assert r.stdout == ""


@pytest.fixture(scope="module")
def blocker_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(BLOCKER)

    def make(*modules):
        return dict(clean_env(), PYTHONPATH=str(site), BLOCK_MODULES=",".join(modules))
    return make


@pytest.mark.parametrize("script, module", [
    ("CenterNet_preprocess.py", "cv2"),
    ("CenterNet_infer.py", "tqdm"),
    ("CenterNet_pth2onnx.py", "torch"),
    ("CenterNet_postprocess_s2.py", "pycocotools"),
])
def test_the_missing_module_is_named(blocker_env, script, module):
    r = run([script, "--help"], env=blocker_env(module))
    assert one_error_line(r).startswith(f"error: no module named '{module}' in ")


def test_a_package_imported_late_is_one_line_too(capsys):
    @cli
    def main():
        import onnxruntime_not_installed  # noqa: F401  (stands for a late import of a missing package)

    @cli
    def main_onnxruntime():
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    with pytest.raises(ModuleNotFoundError):  # not one of ours: left alone
        main()
    with pytest.raises(SystemExit) as e:
        main_onnxruntime()
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: no module named 'onnxruntime' in ")


def test_the_messages():
    outside = problem(["cv2"], executable="/usr/bin/python3", prefix="/usr", root="/nowhere/repo",
                      cwd="/nowhere/repo", argv=["CenterNet_preprocess.py"], orig_argv=["python3",
                                                                                      "CenterNet_preprocess.py"])
    assert outside == (
        "no module named 'cv2' in /usr/bin/python3 (not the project's .venv, which is not set up yet): make it "
        "with `bash run_all.sh` or `bash run_tests.sh` (they create .venv with Python 3.11 and install "
        "requirements.txt), then run `.venv/bin/python CenterNet_preprocess.py`, or `source .venv/bin/activate` "
        "first")
    # .venv exists (ours), run from elsewhere with -m
    module = problem(["numpy", "tqdm"], executable="/usr/bin/python3", prefix="/usr", root=str(ROOT), cwd="/",
                     argv=["-m"], orig_argv=["python3", "-m", "centernet.cli.report", "--help"])
    if (ROOT / ".venv" / "bin" / "python").is_file():
        assert module == (f"no module named 'numpy', 'tqdm' in /usr/bin/python3 (not the project's .venv): run "
                          f"`{ROOT}/.venv/bin/python -m centernet.cli.report`, or `source {ROOT}/.venv/bin/activate` "
                          "first")
    inside = problem(["torch"], executable="/r/.venv/bin/python", prefix="/r/.venv", root="/r", cwd="/r",
                     argv=["CenterNet_pth2onnx.py"])
    assert inside == ("no module named 'torch' in /r/.venv/bin/python (the project's .venv): install "
                      "requirements.txt into it: .venv/bin/python -m pip install -r requirements.txt")
    old = problem([], version=(3, 9, 2), executable="/usr/bin/python3", prefix="/usr", root="/r", cwd="/r",
                  argv=["CenterNet_infer.py"])
    assert old.startswith("Python 3.9.2 (/usr/bin/python3) is too old: the toolkit needs 3.10 or newer")
    assert problem([], prefix="/usr") is None


def test_min_python_is_pyprojects():
    wanted = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert environment.MIN_PYTHON == (int(wanted[1]), int(wanted[2]))


def test_every_script_checks_before_its_first_third_party_import():
    """Each entry point's first import of ours comes before any third-party
    one, and is centernet.environment or centernet.cli (which checks)."""
    third_party = re.compile(r"^\s*(?:import|from) (numpy|cv2|torch|onnx|onnxruntime|tqdm|pycocotools|matplotlib|ray)\b",
                             re.M)
    ours = re.compile(r"^\s*(?:import|from) (centernet[\w.]*)", re.M)
    for path in [ROOT / s for s in SCRIPTS] + [ROOT / (m.replace(".", "/") + ".py") for m in MODULES]:
        text = path.read_text()
        first_ours = [m for m in ours.finditer(text) if m[1] not in ("centernet.errors",)][0]
        assert first_ours[1].startswith(("centernet.environment", "centernet.cli")), path
        other = third_party.search(text)
        assert other is None or other.start() > first_ours.start(), path

"""What users read: README, --help and messages stand alone, figures come
with the CPU they were measured on, and the README's demo recipe runs."""
import ast
import importlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["CenterNet_preprocess", "CenterNet_pth2onnx", "CenterNet_infer", "CenterNet_postprocess_s1",
           "CenterNet_postprocess_s2", "CenterNet_eval", "CenterNet_benchmark", "CenterNet_demo",
           "centernet.cli.check_weights", "centernet.cli.make_demo", "centernet.cli.plots", "centernet.cli.report"]
# a duration figure: "6 minutes", "2 min 51 s", "4.2 s", "~55 s", "about a minute"
DURATION = re.compile(r"\d\s*(ms|s|sec|seconds?|min|minutes?|h|hours?)\b"
                      r"|\b(about|under|over|within|in|takes?|took) (a|one) (minute|second|hour)\b")


def python_files():
    return sorted(ROOT.glob("*.py")) + sorted((ROOT / "centernet").glob("*.py"))


def string_constants(path):
    """Every string literal of a Python file (docstrings, messages, help), not its comments."""
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_user_facing_text_cites_reference():
    # Users do not have REFERENCE.md: README, requirements, the shell scripts and
    # every string in the code (messages, --help, docstrings) stand on their own.
    texts = {p.name: p.read_text() for p in [ROOT / "README.md", *ROOT.glob("requirements*.txt"),
                                             *ROOT.glob("*.sh"), ROOT / "tools" / "venv.sh"]}
    texts.update({str(p.relative_to(ROOT)): "\n".join(string_constants(p)) for p in python_files()})
    assert [name for name, text in texts.items() if "REFERENCE" in text] == []


@pytest.mark.parametrize("module", SCRIPTS)
def test_help_stands_alone_without_durations(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "REFERENCE" not in text
    assert not DURATION.search(text), DURATION.search(text)  # times vary with the machine: README, with its CPU


def readme_sections():
    """(heading, body) of every section of the README."""
    parts = re.split(r"^(#{2,3} .*)$", (ROOT / "README.md").read_text(), flags=re.M)
    return list(zip(["(top)"] + parts[1::2], parts[0::2]))


def test_readme_gives_times_only_with_the_cpu_model():
    sections = dict(readme_sections())
    cpu = re.search(r"CPU model\s+`([^`]+)`\s+\(as `grep -m1 'model name' /proc/cpuinfo` prints it",
                    sections["### Measured here"]).group(1)
    for heading, body in readme_sections():
        if f"`{cpu}`" in body:
            continue
        prose = re.sub(r"```.*?```", "", body, flags=re.S)  # commands are not figures
        figures = [m.group(0) for m in DURATION.finditer(prose)]
        assert not figures, (heading, figures)


def test_readme_layout_lists_every_module():
    layout = dict(readme_sections())["## Layout"]
    missing = [p.name for p in (ROOT / "centernet").glob("*.py")
               if p.name != "__init__.py" and p.name not in layout]
    assert missing == []


def test_readme_demo_recipe_runs(tmp_path, synthetic_coco, upstream_checkpoint):
    """The "follow the recipe on the demo" commands, one by one, as written
    (in a temporary work/demo, and the export's self-check left to
    test_export.py). The demo's data and weights are put there first, from
    the test fixtures, so that its first command finds them instead of
    spending time making them (test_run_all.py makes them)."""
    section = dict(readme_sections())["### Follow the recipe on the demo"]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("source ")]
    assert [c.split()[1] for c in commands] == [
        "-m", "CenterNet_preprocess.py", "CenterNet_pth2onnx.py", "run_infer.sh", "CenterNet_postprocess_s1.py",
        "CenterNet_postprocess_s2.py"]
    work = str(tmp_path / "work" / "demo")
    shutil.copytree(synthetic_coco["root"], tmp_path / "work" / "demo" / "data")
    shutil.copy(upstream_checkpoint, tmp_path / "work" / "demo" / "ctdet_demo.pth")
    for command in commands:
        command = re.sub(r"(\./)?\bwork/demo", work, command)
        if "CenterNet_pth2onnx.py" in command:
            command += " --no-check"
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
    assert (tmp_path / "work" / "demo" / "run_eval_result" / "metrics.json").is_file()
    assert (tmp_path / "work" / "demo" / "run_eval_result" / "per_class_ap.txt").is_file()

"""What users read: README, docs/, --help and messages stand alone, links
resolve, figures come with the CPU they were measured on, and the demo recipe
of docs/recipe.md runs. No test depends on the README's headings."""
import ast
import importlib
import re
import shlex
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
    return sorted(ROOT.glob("*.py")) + sorted((ROOT / "centernet").rglob("*.py"))


def string_constants(path):
    """Every string literal of a Python file (docstrings, messages, help), not its comments."""
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_user_facing_text_cites_reference():
    # Users do not have REFERENCE.md: README, docs/, requirements, the shell scripts and
    # every string in the code (messages, --help, docstrings) stand on their own.
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [*doc_files(), *ROOT.glob("requirements*.txt"),
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
    assert not DURATION.search(text), DURATION.search(text)  # times vary with the machine: docs, with the CPU


def doc_files():
    """README.md and every page under docs/: what users read."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text):
    """The text with fenced code blocks blanked out (commands are not prose)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def paragraphs(text):
    """The prose paragraphs of a markdown text: blocks between blank lines,
    each list item its own paragraph, and a table counted with the paragraph
    before it (its caption)."""
    found = []
    for block in re.split(r"\n[ \t]*\n", without_code(text)):
        if block.lstrip().startswith("|") and found:
            found[-1] += "\n" + block
            continue
        found.extend(item for item in re.split(r"\n(?=[-*] )", block) if item.strip())
    return found


def heading_anchors(text):
    """GitHub's anchors for the headings of a markdown text."""
    anchors, seen = set(), {}
    for title in re.findall(r"^#{1,6} +(.+?) *#*$", without_code(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def measured_cpu():
    """The CPU model every measured figure was taken on, as docs/benchmarks.md names it."""
    return re.search(r"CPU model\s+`([^`]+)`\s+\(as `grep -m1 'model name' /proc/cpuinfo` prints it",
                     (ROOT / "docs" / "benchmarks.md").read_text()).group(1)


def test_doc_links_resolve():
    # Every relative link of the README and docs/ leads to an existing file, and
    # an anchor to a heading of its target.
    broken = []
    for doc in doc_files():
        text = without_code(doc.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append((doc.name, target, "no such file"))
            elif anchor and (dest.suffix != ".md" or anchor not in heading_anchors(dest.read_text())):
                broken.append((doc.name, target, "no such heading"))
    assert broken == []


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines: move detail into docs/"


def test_readme_quotes_no_test_count():
    # The number of tests changes with every landing; a quoted one goes stale.
    text = (ROOT / "README.md").read_text()
    assert not re.findall(r"\b\d+ tests\b", text)


def test_requirements_comments_speak_of_the_users_install():
    comments = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith("#")]
    text = " ".join(comments)
    assert "local disk" not in text and "TORCH_INDEX_URL" in text, text


def test_docs_give_times_only_with_the_cpu_model():
    # A time means nothing without the machine: every paragraph (or table with
    # its caption) that gives one names the CPU it was measured on, or, for
    # upstream's GPU figure, the GPU.
    machines = [measured_cpu(), "Titan Xp"]
    unnamed = []
    for doc in doc_files():
        for paragraph in paragraphs(doc.read_text()):
            figures = [m.group(0) for m in DURATION.finditer(paragraph)]
            if figures and not any(machine in paragraph for machine in machines):
                unnamed.append((doc.name, paragraph[:80], figures))
    assert unnamed == []


def test_architecture_lists_every_module():
    """docs/architecture.md names every module, folder by folder."""
    layout = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT / "centernet")) for p in (ROOT / "centernet").rglob("*.py")
               if p.name != "__init__.py" and p.name not in layout]
    assert missing == []


def marked_block(marker):
    """The fenced block right after `<!-- test: MARKER -->` in the README or
    docs/, wherever it lives (exactly one)."""
    found = [m.group(1) for doc in doc_files()
             for m in re.finditer(rf"^<!-- test: {re.escape(marker)} -->\n```\w*\n(.*?)^```",
                                  doc.read_text(), flags=re.S | re.M)]
    assert len(found) == 1, (marker, len(found))
    return found[0]


def test_demo_recipe_runs(tmp_path):
    """The "follow the recipe on the demo" commands (docs/recipe.md, the block
    marked `<!-- test: demo-recipe -->`), one by one, as written
    (in a temporary work/demo, and the export's self-check left to
    test_export.py). The demo's data (3 images) and weights are put there
    first, so that its first command finds them instead of making all 200
    images (test_run_all.py makes the whole demo)."""
    block = marked_block("demo-recipe")
    commands = [ln.split("#")[0].strip() for ln in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("source ")]
    assert [c.split()[1] for c in commands] == [
        "-m", "CenterNet_preprocess.py", "CenterNet_pth2onnx.py", "run_infer.sh", "CenterNet_postprocess_s1.py",
        "CenterNet_postprocess_s2.py", "CenterNet_eval.py", "CenterNet_eval.py"]
    work = str(tmp_path / "work" / "demo")
    from centernet.model.demo_data import make_demo
    make_demo(tmp_path / "work" / "demo", num_images=3, progress=False)  # the first command finds them
    for command in commands:
        command = re.sub(r"(\./)?\bwork/demo", work, command)
        if "CenterNet_pth2onnx.py" in command:
            command += " --no-check"
        if "centernet.cli.make_demo" in command:
            command += " --num-images 3"  # what is already there
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
    assert (tmp_path / "work" / "demo" / "run_eval_result" / "metrics.json").is_file()
    assert (tmp_path / "work" / "demo" / "run_eval_result" / "per_class_ap.txt").is_file()
    # the streaming pass, plain and on Ray, writes where it was told: the staged run's results, byte for byte
    save = tmp_path / "work" / "demo" / "save"
    staged = (save / "results.json").read_bytes()
    assert (save / "results_stream.json").read_bytes() == staged
    assert (save / "results_ray.json").read_bytes() == staged
    assert (tmp_path / "work" / "demo" / "run_eval_ray" / "metrics.json").is_file()


def test_default_outputs_of_the_scripts_are_ignored_by_git():
    """What a script writes into the current folder when no output is given
    (the recipe's defaults) stays out of `git status` in a clone."""
    defaults = ["demo_out/x.jpg", "save/results.json", "run_eval_result/metrics.json", "prep_dataset/x.bin",
                "result/dumpout_bs1/x_0.bin", "work/demo/ctdet_shapes_resdcn18.pth", "CenterNet.onnx", "CenterNet_bs1.om",
                "ctdet_coco_dla_2x.pth", "data/coco/val2017/x.jpg", "models/ctdet_shapes_resdcn18.pth.partial",
                "models/ctdet_shapes_resdcn18.cache-256x256.onnx"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *defaults], cwd=ROOT, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(defaults), r.stdout + r.stderr

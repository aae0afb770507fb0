"""Is this Python the one with the toolkit's packages? A leaf module that
imports only the standard library, so the scripts can ask before their first
third-party import and say in one line how to get the project's .venv,
instead of a traceback ending in "No module named 'cv2'".

find_spec locates a module without importing it: the check costs
milliseconds."""
import importlib.util
import os
import sys

# pyproject.toml's requires-python; requirements.txt's pins (numpy 2.4) need 3.11.
MIN_PYTHON = (3, 10)
VENV_PYTHON = "3.11"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What every script imports (both requirements files install them), and what
# only some need: torch and onnx are in requirements.txt alone.
COMMON = ("numpy", "cv2", "tqdm")
# Every module of requirements.txt the toolkit imports.
INSTALLED = frozenset({"numpy", "cv2", "tqdm", "onnx", "onnxruntime", "torch", "pycocotools", "matplotlib", "ray"})


def missing_modules(names):
    """The names among `names` that this Python cannot import (not found)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _shown(path, cwd, root):
    """`path` (in the repository) relative to it when run from there, else absolute."""
    return os.path.relpath(path, root) if os.path.realpath(cwd) == os.path.realpath(root) else path


def _command(argv, orig_argv):
    """How this program was started, less the interpreter: the script path
    as given, or '-m MODULE'."""
    for i, arg in enumerate(orig_argv[1:-1], 1):
        if arg == "-m":
            return f"-m {orig_argv[i + 1]}"
        if not arg.startswith("-"):
            break
    return argv[0] if argv and argv[0] not in ("", "-c", "-m") else "SCRIPT"


def problem(missing, *, version=None, executable=None, prefix=None, root=ROOT, cwd=None, argv=None,
            orig_argv=None):
    """The one-line message for a Python that is too old or lacks `missing`
    modules, saying how to set up and use the project's .venv; None when
    there is nothing to say. The keywords stand in for sys's values (tests)."""
    version = sys.version_info[:3] if version is None else tuple(version)
    executable = executable or sys.executable or "python3"
    prefix = sys.prefix if prefix is None else prefix
    cwd = os.getcwd() if cwd is None else cwd
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", argv) if orig_argv is None else orig_argv
    venv = os.path.join(root, ".venv")
    venv_python = os.path.join(_shown(venv, cwd, root), "bin", "python")
    in_venv = os.path.realpath(prefix) == os.path.realpath(venv)
    if tuple(version[:2]) < MIN_PYTHON:
        what = f"Python {'.'.join(map(str, version))} ({executable}) is too old: the toolkit needs " \
               f"{'.'.join(map(str, MIN_PYTHON))} or newer, {VENV_PYTHON} for requirements.txt"
    elif missing:
        what = f"no module named {', '.join(repr(m) for m in missing)} in {executable}"
    else:
        return None
    if in_venv:
        return f"{what} (the project's .venv): install requirements.txt into it: " \
               f"{venv_python} -m pip install -r {_shown(os.path.join(root, 'requirements.txt'), cwd, root)}"
    use = f"run `{venv_python} {_command(argv, orig_argv)}`, or `source " \
          f"{_shown(os.path.join(venv, 'bin', 'activate'), cwd, root)}` first"
    if os.path.isfile(os.path.join(venv, "bin", "python")):
        return f"{what} (not the project's .venv): {use}"
    return f"{what} (not the project's .venv, which is not set up yet): make it with `bash run_all.sh` or " \
           f"`bash run_tests.sh` (they create .venv with Python {VENV_PYTHON} and install requirements.txt), " \
           f"then {use}"


def require(*names):
    """Exit with status 2 and one 'error: ...' line on stderr (no traceback)
    when this Python is too old or cannot find one of the modules `names`."""
    message = problem(missing_modules(names))
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def missing_module_error(exc):
    """The one-line message for a ModuleNotFoundError of one of the packages
    the toolkit installs (imported late, inside a script's work), else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return problem([name]) if name in INSTALLED else None

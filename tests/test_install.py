"""Installing: tools/venv.sh (TORCH_INDEX_URL), requirements-infer.txt, and
the ONNX Runtime path on a machine without torch."""
import os
import shutil
import stat
import subprocess
import sys

from conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # docs/install.md's example; never contacted here


def pins(path):
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("==") for ln in lines if ln)


def source_venv_sh(root, **env):
    """Source a copy of tools/venv.sh whose .venv/bin/python only logs its
    arguments (nothing is installed, nothing is downloaded)."""
    (root / ".venv" / ".requirements.sha256").unlink(missing_ok=True)
    (root / "pip.log").unlink(missing_ok=True)
    r = subprocess.run(["bash", "-c", "source tools/venv.sh && echo \"PY=$PY\""], cwd=root, capture_output=True,
                       text=True, env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert r.returncode == 0, r.stderr
    return r.stdout, (root / "pip.log").read_text().splitlines()


def test_venv_sh_takes_torch_from_torch_index_url_only_when_set(tmp_path):
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "venv.sh", root / "tools")
    shutil.copy(ROOT / "requirements.txt", root)
    fake = root / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {root}/pip.log\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    torch_pin = f"torch=={pins(ROOT / 'requirements.txt')['torch']}"
    quiet = "-m pip install -q --disable-pip-version-check"

    out, calls = source_venv_sh(root, TORCH_INDEX_URL=None)  # today's behaviour
    assert calls == [f"{quiet} -r {root}/requirements.txt"]
    assert f"PY={fake}" in out

    out, calls = source_venv_sh(root, TORCH_INDEX_URL=CPU_INDEX)
    assert calls == [f"{quiet} --index-url {CPU_INDEX} {torch_pin}", f"{quiet} -r {root}/requirements.txt"]
    assert f"installing {torch_pin} into {root}/.venv from {CPU_INDEX}" in out

    out, calls = source_venv_sh(root, TORCH_INDEX_URL="")  # set but empty: as if unset
    assert calls == [f"{quiet} -r {root}/requirements.txt"]


def test_requirements_infer_is_requirements_without_torch():
    full, infer = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-infer.txt")
    assert "torch" not in infer and "onnx" not in infer
    assert {k: full[k] for k in infer} == infer  # the same pins
    assert {"onnxruntime", "numpy", "opencv-python-headless", "pycocotools", "tqdm"} <= set(infer)


def test_onnx_runtime_path_runs_without_torch(synthetic_coco, ctdet_onnx, tmp_path, no_torch_env, run_script):
    """Preprocess, run_infer.sh, s1, s2 and the streaming eval with an .onnx,
    in processes (and worker processes) where `import torch` fails."""
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "torch is not installed (blocked by the test)" in blocked.stderr
    root = synthetic_coco["root"]

    def ok(proc):
        assert proc.returncode == 0, proc.stderr
        assert "torch" not in proc.stderr

    ok(run_script("CenterNet_preprocess.py", synthetic_coco["images_dir"], "prep", "--limit", 2, "--workers", 2,
                  "--no-progress", cwd=tmp_path, env=no_torch_env))
    ok(subprocess.run(["bash", str(ROOT / "run_infer.sh"), "--model", str(ctdet_onnx), "--input", "prep", "--output",
                       "result", "--output_dirname", "dumpout_bs1", "--batchsize", "2", "--threads", "2",
                       "--no-progress"], cwd=tmp_path, env=no_torch_env, capture_output=True, text=True))
    ok(run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", f"--dataset={root}",
                  "--meta=prep/meta.json", "--no-progress", cwd=tmp_path, env=no_torch_env))
    ok(run_script("CenterNet_postprocess_s2.py", f"--dataset={root}", "--meta=prep/meta.json", cwd=tmp_path,
                  env=no_torch_env))
    ok(run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", root, "--limit", 1, "--workers", 1,
                  "--threads", 2, "--no-progress", "--output", "stream/results.json", "--resultfolder", "stream",
                  cwd=tmp_path, env=no_torch_env))
    assert (tmp_path / "run_eval_result" / "metrics.json").is_file()
    assert (tmp_path / "stream" / "metrics.json").is_file()

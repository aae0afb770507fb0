"""benchmarks/gpu_torch.py, the one-run GPU measurement, in its CPU quick mode:
every step runs end to end and the JSON has what the GPU run reports (one
thread: two stall when other processes hold the CPUs; no time budget: on a
loaded machine the steps take longer, and skipping one is the measurement's
choice, not what this test is about). It must
need no pycocotools (the GPU machines do not have it): the test hides it."""
import json
import subprocess

from conftest import PYTHON, ROOT

HIDE_PYCOCOTOOLS = (
    "import runpy, sys\n"
    "sys.modules['pycocotools'] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def test_cpu_quick_mode_end_to_end(upstream_checkpoint, tmp_path):
    out = tmp_path / "gpu_torch.json"
    r = subprocess.run([PYTHON, "-c", HIDE_PYCOCOTOOLS, str(ROOT / "benchmarks" / "gpu_torch.py"),
                        "--device", "cpu", "--quick", "--size", "64", "--threads", "1", "--weights", str(upstream_checkpoint),
                        "--budget", "1e9", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for step in ("environment", "parity", "speed", "techniques", "pipeline"):
        assert step in result and "error" not in result[step] and "skipped" not in result[step], (step, result[step])
    par = result["parity"]
    assert set(par["yardsticks"]) == {"input rounded to fp16, fp32 CPU", "input rounded to bf16, fp32 CPU"}
    runs = {row["run"]: row for row in par["runs"]}
    assert {"fp32", "bf16", "bf16, cast=model", "bf16, fp32_heads=False", "fp32, dcn=ours"} <= set(runs)
    assert runs["fp32"]["agreement"] == 1.0 and all(o["rel"] < 1e-3 for o in runs["fp32"]["outputs"])
    speed = result["speed"]
    assert [(row["precision"], row["batch"]) for row in speed["rows"]] == [
        ("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    assert all(row["fps"] > 0 and 0 < row["of_ceiling"] for row in speed["rows"])
    assert set(speed["matmul_ceiling_gflops"]) == {"fp32", "bf16"}
    variants = {row["variant"] for row in result["techniques"]["rows"]}
    assert {"default", "channels_last on", "BN folding off", "cast=model (half model)", "DCN kernel ours"} <= variants
    pipe = result["pipeline"]["rows"]
    assert [(r["flip"], r["warped_input"], r["device_decode"]) for r in pipe] == [
        (False, True, True), (False, True, False), (False, False, False), (True, True, True), (True, False, False)]
    assert all(r["images"] == 4 and r["end_to_end_fps"] > 0 for r in pipe)
    assert "| precision | batch | images/s |" in result["markdown"] and "top-100 recovered" in result["markdown"]
    # the stand-in per precision; without pycocotools its detections wait for --score
    rows = result["standin"]["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"] and all(r["images"] == 4 for r in rows)
    assert all(r["results"] and "AP" not in r for r in rows) and "not scored: run --score" in result["markdown"]
    r = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "gpu_torch.py"), "--score", str(out)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["standin"]["rows"]
    assert all(0 <= row["AP"] <= 1 and "results" not in row for row in rows)
    assert rows[0]["AP_change_points"] == 0 and "| fp32 |" in r.stdout

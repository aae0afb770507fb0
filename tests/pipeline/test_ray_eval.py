"""The Ray Data path (centernet.pipeline.ray_eval, CenterNet_eval.py --ray) on one local
Ray of 2 CPUs for the module: the same results file and AP as the one-process
streaming evaluation, the demo's detections.json format without ground truth,
resuming after an interruption, and an inference actor killed mid-run."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from centernet.io.coco import evaluate_coco, write_results
from centernet.errors import UserError
from centernet.pipeline.stream import stream_detections
from conftest import HANG, ROOT, captured_logs

ray = pytest.importorskip("ray")

import CenterNet_eval  # noqa: E402
from centernet.pipeline import ray_eval  # noqa: E402
from centernet.pipeline.ray_eval import BlockStore, actor_resources, check_resources, evaluate_on_ray  # noqa: E402

SMALL = (128, 128)  # fixed input of the test model: fast, and real decoding (32x32 output map)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, as a 2-core machine would have."""
    ray_eval.init_ray("local", num_cpus=2, object_store_memory=200 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small_onnx(random_ctdet, tmp_path_factory):
    from centernet.convert.export import export_onnx
    path = tmp_path_factory.mktemp("onnx_small") / "CenterNet_128.onnx"
    export_onnx(random_ctdet, path, input_size=SMALL)
    return path


def quiet(line):
    pass


def stream_reference(model, images_dir, ann, path, **kw):
    results, ids, errors, _ = stream_detections(model, images_dir, ann, threads=2, input_size=SMALL,
                                                progress=False, **kw)
    write_results(path, results)
    return ids, errors


def by_image(results_file):
    """{image id: its entries, in the file's order}."""
    out = {}
    for entry in json.loads(results_file.read_text()):
        out.setdefault(entry["image_id"], []).append(entry)
    return out


def eval_main(*args):
    """CenterNet_eval.py's main() in this process (so --ray uses the module's Ray)."""
    return CenterNet_eval.main([str(a) for a in args])


def test_ray_eval_script_equals_streaming_eval(local_ray, synthetic_coco, small_onnx, tmp_path):
    """The proof: CenterNet_eval.py --ray writes the plain run's results file
    byte for byte (same detections, same order) and the same metrics."""
    common = ["--model", small_onnx, "--dataset", synthetic_coco["root"], "--threads", 2, "--no-progress"]
    # The plain path is stream_detections + write_results; called directly at the model's 128x128
    # (CenterNet_eval.py's plain path has no --input-size; the Ray path reads the model's own).
    ids, errors = stream_reference(small_onnx, synthetic_coco["images_dir"], synthetic_coco["annotation_file"],
                                   tmp_path / "plain.json")
    assert not errors
    rc = eval_main(*common, "--ray", "--block-size", 4, "--output", tmp_path / "ray.json",
                   "--resultfolder", tmp_path / "ev_ray")
    assert rc == 0
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
    plain = evaluate_coco(synthetic_coco["annotation_file"], str(tmp_path / "plain.json"), verbose=False)
    got = json.loads((tmp_path / "ev_ray" / "metrics.json").read_text())
    assert got["AP"] == plain["AP"] and got["per_class"] == plain["per_class"]
    assert json.loads((tmp_path / "ev_ray" / "stream_summary.json").read_text())["images"] == len(ids)
    assert not (tmp_path / "ray.json.parts").exists()  # the blocks are removed once assembled
    # the fixture's weights are random: the Ray path says so as the plain one does
    assert got["random_weights"] is True
    assert json.loads((tmp_path / "ray.model.json").read_text())["random_weights"] is True


def test_ray_eval_on_three_non_contiguous_categories(local_ray, three_class_models, three_category_coco, tmp_path):
    """A 3-class model on a file of categories 3, 7, 12 on Ray: class j is the
    j-th smallest id, as in the plain run, and the per-class AP uses the
    file's names."""
    ann, images = three_category_coco["annotation_file"], three_category_coco["images_dir"]
    ids, errors = stream_reference(three_class_models["plain"], images, ann, tmp_path / "plain.json")
    assert not errors
    rc = eval_main("--model", three_class_models["plain"], "--annotations", ann, "--images", images, "--ray",
                   "--threads", 2, "--output", tmp_path / "ray.json", "--resultfolder", tmp_path / "ev",
                   "--no-progress")
    assert rc == 0
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
    assert {e["category_id"] for e in json.loads((tmp_path / "ray.json").read_text())} == {3, 7, 12}
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(got["per_class"]) == {c["name"] for c in three_category_coco["dataset"]["categories"]}


def test_annotate_without_ground_truth_writes_the_demos_detections(local_ray, synthetic_coco, small_onnx,
                                                                   tmp_path):
    """--images and no annotation file: detections.json as CenterNet_demo.py
    writes it, with the same detections; an unreadable image is named, the
    others are done."""
    from centernet.pipeline.demo import run_demo
    folder = tmp_path / "photos"
    shutil.copytree(synthetic_coco["images_dir"], folder)
    bad = folder / "zz_not_an_image.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "ann" / "detections.json"
    rc = eval_main("--model", small_onnx, "--dataset", tmp_path / "no_dataset", "--images", folder, "--ray",
                   "--threads", 2, "--block-size", 4, "--vis-thresh", 0.05, "--output", out, "--no-progress")
    assert rc == 1  # the unreadable one
    doc = json.loads(out.read_text())
    demo = run_demo([str(p) for p in sorted(folder.iterdir()) if p != bad], small_onnx, output=tmp_path / "demo",
                    thresh=0.05, threads=2, progress=False)
    want = json.loads(demo["json"].read_text())
    assert {k: doc[k] for k in ("mode", "vis_thresh", "box")} == {k: want[k] for k in ("mode", "vis_thresh", "box")}
    for entry in want["images"]:
        del entry["output"]  # the demo's annotated copy; annotating writes none
    assert doc["images"] == want["images"]
    assert sum(len(e["detections"]) for e in doc["images"]) > 0


def test_annotating_without_ray_equals_ray(local_ray, synthetic_coco, small_onnx, tmp_path):
    """--images and no annotation file, with and without --ray: the same detections.json, byte for byte."""
    folder = tmp_path / "photos"
    shutil.copytree(synthetic_coco["images_dir"], folder)
    common = ["--model", small_onnx, "--dataset", tmp_path / "no_dataset", "--images", folder, "--threads", 2,
              "--block-size", 4, "--vis-thresh", 0.05, "--no-progress"]
    assert eval_main(*common, "--output", tmp_path / "plain.json") == 0
    assert eval_main(*common, "--ray", "--output", tmp_path / "ray.json") == 0
    assert (tmp_path / "plain.json").read_bytes() == (tmp_path / "ray.json").read_bytes()
    assert json.loads((tmp_path / "plain.json").read_text())["images"]
    assert json.loads((tmp_path / "ray.json").read_text())["random_weights"] is True  # the fixture's weights


def test_ray_with_the_torch_backend_equals_the_plain_run(local_ray, synthetic_coco, upstream_checkpoint, tmp_path):
    """--ray --backend torch: actors hold PyTorch sessions of the .pth; the
    results file is the plain torch run's, byte for byte."""
    common = ["--model", upstream_checkpoint, "--backend", "torch", "--dataset", synthetic_coco["root"],
              "--threads", 1, "--limit", 3, "--no-progress"]
    assert eval_main(*common, "--output", tmp_path / "plain.json", "--resultfolder", tmp_path / "ev") == 0
    assert eval_main(*common, "--ray", "--output", tmp_path / "ray.json", "--resultfolder", tmp_path / "ev_ray") == 0
    assert (tmp_path / "plain.json").read_bytes() == (tmp_path / "ray.json").read_bytes()


class Interrupt(KeyboardInterrupt):
    pass


def test_resume_skips_finished_blocks_and_writes_each_image_once(local_ray, synthetic_coco, small_onnx, tmp_path,
                                                                 monkeypatch):
    ann, images_dir = synthetic_coco["annotation_file"], synthetic_coco["images_dir"]
    stream_reference(small_onnx, images_dir, ann, tmp_path / "plain.json")
    out = tmp_path / "ray.json"
    # Ctrl-C after the second of three blocks is written: those two stay on disk.
    real_write, written = BlockStore.write, []

    def write_then_interrupt(self, index, *args):
        real_write(self, index, *args)
        written.append(index)
        if len(written) == 2:
            raise Interrupt()

    monkeypatch.setattr(BlockStore, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match=r"2 of 3 block\(s\) finished, kept in .*ray.json.parts; run the"):
        evaluate_on_ray(small_onnx, images_dir, ann, out, threads=2, block_size=2, progress=False)
    monkeypatch.undo()
    assert not out.exists() and len(list((tmp_path / "ray.json.parts").glob("block-*.json"))) == 2

    logs = []
    with captured_logs(logs):
        ids, errors, stats = evaluate_on_ray(small_onnx, images_dir, ann, out, threads=2, block_size=2,
                                             progress=False)
    assert stats["blocks_resumed"] == 2 and stats["images"] == 2  # only the third block ran
    assert any("resuming: 2 of 3 block(s)" in line for line in logs)
    assert out.read_bytes() == (tmp_path / "plain.json").read_bytes()  # each image once, in order
    assert len(ids) == 6 and not errors


def test_blocks_from_another_model_are_not_reused(local_ray, synthetic_coco, small_onnx, tmp_path):
    """(Reading the images through a file:// URI, as from an object store.)"""
    ann, images_dir = synthetic_coco["annotation_file"], synthetic_coco["images_dir"]
    stream_reference(small_onnx, images_dir, ann, tmp_path / "plain.json", limit=3)
    out = tmp_path / "ray.json"
    parts = tmp_path / "ray.json.parts"
    parts.mkdir()
    (parts / "run.json").write_text(json.dumps({"model_sha256": "another model"}))
    fake = {"images": ["x.jpg"], "ids": [1], "errors": [], "entries": [{"image_id": 1}]}
    (parts / "block-000000.json").write_text(json.dumps(fake))
    logs = []
    with captured_logs(logs):
        _, _, stats = evaluate_on_ray(small_onnx, images_dir.as_uri(), ann, out, threads=2, limit=3, block_size=8,
                                      progress=False)
    assert stats["blocks_resumed"] == 0 and stats["images"] == 3
    assert any("from another model or other settings; starting over" in line for line in logs)
    assert out.read_bytes() == (tmp_path / "plain.json").read_bytes()


@pytest.mark.slow
def test_actor_killed_mid_run_is_restarted_and_every_image_is_written_once(local_ray, small_onnx, tmp_path,
                                                                           monkeypatch):
    """The pool's one inference actor is SIGKILLed in the middle of its
    second block (16 images in 4 Ray tasks of PREPROCESS_BATCH images, one
    call each at batchsize 1): when it starts the second image of its second
    task. The actor kills itself (a subclass of the inference actor, shipped
    to the worker by value) when its own count of images says so: an event
    of the run, not a moment on a clock, so the kill always comes with work
    done and work left to do, however fast the machine.

    Only the outcome is asserted: the run ends without error after Ray
    restarts the actor; each block is written once; the results file is the
    undisturbed run's, byte for byte (every image once, in order). Not which
    process's results reached the driver: a task that ended in the killed
    actor may have had its reply still unsent when the process died, and Ray
    then runs it again in the restarted actor (at least once), so all the
    images may come from the new process."""
    from centernet.io.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path / "data", num_images=16, seed=1, image_sizes=[(64, 48), (48, 64)],
                               max_objects=2)
    ann, images_dir = info["annotation_file"], info["images_dir"]
    stream_reference(small_onnx, images_dir, ann, tmp_path / "plain.json")
    marker, kill_at = tmp_path / "killed", ray_eval.PREPROCESS_BATCH + 1  # images done when the kill comes

    class KilledInItsSecondTask(ray_eval._Infer):
        def __call__(self, batch):
            self.done = getattr(self, "done", 0)
            if self.done == kill_at:
                try:
                    with open(marker, "x") as f:  # once: the restarted actor finds the file
                        f.write(f"{os.getpid()} {batch['index'].tolist()}")
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            out = super().__call__(batch)
            self.done += 1
            return out

    real_write, written = BlockStore.write, []

    def write(self, index, *args):
        written.append(index)
        return real_write(self, index, *args)

    monkeypatch.setattr(ray_eval, "_Infer", KilledInItsSecondTask)
    monkeypatch.setattr(BlockStore, "write", write)
    ids, errors, stats = evaluate_on_ray(small_onnx, images_dir, ann, tmp_path / "ray.json", threads=2,
                                         block_size=4, progress=False)
    assert marker.is_file()  # the kill happened, with 16 - kill_at images still to infer
    assert not errors and len(ids) == 16 and stats["images"] == 16
    assert sorted(written) == [0, 1, 2, 3]  # each block written once
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "plain.json").read_bytes()


def test_missing_or_broken_model_is_one_line(local_ray, synthetic_coco, tmp_path):
    ann, images_dir = synthetic_coco["annotation_file"], synthetic_coco["images_dir"]
    with pytest.raises(UserError, match="nope.onnx: model file not found"):
        evaluate_on_ray(tmp_path / "nope.onnx", images_dir, ann, tmp_path / "r.json", progress=False)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="broken.onnx: ONNX Runtime cannot load it"):
        evaluate_on_ray(broken, images_dir, ann, tmp_path / "r.json", progress=False)
    # An ONNX file that ONNX Runtime refuses: one line, before any worker starts.
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 128, 128])
    y = helper.make_tensor_value_info("hm", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["input"], ["hm"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "unloadable.onnx")
    with pytest.raises(UserError, match=r"^\S*unloadable.onnx: ONNX Runtime cannot load it \("):
        evaluate_on_ray(tmp_path / "unloadable.onnx", images_dir, ann, tmp_path / "r.json", progress=False)


def test_a_user_error_in_the_inference_actor_is_its_one_line(local_ray, synthetic_coco, small_onnx, tmp_path,
                                                             monkeypatch):
    """A UserError where a worker opens the model (ONNX Runtime refusing it on
    that worker's device, say) reaches the caller as that UserError, its
    message alone, not Ray's traceback text."""
    class Refuses(ray_eval._Infer):
        def _start(self, *args):
            raise UserError("model.onnx: ONNX Runtime cannot load it on this worker (test)")

    monkeypatch.setattr(ray_eval, "_Infer", Refuses)
    with pytest.raises(UserError) as info:
        evaluate_on_ray(small_onnx, synthetic_coco["images_dir"], synthetic_coco["annotation_file"],
                        tmp_path / "r.json", threads=2, block_size=4, progress=False)
    assert type(info.value) is UserError
    assert str(info.value) == "model.onnx: ONNX Runtime cannot load it on this worker (test)"


def test_resources_each_actor_reserves():
    assert actor_resources("cpu", 2, node_cpus=2) == {"num_cpus": 1}   # one CPU left for the tasks
    assert actor_resources("cpu", 0, node_cpus=16) == {"num_cpus": 15}
    assert actor_resources("cpu", 4, node_cpus=16) == {"num_cpus": 4}
    assert actor_resources("cuda", 0, node_cpus=16) == {"num_cpus": 1, "num_gpus": 1}
    check_resources({"CPU": 16, "GPU": 2}, {"num_cpus": 1, "num_gpus": 1}, actors=2)
    with pytest.raises(UserError, match="one GPU per actor: 3 actor"):
        check_resources({"CPU": 16, "GPU": 2}, {"num_cpus": 1, "num_gpus": 1}, actors=3)
    with pytest.raises(UserError, match="need 9 CPUs; Ray sees 8"):
        check_resources({"CPU": 8}, {"num_cpus": 4}, actors=2)


def test_ray_is_imported_only_when_used():
    code = ("import sys; import CenterNet_eval, centernet.pipeline.ray_eval, centernet.pipeline.stream; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("flip_in_graph", [False, True], ids=["keep-res+flip+scales", "flip-export+keep-res"])
def test_test_modes_equal_the_streaming_eval(local_ray, tiny_coco, ctdet_onnx_dynamic, ctdet_onnx_flip_dynamic,
                                             tmp_path, flip_in_graph):
    """Keep resolution (a size per image), the flip test (mirrored here, or in
    the exported graph) and a multi-scale merge (scale 0.5 leaves an 8x8 map:
    fewer than 100 detections) give stream_detections' results exactly."""
    from centernet.core.modes import TestMode
    if flip_in_graph:
        model, mode = ctdet_onnx_flip_dynamic, TestMode(keep_res=True)
    else:
        model, mode = ctdet_onnx_dynamic, TestMode(keep_res=True, flip=True, scales=(0.5, 1.0))
    ann, images_dir = tiny_coco["annotation_file"], tiny_coco["images_dir"]
    results, _, errors, want = stream_detections(model, images_dir, ann, threads=2, progress=False, mode=mode,
                                                 upstream_rounding=True)
    write_results(tmp_path / "plain.json", results)
    _, ray_errors, stats = evaluate_on_ray(model, images_dir, ann, tmp_path / "ray.json", threads=2, mode=mode,
                                           upstream_rounding=True, block_size=2, progress=False)
    assert not errors and not ray_errors and stats["mode"] == want["mode"]
    # The same entries of every image, in the same order; the images' order differs (the
    # one-process path goes by input size, Ray by file name).
    assert by_image(tmp_path / "ray.json") == by_image(tmp_path / "plain.json")

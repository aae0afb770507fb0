"""The toolkit's fixed facts, in one leaf module that imports nothing of ours.

Numbers come from upstream CenterNet's ctdet test code (opts.py, the COCO
dataset class, base_detector.py); names are those of our ONNX files and
output folders.
"""
import numpy as np

# Per-channel statistics in B, G, R order (the image is read by OpenCV).
# Upstream converts the listed numbers to float32 before using them.
COCO_MEAN = (0.40789654, 0.44719302, 0.47026115)
COCO_STD = (0.28863828, 0.27408164, 0.27809835)
MEAN = np.array(COCO_MEAN, dtype=np.float32)
STD = np.array(COCO_STD, dtype=np.float32)

INPUT_SIZE = 512   # fixed-resolution input side (the recipe's mode)
DOWN_RATIO = 4     # output stride of the network
KEEP_RES_PAD = 31  # keep-resolution inputs are rounded up to a multiple of 32
HOURGLASS_PAD = 127  # ... and to a multiple of 128 for Hourglass-104 (upstream's opts.py)

# Upstream's datasets' test settings (src/lib/datasets/dataset/*.py): mean and
# std exactly as listed there, applied to the B, G, R channels in that order
# (even Pascal's ImageNet numbers, which are R, G, B statistics: upstream's
# quirk, kept so that its checkpoints see what they were trained on); the
# fixed input side; the number of classes.
DATASET_SETTINGS = {
    "coco": {"mean": COCO_MEAN, "std": COCO_STD, "input_side": 512,
             "num_classes": 80},
    "pascal": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_side": 384, "num_classes": 20},
    "coco_hp": {"mean": COCO_MEAN, "std": COCO_STD, "input_side": 512,
                "num_classes": 1},
}
PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                  "tvmonitor")
K = 100            # detections decoded per image (upstream's --K)

# multi_pose (human pose, upstream's coco_hp): the heads in output order, and
# COCO's 17 person keypoints.
POSE_HEADS = ("hm", "wh", "hps", "reg", "hm_hp", "hp_offset")
NUM_JOINTS = 17
POSE_CHANNELS = {"hm": 1, "wh": 2, "hps": 2 * NUM_JOINTS, "reg": 2, "hm_hp": NUM_JOINTS, "hp_offset": 2}
KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# Left/right joint pairs a mirror swaps (upstream's flip_idx, 0-based joints).
FLIP_IDX = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO's 19 limbs (the person category's "skeleton", made 0-based).
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
            (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
POSE_THRESH = 0.1  # multi_pose_decode: joint peaks scoring at or below it are not snapped to
VIS_THRESH = 0.3   # upstream's --vis_thresh: the demo draws detections at or above it

# The exported graph's input and outputs (output i is <stem>_i.bin in ais_bench's layout).
INPUT_NAME = "actual_input"
OUTPUT_NAMES = ("output1", "output2", "output3")
HEADS = ("hm", "wh", "reg")
TASKS = ("ctdet", "multi_pose")  # upstream's --task values the toolkit serves; the heads say which (hps: multi_pose)


def output_names(count):
    """The graph's output names for a model of `count` heads: output1 .. outputN."""
    return tuple(f"output{i + 1}" for i in range(count))

# ONNX metadata (metadata_props) of an exported file saying what output1 holds.
FLIP_KEY = "centernet.flip_test"  # "1": the flip test is in the graph (export --flip), "0": it is not
HM_KEY = "centernet.hm"           # "logits" (raw) or "sigmoid" (the flip test's averaged heatmap)

# Export targets, and the forms of a deformable convolution for the onnxruntime target.
TARGETS = ("onnxruntime", "ascend")
DCN_FORMS = ("deformconv", "decompose")

# Random weights (the demo's and the tests', centernet/model/random_weights.py): a
# model whose boxes and AP mean nothing. The fact travels with the model: a key
# of the checkpoint dict (beside upstream's 'epoch' and 'state_dict') and an
# attribute of the loaded model (RANDOM_WEIGHTS_FIELD), the exported ONNX
# file's metadata (RANDOM_WEIGHTS_KEY: "1" or "0"), the sessions'
# capabilities; and on to every picture (RANDOM_WEIGHTS_LABEL, a banner) and
# summary (RANDOM_WEIGHTS_NOTE) made with it, and a "random_weights" field in
# detections.json, metrics.json and the other JSON files that describe a run.
RANDOM_WEIGHTS_FIELD = "random_weights"
# A checkpoint may carry its ModelFacts (ModelFacts.to_metadata's entries) under
# FACTS_FIELD beside 'epoch' and 'state_dict' (upstream's loader ignores it), and
# the stand-in detector its record of how it was made under STANDIN_FIELD.
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".tar")  # what a file name ending says is a PyTorch checkpoint
FACTS_FIELD = "centernet_facts"
STANDIN_FIELD = "centernet_standin"
# The stand-in detector shipped with the toolkit (train/standin.py): ResNet-18 + DCN
# trained on generated shapes; it detects shapes, not COCO objects.
STANDIN_CHECKPOINT = "models/ctdet_shapes_resdcn18.pth"
RANDOM_WEIGHTS_KEY = "centernet.random_weights"
RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS - boxes mean nothing"
RANDOM_WEIGHTS_NOTE = (f"note: {RANDOM_WEIGHTS_LABEL}: the model's weights are random (the demo's), so its "
                       "detections and AP say nothing about detection quality")

# Image files the preprocessing reads, and the wider set the demo and annotation take.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEMO_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")

# The PyTorch backend's choices.
TORCH_DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
CASTS = ("autocast", "model")
DCN_KERNELS = ("auto", "ours", "torchvision")

"""centernet.report.visualize: boxes land on their outlines and nowhere far from any
box, stay inside the image, and labels stay readable at any size; skeletons
(multi_pose) in their sides' colours, only for detections at or above the threshold."""
import cv2
import numpy as np
import pytest

from centernet.constants import KEYPOINT_NAMES, RANDOM_WEIGHTS_LABEL, SKELETON, VIS_THRESH
from centernet.report.visualize import (BANNER_COLOUR, BANNER_TEXT_COLOUR, CENTRE_COLOUR, FONT, LEFT_COLOUR,
                                        RIGHT_COLOUR, ascii_label, banner_height, box_pixels, class_colours,
                                        draw_banner, draw_detections, draw_skeleton, label_rect, limb_side,
                                        style_for, text_colour)

NAMES = ["cat", "dog", "car"]


def changed(a, b):
    return np.any(a != b, axis=2)


def outline_mask(shape, box_px, thickness):
    """The ring of `thickness` pixels just inside an inclusive pixel box."""
    x1, y1, x2, y2 = box_px
    mask = np.zeros(shape[:2], bool)
    mask[y1:y2 + 1, x1:x2 + 1] = True
    mask[y1 + thickness:y2 - thickness + 1, x1 + thickness:x2 - thickness + 1] = False
    return mask


def test_outlines_drawn_and_nothing_far_from_any_box():
    rng = np.random.default_rng(0)
    image = rng.integers(90, 160, size=(240, 320, 3), dtype=np.uint8)  # textured mid-grey
    boxes = np.array([[30.4, 60.0, 170.2, 150.7], [190.0, 120.0, 300.0, 220.0]])
    drawn = draw_detections(image, boxes, [0.9, 0.5], [0, 2], NAMES)
    assert drawn.shape == image.shape and drawn.dtype == image.dtype
    assert not np.shares_memory(drawn, image)
    diff = changed(drawn, image)
    t = style_for(240, 320).thickness
    rings = np.zeros(image.shape[:2], bool)
    for box in boxes:
        # the stroke lies inside the box's pixel bounds: floor of x1, ceil of x2
        px = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])) - 1, int(np.ceil(box[3])) - 1)
        ring = outline_mask(image.shape, px, t)
        assert diff[ring].all()  # every outline pixel is painted
        rings |= ring
        # the inside stays untouched below the label's reach (labels go above these boxes)
        x1, y1, x2, y2 = px
        assert not diff[y1 + t + 1:y2 - t, x1 + t + 1:x2 - t].any()
    # Nothing changes far from the outlines: the labels sit on the boxes'
    # top edges and are at most a few text heights tall.
    distance = cv2.distanceTransform((~rings).astype(np.uint8), cv2.DIST_L2, 5)
    assert distance[diff].max() <= 25
    assert not diff[distance > 25].any()
    # the labels above the boxes did change something there
    assert diff[40:60, 30:80].any() and diff[100:120, 190:240].any()


def test_label_and_text_colours_contrast():
    assert text_colour((255, 255, 255)) == (0, 0, 0)
    assert text_colour((0, 255, 255)) == (0, 0, 0)      # yellow
    assert text_colour((0, 0, 0)) == (255, 255, 255)
    assert text_colour((200, 30, 30)) == (255, 255, 255)  # dark blue
    colours = class_colours(80)
    assert len(set(colours)) == 80
    for bg in (0, 255):  # a label is opaque: its text contrasts with its own box, not the photo
        image = np.full((120, 200, 3), bg, np.uint8)
        drawn = draw_detections(image, [[20, 50, 180, 110]], [0.8], [0], NAMES, colours=[(0, 220, 255)] * 3)
        rect, _ = label_rect("cat 0.80", (20, 50, 179, 109), 120, 200, style_for(120, 200))
        x1, y1, x2, y2 = rect
        label = drawn[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3)
        assert (np.all(label == (0, 220, 255), axis=1)).mean() > 0.4   # the box colour
        assert (label.sum(axis=1) < 150).sum() > 10                    # dark text on it


def test_boxes_and_labels_stay_inside_the_image():
    h, w = 100, 150
    style = style_for(h, w)
    # a box hanging over the top-left corner, one over the right edge, one entirely outside
    boxes = np.array([[-40, -30, 60, 50], [120, 40, 400, 90], [500, 500, 600, 600]], float)
    image = np.full((h, w, 3), 128, np.uint8)
    drawn = draw_detections(image, boxes, [0.9, 0.8, 0.7], [0, 1, 2], ["traffic light", "hair drier", "x"])
    diff = changed(drawn, image)
    # the clipped box outlines are on the image border
    assert diff[0:50, 0].all() and diff[0, 0:60].all()       # box 0: left and top edges at the border
    assert diff[40:90, w - 1].all()                           # box 1: right edge at the border
    for box, name in zip(boxes[:2], ["traffic light 0.90", "hair drier 0.80"]):
        px = box_pixels(box, h, w)
        (x1, y1, x2, y2), _ = label_rect(name, px, h, w, style)
        assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h         # the whole label is visible
    assert box_pixels(boxes[2], h, w) is None                 # nothing drawn for it
    # a box with swapped corners (negative size from the network) is drawn as the same box
    a = draw_detections(image, [[20, 20, 80, 70]], [0.5], [0], NAMES)
    b = draw_detections(image, [[80, 70, 20, 20]], [0.5], [0], NAMES)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("h,w", [(60, 80), (480, 640), (3000, 4000)])
def test_text_scales_with_the_image_and_stays_readable(h, w):
    style = style_for(h, w)
    (_, cap), _ = cv2.getTextSize("H", FONT, style.font_scale, style.text_thickness)
    assert cap >= 9  # at least about 10 pixels high even on a thumbnail
    side = np.sqrt(h * w)
    assert cap <= max(14, 0.03 * side)  # and in proportion on a large photo
    assert style.thickness >= 1 and style.thickness <= max(1, side / 200)
    assert style_for(3000, 4000).font_scale > style_for(480, 640).font_scale


def test_best_detection_drawn_last_and_ascii_labels():
    image = np.zeros((100, 100, 3), np.uint8)
    colours = [(255, 0, 0), (0, 0, 255)]
    # two identical boxes: the higher score's colour must win on the outline
    drawn = draw_detections(image, [[10, 30, 90, 90], [10, 30, 90, 90]], [0.9, 0.4], [1, 0], ["a", "b"],
                            colours=colours)
    assert tuple(drawn[89, 50]) == (0, 0, 255)
    assert ascii_label("caf\u00e9 0.50") == "caf? 0.50"


def is_banner(pixels, tol=40):
    """Pixels of the banner's red background or its yellow text (or between: antialiasing)."""
    pixels = np.asarray(pixels, np.int32)
    red = np.abs(pixels - BANNER_COLOUR).max(-1) <= tol
    yellow = np.abs(pixels - BANNER_TEXT_COLOUR).max(-1) <= tol
    between = (pixels[..., 0] <= tol) & (pixels[..., 2] >= BANNER_COLOUR[2] - tol)  # no blue, full red
    return red | yellow | between


@pytest.mark.parametrize("h,w", [(64, 64), (120, 160), (480, 640), (3000, 4000)])
def test_banner_across_the_top_in_its_colours_and_nothing_else_changed(h, w):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    drawn = draw_banner(image)
    assert drawn.shape == image.shape and not np.shares_memory(drawn, image)
    bar = banner_height(h, w)
    assert 0 < bar < h / 2 and bar >= min(h, 11)
    assert np.array_equal(drawn[bar:], image[bar:])        # below the bar the picture is untouched
    assert is_banner(drawn[:bar]).all()                     # the bar is all red and yellow
    mostly_red = np.abs(drawn[:bar].astype(int) - BANNER_COLOUR).max(-1) <= 1
    assert 0.5 < mostly_red.mean() < 1.0                    # red ground, and some text on it
    text = drawn[:bar, :, 1] > 128  # green: the yellow text (shrunk to fit a thumbnail: antialiased)
    columns = np.flatnonzero(text.any(0))
    assert len(columns) and 0 < columns[0] and columns[-1] < w - 1  # the text fits inside the picture
    assert draw_banner(image, RANDOM_WEIGHTS_LABEL).tobytes() == drawn.tobytes()  # the label is the default


# --- skeletons (multi_pose) ----------------------------------------------------

def person(x0, y0, scale=1.0):
    """17 joints of a standing person facing the camera (left_* on the image's right)."""
    from centernet.io.synthetic import POSE_TEMPLATE
    return np.asarray(POSE_TEMPLATE, np.float64) * (80 * scale, 180 * scale) + (x0, y0)


def is_colour(pixels, bgr, tol=30):
    return np.abs(np.asarray(pixels, int) - bgr).max(-1) <= tol


def test_limb_sides_follow_the_joint_names():
    sides = {(KEYPOINT_NAMES[a], KEYPOINT_NAMES[b]): limb_side(a, b) for a, b in SKELETON}
    assert len(sides) == 19
    assert sides["left_ankle", "left_knee"] == "left" and sides["right_elbow", "right_wrist"] == "right"
    assert sides["left_hip", "right_hip"] == "centre" and sides["left_shoulder", "right_shoulder"] == "centre"
    assert sides["nose", "left_eye"] == "centre" and sides["left_ear", "left_shoulder"] == "left"
    assert sorted(sides.values()).count("left") == sorted(sides.values()).count("right") == 7


def test_skeleton_limbs_drawn_in_their_side_colour():
    image = np.full((240, 320, 3), 128, np.uint8)
    joints = person(100, 30)
    drawn = draw_skeleton(image, joints[None])
    assert not np.shares_memory(drawn, image) and (image == 128).all()
    colours = {"left": LEFT_COLOUR, "right": RIGHT_COLOUR, "centre": CENTRE_COLOUR}
    for a, b in SKELETON:
        colour = colours[limb_side(a, b)]
        # pixels of the limb's colour on the line between its two joints, away from the dots
        for t in (0.4, 0.5, 0.6):
            x, y = joints[a] + t * (joints[b] - joints[a])
            around = drawn[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2]
            if np.hypot(*(joints[b] - joints[a])) > 12:
                assert is_colour(around, colour).any(), (KEYPOINT_NAMES[a], KEYPOINT_NAMES[b], t)
    # joints as filled dots in their side's colour
    for j in range(17):
        x, y = np.round(joints[j]).astype(int)
        side = "left" if KEYPOINT_NAMES[j].startswith("left_") else "right" if KEYPOINT_NAMES[j].startswith(
            "right_") else "centre"
        assert is_colour(drawn[y, x], colours[side], tol=60)
    # nothing far from the skeleton
    changed_px = np.argwhere(changed(drawn, image))
    assert changed_px[:, 1].min() >= joints[:, 0].min() - 6 and changed_px[:, 1].max() <= joints[:, 0].max() + 6
    # custom colours, and one person's (17, 2) joints
    green = draw_skeleton(image, joints, colour_left=(0, 255, 0), colour_right=(0, 255, 0),
                          colour_centre=(0, 255, 0))
    assert is_colour(green[changed(green, image)], (0, 255, 0), tol=130).all()


def test_detections_with_keypoints_at_or_above_the_threshold():
    image = np.full((240, 320, 3), 128, np.uint8)
    boxes = np.array([[90, 25, 190, 215], [200, 25, 300, 215]], float)
    joints = np.stack([person(100, 30), person(210, 30)])
    # the demo's call: keypoints beside the boxes, the threshold upstream's vis_thresh
    drawn = draw_detections(image, boxes, [0.9, 0.2], [0, 0], ["person"], keypoints=joints, thresh=VIS_THRESH)
    left_half, right_half = changed(drawn, image)[:, :195], changed(drawn, image)[:, 198:]
    assert left_half.any() and not right_half.any()  # nothing of the detection below the threshold
    assert is_colour(drawn, LEFT_COLOUR).any() and is_colour(drawn, RIGHT_COLOUR).any()
    # below the threshold with thresh=None (the old call): drawn; box-only call unchanged by the new arguments
    old_call = draw_detections(image, boxes, [0.9, 0.2], [0, 0], ["person"], keypoints=joints)
    assert changed(old_call, image)[:, 198:].any()
    plain = draw_detections(image, boxes, [0.9, 0.2], [0, 0], ["person"])
    assert not is_colour(plain, LEFT_COLOUR, tol=10).any()
    assert np.array_equal(plain, draw_detections(image, boxes, [0.9, 0.2], [0, 0], ["person"], thresh=0.1))
    # all the detections below the threshold: the image unchanged
    assert np.array_equal(draw_detections(image, boxes, [0.25, 0.2], [0, 0], ["person"], keypoints=joints,
                                          thresh=VIS_THRESH), image)
    with pytest.raises(ValueError, match="1 keypoint sets for 2 boxes"):
        draw_detections(image, boxes, [0.9, 0.2], [0, 0], ["person"], keypoints=joints[:1])


def test_skeleton_skips_joints_it_cannot_place():
    image = np.zeros((400, 400, 3), np.uint8)
    full = person(100, 20, 2.0)
    joints = full.copy()
    joints[9] = np.nan                      # left_wrist unknown
    drawn = draw_skeleton(image, joints, visible=np.arange(17) != 0)  # nose hidden
    def untouched(x, y):
        return not changed(drawn[y - 1:y + 2, x - 1:x + 2], image[y - 1:y + 2, x - 1:x + 2]).any()

    nose = np.round(full[0]).astype(int)
    assert untouched(*nose)                                              # no dot
    elbow_wrist = np.round((full[7] + full[9]) / 2).astype(int)
    assert untouched(*elbow_wrist)                                       # no limb to the unknown joint
    assert not untouched(*np.round(full[7]).astype(int))                 # the elbow is drawn
    far = draw_skeleton(image, np.full((1, 17, 2), -10000.0))  # upstream's "no peak" position
    assert np.array_equal(far, image)

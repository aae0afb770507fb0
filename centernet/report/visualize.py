"""Draw detections on an image: a box per object in a colour per class, and a
label with the class name and score.

Sizes follow the image (line width and text height grow with it), so a label
reads the same on a 320-pixel thumbnail and a 12-megapixel photo. Labels are
opaque boxes in the class colour with black or white text, whichever contrasts
more, so they stay readable on bright and dark backgrounds. Every box and label
is kept inside the image: a box is clipped to it and its stroke drawn inward
from the box's edge; a label goes above its box, or just inside the box's top
edge where there is no room above.

A multi_pose detection also gets its skeleton (draw_skeleton): COCO's 19
limbs as lines, blue on the body's left side, red on its right, magenta in
between, and the 17 joints as dots.

A picture made with random weights (the demo's) gets a banner across its top
(draw_banner: RANDOM_WEIGHTS_LABEL, yellow on red), drawn last, over any box.
"""
import colorsys
from dataclasses import dataclass

import cv2

from centernet.constants import KEYPOINT_NAMES, NUM_JOINTS, RANDOM_WEIGHTS_LABEL, SKELETON
from centernet.core.transforms import clip_box  # noqa: F401 (re-exported)
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
# cv2's height of FONT's capital letters at scale 1, thickness 1 (pixels).
_FONT_CAP_HEIGHT = cv2.getTextSize("H", FONT, 1.0, 1)[0][1]

# Skeletons (multi_pose), BGR: limbs of the body's left side, its right side,
# and the rest (head, shoulders, hips), as upstream's debugger colours them.
LEFT_COLOUR = (255, 0, 0)      # blue
RIGHT_COLOUR = (0, 0, 255)     # red
CENTRE_COLOUR = (255, 0, 255)  # magenta

BANNER_COLOUR = (0, 0, 220)         # BGR: red
BANNER_TEXT_COLOUR = (0, 255, 255)  # BGR: yellow
BANNER_TEXT_SCALE = 1.5             # banner text height over the labels'


def class_colours(num_classes):
    """A distinct, bright BGR colour per class: hues spread by the golden
    ratio (neighbouring class indices get far-apart hues), with saturation
    and value alternating a little so that close hues still differ."""
    colours = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        sat = (0.85, 0.65)[k % 2]
        val = (1.0, 0.85, 0.95)[k % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours.append((int(round(255 * b)), int(round(255 * g)), int(round(255 * r))))
    return colours


def text_colour(bgr):
    """Black or white, whichever contrasts more with a BGR background
    (relative luminance of sRGB, WCAG's threshold)."""
    def linear(c):
        c /= 255.0
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    b, g, r = (linear(float(c)) for c in bgr)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (0, 0, 0) if luminance > 0.179 else (255, 255, 255)


@dataclass(frozen=True)
class Style:
    """Line and text sizes for one image size."""
    thickness: int     # box stroke, pixels
    font_scale: float
    text_thickness: int
    pad: int           # label padding around the text, pixels


def style_for(height, width):
    """Sizes that look alike at any resolution: text about 2.2% of the image's
    geometric-mean side (at least 11 pixels high), strokes about a third of a
    percent (at least 1 pixel)."""
    side = float(np.sqrt(height * width))
    text_px = max(11.0, 0.022 * side)
    font_scale = text_px / _FONT_CAP_HEIGHT
    return Style(thickness=max(1, int(round(side / 320))),
                 font_scale=font_scale,
                 text_thickness=max(1, int(round(text_px / 12))),
                 pad=max(2, int(round(text_px * 0.3))))


def ascii_label(text):
    """OpenCV's built-in fonts draw ASCII only: other characters become '?'."""
    return text.encode("ascii", "replace").decode("ascii")


def box_pixels(box, height, width):
    """The clipped box as inclusive integer pixel bounds (x1, y1, x2, y2), or
    None when nothing of it is inside the image."""
    x1, y1, x2, y2 = clip_box(box, height, width)
    px1, py1 = int(np.floor(x1)), int(np.floor(y1))
    px2, py2 = int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1
    if px2 < px1 or py2 < py1 or px1 >= width or py1 >= height:
        return None
    return px1, py1, min(px2, width - 1), min(py2, height - 1)


def label_rect(text, box_px, height, width, style):
    """Where a label goes: (x1, y1, x2, y2) inclusive pixel bounds and the
    text's baseline origin. Above the box when it fits, else inside its top
    edge; shifted left to stay inside the image."""
    tw = cv2.getTextSize(text, FONT, style.font_scale, style.text_thickness)[0][0]
    # Height from a fixed sample with ascenders and descenders, so every
    # label of an image has the same height whatever its letters.
    (_, th), baseline = cv2.getTextSize("Hdgy0", FONT, style.font_scale, style.text_thickness)
    lw, lh = tw + 2 * style.pad, th + baseline + 2 * style.pad
    bx1, by1 = box_px[0], box_px[1]
    y1 = by1 - lh if by1 - lh >= 0 else by1
    y1 = max(0, min(y1, height - lh))
    x1 = max(0, min(bx1, width - lw))
    origin = (x1 + style.pad, y1 + style.pad + th)
    return (x1, y1, x1 + lw - 1, y1 + lh - 1), origin


def draw_box(image, box_px, colour, thickness):
    """A rectangle outline whose stroke lies inside the box's pixel bounds."""
    x1, y1, x2, y2 = box_px
    t = thickness
    if x2 - x1 + 1 <= 2 * t or y2 - y1 + 1 <= 2 * t:  # too small for a hollow box
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
        return
    for a, b in (((x1, y1), (x2, y1 + t - 1)), ((x1, y2 - t + 1), (x2, y2)),
                 ((x1, y1), (x1 + t - 1, y2)), ((x2 - t + 1, y1), (x2, y2))):
        cv2.rectangle(image, a, b, colour, -1)


def joint_side(j):
    """"left", "right" or "centre": the side of the body joint j (an index
    into KEYPOINT_NAMES) is on, from its name."""
    name = KEYPOINT_NAMES[j]
    return "left" if name.startswith("left_") else "right" if name.startswith("right_") else "centre"


def limb_side(a, b):
    """"left" where both joints of the limb (a, b) are left_* joints,
    "right" where both are right_*, else "centre" (the head, and the limbs
    across the body: shoulders, hips)."""
    sides = {joint_side(a), joint_side(b)}
    return sides.pop() if len(sides) == 1 and "centre" not in sides else "centre"


def skeleton_sizes(style):
    """(limb line width, joint dot radius) in pixels for a Style."""
    return style.thickness + 1, style.thickness + 2


def _skeleton_onto(out, joints, colours, style, visible=None):
    """Draw one person's limbs, then joints, into `out` (in place); joints
    (NUM_JOINTS, 2) image pixels, colours {"left", "right", "centre": BGR}."""
    width_px, radius = skeleton_sizes(style)
    shift = 4  # cv2's fixed-point bits: joints at sub-pixel positions
    ok = np.all(np.isfinite(joints), axis=1) & (np.abs(joints) < 1e6).all(axis=1)
    if visible is not None:
        ok &= np.asarray(visible, bool).reshape(-1)
    pts = [(int(round(x * (1 << shift))), int(round(y * (1 << shift)))) if good else None
           for (x, y), good in zip(joints, ok)]
    for a, b in SKELETON:
        if pts[a] is not None and pts[b] is not None:
            cv2.line(out, pts[a], pts[b], colours[limb_side(a, b)], width_px, cv2.LINE_AA, shift)
    for j, p in enumerate(pts):
        if p is not None:
            cv2.circle(out, p, radius << shift, colours[joint_side(j)], -1, cv2.LINE_AA, shift)


def draw_skeleton(image, joints, colour_left=LEFT_COLOUR, colour_right=RIGHT_COLOUR, colour_centre=CENTRE_COLOUR,
                  visible=None, style=None):
    """A copy of the BGR image with each person's skeleton drawn: joints
    (N, 17, 2) (or one person's (17, 2)) x, y in image pixels, COCO's 19
    limbs (SKELETON) as lines, colour_left for limbs between two left_*
    joints, colour_right for two right_*, colour_centre for the others (head,
    shoulders, hips); then the joints as filled dots in their side's colour.
    visible: optional (N, 17) booleans, False joints (and their limbs) not
    drawn; joints that are not finite are never drawn."""
    out = np.ascontiguousarray(image).copy()
    style = style or style_for(*out.shape[:2])
    joints = np.asarray(joints, dtype=np.float64).reshape(-1, NUM_JOINTS, 2)
    vis = None if visible is None else np.asarray(visible, bool).reshape(-1, NUM_JOINTS)
    colours = {"left": colour_left, "right": colour_right, "centre": colour_centre}
    for n in range(len(joints)):
        _skeleton_onto(out, joints[n], colours, style, None if vis is None else vis[n])
    return out


def draw_detections(image, boxes, scores, classes, names, colours=None, style=None, keypoints=None, thresh=None,
                    skeleton_colours=(LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR)):
    """A copy of the BGR image with each detection drawn; boxes (N, 4) x1, y1,
    x2, y2 in image pixels, scores (N,), classes (N,) indices into `names`.
    Drawn in ascending score order, so the best ones end up on top.
    keypoints: optional (N, 17, 2) joints in image pixels (multi_pose), each
    detection's skeleton drawn (draw_skeleton's way, in skeleton_colours:
    left, right, centre) over its box and under its label. thresh: where
    given, detections scoring below it are not drawn at all (upstream's
    --vis_thresh)."""
    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    colours = colours or class_colours(len(names))
    style = style or style_for(height, width)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if keypoints is not None:
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_JOINTS, 2)
        if len(keypoints) != len(boxes):
            raise ValueError(f"{len(keypoints)} keypoint sets for {len(boxes)} boxes")
    sides = dict(zip(("left", "right", "centre"), skeleton_colours))
    for i in np.argsort(scores, kind="stable"):
        if thresh is not None and not scores[i] >= thresh:
            continue
        px = box_pixels(boxes[i], height, width)
        colour = colours[int(classes[i])]
        if px is not None:
            draw_box(out, px, colour, style.thickness)
        if keypoints is not None:  # joints may lie outside a box that is outside the image
            _skeleton_onto(out, keypoints[i], sides, style)
        if px is None:
            continue
        text = ascii_label(f"{names[int(classes[i])]} {scores[i]:.2f}")
        (lx1, ly1, lx2, ly2), origin = label_rect(text, px, height, width, style)
        cv2.rectangle(out, (lx1, ly1), (lx2, ly2), colour, -1)
        cv2.putText(out, text, origin, FONT, style.font_scale, text_colour(colour),
                    style.text_thickness, cv2.LINE_AA)
    return out


def banner_height(height, width, style=None):
    """Pixel rows the banner covers at the top of a height x width picture."""
    style = style or style_for(height, width)
    (_, th), baseline = cv2.getTextSize("Hdgy0", FONT, style.font_scale * BANNER_TEXT_SCALE, _banner_thickness(style))
    return min(height, th + baseline + 2 * style.pad)


def _banner_thickness(style):
    return max(style.text_thickness + 1, int(round(style.text_thickness * BANNER_TEXT_SCALE)))


def draw_banner(image, text=RANDOM_WEIGHTS_LABEL, style=None):
    """A copy of the BGR image with a bar across its top: `text` in yellow on
    red, larger and bolder than the labels (BANNER_TEXT_SCALE), made smaller
    where the picture is too narrow for it. Draw it last, so no box covers it."""
    out = np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    style = style or style_for(height, width)
    thickness = _banner_thickness(style)
    bar = banner_height(height, width, style)
    cv2.rectangle(out, (0, 0), (width - 1, bar - 1), BANNER_COLOUR, -1)
    text = ascii_label(text)
    scale = style.font_scale * BANNER_TEXT_SCALE
    tw = cv2.getTextSize(text, FONT, scale, thickness)[0][0]
    room = max(1, width - 2 * style.pad)
    if tw > room:
        scale *= room / tw
        thickness = max(1, int(round(thickness * room / tw)))
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    origin = (max(0, (width - tw) // 2), max(th, (bar - th - baseline) // 2 + th))
    cv2.putText(out, text, origin, FONT, scale, BANNER_TEXT_COLOUR, thickness, cv2.LINE_AA)
    return out

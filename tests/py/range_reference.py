"""Reference calibration ranges computed from the FULL values of a tensor, to check onnx-ptq's
streaming observers and range search (src/calibrate/observer.rs, src/calibrate/range*.rs).

Usage, one check:
    range_reference.py VALUES.npy --method {percentile,entropy,mse} [--bits 8] [--signed]
        [--symmetric] [--percentile 99.999] [--bins 2048] --ours LO HI
prints one JSON object. Batch mode:
    range_reference.py --jsonl
reads one request per stdin line, {"values": "x.npy", "method": "mse", "bits": 8,
"signed": false, "symmetric": false, "percentile": 99.999, "bins": 2048, "ours": [lo, hi]}
(all but values, method and ours optional), and answers one JSON object per line.
VALUES.npy holds any float array; it is flattened, and NaN/Inf are dropped (as the observers do).

Every answer has method, n (finite values), ours_lo, ours_hi, ref_lo, ref_hi, and:
- percentile: err_lo, err_hi = |ours - ref|. P is clamped to [50, 100]. Symmetric target:
  T = np.percentile(|x|, P), ref = (max(min, -T), min(max, T)); otherwise
  ref = (np.percentile(x, 100 - P), np.percentile(x, P)). onnx-ptq promises err <= its bin width.
- entropy: ours_objective (KL at our threshold T = max(|LO|, |HI|)), ref_objective (the
  smallest KL over all candidates, by brute force), ratio, ref_threshold, levels, kl_bins,
  kl_bin_width, and `uniform`: the same at TensorRT's usual grid (2048 bins over [0, max|x|]),
  for information only (see below).
- mse: ours_objective = the true mean of (x - fake_quant(x))^2 over all values for our range,
  ref_objective = the smallest one found by a brute-force search, ratio, ref_lo/ref_hi its range
  (clamped to the data, which does not change what it quantizes to).

Definitions (the Rust side documents the same ones):
- Quantization: qmin/qmax from bits (clamped to [2, 16]), signed and symmetric; signed symmetric
  uses [-(2^(b-1)-1), 2^(b-1)-1]. scale/zero point as onnxruntime's compute_scale_zp: the range
  is widened to include 0, made symmetric (+-max(|lo|,|hi|)) for symmetric targets,
  scale = float32((hi - lo) / (qmax - qmin)), zero point round((qmin + qmax) / 2) if symmetric
  else clip(round(qmin - lo / scale)), rounding half to even. fake_quant is ONNX
  QuantizeLinear/DequantizeLinear in float32.
- Entropy (TensorRT's KL search): histogram of |x| for x != 0 on the canonical power-of-two grid
  of the data, folded at 0, then bins merged in pairs while there are >= 2 * bins of them. The grid:
  w = 2^e with e the smallest integer >= -149 such that floor(max/w) - floor(min/w) <= 4 bins - 1
  and max|x| < 2^(e + 40); x goes to k = floor(x / w), folded to k if k >= 0 else -k - 1. For each
  candidate i in levels..=n: P = h[:i] with sum(h[i:]) added to P[i-1]; bin j is in level
  floor(j * levels / i); Q spreads each level's sum of h (unclipped) evenly over the level's bins
  where P > 0; KL(P/sum P || Q/sum Q), infinite if some P > 0 has Q = 0. levels = 2^(b-1) for
  signed targets or tensors with negative values, else 2^b. Candidate i means threshold i * w; a
  threshold T is evaluated at candidate clip(ceil(T / w), levels, n).
  The `uniform` variant uses np.histogram(|x|, 2048, (0, max|x|)) instead: a streaming histogram
  cannot reproduce that grid exactly, and KL on it jumps by several % (or to infinity) between
  neighbouring candidates, so it is reported, not asserted on.
"""
import argparse
import json
import math
import sys

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)


class Target:
    def __init__(self, bits, signed, symmetric):
        b = min(max(int(bits), 2), 16)
        self.bits, self.signed, self.symmetric = b, bool(signed), bool(symmetric)
        if not signed:
            self.qmin, self.qmax = 0, 2**b - 1
        elif symmetric:
            self.qmin, self.qmax = -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1
        else:
            self.qmin, self.qmax = -(2 ** (b - 1)), 2 ** (b - 1) - 1


def load(path, cache={}):
    if path not in cache:
        x = np.load(path).astype(np.float32).ravel()
        cache.clear()
        cache[path] = x[np.isfinite(x)]
    return cache[path]


def finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------- quantization and MSE


def scale_zero_point(lo, hi, t):
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if t.symmetric:
        m = max(-lo, hi)
        lo, hi = -m, m
    scale = float(np.float32(min((hi - lo) / (t.qmax - t.qmin), F32_MAX)))
    scale = 1.0 if scale == 0.0 else max(scale, F32_TINY)
    if t.symmetric:
        zp = np.round((t.qmin + t.qmax) / 2.0)
    else:
        zp = np.round(t.qmin - lo / scale)
    return np.float32(scale), int(np.clip(zp, t.qmin, t.qmax))


def fake_quant(x, scale, zp, t):
    q = np.clip(np.round(x / scale) + np.float32(zp), t.qmin, t.qmax)
    return (q - np.float32(zp)).astype(np.float32) * scale


def true_mse(x, lo, hi, t):
    scale, zp = scale_zero_point(lo, hi, t)
    d = x.astype(np.float64) - fake_quant(x, scale, zp, t).astype(np.float64)
    return float(np.mean(d * d))


def points_mse(px, pw, los, his, t):
    """Approximate MSE for many candidate ranges at once, on weighted points (float64)."""
    out = np.empty(len(los))
    total = pw.sum()
    for start in range(0, len(los), 32):
        sl = slice(start, start + 32)
        params = [scale_zero_point(a, b, t) for a, b in zip(los[sl], his[sl])]
        s = np.array([float(p[0]) for p in params])[:, None]
        z = np.array([p[1] for p in params], dtype=np.float64)[:, None]
        q = np.clip(np.round(px[None, :] / s) + z, t.qmin, t.qmax)
        d = px[None, :] - (q - z) * s
        out[sl] = (d * d) @ pw / total
    return out


def axis_candidates(m, even, geometric):
    if m <= 0:
        return np.array([0.0])
    c = np.concatenate([np.linspace(m / even, m, even), np.geomspace(m * 1e-5, m, geometric)])
    return np.unique(c)


def neighbours(values, v):
    """The candidates just below and above v in a sorted array (v's own neighbours)."""
    k = int(np.searchsorted(values, v))
    lo = values[k - 1] if k > 0 else v
    hi = values[k + 1] if k + 1 < len(values) else v
    return lo, hi


def mse_reference(x, t):
    mn, mx = float(x.min()), float(x.max())
    # Weighted points: the mean of the values in each of 16384 bins (close to exact).
    counts, edges = np.histogram(x, bins=16384, range=(mn, mx) if mx > mn else None)
    sums, _ = np.histogram(x, bins=edges, weights=x.astype(np.float64))
    keep = counts > 0
    px, pw = sums[keep] / counts[keep], counts[keep].astype(np.float64)
    # Ranges are parameterised by d = -lo >= 0 and u = hi >= 0 (0 is always representable).
    if t.symmetric:
        m = max(-mn, mx)
        us = axis_candidates(m, 3000, 1000)
        ds = None
    else:
        ds, us = axis_candidates(max(-mn, 0.0), 50, 30), axis_candidates(max(mx, 0.0), 50, 30)

    def evaluate(dd, uu):
        if t.symmetric:
            return points_mse(px, pw, -uu, uu, t)
        return points_mse(px, pw, -dd, uu, t)

    if t.symmetric:
        grid_d, grid_u = np.zeros_like(us), us
    else:
        grid_d, grid_u = (a.ravel() for a in np.meshgrid(ds, us, indexing="ij"))
    obj = evaluate(grid_d, grid_u)
    tried = list(zip(grid_d, grid_u, obj))
    # Zoom in around the best few, three times, with finer grids.
    for start in np.argsort(obj)[:3]:
        d0, u0 = grid_d[start], grid_u[start]
        d_lo, d_hi = neighbours(ds, d0) if ds is not None else (0.0, 0.0)
        u_lo, u_hi = neighbours(us, u0)
        for _ in range(3):
            dd = np.linspace(d_lo, d_hi, 1 if t.symmetric or d_hi == d_lo else 21)
            uu = np.linspace(u_lo, u_hi, 41 if t.symmetric else 21)
            gd, gu = (a.ravel() for a in np.meshgrid(dd, uu, indexing="ij"))
            o = evaluate(gd, gu)
            tried += list(zip(gd, gu, o))
            k = int(np.argmin(o))
            d0, u0 = gd[k], gu[k]
            sd = (d_hi - d_lo) / 20 if len(dd) > 1 else 0.0
            su = (u_hi - u_lo) / (len(uu) - 1)
            d_lo, d_hi = max(d0 - sd, 0.0), d0 + sd
            u_lo, u_hi = max(u0 - su, 0.0), u0 + su
    # The true objective at the 20 best approximate candidates, then a last local polish.
    tried.sort(key=lambda r: r[2])
    best = None
    for d, u, _ in tried[:20]:
        lo, hi = (-u, u) if t.symmetric else (-d, u)
        v = true_mse(x, lo, hi, t)
        if best is None or v < best[0]:
            best = (v, lo, hi)
    v, lo, hi = best
    for step in (1e-3, 2e-4):
        for a in np.linspace(-1, 1, 9):
            for b in np.linspace(-1, 1, 1 if t.symmetric else 9):
                if t.symmetric:
                    u = hi * (1 + a * step)
                    cand = (-u, u)
                else:
                    cand = (min(lo * (1 + b * step), 0.0), max(hi * (1 + a * step), 0.0))
                cv = true_mse(x, cand[0], cand[1], t)
                if cv < v:
                    v, lo, hi = cv, cand[0], cand[1]
    return v, lo, hi


# ---------------------------------------------------------------- entropy


def canonical_exponent(mn, mx, bins):
    slots = 4 * bins
    m = max(abs(mn), abs(mx))
    e = -149
    if m > 0:
        e = max(e, (math.frexp(m)[1] - 1) + 1 - 40)
    span = mx - mn
    if span > 0:
        e = max(e, math.floor(math.log2(span / slots)) - 1)
    while math.floor(mx / 2.0**e) - math.floor(mn / 2.0**e) > slots - 1:
        e += 1
    return e


def kl_histogram(x, bins):
    e = canonical_exponent(float(x.min()), float(x.max()), bins)
    w = 2.0**e
    nz = x[x != 0].astype(np.float64)
    if nz.size == 0:
        return None, None
    k = np.floor(nz / w).astype(np.int64)
    f = np.where(k >= 0, k, -k - 1)
    end = int(f.max()) + 1
    shift = 0
    while ((end - 1) >> shift) + 1 >= 2 * bins:
        shift += 1
    h = np.bincount(f >> shift, minlength=((end - 1) >> shift) + 1)
    return h, w * 2.0**shift


def kl_divergence(h, i, levels):
    h = h.astype(np.float64)
    p = h[:i].copy()
    p[-1] += h[i:].sum()
    level = (np.arange(i) * levels) // i
    mass = np.bincount(level, weights=h[:i], minlength=levels)
    non_zero = np.bincount(level, weights=(p > 0).astype(np.float64), minlength=levels)
    pos = p > 0
    q = np.zeros(i)
    q[pos] = mass[level[pos]] / non_zero[level[pos]]
    if np.any(q[pos] == 0):
        return math.inf
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])))


def kl_search(h, w, levels, ours_t):
    n = len(h)
    if levels > n:
        return {"ours_objective": None, "ref_objective": None, "ref_threshold": n * w}
    kls = np.array([kl_divergence(h, i, levels) for i in range(levels, n + 1)])
    best = len(kls) - 1 - int(np.argmin(kls[::-1]))  # ties: the largest threshold
    i_ours = int(min(max(math.ceil(ours_t / w), levels), n))
    return {
        "ours_objective": kls[i_ours - levels],
        "ref_objective": kls[best],
        "ref_threshold": (levels + best) * w,
        "ours_candidate": i_ours,
        "ref_candidate": levels + best,
    }


def entropy_reference(x, t, bins, ours):
    mn, mx = float(x.min()), float(x.max())
    b = t.bits
    levels = 2 ** (b - 1) if (t.signed or mn < 0) else 2**b
    ours_t = max(abs(ours[0]), abs(ours[1]))
    h, w = kl_histogram(x, bins)
    if h is None:
        return {"levels": levels, "ours_objective": None, "ref_objective": None}
    res = kl_search(h, w, levels, ours_t)
    res.update(levels=levels, kl_bins=len(h), kl_bin_width=w)
    a = np.abs(x[x != 0]).astype(np.float64)
    hu, _ = np.histogram(a, bins=2048, range=(0.0, float(a.max())))
    uni = kl_search(hu, float(a.max()) / 2048, levels, ours_t)
    res["uniform"] = {k: finite_or_none(v) for k, v in uni.items()}
    tr = res["ref_threshold"]
    res["ref_lo"], res["ref_hi"] = max(mn, -tr), min(mx, tr)
    return res


# ---------------------------------------------------------------- driver


def answer(req):
    x = load(req["values"])
    t = Target(req.get("bits", 8), req.get("signed", False), req.get("symmetric", False))
    ours = [float(v) for v in req["ours"]]
    method = req["method"]
    out = {"method": method, "n": int(x.size), "ours_lo": ours[0], "ours_hi": ours[1]}
    if x.size == 0:
        out["error"] = "no finite value"
        return out
    mn, mx = float(x.min()), float(x.max())
    if method == "percentile":
        p = min(max(float(req.get("percentile", 99.999)), 50.0), 100.0)
        x64 = x.astype(np.float64)
        if t.symmetric:
            tt = float(np.percentile(np.abs(x64), p))
            lo, hi = max(mn, -tt), min(mx, tt)
        else:
            lo, hi = float(np.percentile(x64, 100.0 - p)), float(np.percentile(x64, p))
        out.update(ref_lo=lo, ref_hi=hi, err_lo=abs(ours[0] - lo), err_hi=abs(ours[1] - hi))
    elif method == "entropy":
        out.update(entropy_reference(x, t, int(req.get("bins", 2048)), ours))
    elif method == "mse":
        v, lo, hi = mse_reference(x, t)
        lo, hi = max(lo, mn), min(hi, mx)  # shown clamped to the data, like ours
        out.update(ours_objective=true_mse(x, ours[0], ours[1], t), ref_objective=v, ref_lo=lo, ref_hi=hi)
    else:
        raise SystemExit(f"unknown method {method!r}")
    if out.get("ours_objective") is not None and out.get("ref_objective"):
        out["ratio"] = out["ours_objective"] / out["ref_objective"]
    return {k: (finite_or_none(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("values", nargs="?")
    ap.add_argument("--jsonl", action="store_true", help="read requests from stdin, one per line")
    ap.add_argument("--method", choices=["percentile", "entropy", "mse"])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--signed", action="store_true")
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--percentile", type=float, default=99.999)
    ap.add_argument("--bins", type=int, default=2048)
    ap.add_argument("--ours", type=float, nargs=2, metavar=("LO", "HI"))
    a = ap.parse_args()
    if a.jsonl:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(answer(json.loads(line))), flush=True)
        return
    if not (a.values and a.method and a.ours):
        ap.error("VALUES.npy, --method and --ours are required (or --jsonl)")
    req = dict(values=a.values, method=a.method, bits=a.bits, signed=a.signed, symmetric=a.symmetric,
               percentile=a.percentile, bins=a.bins, ours=a.ours)
    print(json.dumps(answer(req)))


if __name__ == "__main__":
    main()

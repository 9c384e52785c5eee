"""Weight-only benchmark: `onnx-ptq quantize --mode weight-only` against onnxruntime's
MatMulNBitsQuantizer (round to nearest), no calibration data except for GPTQ.

Models:
  - minilm:  MiniLM-L3 (quantize.py MODELS["minilm"]), output "461"; held-out samples
             tests/py/model_data.py seed 1 padded to 64 tokens; GPTQ calibrates on seed 0, padded
             to 64 tokens too.
  - decoder: a generated decoder-only transformer (the generator below):
             token Gather on a [V,H] table, --layers pre-norm blocks (LayerNormalization,
             attention with MatMul [H,H] x4 and heads of 64, MLP MatMul [H,4H] and [4H,H] with SiLU,
             residual Adds; no causal mask, which changes nothing measured here), final
             LayerNormalization and MatMul [H,V] to `logits`; weights normal with std 0.02;
             input `input_ids` int64 [1,S]. Defaults H 512, 4 layers, V 12288: 25 M weights,
             about 100 MB. Held-out: --decoder-samples sequences of --seq random token ids.

Rows per model (--bits 4 and --block 32 by default, on both tools; symmetric):
  - onnx-ptq clip:     `onnx-ptq quantize M --mode weight-only` (its default without data);
  - onnx-ptq rtn:      the same with `--algorithm rtn` (what ORT does);
  - onnx-ptq gptq:     `--calib DIR --algorithm gptq` (minilm only);
  - onnx-ptq standard: the default with `--form standard` (INT4 + blocked DequantizeLinear);
  - ORT RTN:           MatMulNBitsQuantizer(bits, block_size, is_symmetric=True) as
                       tests/py/ort_nbits.py calls it, MatMul only (tables stay float).
Columns: whole-process quantize time (onnx-ptq and a `python -c` running ORT's quantizer, both
with start-up) and in brackets each tool's own in-process time (the sum of onnx-ptq's --report
phases; ORT's quantizer call and save) and peak RSS of that process
(`/usr/bin/time -v` when present, else the child's ru_maxrss from a wrapper process); output
size (x fp32); weight SQNR min / mean over the MatMul/Gemm weights (embedding tables left out:
ORT keeps them float) -- onnx-ptq's from its --report (`rewrite.weight_errors`), ORT's computed
here by dequantizing each MatMulNBits B/scales(/zero_points) against the float weight (the same
dequantizer is run on onnx-ptq's MatMulNBits outputs as a cross-check, stored in the JSON);
output quality: mean over held-out samples of the cosine to the fp32 model (fp32 with graph
optimizations off, quantized model with onnxruntime's default, i.e. all, optimizations) and the
pooled SQNR; onnxruntime CPU latency (fully optimized session, one intra-op thread, median of
interleaved runs in rotating order, quantize.py latencies; minilm on one held-out sample,
decoder on the first --latency-seq tokens of one, 1 = one decode step without a KV cache, the
memory-bound case weight-only quantization is for); and in onnxruntime's optimized graph the
number of MatMulNBits nodes against MatMul/Gemm left float with a constant weight.

Usage (after `bash .ci/setup` and `cargo build --release`):
  ~/.cache/onnx-ptq/venv/bin/python bench/weight_only.py [--models minilm decoder]
      [--runs 200] [--bin PATH] [--json out.json] [--bits 4] [--block 32]
      [--hidden 512] [--layers 4] [--vocab 12288] [--seq 64] [--latency-seq 1]
Not a test: it prints a table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dynamic as db  # noqa: E402 - the dynamic benchmark: references, quality, kernels
import quantize as qb  # noqa: E402 - the static benchmark: data, sessions, latency

ROOT, CACHE = qb.ROOT, qb.CACHE
MODELS = ("minilm", "decoder")
TOOLS = ("clip", "rtn", "gptq", "standard", "ort")
TOOL_NAMES = {"clip": "onnx-ptq clip", "rtn": "onnx-ptq rtn", "gptq": "onnx-ptq gptq",
              "standard": "onnx-ptq standard", "ort": "ORT RTN"}
OURS_ARGS = {"clip": [], "rtn": ["--algorithm", "rtn"], "gptq": ["--algorithm", "gptq"],
             "standard": ["--form", "standard"]}
TIME_V = "/usr/bin/time"
EXTERNAL_ABOVE = 1.5e9  # bytes of weights above which models are written with external data

ORT_SCRIPT = """
import os, sys, time
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
src, out, bits, block, external = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
t = time.perf_counter()
q = MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=block, is_symmetric=True)
q.process()
if external:
    onnx.save_model(q.model.model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(out) + ".data")
else:
    onnx.save_model(q.model.model, out)
print(time.perf_counter() - t)
"""

# Peak RSS without /usr/bin/time: a wrapper whose only child is the measured process.
RSS_WRAPPER = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r.returncode)
"""


def measured(cmd, cwd=None):
    """(completed process, whole-process seconds, peak RSS in MB) of one command."""
    fd, rss_file = tempfile.mkstemp(suffix=".rss")
    os.close(fd)
    try:
        if os.access(TIME_V, os.X_OK):
            wrapped = [TIME_V, "-v", "-o", rss_file] + cmd
        else:
            wrapped = [sys.executable, "-c", RSS_WRAPPER, rss_file] + cmd
        start = time.perf_counter()
        r = qb.run(wrapped, cwd=cwd)
        seconds = time.perf_counter() - start
        text = open(rss_file).read()
        if wrapped[0] == TIME_V:
            kb = next(int(l.split(":")[1]) for l in text.splitlines() if "Maximum resident set size" in l)
        else:
            kb = int(text)
        return r, seconds, kb / 1024
    finally:
        os.remove(rss_file)


def model_bytes(path):
    """The model file plus the external data files it references."""
    m = onnx.load(path, load_external_data=False)
    locations = {e.value for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    base = os.path.dirname(os.path.abspath(path))
    return os.path.getsize(path) + sum(os.path.getsize(os.path.join(base, l)) for l in locations)


# ---------------------------------------------------------------- decoder generator

def build_decoder(path, hidden, layers, vocab, seed=0):
    heads = max(1, hidden // 64)
    if hidden % heads:
        raise SystemExit(f"--hidden {hidden}: not a multiple of {heads} heads")
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32) * 0.02), name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def layer_norm(x, name):
        g = const(f"{name}.weight", np.ones(hidden, np.float32))
        b = const(f"{name}.bias", np.zeros(hidden, np.float32))
        return node("LayerNormalization", [x, g, b], f"{name}/out", axis=-1, epsilon=1e-5)

    split = const("shape_heads", np.array([0, 0, heads, hidden // heads], np.int64))
    merge = const("shape_hidden", np.array([0, 0, hidden], np.int64))
    scale = const("attn_scale", np.array(1 / np.sqrt(hidden // heads), np.float32))
    x = node("Gather", [weight("embed.weight", (vocab, hidden)), "input_ids"], "embed/out", axis=0)
    for l in range(layers):
        p = f"layers.{l}"
        h = layer_norm(x, f"{p}.ln1")
        q, k, v = (node("MatMul", [h, weight(f"{p}.attn.{w}.weight", (hidden, hidden))], f"{p}/attn/{w}")
                   for w in ("q", "k", "v"))
        q = node("Transpose", [node("Reshape", [q, split], f"{p}/attn/q_split")], f"{p}/attn/q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, split], f"{p}/attn/k_split")], f"{p}/attn/k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, split], f"{p}/attn/v_split")], f"{p}/attn/v_t", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], f"{p}/attn/scores"), scale], f"{p}/attn/scaled")
        a = node("MatMul", [node("Softmax", [s], f"{p}/attn/probs", axis=-1), v], f"{p}/attn/context")
        a = node("Reshape", [node("Transpose", [a], f"{p}/attn/context_t", perm=[0, 2, 1, 3]), merge], f"{p}/attn/merged")
        x = node("Add", [x, node("MatMul", [a, weight(f"{p}.attn.o.weight", (hidden, hidden))], f"{p}/attn/o")], f"{p}/res1")
        h = layer_norm(x, f"{p}.ln2")
        u = node("MatMul", [h, weight(f"{p}.mlp.up.weight", (hidden, 4 * hidden))], f"{p}/mlp/up")
        u = node("Mul", [u, node("Sigmoid", [u], f"{p}/mlp/sigmoid")], f"{p}/mlp/silu")
        x = node("Add", [x, node("MatMul", [u, weight(f"{p}.mlp.down.weight", (4 * hidden, hidden))], f"{p}/mlp/down")], f"{p}/res2")
    h = layer_norm(x, "final_ln")
    nodes.append(helper.make_node("MatMul", [h, weight("lm_head.weight", (hidden, vocab))], ["logits"], name="lm_head"))
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "S", vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if sum(t.ByteSize() for t in inits) > EXTERNAL_ABOVE:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    else:
        onnx.save_model(model, path)


def make_decoder(path, hidden, layers, vocab):
    """The built-in generator, in memory (bench/make_decoder.py writes external data for the
    large-model runs and has a different attention; bench/large_weight_only.py uses it)."""
    build_decoder(path, hidden, layers, vocab)
    return "built-in"


def token_samples(model, out, n, seq, seed):
    """n .npz files of seq random token ids (below the first Gather table's row count)."""
    m = onnx.load(model, load_external_data=False)
    dims = {t.name: t.dims for t in m.graph.initializer}
    vocab = next(dims[g.input[0]][0] for g in m.graph.node if g.op_type == "Gather" and g.input[0] in dims)
    inputs = qb.session(model, False).get_inputs()
    if any(i.type != "tensor(int64)" for i in inputs):
        raise SystemExit(f"decoder inputs {[(i.name, i.type) for i in inputs]}: only token ids are generated")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        files.append(os.path.join(out, f"sample_{i:03d}.npz"))
        np.savez(files[-1], **{inp.name: rng.integers(0, vocab, size=(1, seq), dtype=np.int64) for inp in inputs})
    return files


# ---------------------------------------------------------------- weight errors

def float_weights(model):
    """{MatMul/Gemm output name: float weight [K, N]} and the set of Gather table names."""
    m = onnx.load(model)
    consts = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    weights, tables = {}, set()
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts:
            w = numpy_helper.to_array(consts[n.input[1]]).astype(np.float64)
            if w.ndim != 2:
                continue
            if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
                w = w.T
            weights[n.output[0]] = (n.input[1], w)
        elif n.op_type == "Gather" and n.input[0] in consts:
            tables.add(n.input[0])
    return weights, tables


def unpack(packed, bits, count):
    """uint8 [..., bytes] -> levels [..., count], lowest bits first."""
    if bits == 8:
        return packed[..., :count].astype(np.int32)
    if bits != 4:
        raise ValueError(f"{bits}-bit MatMulNBits")
    levels = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return levels[..., :count].astype(np.int32)


def nbits_weights(path):
    """{output name: dequantized weight [K, N]} of every MatMulNBits of a model."""
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in n.attribute}
        k, N, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        k_blocks = -(-k // block)
        b = numpy_helper.to_array(inits[n.input[1]]).reshape(N, k_blocks, -1)
        scales = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64).reshape(N, k_blocks)
        zp = np.full((N, k_blocks), 1 << (bits - 1), np.float64)
        if len(n.input) > 3 and n.input[3]:
            z = numpy_helper.to_array(inits[n.input[3]])
            if z.dtype == np.uint8:
                zp = unpack(z.reshape(N, -1), bits, k_blocks).astype(np.float64)
            else:  # float zero points (not written by either tool here)
                zp = z.astype(np.float64).reshape(N, k_blocks)
        q = unpack(b, bits, block).astype(np.float64)  # [N, k_blocks, block]
        w = ((q - zp[..., None]) * scales[..., None]).reshape(N, -1)[:, :k]
        out[n.output[0]] = w.T
    return out


def sqnr_db(w, d):
    err = ((w - d) ** 2).sum()
    return float(10 * np.log10((w * w).sum() / err)) if err > 0 else float("inf")


def computed_sqnr(path, weights):
    """SQNR of every MatMulNBits weight of `path` against the float weight it replaced."""
    got = {}
    for name, d in nbits_weights(path).items():
        if name in weights and weights[name][1].shape == d.shape:
            got[weights[name][0]] = sqnr_db(weights[name][1], d)
    return got


def summary(sqnrs):
    v = list(sqnrs.values())
    return {"count": len(v), "min": min(v), "mean": float(np.mean(v))} if v else {"count": 0}


# ---------------------------------------------------------------- main

def quantize_ours(args, tool, model, out, calib_dir):
    report = out + ".report.json"
    cmd = [args.bin, "quantize", model, "--mode", "weight-only", "--bits", str(args.bits),
           "--block", args.block, "-o", out, "-q", "--report", report] + OURS_ARGS[tool]
    if tool == "gptq":
        cmd += ["--calib", calib_dir]
    _, seconds, rss = measured(cmd, cwd=os.path.dirname(out))
    rep = json.load(open(report))
    os.remove(report)
    errors = rep["rewrite"]["weight_errors"]
    phases = rep.get("seconds") or {}
    return {"convert_s": seconds, "convert_in_process_s": sum(phases.values()), "phases_s": phases, "peak_rss_mb": rss,
            "report_sqnr": {e["tensor"]: e["sqnr_db"] for e in errors},
            "formats": sorted({e["format"] for e in errors})}


def quantize_ort(args, model, out, external):
    work = tempfile.mkdtemp(dir=os.path.dirname(out))  # its temporaries: a throw-away cwd
    try:
        r, seconds, rss = measured([sys.executable, "-c", ORT_SCRIPT, model, out, str(args.bits), args.block,
                                    "1" if external else "0"], cwd=work)
        return {"convert_s": seconds, "convert_in_process_s": float(r.stdout.strip().splitlines()[-1]),
                "peak_rss_mb": rss}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_model(args, name, tmp, ktmp):
    work = os.path.join(tmp, name)
    os.makedirs(work)
    if name == "minilm":
        model, _kind, output, _ = qb.MODELS["minilm"]
        pad = ["--pad", "64"]
        held = qb.make_data("minilm", os.path.join(work, "held"), args.held_out, 1, None, pad)
        calib_dir = os.path.join(work, "calib")
        qb.make_data("minilm", calib_dir, args.calib, 0, None, pad)
        tools = TOOLS
        feeds = dict(np.load(held[0]))
        r = {"model": model}
    else:
        model = os.path.join(work, "fp32", "decoder.onnx")
        os.makedirs(os.path.dirname(model))
        source = make_decoder(model, args.hidden, args.layers, args.vocab)
        output = qb.session(model, False).get_outputs()[0].name
        held = token_samples(model, os.path.join(work, "held"), args.decoder_samples, args.seq, 1)
        calib_dir = None
        tools = tuple(t for t in TOOLS if t != "gptq")
        feeds = {k: v[:, :args.latency_seq] for k, v in np.load(held[0]).items()}
        r = {"generator": source, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
             "seq": args.seq, "latency_seq": args.latency_seq}
    fp32_bytes = model_bytes(model)
    r.update({"output": output, "held_out": len(held), "fp32_bytes": fp32_bytes,
              "fp32_kernels": db.kernels(model, ktmp)})
    weights, tables = float_weights(model)
    external = fp32_bytes > EXTERNAL_ABOVE
    refs = db.references(model, held, output)
    paths = {}
    for tool in tools:
        out_dir = os.path.join(work, tool)
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "model.onnx")
        print(f"  {TOOL_NAMES[tool]}", file=sys.stderr)
        try:
            if tool == "ort":
                t = quantize_ort(args, model, out, external)
                t["weight_sqnr"] = computed_sqnr(out, weights)
            else:
                t = quantize_ours(args, tool, model, out, calib_dir)
                # MatMul/Gemm weights only, like ORT's (tables are 8-bit here, float in ORT's).
                rep = t.pop("report_sqnr")
                t["weight_sqnr"] = {k: v for k, v in rep.items() if k not in tables}
                t["table_sqnr"] = {k: v for k, v in rep.items() if k in tables}
                if tool != "standard":  # the dequantizer used on ORT's output, checked on ours
                    t["weight_sqnr_check"] = summary(computed_sqnr(out, weights))
            t["weight_summary"] = summary(t["weight_sqnr"])
            t["bytes"] = model_bytes(out)
            t["quality"] = db.quality(out, held, output, refs, None, True)
            t["kernels"] = db.kernels(out, ktmp)
            paths[tool] = out
        except Exception as e:  # noqa: BLE001 - a failed or unloadable model is a result
            lines = [l for l in str(e).splitlines() if l.strip()]
            t = {"error": " / ".join(lines[-2:])[:200]}
        r[tool] = t
    ok = [tool for tool in tools if tool in paths]
    print("  latency", file=sys.stderr)
    lat = qb.latencies([model] + [paths[t] for t in ok], feeds, args.runs, args.threads)
    r["fp32_ms"] = lat[0] * 1e3
    for tool, s in zip(ok, lat[1:]):
        r[tool]["ms"] = s * 1e3
    shutil.rmtree(work, ignore_errors=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--held-out", type=int, default=32, help="minilm held-out samples (seed 1)")
    ap.add_argument("--calib", type=int, default=32, help="minilm GPTQ calibration samples (seed 0)")
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--block", default="32", help="block size along K (both tools)")
    ap.add_argument("--hidden", type=int, default=512, help="decoder hidden size")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers")
    ap.add_argument("--vocab", type=int, default=12288, help="decoder vocabulary")
    ap.add_argument("--seq", type=int, default=64, help="decoder held-out sequence length")
    ap.add_argument("--decoder-samples", type=int, default=8, help="decoder held-out sequences (seed 1)")
    ap.add_argument("--latency-seq", type=int, default=1, help="decoder tokens per latency run")
    ap.add_argument("--runs", type=int, default=200, help="at least this many timed runs per model")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for latency")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target")), "release/onnx-ptq"))
    ap.add_argument("--json")
    args = ap.parse_args()
    if not args.block.isdigit():
        raise SystemExit("--block: a number (ORT's quantizer has no per-channel form)")
    args.bin = os.path.abspath(args.bin)
    args.json = args.json and os.path.abspath(args.json)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ktmp = os.path.join(tmp, "kernels")
        os.makedirs(ktmp)
        for name in args.models:
            print(f"== {name}", file=sys.stderr)
            results[name] = bench_model(args, name, tmp, ktmp)
    print_table(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def kernel_cell(k):
    cell = f"{k['ops'].get('MatMulNBits', 0)} NBits, {k['float_weight']} float-W"
    if k["ops"].get("GatherBlockQuantized"):
        cell += f", {k['ops']['GatherBlockQuantized']} GBQ"
    return cell


def print_table(results, args):
    print(f"weight-only, {args.bits}-bit, block {args.block}, symmetric; latency on {args.threads} thread(s)")
    head = ("model", "tool", "quantize s (whole process)", "peak RSS MB", "MB (x fp32)", "W SQNR min / mean dB",
            "cos (SQNR dB)", "ms (x fp32)", "kernels")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        label = name if name == "minilm" else f"decoder H{r['hidden']} L{r['layers']} V{r['vocab']}"
        print(f"| {label} | fp32 | | | {r['fp32_bytes'] / 1e6:.2f} (1) | | | {r['fp32_ms']:.3f} (1) "
              f"| {kernel_cell(r['fp32_kernels'])} |")
        for tool in TOOLS:
            if tool not in r:
                continue
            t = r[tool]
            if "error" in t:
                print(f"| {label} | {TOOL_NAMES[tool]} | failed: {t['error']} |" + " |" * 6)
                continue
            w, q = t["weight_summary"], t["quality"]
            print("| " + " | ".join([
                label, TOOL_NAMES[tool], f"{t['convert_s']:.2f} ({t['convert_in_process_s']:.2f} in-proc)",
                f"{t['peak_rss_mb']:.0f}",
                f"{t['bytes'] / 1e6:.2f} ({t['bytes'] / r['fp32_bytes']:.3f})",
                f"{w['min']:.2f} / {w['mean']:.2f}" if w["count"] else "",
                f"{q['mean_cosine']:.5f} ({q['sqnr_db']:.2f})",
                f"{t['ms']:.3f} ({t['ms'] / r['fp32_ms']:.2f})" if "ms" in t else "",
                kernel_cell(t["kernels"]),
            ]) + " |")
    if "decoder" in results:
        r = results["decoder"]
        print(f"decoder: quality on {r['held_out']} x {r['seq']} random tokens, latency on {r['latency_seq']} token(s); "
              f"generator {r['generator']}")


if __name__ == "__main__":
    main()

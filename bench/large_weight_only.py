"""Weight-only quantization of a generated decoder larger than this machine's memory: peak RSS
against the largest weight, and conversion throughput against the disk's sequential read speed
measured in the same run (the targets of the weight-only issue: RSS <= 3x the largest single
weight tensor, throughput >= 50 % of the disk's read speed).

Steps:
  1. the model: bench/make_decoder.py --hidden H --layers L --vocab V into --dir/in (kept
     between runs, regenerated when its size does not match; about 3.5 min for 28 GB here);
     the defaults (H 8192, 8 layers, V 32000, untied) give 27.9 GB of float32 weights, over
     the 24 GiB of this machine. Never commit it.
  2. the disk: `dd iflag=direct bs=8M` of the whole data file (the page cache neither helps
     nor is filled), MB/s;
  3. per algorithm (--algorithms, default the data-free default and RTN): the page cache is
     dropped when running as root (else the model, larger than memory, is mostly not cached
     anyway), then `/usr/bin/time -v onnx-ptq quantize IN --mode weight-only [--algorithm A]
     -o OUT --report R`: wall, CPU, peak RSS (file-backed pages included), throughput (input
     bytes / wall), output size;
  4. with --check (default on), the output of the first algorithm is loaded in onnxruntime
     with its external data and runs one token (logits shape and finiteness printed).

ONNX Runtime's MatMulNBitsQuantizer is not run here: it starts with onnx.load of the whole
model, which needs more memory than the machine has (bench/weight_only.py compares the two
tools on models that fit).

Usage (after `bash .ci/setup` and `cargo build --release`):
  ~/.cache/onnx-ptq/venv/bin/python bench/large_weight_only.py [--dir ~/.cache/onnx-ptq/huge]
      [--hidden 8192] [--layers 8] [--vocab 32000] [--algorithms default rtn] [--no-check]
      [--bin PATH] [--json out.json]
Not a test: it prints a table.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
TIME_V = "/usr/bin/time"


def expected_bytes(h, layers, v):
    """Float32 bytes of make_decoder.py's weights (its docstring's formula, untied)."""
    return 4 * (v * h * 2 + layers * (12 * h * h + 9 * h) + 2 * h)


def mem_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_caches():
    """Empties the page cache (root only); returns whether it could."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def ensure_model(args):
    src = os.path.join(args.dir, "in")
    model, data = os.path.join(src, "model.onnx"), os.path.join(src, "model.onnx.data")
    want = expected_bytes(args.hidden, args.layers, args.vocab)
    have = os.path.getsize(data) if os.path.exists(data) else 0
    # The data file aligns tensors to 4096 bytes: a little over the weights' own size.
    if not (want <= have < want + (1 << 24) and os.path.exists(model)):
        shutil.rmtree(src, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(HERE, "make_decoder.py"), "--out", src,
                        "--hidden", str(args.hidden), "--layers", str(args.layers),
                        "--vocab", str(args.vocab)], check=True, stdout=subprocess.DEVNULL)
        print(f"generated {os.path.getsize(data) / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s",
              flush=True)
    return model, data


def largest_tensor(model_path):
    """Bytes of the largest initializer (external data lengths read from the model file only)."""
    import onnx
    m = onnx.load(model_path, load_external_data=False)
    best = 0
    for t in m.graph.initializer:
        length = {e.key: e.value for e in t.external_data}.get("length")
        size = int(length) if length else len(t.raw_data)
        best = max(best, size)
    return best


def disk_read(data):
    """Sequential read speed of `data` with direct I/O, MB/s (dd's own figure)."""
    size = os.path.getsize(data)
    t = time.perf_counter()
    r = subprocess.run(["dd", f"if={data}", "of=/dev/null", "bs=8M", "iflag=direct"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:  # a filesystem without O_DIRECT: a plain read after dropping caches
        drop_caches()
        t = time.perf_counter()
        subprocess.run(["dd", f"if={data}", "of=/dev/null", "bs=8M"], check=True,
                       capture_output=True)
        wall = time.perf_counter() - t
    return size / wall / 1e6, wall


def time_field(text, label):
    for line in text.splitlines():
        if label in line:
            return line.split(label, 1)[1].strip()
    raise RuntimeError(f"/usr/bin/time printed no '{label}':\n{text}")


def wall_seconds(text):
    parts = [float(p) for p in time_field(text, "Elapsed (wall clock) time (h:mm:ss or m:ss):").split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def quantize(args, model, algorithm, out_dir):
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    out, report = os.path.join(out_dir, "model.onnx"), os.path.join(out_dir, "report.json")
    cmd = [TIME_V, "-v", args.bin, "quantize", model, "--mode", "weight-only", "-q",
           "-o", out, "--report", report]
    if algorithm != "default":
        cmd += ["--algorithm", algorithm]
    cached = "dropped" if drop_caches() else "not dropped (not root)"
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"onnx-ptq failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    rep = json.load(open(report))
    out_bytes = os.path.getsize(out) + os.path.getsize(out + ".data")
    return {
        "algorithm": algorithm,
        "page_cache": cached,
        "wall_s": wall_seconds(r.stderr),
        "user_s": float(time_field(r.stderr, "User time (seconds):")),
        "sys_s": float(time_field(r.stderr, "System time (seconds):")),
        "peak_rss_bytes": int(time_field(r.stderr, "Maximum resident set size (kbytes):")) * 1024,
        "out_bytes": out_bytes,
        "weights": len(rep["rewrite"]["weight_errors"]),
        "sqnr_min_db": min(w["sqnr_db"] for w in rep["rewrite"]["weight_errors"]),
        "out": out,
    }


def check(path, vocab):
    import numpy as np
    import onnxruntime as ort
    t = time.perf_counter()
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = s.run(None, {"input_ids": np.array([[1, 2]], dtype=np.int64)})[0]
    return {"shape": list(logits.shape), "finite": bool(np.isfinite(logits).all()),
            "seconds": round(time.perf_counter() - t, 1), "ok": list(logits.shape) == [1, 2, vocab]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.join(CACHE, "huge"))
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--algorithms", nargs="+", default=["default", "rtn"],
                    help="'default' (no --algorithm flag), or onnx-ptq --algorithm values")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target")), "release/onnx-ptq"))
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(TIME_V):
        raise SystemExit("/usr/bin/time (GNU time) is missing: run `bash .ci/setup`")
    model, data = ensure_model(args)
    size = os.path.getsize(data) + os.path.getsize(model)
    memory = mem_total()
    largest = largest_tensor(model)
    print(f"model {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB), machine memory "
          f"{memory / 2**30:.2f} GiB{'' if size > memory else ' -- NOT larger than memory'}; "
          f"largest weight {largest / 1e9:.3f} GB", flush=True)
    disk_mbs, disk_wall = disk_read(data)
    print(f"disk sequential read (dd, direct I/O, whole data file): {disk_mbs:.0f} MB/s "
          f"({disk_wall:.0f} s)", flush=True)
    rows = []
    for algorithm in args.algorithms:
        row = quantize(args, model, algorithm, os.path.join(args.dir, f"out-{algorithm}"))
        row["throughput_mbs"] = size / row["wall_s"] / 1e6
        rows.append(row)
        print(f"  {algorithm}: {row['wall_s']:.0f} s", flush=True)
    result = {"model_bytes": size, "memory_bytes": memory, "largest_tensor_bytes": largest,
              "disk_read_mbs": disk_mbs, "runs": rows}
    if not args.no_check:
        result["onnxruntime"] = check(rows[0]["out"], args.vocab)
    print()
    print(f"| algorithm | wall s | CPU s (user+sys) | throughput MB/s (x disk {disk_mbs:.0f}) "
          f"| peak RSS GB (x largest weight) | output GB (x model) | weight SQNR min dB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algorithm']} | {r['wall_s']:.1f} | {r['user_s'] + r['sys_s']:.0f} "
              f"| {r['throughput_mbs']:.0f} ({r['throughput_mbs'] / disk_mbs:.2f}) "
              f"| {r['peak_rss_bytes'] / 1e9:.2f} ({r['peak_rss_bytes'] / largest:.2f}) "
              f"| {r['out_bytes'] / 1e9:.2f} ({r['out_bytes'] / size:.3f}) | {r['sqnr_min_db']:.2f} |")
    print("targets: peak RSS <= 3x the largest weight; throughput >= 0.5x the disk's read speed")
    if "onnxruntime" in result:
        print(f"onnxruntime loads {rows[0]['algorithm']}'s output with its external data and runs "
              f"one token: {result['onnxruntime']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

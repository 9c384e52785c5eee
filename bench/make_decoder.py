"""Writes a synthetic decoder-only transformer as ONNX with external data, of a chosen size, for
testing that large models (over the 2 GiB protobuf limit) convert with bounded memory.

The graph (opset 17): token embedding Gather (table [V, H]); per layer LayerNormalization, Q/K/V
MatMuls with [H, H] weights, single-head attention without a causal mask (Q·Kᵀ scaled, Softmax,
·V), output MatMul [H, H], residual Add, LayerNormalization, MLP MatMul [H, 4H] + bias, Erf-based
GELU, MatMul [4H, H] + bias, residual Add; final LayerNormalization and an LM head: MatMul with its
own [H, V] weight, or with --tied a Gemm (transB=1) on the embedding table itself (reshaped to 2-D
and back). Input `input_ids` int64 [1, seq]; output `logits` float [1, seq, V].

Matrices and embeddings are random normal with std 0.02 (LayerNorm scales 1 + that, biases that),
from --seed. Weights are written straight to `<name>.data` in chunks, each tensor at a 4096-byte
aligned offset, and the model refers to them with external_data entries, so the generator holds
at most one chunk of one tensor: it can write models larger than memory. Tensors under 1 KiB stay
inline.

Size in float32 bytes: 4·(V·H·(1 or 2 untied) + L·(12·H² + 9·H) + 2·H). The defaults
(H 2048, L 9, V 32000, untied) give about 2.34 GB (2.18 GiB).

Usage:
  ~/.cache/onnx-ptq/venv/bin/python bench/make_decoder.py --out DIR
      [--hidden 2048] [--layers 9] [--vocab 32000] [--tied] [--seed 0] [--name model.onnx]
      [--check]
--check loads the result in onnxruntime and runs one token (and prints the logits' shape).
Prints one JSON line: {"model", "data", "data_bytes", "n_external", "parameters"}.
Never commit the generated files.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096
CHUNK = 4 << 20  # values per chunk written: 16 MiB of float32
INLINE_BELOW = 1024


class Writer:
    """Appends tensors to the data file and records the initializers that refer to them."""

    def __init__(self, path, location, seed):
        self.f = open(path, "wb")
        self.location = location
        self.offset = 0
        self.rng = np.random.default_rng(seed)
        self.initializers = []
        self.n_external = 0
        self.parameters = 0

    def _pad(self):
        pad = -self.offset % ALIGN
        self.f.write(b"\0" * pad)
        self.offset += pad

    def random(self, name, shape, std=0.02, mean=0.0):
        """A float32 tensor of N(mean, std²) values, generated and written chunk by chunk."""
        n = math.prod(shape)
        self.parameters += n
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        if n * 4 < INLINE_BELOW:
            v = self.rng.standard_normal(n, dtype=np.float32) * np.float32(std) + np.float32(mean)
            t.raw_data = v.astype("<f4").tobytes()
            self.initializers.append(t)
            return name
        self._pad()
        start = self.offset
        left = n
        while left:
            k = min(left, CHUNK)
            v = self.rng.standard_normal(k, dtype=np.float32)
            v *= np.float32(std)
            v += np.float32(mean)
            self.f.write(v.astype("<f4", copy=False).tobytes())
            left -= k
        self.offset += n * 4
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(start)), ("length", str(n * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.initializers.append(t)
        self.n_external += 1
        return name

    def const(self, name, values, dtype=np.float32):
        """A small inline constant."""
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def close(self):
        self.f.close()


def build(args):
    H, L, V = args.hidden, args.layers, args.vocab
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, args.name)
    location = args.name + ".data"
    w = Writer(os.path.join(args.out, location), location, args.seed)
    nodes = []

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    half = w.const("c_half", 0.5)
    one = w.const("c_one", 1.0)
    sqrt2 = w.const("c_sqrt2", math.sqrt(2.0))
    scale = w.const("c_attn_scale", 1.0 / math.sqrt(H))

    def layer_norm(x, prefix):
        s = w.random(prefix + ".scale", [H], mean=1.0)
        b = w.random(prefix + ".bias", [H])
        return node("LayerNormalization", [x, s, b], prefix, axis=-1, epsilon=1e-5)

    table = w.random("embed.weight", [V, H])
    x = node("Gather", [table, "input_ids"], "embed")
    for i in range(L):
        p = f"layer{i}"
        h = layer_norm(x, p + ".ln1")
        q = node("MatMul", [h, w.random(p + ".attn.q.weight", [H, H])], p + ".q")
        k = node("MatMul", [h, w.random(p + ".attn.k.weight", [H, H])], p + ".k")
        v = node("MatMul", [h, w.random(p + ".attn.v.weight", [H, H])], p + ".v")
        kt = node("Transpose", [k], p + ".kt", perm=[0, 2, 1])
        s = node("MatMul", [q, kt], p + ".scores")
        s = node("Mul", [s, scale], p + ".scaled")
        a = node("Softmax", [s], p + ".probs", axis=-1)
        c = node("MatMul", [a, v], p + ".context")
        o = node("MatMul", [c, w.random(p + ".attn.o.weight", [H, H])], p + ".attn_out")
        x = node("Add", [x, o], p + ".resid1")
        h = layer_norm(x, p + ".ln2")
        m = node("MatMul", [h, w.random(p + ".mlp.up.weight", [H, 4 * H])], p + ".up")
        m = node("Add", [m, w.random(p + ".mlp.up.bias", [4 * H])], p + ".up_b")
        # GELU(m) = 0.5·m·(1 + erf(m/√2)), spelled out: Gelu itself is opset 20.
        e = node("Erf", [node("Div", [m, sqrt2], p + ".gelu_div")], p + ".gelu_erf")
        g = node("Mul", [node("Mul", [m, half], p + ".gelu_half"), node("Add", [e, one], p + ".gelu_add")], p + ".gelu")
        d = node("MatMul", [g, w.random(p + ".mlp.down.weight", [4 * H, H])], p + ".down")
        d = node("Add", [d, w.random(p + ".mlp.down.bias", [H])], p + ".down_b")
        x = node("Add", [x, d], p + ".resid2")
    h = layer_norm(x, "final_ln")
    if args.tied:
        # MatMul would need the table as [H, V]; Gemm with transB=1 reads the [V, H] table as is.
        h2 = node("Reshape", [h, w.const("c_rows", [-1, H], np.int64)], "lm_rows")
        l2 = node("Gemm", [h2, table], "lm_gemm", transB=1)
        node("Reshape", [l2, w.const("c_logits_shape", [1, -1, V], np.int64)], "logits")
    else:
        node("MatMul", [h, w.random("lm_head.weight", [H, V])], "logits")
    w.close()

    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", V])],
        initializer=w.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_decoder")
    model.ir_version = 8
    # Serialized directly: the tensors already point at the data file, nothing to convert.
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())
    return model_path, os.path.join(args.out, location), w


def check(model_path, vocab):
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input_ids": np.array([[1]], dtype=np.int64)})
    assert logits.shape == (1, 1, vocab), logits.shape
    assert np.isfinite(logits).all(), "non-finite logits"
    return list(logits.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tied", action="store_true", help="LM head is a Gemm(transB=1) on the embedding table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="model.onnx")
    ap.add_argument("--out", required=True, help="folder for the model and its data file")
    ap.add_argument("--check", action="store_true", help="load in onnxruntime and run one token")
    args = ap.parse_args()
    model_path, data_path, w = build(args)
    out = {
        "model": model_path,
        "data": data_path,
        "data_bytes": os.path.getsize(data_path),
        "n_external": w.n_external,
        "parameters": w.parameters,
    }
    if args.check:
        out["check_logits_shape"] = check(model_path, args.vocab)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())

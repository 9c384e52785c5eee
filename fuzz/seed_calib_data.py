"""Seed corpus of the calib_data fuzz target: small .npz and .npy files written by NumPy.

Usage: seed_calib_data.py OUT_DIR   (see fuzz/README.md)
"""
import io, os, sys, numpy as np
out = sys.argv[1]
rng = np.random.default_rng(0)
def save(name, data):
    open(os.path.join(out, name), "wb").write(data)
def npz(name, compressed, **arrays):
    b = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(b, **arrays)
    save(name, b.getvalue())
def npy(name, a):
    b = io.BytesIO(); np.save(b, a); save(name, b.getvalue())
x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
steps = (rng.integers(-8, 8, (2, 3, 8)) / 4).astype(np.float32)
for c in (False, True):
    k = "z" if c else "s"
    npz(f"{k}_f32.npz", c, x=x)
    npz(f"{k}_two.npz", c, input_ids=np.arange(12, dtype=np.int64).reshape(1, 12), attention_mask=np.ones((1, 12), np.int64))
    npz(f"{k}_f16.npz", c, x=steps.astype(np.float16))
    npz(f"{k}_steps.npz", c, x=steps)
    npz(f"{k}_fortran.npz", c, x=np.asfortranarray(steps[0]))
    npz(f"{k}_bool_u8.npz", c, m=rng.integers(0, 2, 10).astype(bool), p=rng.integers(0, 255, (2, 5)).astype(np.uint8))
npy("f32.npy", x)
npy("stack.npy", steps)
npy("f16.npy", steps.astype(np.float16))
npy("be_i2.npy", np.arange(6, dtype=">i2").reshape(2, 3))
npy("fortran.npy", np.asfortranarray(steps[0]))
npy("scalar.npy", np.float64(1.5))
npy("empty.npy", np.zeros((0, 3), np.float32))
b = io.BytesIO(); np.lib.format.write_array(b, steps[0], version=(2, 0)); save("v2.npy", b.getvalue())
b = io.BytesIO(); np.lib.format.write_array(b, steps[0], version=(3, 0)); save("v3.npy", b.getvalue())

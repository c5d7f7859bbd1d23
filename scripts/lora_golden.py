#!/usr/bin/env python3
"""Golden vectors of the LoRA merge (docs/spec/lora.md § 4), for protocol/src/lora/golden_tests.rs.

An independent reference: numpy float32 scalars, one IEEE operation each, in the order the spec
defines (d = b0*a0, then d + bk*ak for k ascending, u = s*d, y = w + u, rounded to the base dtype with
round-to-nearest-even: numpy's float16 cast, and bf16 by bit arithmetic written here). Each case is
also checked against PEFT's formula, W + (B @ A) * s (transposed with fan_in_fan_out), in float64 to
a tolerance, so the layout (A is [r, in], B is [out, r]) is PEFT's.

Usage: python3 scripts/lora_golden.py   (needs numpy; prints the cases as hex for the Rust test)
"""
import math

import numpy as np

F32, F16, BF16 = "F32", "F16", "BF16"


def bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even; NaN -> canonical 0x7fc0."""
    x = np.float32(x)
    if np.isnan(x):
        return 0x7FC0
    bits = int(np.array([x], dtype="<f4").view("<u4")[0])
    upper, lower = bits >> 16, bits & 0xFFFF
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    return upper & 0xFFFF


def from_bf16_bits(b):
    return np.array([b << 16], dtype="<u4").view("<f4")[0]


def encode(values, dtype):
    """float32 values -> little-endian bytes of `dtype` (round to nearest even)."""
    out = bytearray()
    for v in values:
        v = np.float32(v)
        if dtype == F32:
            out += (np.array([np.float32("nan")]) if np.isnan(v) else np.array([v])).astype("<f4").tobytes()
        elif dtype == F16:
            out += np.array([np.float16("nan") if np.isnan(v) else v], dtype="<f2").tobytes()
        else:
            out += bf16_bits(v).to_bytes(2, "little")
    return bytes(out)


def decode(data, dtype):
    if dtype == F32:
        return [np.float32(x) for x in np.frombuffer(data, dtype="<f4")]
    if dtype == F16:
        return [np.float32(x) for x in np.frombuffer(data, dtype="<f2")]
    return [from_bf16_bits(int(b)) for b in np.frombuffer(data, dtype="<u2")]


def values(rng, n, dtype):
    """n values in [-2, 2), representable in dtype (bytes and floats)."""
    data = encode(rng.uniform(-2.0, 2.0, n).astype(np.float32), dtype)
    return data, decode(data, dtype)


def merge(case):
    rows, cols, r, t = case["rows"], case["cols"], case["r"], case["fan_in_fan_out"]
    w, a, b = case["w"], case["a"], case["b"]
    s = np.float32(case["alpha"] / (math.sqrt(r) if case["rslora"] else r))
    out = []
    for i in range(rows):
        for j in range(cols):
            d = None
            for k in range(r):
                bv, av = (b[j * r + k], a[k * rows + i]) if t else (b[i * r + k], a[k * cols + j])
                p = np.float32(bv * av)
                d = p if d is None else np.float32(d + p)
            u = np.float32(s * d)
            out.append(np.float32(w[i * cols + j] + u))
    return s, out


def check_against_peft(case, merged):
    rows, cols, r = case["rows"], case["cols"], case["r"]
    t = case["fan_in_fan_out"]
    a = np.array(case["a"], dtype=np.float64).reshape(r, rows if t else cols)
    b = np.array(case["b"], dtype=np.float64).reshape(cols if t else rows, r)
    w = np.array(case["w"], dtype=np.float64).reshape(rows, cols)
    s = case["alpha"] / (math.sqrt(r) if case["rslora"] else r)
    delta = b @ a
    peft = w + (delta.T if t else delta) * s
    got = np.array(merged, dtype=np.float64).reshape(rows, cols)
    assert np.allclose(got, peft, rtol=1e-6, atol=1e-6), (got, peft)


def main():
    rng = np.random.default_rng(20261207)
    cases = [
        # name, base dtype, A dtype, B dtype, rows, cols, r, alpha, rslora, fan_in_fan_out
        ("bf16_r2", BF16, BF16, BF16, 4, 3, 2, 5.0, False, False),
        ("f16_rslora", F16, F32, BF16, 4, 3, 2, 5.0, True, False),
        ("f32_fan_in_fan_out", F32, F16, F32, 3, 4, 2, 3.0, False, True),
    ]
    print(f"// numpy {np.__version__}")
    for name, bd, ad, bdt, rows, cols, r, alpha, rslora, t in cases:
        w_bytes, w = values(rng, rows * cols, bd)
        a_bytes, a = values(rng, r * (rows if t else cols), ad)
        b_bytes, b = values(rng, (cols if t else rows) * r, bdt)
        case = dict(rows=rows, cols=cols, r=r, alpha=alpha, rslora=rslora, fan_in_fan_out=t,
                    w=w, a=a, b=b)
        s, merged = merge(case)
        check_against_peft(case, merged)
        out = encode(merged, bd)
        print(f"{name}: base {bd} [{rows}, {cols}], A {ad}, B {bdt}, r={r}, alpha={alpha}, "
              f"rslora={rslora}, fan_in_fan_out={t}, s={float(s)!r} (f32 bits {np.float32(s).view('<u4'):#010x})")
        for label, data in [("base", w_bytes), ("a", a_bytes), ("b", b_bytes), ("out", out)]:
            print(f"  {label}: \"{data.hex()}\"")


if __name__ == "__main__":
    main()

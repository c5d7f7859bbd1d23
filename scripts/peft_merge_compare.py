"""PEFT's merge_and_unload() against zdn's LoRA merge (docs/spec/lora.md § 4), on a real Llama folder.

Driven by scripts/peft-merge-compare.sh; two stages:

  make BASE_DIR WORK_DIR   for each configuration of CONFIGS: load the base with transformers (bf16),
                           wrap it with peft, set every lora_A / lora_B to seeded non-zero values,
                           save_pretrained the adapter to WORK/NAME/adapter, merge_and_unload() and save
                           PEFT's merged tensors to WORK/NAME/peft_merged.safetensors. Then, from the
                           files on disk only (base shards, adapter file, its config), two references:
                           WORK/NAME/zdn_arith.safetensors   docs/spec/lora.md § 4 in numpy (f32,
                                                             sequential non-fused sum, s after the sum,
                                                             one rounding to bf16);
                           WORK/NAME/peft_arith.safetensors  PEFT's get_delta_weight + merge arithmetic
                                                             re-done with plain torch ops.
  golden OUT_DIR           the small regression vector of tests/e2e/lora.rs (see golden()).
  compare BASE_DIR WORK_DIR REPORT_JSON
                           reads WORK/NAME/zdn_out/ (written by `zdn apply`) and compares every tensor
                           with PEFT's merge and the two references; writes the JSON report.
"""

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

SEED = 20261207
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name → (LoraConfig arguments, autocast_adapter_dtype, scale of the random A and B values).
# autocast_adapter_dtype=True (PEFT's default) keeps the adapter in f32 on a bf16 base;
# False keeps it in bf16, and PEFT then merges through its "cast to fp32 on CPU" path.
CONFIGS = {
    "r8-alpha16-f32": (
        dict(r=8, lora_alpha=16, target_modules=PROJECTIONS, lora_dropout=0.0, bias="none"),
        True,
        0.05,
    ),
    "r12-alpha20-rslora-patterns-bf16": (
        dict(
            r=12,
            lora_alpha=20,
            use_rslora=True,
            rank_pattern={"down_proj": 6},
            alpha_pattern={"o_proj": 7.5},
            target_modules=PROJECTIONS,
            lora_dropout=0.0,
            bias="none",
        ),
        False,
        0.03,
    ),
}


def bf16_bits(t):
    """A torch bf16 tensor's bit patterns as numpy uint16."""
    assert t.dtype == torch.bfloat16, t.dtype
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def bits_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """IEEE round-to-nearest-even f32 → bf16 (overflow to ±inf); NaN → canonical 0x7fc0."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), out)


def ulp_key(u16):
    """bf16 bits → an integer in the order of the values, adjacent values one apart (±0 both 0)."""
    v = u16.astype(np.int64)
    return np.where(v & 0x8000, -(v & 0x7FFF), v)


def scale(cfg, module):
    """PEFT's scaling of one module (lora/layer.py update_layer), with its pattern lookups."""
    leaf = module.rsplit(".", 1)[-1]
    r = cfg.get("rank_pattern", {}).get(leaf, cfg["r"])
    alpha = cfg.get("alpha_pattern", {}).get(leaf, cfg["lora_alpha"])
    return (alpha / math.sqrt(r)) if cfg.get("use_rslora") else (alpha / r)


def load_folder(folder):
    tensors = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            assert k not in tensors, k
            tensors[k] = v
    return tensors


def references(base, adapter_dir):
    """(zdn arithmetic, PEFT arithmetic, torch-vs-sequential f32 product differences) per module."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    ad = load_file(str(adapter_dir / "adapter_model.safetensors"))
    zdn_arith, peft_arith, peft_seq, product_diffs, product_fma = {}, {}, {}, {}, {}
    prefix = "base_model.model."
    for a_name in sorted(k for k in ad if k.endswith(".lora_A.weight")):
        module = a_name[len(prefix) : -len(".lora_A.weight")]
        A, B = ad[a_name], ad[a_name.replace("lora_A", "lora_B")]
        W = base[module + ".weight"]
        s = scale(cfg, module)
        w32 = bits_to_f32(bf16_bits(W))
        a32, b32 = A.float().numpy(), B.float().numpy()
        # zdn (docs/spec/lora.md § 4): d = b0·a0, d = d + bk·ak in order, u = s32·d, y = W + u, round once.
        s32 = np.float32(s)
        d = b32[:, 0:1] * a32[0:1, :]
        for k in range(1, a32.shape[0]):
            d = d + b32[:, k : k + 1] * a32[k : k + 1, :]
        zdn_arith[module + ".weight"] = f32_to_bf16_bits(w32 + s32 * d)
        # PEFT (lora/layer.py Linear.get_delta_weight, then merge's `weight.data += delta`):
        # delta = (B @ A) * scaling in f32 on the CPU; a bf16 adapter's delta is rounded to bf16
        # first ("cast_to_fp32" path); the in-place add of a bf16 weight computes in f32 and rounds.
        prod = B.float() @ A.float()
        delta = prod * s
        if B.dtype == torch.bfloat16:
            delta = delta.to(torch.bfloat16)
        merged = W.clone()
        merged += delta
        peft_arith[module + ".weight"] = bf16_bits(merged)
        key = module + ".weight"
        product_diffs[key] = int(np.count_nonzero(prod.numpy().view(np.uint32) != d.view(np.uint32)))
        # The same PEFT arithmetic written out in numpy, to show what the torch ops do.
        pd = prod.numpy().astype(np.float32) * s32
        if B.dtype == torch.bfloat16:
            pd = bits_to_f32(f32_to_bf16_bits(pd))
        assert np.array_equal(f32_to_bf16_bits(w32 + pd), peft_arith[key]), module
        # PEFT's roundings with zdn's sequential non-fused product: separates the effect of the
        # product's summation from that of the delta's extra bf16 rounding.
        sd = s32 * d
        if B.dtype == torch.bfloat16:
            sd = bits_to_f32(f32_to_bf16_bits(sd))
        peft_seq[key] = f32_to_bf16_bits(w32 + sd)
        # torch's f32 product against a fused multiply-add chain over k = 0 … r−1 in order,
        # fma(b_k, a_k, d) emulated in x87 long double (b_k·a_k is exact in its 64-bit significand;
        # the sum is rounded to 64 bits, then to 24: a double rounding that can in principle differ
        # from a true fma, so this counts agreement, it does not assume it).
        f = (b32[:, 0:1].astype(np.longdouble) * a32[0:1, :]).astype(np.float32)
        for k in range(1, a32.shape[0]):
            f = (f.astype(np.longdouble) + b32[:, k : k + 1].astype(np.longdouble) * a32[k : k + 1, :]).astype(np.float32)
        product_fma[key] = int(np.count_nonzero(prod.numpy().view(np.uint32) == f.view(np.uint32)))
    return cfg, zdn_arith, peft_arith, peft_seq, product_diffs, product_fma


def peft_merge(base_dir, base, name, out):
    """One configuration: PEFT wraps the base, seeded A and B, save_pretrained to OUT/adapter,
    merge_and_unload(); returns the merged model's tensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs, autocast, magnitude = CONFIGS[name]
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16)
    for k, v in model.state_dict().items():
        assert torch.equal(bf16_bits_t(v), bf16_bits_t(base[k])), k
    peft_model = get_peft_model(model, LoraConfig(**kwargs), autocast_adapter_dtype=autocast)
    gen = torch.Generator().manual_seed(SEED + len(name))
    n_lora = 0
    with torch.no_grad():
        for pname, p in sorted(peft_model.named_parameters()):
            if ".lora_A." in pname or ".lora_B." in pname:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * magnitude)
                n_lora += 1
    peft_model.save_pretrained(str(out / "adapter"))
    merged = peft_model.merge_and_unload()
    dtype = next(iter(load_file(str(out / "adapter" / "adapter_model.safetensors")).values())).dtype
    print(f"{name}: {n_lora} LoRA matrices, adapter dtype {dtype}")
    return {k: v.detach().contiguous().clone() for k, v in merged.state_dict().items()}


def to_bf16_tensors(bits):
    return {k: torch.from_numpy(v.view(np.int16)).view(torch.bfloat16) for k, v in bits.items()}


def make(base_dir, work):
    torch.use_deterministic_algorithms(True)
    base = load_folder(base_dir)
    for name in CONFIGS:
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        save_file(peft_merge(base_dir, base, name, out), str(out / "peft_merged.safetensors"))
        _, zdn_arith, peft_arith, _, _, _ = references(base, out / "adapter")
        save_file(to_bf16_tensors(zdn_arith), str(out / "zdn_arith.safetensors"))
        save_file(to_bf16_tensors(peft_arith), str(out / "peft_arith.safetensors"))


def golden(out_dir):
    """A small regression vector for tests/e2e/lora.rs: a tiny seeded Llama (2 layers, hidden 16)
    saved by transformers; per configuration its PEFT adapter (the README dropped), PEFT's merged
    targeted tensors (peft_merged.safetensors) and the same tensors under the spec's arithmetic
    (numpy, § 4: zdn_arith.safetensors); expected.json: per merged tensor how many elements differ
    between the two, and by how many bf16 ulps at most."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, vocab_size=32, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # norms of ones would make the untargeted check weak
        for k, p in model.named_parameters():
            if k.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(out_dir)  # the adapters record base_model_name_or_path "base", not this machine's path
    out_dir = Path(".")
    model.save_pretrained("base")
    base = load_folder(out_dir / "base")
    expected = {"peft": __import__("peft").__version__, "torch": torch.__version__, "configs": {}}
    for name in CONFIGS:
        out = out_dir / name
        merged = peft_merge(Path("base"), base, name, out)
        (out / "adapter" / "README.md").unlink()
        _, zdn_arith, peft_arith, _, _, _ = references(base, out / "adapter")
        save_file({k: merged[k] for k in sorted(zdn_arith)}, str(out / "peft_merged.safetensors"))
        save_file(to_bf16_tensors(zdn_arith), str(out / "zdn_arith.safetensors"))
        rows = {}
        for k in sorted(zdn_arith):
            pm = bf16_bits(merged[k])
            assert np.array_equal(pm, peft_arith[k]), k
            ulps = np.abs(ulp_key(zdn_arith[k]) - ulp_key(pm))
            rows[k] = {
                "differing_from_peft": int(np.count_nonzero(ulps)),
                "max_ulps_from_peft": int(ulps.max()),
            }
        expected["configs"][name] = rows
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


def bf16_bits_t(t):
    return t.contiguous().view(torch.int16)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ulp_bucket(u):
    """0, 1, 2, then 3-4, 5-8, 9-16, …: a histogram with a few keys."""
    if u <= 2:
        return str(u)
    hi = 1 << int(u - 1).bit_length()
    return f"{hi // 2 + 1}-{hi}"


def bf16_ulp(x):
    """The spacing of bf16 values at |x| (normal range; the smallest normal's spacing below it)."""
    _, e = np.frexp(np.maximum(np.abs(x.astype(np.float64)), 2.0**-126))
    return np.ldexp(1.0, e - 8)


def stats(a_bits, b_bits, w_bits):
    """Bit-identical count, max |a − b| (of the bf16 values), the distance in bf16 ulps of the outputs
    (bucketed), and max |a − b| in ulps of the larger operand of the merge, max(|W|, |a − W|): near
    a cancellation W + Δ ≈ 0 the outputs' own ulps are tiny and say little."""
    fa, fb, fw = (bits_to_f32(x).astype(np.float64) for x in (a_bits, b_bits, w_bits))
    ulps = np.abs(ulp_key(a_bits) - ulp_key(b_bits))
    hist = {}
    for u, c in zip(*np.unique(ulps, return_counts=True)):
        key = ulp_bucket(int(u))
        hist[key] = hist.get(key, 0) + int(c)
    diff = np.abs(fa - fb)
    operand = np.maximum(np.abs(fw), np.abs(fa - fw))
    return {
        "identical": int(np.count_nonzero(a_bits == b_bits)),
        "max_abs_diff": float(diff.max()),
        "max_ulps": int(ulps.max()),
        "ulp_histogram": hist,
        "max_diff_in_ulps_of_larger_operand": float((diff / bf16_ulp(operand)).max()),
        "over_128_ulps": int(np.count_nonzero(ulps > 128)),
        "over_128_ulps_where_b_is_zero": int(np.count_nonzero((ulps > 128) & ((b_bits & 0x7FFF) == 0))),
        "max_abs_a_where_over_128_ulps": float(np.abs(fa[ulps > 128]).max()) if (ulps > 128).any() else 0.0,
    }


def compare(base_dir, work, report_path):
    base = load_folder(base_dir)
    report = {
        "peft": __import__("peft").__version__,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "numpy": np.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "base": str(base_dir),
        "base_files_sha256": {f.name: sha256(f) for f in sorted(Path(base_dir).glob("*.safetensors"))},
        "seed": SEED,
        "configs": {},
    }
    ok = True
    for name in CONFIGS:
        out = work / name
        cfg, zdn_arith, peft_arith, peft_seq, product_diffs, product_fma = references(base, out / "adapter")
        peft_m = {k: bf16_bits(v) for k, v in load_file(str(out / "peft_merged.safetensors")).items()}
        zdn_o = {k: bf16_bits(v) for k, v in load_folder(out / "zdn_out").items()}
        assert set(zdn_o) == set(base) == set(peft_m), "tensor names differ"
        targeted, untargeted = {}, {"count": 0, "elements": 0, "zdn_equals_base": 0, "peft_equals_base": 0}
        tot = dict(elements=0, zdn_eq_peft=0, zdn_eq_zdn_arith=0, peft_eq_peft_arith=0, zdn_arith_eq_peft_arith=0, peft_seq_eq_zdn_arith=0, product_diffs=0, product_fma=0)
        hist = {}
        for k in sorted(base):
            b = bf16_bits(base[k])
            if k not in zdn_arith:
                untargeted["count"] += 1
                untargeted["elements"] += b.size
                untargeted["zdn_equals_base"] += int(np.array_equal(zdn_o[k], b))
                untargeted["peft_equals_base"] += int(np.array_equal(peft_m[k], b))
                continue
            st = stats(zdn_o[k], peft_m[k], b)
            row = {
                "elements": int(b.size),
                "zdn_vs_peft": st,
                "zdn_vs_zdn_arith_identical": int(np.count_nonzero(zdn_o[k] == zdn_arith[k])),
                "peft_vs_peft_arith_identical": int(np.count_nonzero(peft_m[k] == peft_arith[k])),
                "zdn_arith_vs_peft_arith_identical": int(np.count_nonzero(zdn_arith[k] == peft_arith[k])),
                "changed_from_base_zdn": int(np.count_nonzero(zdn_o[k] != b)),
                "peft_rounding_with_sequential_product_vs_zdn_arith_identical": int(np.count_nonzero(peft_seq[k] == zdn_arith[k])),
                "f32_products_differing_torch_vs_sequential": product_diffs[k],
                "f32_products_torch_equal_to_fma_chain": product_fma[k],
                "scale": scale(cfg, k[: -len(".weight")]),
            }
            targeted[k] = row
            tot["elements"] += b.size
            tot["zdn_eq_peft"] += st["identical"]
            tot["zdn_eq_zdn_arith"] += row["zdn_vs_zdn_arith_identical"]
            tot["peft_eq_peft_arith"] += row["peft_vs_peft_arith_identical"]
            tot["zdn_arith_eq_peft_arith"] += row["zdn_arith_vs_peft_arith_identical"]
            tot["peft_seq_eq_zdn_arith"] += row["peft_rounding_with_sequential_product_vs_zdn_arith_identical"]
            tot["product_diffs"] += product_diffs[k]
            tot["product_fma"] += product_fma[k]
            for u, c in st["ulp_histogram"].items():
                hist[u] = hist.get(u, 0) + c
        max_abs = max(r["zdn_vs_peft"]["max_abs_diff"] for r in targeted.values())
        max_ulps = max(r["zdn_vs_peft"]["max_ulps"] for r in targeted.values())
        max_op = max(r["zdn_vs_peft"]["max_diff_in_ulps_of_larger_operand"] for r in targeted.values())
        summary = {
            "adapter_config": cfg,
            "adapter_dtype": str(next(iter(load_file(str(out / "adapter" / "adapter_model.safetensors")).values())).dtype),
            "targeted_tensors": len(targeted),
            "targeted_elements": int(tot["elements"]),
            "zdn_identical_to_peft": int(tot["zdn_eq_peft"]),
            "zdn_vs_peft_ulp_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0]))),
            "zdn_vs_peft_max_diff_in_ulps_of_larger_operand": max_op,
            "zdn_vs_peft_over_128_ulps": sum(r["zdn_vs_peft"]["over_128_ulps"] for r in targeted.values()),
            "zdn_vs_peft_over_128_ulps_where_peft_is_zero": sum(
                r["zdn_vs_peft"]["over_128_ulps_where_b_is_zero"] for r in targeted.values()
            ),
            "zdn_max_abs_where_over_128_ulps": max(
                r["zdn_vs_peft"]["max_abs_a_where_over_128_ulps"] for r in targeted.values()
            ),
            "zdn_vs_peft_max_abs_diff": max_abs,
            "zdn_vs_peft_max_ulps": max_ulps,
            "zdn_identical_to_zdn_arith": int(tot["zdn_eq_zdn_arith"]),
            "peft_identical_to_peft_arith": int(tot["peft_eq_peft_arith"]),
            "zdn_arith_identical_to_peft_arith": int(tot["zdn_arith_eq_peft_arith"]),
            "peft_rounding_with_sequential_product_identical_to_zdn_arith": int(tot["peft_seq_eq_zdn_arith"]),
            "f32_products_differing_torch_vs_sequential": int(tot["product_diffs"]),
            "f32_products_torch_equal_to_fma_chain": int(tot["product_fma"]),
            "untargeted": untargeted,
            "adapter_sha256": sha256(out / "adapter" / "adapter_model.safetensors"),
            "tensors": targeted,
        }
        report["configs"][name] = summary
        n = tot["elements"]
        print(
            f"{name}: {len(targeted)} merged tensors, {n} elements: zdn == PEFT on {tot['zdn_eq_peft']} "
            f"({100.0 * tot['zdn_eq_peft'] / n:.4f} %), max |diff| {max_abs:.3g}, max {max_ulps} bf16 ulp "
            f"(histogram {summary['zdn_vs_peft_ulp_histogram']}), max {max_op:.3g} ulp of max(|W|, |Δ|), over 128 ulp on {summary['zdn_vs_peft_over_128_ulps']} (PEFT ±0 on {summary['zdn_vs_peft_over_128_ulps_where_peft_is_zero']}, zdn's |value| ≤ {summary['zdn_max_abs_where_over_128_ulps']:.3g}); zdn == spec § 4 arithmetic on "
            f"{tot['zdn_eq_zdn_arith']}/{n}; PEFT == its arithmetic on {tot['peft_eq_peft_arith']}/{n}; "
            f"PEFT's roundings with zdn's product == zdn on {tot['peft_seq_eq_zdn_arith']}/{n}; torch's f32 "
            f"product == sequential fma chain on {tot['product_fma']}/{n}, == zdn's non-fused sum on "
            f"{n - tot['product_diffs']}/{n}; "
            f"untargeted {untargeted['count']} tensors: zdn == base {untargeted['zdn_equals_base']}, "
            f"PEFT == base {untargeted['peft_equals_base']}"
        )
        ok &= tot["zdn_eq_zdn_arith"] == n and tot["peft_eq_peft_arith"] == n
        ok &= untargeted["zdn_equals_base"] == untargeted["count"] == untargeted["peft_equals_base"]
    report["arithmetics_explain_every_difference"] = bool(ok)
    Path(report_path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"report: {report_path}")
    if not ok:
        print("MISMATCH: an output differs from the arithmetic that should explain it (see the report)")
        sys.exit(1)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("PEFT_COMPARE_THREADS", "1")))
    if len(sys.argv) == 4 and sys.argv[1] == "make":
        make(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "golden":
        golden(Path(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(
            "usage: peft_merge_compare.py make BASE_DIR WORK_DIR | compare BASE_DIR WORK_DIR REPORT_JSON"
            " | golden OUT_DIR"
        )

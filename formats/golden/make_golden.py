"""Golden vectors for SPEC.md, made from the spec's text by an implementation independent of the Rust code.

Writes, beside this script:
  ternary_r16.json  tiny ternary matrices and their exact `ternary_r16` bytes (SPEC.md 4.4)
  int8_r16.json     tiny int8 matrices with row scales and their exact `int8_r16` bytes (SPEC.md 4.5)
  quantize.json     bf16 weights and the ternary values + weight scale that transformers' own WeightQuant
                    formula (PyTorch, float32) gives for them (SPEC.md 6)
  minimal.bitnet    a complete small version 2 .bitnet file written from SPEC.md sections 1-5 alone (no
                    sub-norms, untied head); its expected contents are in minimal.expected.json
  minimal-v1.bitnet the same for version 1 (both sub-norms, no feature list): readers still accept it

Run: python3 formats/golden/make_golden.py   (numpy; torch for quantize.json)
"""

import hashlib
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def pad16(n):
    return (n + 15) // 16 * 16


def pack_ternary_r16(w):
    """SPEC.md 4.4, written from the text: byte 4r+t of chunk g of tile T, bits 2q.., holds code of
    (16T+r, 16g+4q+t)."""
    R, C = w.shape
    Rp, Kp = pad16(R), pad16(C)
    codes = np.ones((Rp, Kp), dtype=np.uint8)  # padding: code 1 (weight 0)
    codes[:R, :C] = (w + 1).astype(np.uint8)
    out = bytearray(Rp * Kp // 4)
    for T in range(Rp // 16):
        for g in range(Kp // 16):
            base = T * 4 * Kp + 64 * g
            for r in range(16):
                for t in range(4):
                    b = 0
                    for q in range(4):
                        b |= int(codes[16 * T + r, 16 * g + 4 * q + t]) << (2 * q)
                    out[base + 4 * r + t] = b
    return bytes(out)


def pack_int8_r16(w, scales):
    """SPEC.md 4.5: byte 4r+t of chunk g of tile T holds (16T+r, 4g+t) as w+128; then Rp f32 scales."""
    R, C = w.shape
    Rp, Kp = pad16(R), pad16(C)
    vals = np.zeros((Rp, Kp), dtype=np.int16)
    vals[:R, :C] = w
    out = bytearray(Rp * Kp)
    for T in range(Rp // 16):
        for g in range(Kp // 4):
            base = T * 16 * Kp + 64 * g
            for r in range(16):
                for t in range(4):
                    out[base + 4 * r + t] = int(vals[16 * T + r, 4 * g + t]) + 128
    sc = np.zeros(Rp, dtype="<f4")
    sc[:R] = scales
    return bytes(out) + sc.tobytes()


def ternary_cases():
    rng = np.random.default_rng(1234)
    cases = [("one_weight", np.array([[1]], dtype=np.int8))]
    for name, (r, c) in [("one_tile", (16, 16)), ("ragged", (17, 33)), ("wide", (3, 70)), ("two_tiles", (32, 48))]:
        cases.append((name, rng.integers(-1, 2, size=(r, c)).astype(np.int8)))
    return [
        {"name": n, "shape": list(w.shape), "values": w.flatten().tolist(), "packed_hex": pack_ternary_r16(w).hex()}
        for n, w in cases
    ]


def int8_cases():
    rng = np.random.default_rng(99)
    cases = [("one_weight", np.array([[-5]], dtype=np.int8), np.array([0.5], dtype=np.float32))]
    for name, (r, c) in [("ragged", (17, 9)), ("two_tiles", (32, 20))]:
        w = rng.integers(-127, 128, size=(r, c)).astype(np.int8)
        s = rng.uniform(0.001, 0.1, size=r).astype(np.float32)
        cases.append((name, w, s))
    return [
        {
            "name": n,
            "shape": list(w.shape),
            "values": w.flatten().tolist(),
            "scale_bits": [int(x) for x in s.view(np.uint32)],
            "packed_hex": pack_int8_r16(w, s).hex(),
        }
        for n, w, s in cases
    ]


def quantize_cases():
    import torch

    def weight_quant(w):
        # transformers/integrations/bitnet.py WeightQuant.forward, verbatim maths, float32.
        w = w.float()
        scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
        q = (w * scale).round().clamp(-1, 1)
        plus_one = (torch.ones(1) / scale).to(torch.float32)  # value of a +1 weight: q / scale
        return q.to(torch.int8), plus_one

    g = torch.Generator().manual_seed(7)
    cases = []
    inputs = [
        ("gaussian", (torch.randn(24, 40, generator=g) * 0.02)),
        ("heavy_tail", (torch.randn(16, 64, generator=g) ** 3 * 0.05)),
        # mean|W| = 1 exactly, so W * s hits the .5 ties: half-to-even rounding decides.
        ("ties", torch.tensor([[0.5, -0.5, 1.5, -1.5], [1.0, -1.0, 2.5, -0.0], [0.5, 1.5, -0.5, -1.5], [1.0, 1.0, 0.5, 1.0]])),
        ("below_floor", torch.full((2, 8), 1e-7) * torch.tensor([1, -1, 1, -1, 1, -1, 1, 30.0])),
    ]
    for name, w in inputs:
        wb = w.to(torch.bfloat16)
        q, plus_one = weight_quant(wb)
        cases.append({
            "name": name,
            "shape": list(wb.shape),
            "bf16_bits": wb.view(torch.int16).flatten().to(torch.int32).bitwise_and(0xFFFF).tolist(),
            "ternary": q.flatten().tolist(),
            "weight_scale_bits": int(np.array([plus_one.item()], dtype=np.float32).view(np.uint32)[0]),
        })
    return cases


def minimal_file(major):
    """A whole .bitnet file from SPEC.md sections 1-5: 1 layer, hidden 16, ffn 20, 1 head of 16, vocab 20.

    major 1: the version 1 file (2B4T's computation: both sub-norms, relu2, no feature list).
    major 2: a version 2 file of the LLaMA-BitLinear computation: `features: []` (no sub-norms), silu,
    `rope_style: neox`, an untied bf16 head.
    """
    rng = np.random.default_rng(5)
    sub_norms = major == 1
    H, F, V = 16, 20, 20
    tensors = []  # (name, kind, shape, data bytes, scale)

    def tern(name, r, c):
        w = rng.integers(-1, 2, size=(r, c)).astype(np.int8)
        s = np.float32(rng.uniform(0.01, 0.05))
        tensors.append((name, "ternary_r16", [r, c], pack_ternary_r16(w), s, w))

    def norm(name, n):
        v = rng.normal(1.0, 0.1, size=n).astype("<f4")
        tensors.append((name, "f32", [n], v.tobytes(), None, v))

    norm("blk.0.attn_norm", H)
    tern("blk.0.attn_q", H, H)
    tern("blk.0.attn_k", H, H)
    tern("blk.0.attn_v", H, H)
    if sub_norms:
        norm("blk.0.attn_sub_norm", H)
    tern("blk.0.attn_output", H, H)
    norm("blk.0.ffn_norm", H)
    tern("blk.0.ffn_gate", F, H)
    tern("blk.0.ffn_up", F, H)
    if sub_norms:
        norm("blk.0.ffn_sub_norm", F)
    tern("blk.0.ffn_down", H, F)
    norm("output_norm", H)
    emb = rng.normal(0, 1, size=(V, H)).astype(np.float32)
    emb_bf16 = (emb.view(np.uint32) >> 16).astype("<u2")  # truncation is a valid bf16 value
    tensors.append(("token_embd", "bf16", [V, H], emb_bf16.tobytes(), None, emb_bf16))
    if major == 2:
        head = rng.normal(0, 1, size=(V, H)).astype(np.float32)
        head_bf16 = (head.view(np.uint32) >> 16).astype("<u2")
        tensors.append(("output", "bf16", [V, H], head_bf16.tobytes(), None, head_bf16))
    tok = b'{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}'
    tensors.append(("tokenizer.json", "bytes", [len(tok)], tok, None, None))

    header = {
        "architecture": "bitnet-b1.58",
        "config": {
            "vocab_size": V, "hidden_size": H, "intermediate_size": F, "num_layers": 1, "num_heads": 1,
            "num_kv_heads": 1, "head_dim": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "hidden_act": "relu2", "tie_word_embeddings": True,
        },
        "tokenizer": {"tokenizer_json": "tokenizer.json", "bos_token_id": 1, "add_bos_token": True,
                      "eos_token_ids": [2], "chat_template": None},
        "source": {"architecture": "BitNetForCausalLM", "model_type": "bitnet", "dtype": "BF16",
                   "converter": "formats/golden/make_golden.py"},
        "a_field_from_the_future": {"readers": "ignore unknown fields"},
        "tensors": [],
    }
    if major == 2:
        header["config"].update({"hidden_act": "silu", "tie_word_embeddings": False, "rope_style": "neox"})
        header["features"] = []
        header["source"].update({"architecture": "LlamaForCausalLM", "model_type": "llama", "dtype": "U8"})
    # Offsets depend on the header length, which depends on the offsets: place data after a generous
    # fixed header area (4096), as the spec allows any multiple of 64.
    data_offset = 8192
    pos = data_offset
    entries = []
    for name, kind, shape, data, scale, _ in tensors:
        pos = (pos + 63) // 64 * 64
        e = {"name": name, "kind": kind, "shape": shape, "offset": pos, "length": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
        if scale is not None:
            e["scale_bits"] = int(np.array([scale], dtype=np.float32).view(np.uint32)[0])
        entries.append(e)
        pos += len(data)
    header["tensors"] = entries
    hb = json.dumps(header, indent=1).encode()
    assert 64 + len(hb) <= data_offset
    pre = b"\x89BITNET\n" + struct.pack("<HHIQQ", major, 0, 0, len(hb), data_offset) + hashlib.sha256(hb).digest()
    assert len(pre) == 64
    buf = bytearray(pos)
    buf[:64] = pre
    buf[64:64 + len(hb)] = hb
    for e, (_, _, _, data, _, _) in zip(entries, tensors):
        buf[e["offset"]:e["offset"] + len(data)] = data
    expected = {
        "file_len": len(buf),
        "data_offset": data_offset,
        "tensors": {
            name: (
                {"ternary": vals.flatten().tolist(), "scale_bits": int(np.array([s], np.float32).view(np.uint32)[0])}
                if kind == "ternary_r16"
                else {"f32": [float(x) for x in vals]} if kind == "f32"
                else {"bf16_bits": [int(x) for x in vals.flatten()]} if kind == "bf16"
                else {"utf8": data.decode()}
            )
            for name, kind, _, data, s, vals in tensors
        },
    }
    return bytes(buf), expected


def main():
    def dump(name, obj):
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")

    dump("ternary_r16.json", {"spec": "SPEC.md 4.4", "cases": ternary_cases()})
    dump("int8_r16.json", {"spec": "SPEC.md 4.5", "cases": int8_cases()})
    dump("quantize.json", {"spec": "SPEC.md 6 (transformers WeightQuant, PyTorch float32)", "cases": quantize_cases()})
    for major, stem in [(2, "minimal"), (1, "minimal-v1")]:
        data, expected = minimal_file(major)
        with open(os.path.join(HERE, stem + ".bitnet"), "wb") as f:
            f.write(data)
        dump(stem + ".expected.json", expected)


if __name__ == "__main__":
    main()

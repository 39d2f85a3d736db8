"""Seeds of the checkpoint_folder fuzz target: the tiny tied fixture's config.json and safetensors header,
shrunk to one layer of width 32 (so one conversion costs little), single-file and sharded.
Input layout: config.json 0xFF header [0xFF model.safetensors.index.json 0xFF second-shard-header]."""
import json, pathlib, struct

root = pathlib.Path(__file__).resolve().parent.parent
src = root / "fixtures/bitnet-tiny-tied"
out = root / "fuzz/corpus/checkpoint_folder"
config = json.loads((src / "config.json").read_text())
config.update(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=1,
              num_hidden_layers=1, max_position_embeddings=64)
raw = (src / "model.safetensors").read_bytes()
header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
dims = {128: 32, 344: 48, 64: 16, 512: 512}
small, offset = {}, 0
for name, t in header.items():
    if name == "__metadata__" or ".layers.1." in name:
        continue
    shape = [dims[d] for d in t["shape"]]
    size = 2
    for d in shape:
        size *= d
    small[name] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
cfg = json.dumps(config).encode()
hdr = json.dumps(small, separators=(",", ":")).encode()
names = sorted(small)
index = {"metadata": {"total_size": offset},
         "weight_map": {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}}
(out / "seed-single").write_bytes(cfg + b"\xff" + hdr)

def shard(k):
    part, off = {}, 0
    for n in names:
        if index["weight_map"][n].startswith(f"model-0000{k}"):
            size = small[n]["data_offsets"][1] - small[n]["data_offsets"][0]
            part[n] = dict(small[n], data_offsets=[off, off + size])
            off += size
    return json.dumps(part, separators=(",", ":")).encode()


(out / "seed-sharded").write_bytes(cfg + b"\xff" + shard(1) + b"\xff" + json.dumps(index).encode() + b"\xff" + shard(2))
untied = dict(config, tie_word_embeddings=False)
small_untied = dict(small)
small_untied["lm_head.weight"] = {"dtype": "BF16", "shape": [512, 32], "data_offsets": [offset, offset + 512 * 32 * 2]}
(out / "seed-untied").write_bytes(json.dumps(untied).encode() + b"\xff" + json.dumps(small_untied).encode())

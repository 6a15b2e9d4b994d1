#!/usr/bin/python3
"""Write tiny random Hugging Face-layout models with reference outputs, for
testing nesa's safetensors + config.json importer.

Run with Debian's /usr/bin/python3 (torch 1.13, python3-regex); developers
run it, CI only reads the outputs.
    /usr/bin/python3 scripts/make_hf_refs.py [--repo DIR]

tests/data/hf-gpt2/:  config.json, model.safetensors (GPT-2 names, Conv1D
    [in, out] weights, lm_head tied to wte), vocab.json + merges.txt (byte-level
    BPE trained here), ref_text.txt, ref_tokens.i32, ref_logits.f32, README.md
tests/data/hf-llama/: config.json, model.safetensors (HF LLaMA names, two
    matrices stored as BF16), ref_tokens.i32, ref_logits.f32, README.md
The reference forwards are written from the published architectures, on the
tensors read back from the written files (so any export slip shows up).
"""

import argparse
import json
import math
import os
import struct

import regex
import torch

TEXT = "/work/shared/data/tinystories_val_excerpt/tinystories_val_excerpt.txt"
SEED_GPT2 = 20241
SEED_LLAMA = 20242
GPT2_MERGES = 200
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
REF_TEXT = "Once upon a time, Lily's dog Max found 3 shiny stones near the café. \"Wow!\" she said."

# ---------------------------------------------------------------- safetensors


def write_safetensors(path, tensors, dtypes=None):
    """Hand-written safetensors: u64 LE header size, JSON header with sorted
    keys and a __metadata__ entry as HF writes, then the raw LE data in key
    order.  dtypes maps a name to "BF16"/"F16" (default "F32")."""
    dtypes = dtypes or {}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dt = dtypes.get(name, "F32")
        if dt == "F32":
            b = t.float().numpy().astype("<f4").tobytes()
        elif dt == "F16":
            b = t.half().numpy().astype("<f2").tobytes()
        elif dt == "BF16":
            b = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raise ValueError(dt)
        if off % {"F32": 4, "F16": 2, "BF16": 2}[dt]:
            raise SystemExit("tensor '%s' would be misaligned" % name)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Read back to f32 tensors (BF16/F16 widened exactly)."""
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    out, dts = {}, {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = bytearray(data[8 + n + a:8 + n + b])
        if v["dtype"] == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        elif v["dtype"] == "F16":
            t = torch.frombuffer(raw, dtype=torch.float16).float()
        else:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16).float()
        out[name] = t.view(v["shape"])
        dts[name] = v["dtype"]
    return out, dts


def write_i32(path, ids):
    with open(path, "wb") as f:
        f.write(struct.pack("<%di" % len(ids), *ids))


def write_f32(path, t):
    with open(path, "wb") as f:
        f.write(t.detach().contiguous().numpy().astype("<f4").tobytes())

# ---------------------------------------------------------------- GPT-2 BPE


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table: printable
    Latin-1 bytes map to themselves, the others to 256, 257, ... in order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    order = keep + [b for b in range(256) if b not in keep]  # GPT-2's id order
    return table, order


def train_bpe(text, n_tokens):
    b2u, order = bytes_to_unicode()
    words = {}
    for w in regex.findall(GPT2_PAT, text):
        u = "".join(b2u[b] for b in w.encode("utf-8"))
        words[u] = words.get(u, 0) + 1
    seqs = [[list(w), n] for w, n in words.items()]
    vocab = [b2u[b] for b in order]
    known = set(vocab)
    merges = []
    while len(vocab) < 256 + n_tokens:
        pairs = {}
        for sym, n in seqs:
            for p in zip(sym, sym[1:]):
                pairs[p] = pairs.get(p, 0) + n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        for s in seqs:
            sym, out, i = s[0], [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            s[0] = out
        if a + b not in known:
            known.add(a + b)
            vocab.append(a + b)
    vocab.append("<|endoftext|>")
    return {t: i for i, t in enumerate(vocab)}, merges


class GPT2Encoder:
    """GPT-2's encoding: regex pre-tokenisation, bytes -> unicode symbols, then
    per word repeatedly merge every occurrence of the lowest-ranked pair."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.b2u, _ = bytes_to_unicode()

    def bpe(self, word):
        syms = list(word)
        while len(syms) > 1:
            cands = [(self.ranks[p], p) for p in zip(syms, syms[1:]) if p in self.ranks]
            if not cands:
                break
            _, (a, b) = min(cands)
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return syms

    def encode(self, text):
        ids = []
        for w in regex.findall(GPT2_PAT, text):
            u = "".join(self.b2u[b] for b in w.encode("utf-8"))
            ids.extend(self.vocab[s] for s in self.bpe(u))
        return ids

    def decode(self, ids):
        u2b = {v: k for k, v in self.b2u.items()}
        inv = {i: t for t, i in self.vocab.items()}
        return bytes(u2b[c] for i in ids for c in inv[i]).decode("utf-8")

# ---------------------------------------------------------------- GPT-2 model


def gpt2_forward(w, cfg, ids):
    """GPT-2 forward: pre-LN blocks, Conv1D weights [in, out] (y = x W + b),
    gelu_new MLP, causal attention, tied lm_head."""
    E, H = cfg["n_embd"], cfg["n_head"]
    hd = E // H
    T = len(ids)
    eps = cfg["layer_norm_epsilon"]

    def ln(x, p):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    x = w["wte.weight"][torch.tensor(ids)] + w["wpe.weight"][:T]      # [T, E]
    mask = torch.ones(T, T).tril().bool()
    for l in range(cfg["n_layer"]):
        p = "h.%d." % l
        qkv = ln(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # [T, 3E]
        q, k, v = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
        outs = []
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            s = (q[:, sl] @ k[:, sl].T) / math.sqrt(hd)
            s = s.masked_fill(~mask, float("-inf"))
            outs.append(torch.softmax(s, -1) @ v[:, sl])
        x = x + torch.cat(outs, 1) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = gelu_new(ln(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ w["wte.weight"].T                           # [T, vocab]


def make_gpt2(out):
    with open(TEXT, encoding="utf-8") as f:
        text = f.read(40000)
    vocab, merges = train_bpe(text, GPT2_MERGES)
    enc = GPT2Encoder(vocab, merges)
    ids = enc.encode(REF_TEXT)
    assert enc.decode(ids) == REF_TEXT
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": len(vocab),
           "n_positions": 64, "n_ctx": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": None,
           "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new",
           "bos_token_id": vocab["<|endoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "tie_word_embeddings": True, "torch_dtype": "float32"}
    assert len(ids) <= cfg["n_positions"]
    E, L, V, P = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    g = torch.Generator().manual_seed(SEED_GPT2)

    def rn(*shape, std=0.15):
        return torch.randn(*shape, generator=g) * std

    t = {"wte.weight": rn(V, E, std=0.5), "wpe.weight": rn(P, E, std=0.3)}
    for l in range(L):
        p = "h.%d." % l
        t[p + "ln_1.weight"] = 1.0 + rn(E, std=0.1)
        t[p + "ln_1.bias"] = rn(E, std=0.1)
        t[p + "attn.c_attn.weight"] = rn(E, 3 * E)        # Conv1D: [in, out]
        t[p + "attn.c_attn.bias"] = rn(3 * E, std=0.05)
        t[p + "attn.c_proj.weight"] = rn(E, E)
        t[p + "attn.c_proj.bias"] = rn(E, std=0.05)
        t[p + "ln_2.weight"] = 1.0 + rn(E, std=0.1)
        t[p + "ln_2.bias"] = rn(E, std=0.1)
        t[p + "mlp.c_fc.weight"] = rn(E, 4 * E)
        t[p + "mlp.c_fc.bias"] = rn(4 * E, std=0.05)
        t[p + "mlp.c_proj.weight"] = rn(4 * E, E)
        t[p + "mlp.c_proj.bias"] = rn(E, std=0.05)
    t["ln_f.weight"] = 1.0 + rn(E, std=0.1)
    t["ln_f.bias"] = rn(E, std=0.1)

    os.makedirs(out, exist_ok=True)
    st = os.path.join(out, "model.safetensors")
    write_safetensors(st, t)
    w, _ = read_safetensors(st)
    with torch.no_grad():
        logits = gpt2_forward(w, cfg, ids)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write("%s %s\n" % (a, b))
    with open(os.path.join(out, "ref_text.txt"), "w", encoding="utf-8") as f:
        f.write(REF_TEXT)
    write_i32(os.path.join(out, "ref_tokens.i32"), ids)
    write_f32(os.path.join(out, "ref_logits.f32"), logits)
    shapes = "\n".join("| `%s` | %s |" % (k, list(v.shape)) for k, v in sorted(t.items()))
    readme = """# hf-gpt2: tiny random GPT-2 in Hugging Face layout

Generated by `/usr/bin/python3 scripts/make_hf_refs.py` (torch {torch}, seed {seed}); do
not edit by hand. Random weights: the model is meaningless, it only pins down the math.

- `config.json`: model_type gpt2, vocab_size {V}, n_positions {P}, n_embd {E}, n_layer {L},
  n_head {H}, layer_norm_epsilon 1e-5, activation_function gelu_new, tie_word_embeddings.
- `model.safetensors`: all F32, GPT-2's tensor names, `__metadata__` {{"format":"pt"}}.
  Conv1D weights (`c_attn`, `c_proj`, `c_fc`) are stored [in, out] and applied as
  y = x W + b. `c_attn` output columns are q | k | v, each split into heads of {hd}
  contiguous columns. There is no `lm_head.weight`: logits = ln_f(x) · wte^T.
- `vocab.json` + `merges.txt`: byte-level BPE trained by the script on the first 40,000
  characters of the TinyStories validation excerpt: 256 byte symbols (GPT-2's
  bytes_to_unicode, ids in GPT-2's order), {M} merges (`#version: 0.2` header line),
  `<|endoftext|>` = {eot} (last id).
- `ref_text.txt`: the reference sentence (UTF-8, no newline; has an apostrophe
  contraction, digits, punctuation and a two-byte character).
- `ref_tokens.i32`: its {T} token ids (int32 LE), from the script's port of GPT-2's
  encoder (the standard GPT-2 pre-tokenisation regex, then lowest-rank pair merges).
- `ref_logits.f32`: float32 LE [{T}][{V}] logits of one full causal forward pass over
  those tokens at positions 0..{T1} (row t scores the token after position t).

| tensor | shape |
|---|---|
{shapes}
""".format(torch=torch.__version__, seed=SEED_GPT2, V=V, P=P, E=E, L=L, H=cfg["n_head"],
           hd=E // cfg["n_head"], M=len(merges), eot=vocab["<|endoftext|>"], T=len(ids),
           T1=len(ids) - 1, shapes=shapes)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)
    print("hf-gpt2: vocab %d, %d merges, %d ref tokens: %s" % (V, len(merges), len(ids), ids))

# ---------------------------------------------------------------- LLaMA


def llama_forward(w, cfg, ids):
    """HF LlamaForCausalLM forward: RMSNorm (f32), half-split RoPE via
    rotate_half, GQA, SwiGLU MLP, untied lm_head."""
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    T = len(ids)
    eps = cfg["rms_norm_eps"]

    def rms(x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w[name]

    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()  # [T, hd]

    def rope(x):  # x [T, hd]: element i pairs with i + hd/2
        x1, x2 = x[:, :hd // 2], x[:, hd // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    mask = torch.ones(T, T).tril().bool()
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, p + "input_layernorm.weight")
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        outs = []
        for i in range(H):
            j = i // (H // KV)
            qi = rope(q[:, i * hd:(i + 1) * hd])
            kj = rope(k[:, j * hd:(j + 1) * hd])
            s = (qi @ kj.T) / math.sqrt(hd)
            s = s.masked_fill(~mask, float("-inf"))
            outs.append(torch.softmax(s, -1) @ v[:, j * hd:(j + 1) * hd])
        x = x + torch.cat(outs, 1) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, p + "post_attention_layernorm.weight")
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, "model.norm.weight") @ w["lm_head.weight"].T


def make_llama(out):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 48,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-06,
           "rope_theta": 10000.0, "vocab_size": 256, "max_position_embeddings": 128,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "float32"}
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = D // H
    g = torch.Generator().manual_seed(SEED_LLAMA)

    def rn(*shape, std=0.15):
        return torch.randn(*shape, generator=g) * std

    t = {"model.embed_tokens.weight": rn(V, D, std=0.5)}
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = 1.0 + rn(D, std=0.1)
        t[p + "self_attn.q_proj.weight"] = rn(H * hd, D)   # [out, in], y = W x
        t[p + "self_attn.k_proj.weight"] = rn(KV * hd, D)
        t[p + "self_attn.v_proj.weight"] = rn(KV * hd, D)
        t[p + "self_attn.o_proj.weight"] = rn(D, H * hd)
        t[p + "post_attention_layernorm.weight"] = 1.0 + rn(D, std=0.1)
        t[p + "mlp.gate_proj.weight"] = rn(I, D)
        t[p + "mlp.up_proj.weight"] = rn(I, D)
        t[p + "mlp.down_proj.weight"] = rn(D, I)
    t["model.norm.weight"] = 1.0 + rn(D, std=0.1)
    t["lm_head.weight"] = rn(V, D, std=0.3)
    bf16 = {"model.embed_tokens.weight": "BF16", "model.layers.1.mlp.down_proj.weight": "BF16"}
    ids = torch.randint(0, V, (24,), generator=g).tolist()
    ids[0] = cfg["bos_token_id"]

    os.makedirs(out, exist_ok=True)
    st = os.path.join(out, "model.safetensors")
    write_safetensors(st, t, bf16)
    w, dts = read_safetensors(st)
    for name, dt in bf16.items():  # the reference must see the rounded values
        assert dts[name] == dt
        assert torch.equal(w[name], t[name].to(torch.bfloat16).float())
        assert not torch.equal(w[name], t[name])
    with torch.no_grad():
        logits = llama_forward(w, cfg, ids)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_i32(os.path.join(out, "ref_tokens.i32"), ids)
    write_f32(os.path.join(out, "ref_logits.f32"), logits)
    shapes = "\n".join("| `%s` | %s | %s |" % (k, list(v.shape), dts[k]) for k, v in sorted(t.items()))
    readme = """# hf-llama: tiny random LLaMA in Hugging Face layout

Generated by `/usr/bin/python3 scripts/make_hf_refs.py` (torch {torch}, seed {seed}); do
not edit by hand. Random weights: the model is meaningless, it only pins down the math.

- `config.json`: model_type llama, hidden_size {D}, intermediate_size {I}, num_hidden_layers
  {L}, num_attention_heads {H}, num_key_value_heads {KV} (GQA: query head i uses kv head
  i / {G}), head_dim {hd}, rms_norm_eps 1e-6, rope_theta 10000, vocab_size {V},
  max_position_embeddings {P}, tie_word_embeddings false (`lm_head.weight` is separate).
- `model.safetensors`: HF names, linear weights [out, in] (y = W x), `__metadata__`
  {{"format":"pt"}}. Two tensors are stored as **BF16** (round-to-nearest-even from the
  f32 draw): `model.embed_tokens.weight` (exercises the gather path) and
  `model.layers.1.mlp.down_proj.weight` (a matmul); all others are F32. The reference
  uses the BF16 values widened exactly to f32.
- RoPE is HF's half-split form (rotate_half): within each head of {hd}, element i rotates
  with element i + {hh} by angle pos · 10000^(-2i/{hd}), i < {hh}. q_proj/k_proj rows are
  in HF order (not Meta's interleaved order); an importer for an interleaved-pair runtime
  must permute them: interleaved row h*{hd} + 2i + j = HF row h*{hd} + j*{hh} + i
  (i < {hh}, j in 0..1, per q or kv head h), i.e. `w.view(n, 2, {hh}, D).transpose(1, 2)`.
- `ref_tokens.i32`: {T} token ids (int32 LE; BOS 1 then seeded random ids).
- `ref_logits.f32`: float32 LE [{T}][{V}] logits of one causal forward pass over those
  tokens at positions 0..{T1} (row t scores the token after position t). RMSNorm:
  x · rsqrt(mean(x²) + eps) · w; MLP: down(silu(gate x) ⊙ up x).

| tensor | shape | dtype |
|---|---|---|
{shapes}
""".format(torch=torch.__version__, seed=SEED_LLAMA, D=D, I=I, L=cfg["num_hidden_layers"], H=H,
           KV=KV, G=H // KV, hd=hd, hh=hd // 2, V=V, P=cfg["max_position_embeddings"],
           T=len(ids), T1=len(ids) - 1, shapes=shapes)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)
    print("hf-llama: %d ref tokens: %s" % (len(ids), ids))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = os.path.join(os.path.abspath(args.repo), "tests", "data")
    make_gpt2(os.path.join(data, "hf-gpt2"))
    make_llama(os.path.join(data, "hf-llama"))
    for d in ("hf-gpt2", "hf-llama"):
        p = os.path.join(data, d)
        size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
        print("%s: %d bytes" % (d, size))
        if size > 300 * 1024:
            raise SystemExit("%s is over 300 KB" % d)


if __name__ == "__main__":
    main()

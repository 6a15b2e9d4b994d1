#!/usr/bin/python3
"""Write nesa's benchmark model: a synthetic 110M-parameter llama in llama2.c
legacy version-0 format plus a matching 32000-piece llama2.c tokenizer.

numpy only; the output is not committed.  The weights are random (N(0, 0.02),
norms = 1, fixed seed), so the model produces nonsense at llama2.c
stories110M's exact shapes and speed.
    /usr/bin/python3 scripts/make_synthetic_llama.py [DIR]   # default $HOME/.cache/nesa-bench
writes DIR/synthetic110M.bin (28 + 4 * 109,595,392 = 438,381,596 bytes) and
DIR/tokenizer32000.bin.  Tensors are generated and written in chunks of at
most CHUNK floats, so peak memory stays a few MB.
"""

import os
import struct
import sys

import numpy as np

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 768, 2048, 12, 12, 12, 32000, 1024
SEED = 110
CHUNK = 1 << 20
STD = 0.02


def layout():
    """(name, number of floats, kind) in version-0 order."""
    hd = DIM // HEADS
    kvd = KV_HEADS * hd
    return [("token_embedding", VOCAB * DIM, "randn"), ("rms_att", LAYERS * DIM, "ones"),
            ("wq", LAYERS * DIM * DIM, "randn"), ("wk", LAYERS * kvd * DIM, "randn"),
            ("wv", LAYERS * kvd * DIM, "randn"), ("wo", LAYERS * DIM * DIM, "randn"),
            ("rms_ffn", LAYERS * DIM, "ones"), ("w1", LAYERS * HIDDEN * DIM, "randn"),
            ("w2", LAYERS * DIM * HIDDEN, "randn"), ("w3", LAYERS * HIDDEN * DIM, "randn"),
            ("rms_final", DIM, "ones"), ("freq_cis_real", SEQ * hd // 2, "cos"),
            ("freq_cis_imag", SEQ * hd // 2, "sin")]


def write_model(path):
    rng = np.random.default_rng(SEED)
    hd = DIM // HEADS
    freqs = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(np.arange(SEQ, dtype=np.float64), freqs)  # [SEQ, hd/2], 256 KB
    total = 0
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ))
        for name, n, kind in layout():
            if kind == "cos":
                f.write(np.cos(ang).astype("<f4").tobytes())
            elif kind == "sin":
                f.write(np.sin(ang).astype("<f4").tobytes())
            elif kind == "ones":
                f.write(np.ones(n, dtype="<f4").tobytes())
            else:
                left = n
                while left:
                    k = min(left, CHUNK)
                    a = rng.standard_normal(k, dtype=np.float32)
                    a *= STD
                    f.write(a.astype("<f4", copy=False).tobytes())
                    left -= k
            total += n
    os.replace(path + ".tmp", path)
    return total


def pieces():
    """32000 unique pieces in llama2.c tokenizer order: <unk>, BOS, EOS, 256
    byte tokens, then synthetic merges (every piece of length >= 2 is the
    concatenation of two shorter pieces, so run.c's merge loop can reach it),
    then the single printable ASCII characters, SentencePiece-style."""
    out = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    chars = [bytes([c]) for c in range(0x20, 0x7f)]
    n_merged = VOCAB - len(out) - len(chars)
    letters = [bytes([c]) for c in range(ord("a"), ord("z") + 1)]
    merged, level = [], [b""]
    while len(merged) < n_merged:
        level = [p + c for p in level for c in letters]   # all words of the next length
        for w in level:
            for p in (b" " + w, w):
                if len(p) >= 2 and len(merged) < n_merged:
                    merged.append(p)
    toks = [(p, 0.0) for p in out]
    score = 0.0
    for p in merged + chars:
        toks.append((p, score))
        score -= 1.0
    assert len(toks) == VOCAB and len({p for p, _ in toks}) == VOCAB
    return toks


def write_tokenizer(path):
    toks = pieces()
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p, _ in toks)))
        for p, s in toks:
            f.write(struct.pack("<fi", s, len(p)))
            f.write(p)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.expanduser("~"), ".cache", "nesa-bench")
    os.makedirs(out, exist_ok=True)
    mp = os.path.join(out, "synthetic110M.bin")
    n = write_model(mp)
    size = os.path.getsize(mp)
    if size != 28 + 4 * n:
        raise SystemExit("%s: %d bytes, expected %d" % (mp, size, 28 + 4 * n))
    tp = os.path.join(out, "tokenizer32000.bin")
    write_tokenizer(tp)
    print("%s: %d parameters (incl. freq_cis), %d bytes" % (mp, n, size))
    print("%s: %d pieces, %d bytes" % (tp, VOCAB, os.path.getsize(tp)))


if __name__ == "__main__":
    main()

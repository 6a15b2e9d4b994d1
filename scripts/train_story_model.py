#!/usr/bin/python3
"""Train nesa's default story model: a tiny llama2.c-architecture LLaMA.

Run with Debian's /usr/bin/python3 (torch 1.13 + numpy); developers run it, CI
never does.  Everything it writes is deterministic for a given torch build and
thread count (the training RNG is seeded; resuming restores the RNG state).

Outputs (paths relative to the repository root, see --repo):
  share/models/story/tokenizer.bin     llama2.c tokenizer, 512 pieces, byte fallback
  share/models/story/model.bin         llama2.c legacy version-0 checkpoint (f32)
  share/models/story/expected_greedy.txt  greedy 200 tokens from BOS, decoded as run.c does
  tests/data/story_ref_tokens.i32      32 token ids (int32 LE) of a fixed sentence
  tests/data/story_ref_logits.f32      f32 LE [32][512] logits of the forward over them
Checkpoints go to --work (default $HOME/.cache/nesa-story) so an interrupted
run resumes with `--resume`.

Stages: tokenizer -> encode -> train -> export -> verify -> references.
    /usr/bin/python3 scripts/train_story_model.py            # all stages
    /usr/bin/python3 scripts/train_story_model.py --resume   # continue training
    /usr/bin/python3 scripts/train_story_model.py --export-only  # from best checkpoint
"""

import argparse
import collections
import heapq
import json
import math
import os
import re
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/work/shared/data/tinystories_val_excerpt/tinystories_val_excerpt.txt"
VOCAB_SIZE = 512
N_SPECIAL = 3          # <unk>, BOS, EOS
N_BYTES = 256          # <0x00>..<0xFF> at ids 3..258
BOS, EOS = 1, 2
MIN_CHAR_COUNT = 3     # rarer characters are left to byte fallback

CONFIG = dict(dim=128, hidden_dim=344, n_layers=4, n_heads=4, n_kv_heads=2,
              vocab_size=VOCAB_SIZE, seq_len=256)

# ---------------------------------------------------------------- data split


def load_documents():
    """Split the text into story documents (train, val).

    The excerpt separates both stories and paragraphs by a blank line, so story
    boundaries are approximated: a paragraph starting with "Once" opens a new
    document, other paragraphs are appended with their "\\n\\n".  The last 5%
    of paragraphs are held out before grouping so no document straddles the
    split.
    """
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    paras = [p.strip() for p in text.split("\n\n")]
    paras = [p for p in paras if p]
    n_val = int(round(len(paras) * 0.05))
    return group(paras[:-n_val]), group(paras[-n_val:]), len(paras), n_val


def group(paras):
    docs = []
    for p in paras:
        if not docs or p.startswith("Once"):
            docs.append(p)
        else:
            docs[-1] += "\n\n" + p
    return docs

# ---------------------------------------------------------------- tokenizer


def train_tokenizer(docs):
    """SentencePiece-style BPE with byte fallback, llama2.c tok512 layout.

    Pieces: 0 <unk>, 1 BOS, 2 EOS, 3..258 byte tokens, then merged pieces in
    merge order (scores 0, -1, -2, ...), then the single characters by
    descending frequency with the scores continuing downwards, as SentencePiece
    orders them.  Merges never cross a pre-token (" word", "word", a run of
    newlines or of spaces), so no piece has an inner space.
    Returns a list of (bytes, score).
    """
    chars = collections.Counter()
    words = collections.Counter()
    for d in docs:
        t = " " + d  # the encoder's dummy prefix
        chars.update(t)
        words.update(re.findall(r" ?[^\s]+|\n+| +", t))
    alphabet = [c for c, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))
                if n >= MIN_CHAR_COUNT]
    if " " not in alphabet:
        raise SystemExit("training text has no space character")
    n_merges = VOCAB_SIZE - N_SPECIAL - N_BYTES - len(alphabet)
    alpha = set(alphabet)
    # each word as a list of symbols; characters outside the alphabet split the
    # word (they become byte tokens, which never merge in run.c)
    seqs = []
    for w, n in words.items():
        parts, cur = [], []
        for c in w:
            if c in alpha:
                cur.append(c)
            else:
                if cur:
                    parts.append(cur)
                cur = []
        if cur:
            parts.append(cur)
        for p in parts:
            if len(p) > 1:
                seqs.append([p, n])
    merged = []
    seen = set(alphabet)
    while len(merged) < n_merges:
        pairs = collections.Counter()
        for sym, n in seqs:
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ab = a + b
        for s in seqs:
            sym = s[0]
            if len(sym) < 2:
                continue
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(ab)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            s[0] = out
        if ab not in seen:  # the same string can come from two splits
            seen.add(ab)
            merged.append(ab)
    vocab = [(b"<unk>", 0.0), (b"\n<s>\n", 0.0), (b"\n</s>\n", 0.0)]
    vocab += [(("<0x%02X>" % i).encode(), 0.0) for i in range(256)]
    score = 0.0
    for p in merged + alphabet:
        vocab.append((p.encode("utf-8"), score))
        score -= 1.0
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return vocab


def write_tokenizer(path, vocab):
    max_len = max(len(b) for b, _ in vocab)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max_len))
        for b, s in vocab:
            f.write(struct.pack("<fi", s, len(b)))
            f.write(b)


def read_tokenizer(path):
    with open(path, "rb") as f:
        data = f.read()
    off = 4
    vocab = []
    while off < len(data):
        s, n = struct.unpack_from("<fi", data, off)
        off += 8
        vocab.append((data[off:off + n], s))
        off += n
    return vocab


class RunCTokenizer:
    """Encoder/decoder with exactly llama2.c run.c's semantics."""

    def __init__(self, vocab):
        self.pieces = [b for b, _ in vocab]
        self.scores = [s for _, s in vocab]
        self.lookup = {}
        for i, b in enumerate(self.pieces):
            self.lookup.setdefault(b, i)  # run.c's bsearch: any match; pieces are unique

    def _initial(self, text):
        tokens = []
        if text:
            tokens.append(self.lookup[b" "])  # dummy prefix, as run.c
        for ch in text:
            b = ch.encode("utf-8")
            i = self.lookup.get(b)
            if i is not None:
                tokens.append(i)
            else:
                tokens.extend(x + N_SPECIAL for x in b)
        return tokens

    def encode_naive(self, text, bos=True):
        """Literal transcription of run.c's merge loop (quadratic)."""
        tokens = self._initial(text)
        while True:
            best, best_id, best_idx = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                j = self.lookup.get(self.pieces[tokens[i]] + self.pieces[tokens[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_id, best_idx = self.scores[j], j, i
            if best_idx == -1:
                break
            tokens[best_idx:best_idx + 2] = [best_id]
        return ([BOS] if bos else []) + tokens

    def encode(self, text, bos=True):
        """Same result as encode_naive, with a heap: run.c takes the highest
        score and, on ties, the leftmost pair; (-score, left index) orders the
        heap identically because merging keeps the left node's index."""
        tokens = self._initial(text)
        n = len(tokens)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        ver = [0] * n
        alive = [True] * n
        heap = []

        def push(i):
            j = nxt[i]
            if i < 0 or j >= n:
                return
            k = self.lookup.get(self.pieces[tokens[i]] + self.pieces[tokens[j]])
            if k is not None:
                heapq.heappush(heap, (-self.scores[k], i, ver[i], j, ver[j], k))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, vi, j, vj, k = heapq.heappop(heap)
            if not (alive[i] and alive[j] and ver[i] == vi and ver[j] == vj and nxt[i] == j):
                continue
            tokens[i] = k
            ver[i] += 1
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out = [tokens[i] for i in range(n) if alive[i]]
        return ([BOS] if bos else []) + out

    def decode_piece(self, prev, tok):
        b = self.pieces[tok]
        if prev == BOS and b[:1] == b" ":
            b = b[1:]
        m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", b)
        if m:
            b = bytes([int(m.group(1), 16)])
        # run.c's safe_printf drops single non-printable, non-space bytes
        if len(b) == 1 and not (0x20 <= b[0] < 0x7f or b[0] in b"\t\n\v\f\r"):
            return b""
        return b

    def decode(self, tokens, prev=BOS):
        out = b""
        for t in tokens:
            out += self.decode_piece(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")

# ---------------------------------------------------------------- training model


class Attention(nn.Module):
    def __init__(self, c, dropout):
        super().__init__()
        self.nh, self.nkv = c["n_heads"], c["n_kv_heads"]
        self.hd = c["dim"] // self.nh
        self.wq = nn.Linear(c["dim"], self.nh * self.hd, bias=False)
        self.wk = nn.Linear(c["dim"], self.nkv * self.hd, bias=False)
        self.wv = nn.Linear(c["dim"], self.nkv * self.hd, bias=False)
        self.wo = nn.Linear(self.nh * self.hd, c["dim"], bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.nh, self.hd)
        k = self.wk(x).view(B, T, self.nkv, self.hd)
        v = self.wv(x).view(B, T, self.nkv, self.hd)
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd) + mask[:T, :T]
        att = self.drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, -1)
        return self.drop(self.wo(y))


def rope_interleaved(x, cos, sin):
    # x [B,T,H,hd]; pairs (x[2i], x[2i+1]) rotate by pos*theta_i
    T = x.shape[1]
    xr = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = xr[..., 0], xr[..., 1]
    c, s = cos[:T].view(1, T, 1, -1), sin[:T].view(1, T, 1, -1)
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(3)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, c, dropout):
        super().__init__()
        self.attention_norm = RMSNorm(c["dim"])
        self.attention = Attention(c, dropout)
        self.ffn_norm = RMSNorm(c["dim"])
        self.w1 = nn.Linear(c["dim"], c["hidden_dim"], bias=False)
        self.w2 = nn.Linear(c["hidden_dim"], c["dim"], bias=False)
        self.w3 = nn.Linear(c["dim"], c["hidden_dim"], bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        h = self.ffn_norm(x)
        return x + self.drop(self.w2(F.silu(self.w1(h)) * self.w3(h)))


class Transformer(nn.Module):
    def __init__(self, c, dropout=0.0):
        super().__init__()
        self.c = c
        self.tok_embeddings = nn.Embedding(c["vocab_size"], c["dim"])
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Block(c, dropout) for _ in range(c["n_layers"]))
        self.norm = RMSNorm(c["dim"])
        hd = c["dim"] // c["n_heads"]
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(c["seq_len"]).float(), freqs)
        self.register_buffer("cos", torch.cos(ang), persistent=False)
        self.register_buffer("sin", torch.sin(ang), persistent=False)
        mask = torch.full((c["seq_len"], c["seq_len"]), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("wo.weight") or n.endswith("w2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c["n_layers"]))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx):
        x = self.drop(self.tok_embeddings(idx))
        for layer in self.layers:
            x = layer(x, self.cos, self.sin, self.mask)
        # classifier shares the token embedding (llama2.c "positive vocab_size")
        return self.norm(x) @ self.tok_embeddings.weight.t()

# ---------------------------------------------------------------- export / reference


def export_v0(model, path):
    """llama2.c legacy version-0 checkpoint: 7 int32 header, then f32 arrays."""
    c = model.c
    hd = c["dim"] // c["n_heads"]
    L = model.layers
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}

    def stack(name):
        return torch.stack([sd["layers.%d.%s" % (i, name)] for i in range(len(L))])

    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    ang = torch.outer(torch.arange(c["seq_len"]).float(), freqs)
    arrays = [sd["tok_embeddings.weight"], stack("attention_norm.weight"),
              stack("attention.wq.weight"), stack("attention.wk.weight"),
              stack("attention.wv.weight"), stack("attention.wo.weight"),
              stack("ffn_norm.weight"), stack("w1.weight"), stack("w2.weight"),
              stack("w3.weight"), sd["norm.weight"], torch.cos(ang), torch.sin(ang)]
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", c["dim"], c["hidden_dim"], c["n_layers"], c["n_heads"],
                            c["n_kv_heads"], c["vocab_size"], c["seq_len"]))
        for a in arrays:
            f.write(a.numpy().astype("<f4").tobytes())


def load_v0(path):
    """Read a version-0 checkpoint into named f32 tensors (reference side)."""
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, nl, nh, nkv, vocab, seq = struct.unpack_from("<7i", data, 0)
    hd = dim // nh
    kvd = nkv * hd
    shapes = [("emb", (abs(vocab), dim)), ("rms_att", (nl, dim)), ("wq", (nl, dim, dim)),
              ("wk", (nl, kvd, dim)), ("wv", (nl, kvd, dim)), ("wo", (nl, dim, dim)),
              ("rms_ffn", (nl, dim)), ("w1", (nl, hidden, dim)), ("w2", (nl, dim, hidden)),
              ("w3", (nl, hidden, dim)), ("rms_final", (dim,)),
              ("fcr", (seq, hd // 2)), ("fci", (seq, hd // 2))]
    w, off = {}, 28
    for name, shp in shapes:
        n = math.prod(shp)
        w[name] = torch.frombuffer(bytearray(data[off:off + 4 * n]), dtype=torch.float32).view(shp)
        off += 4 * n
    if off != len(data):
        raise SystemExit("%s: %d trailing bytes" % (path, len(data) - off))
    w["cfg"] = dict(dim=dim, hidden_dim=hidden, n_layers=nl, n_heads=nh, n_kv_heads=nkv,
                    vocab_size=vocab, seq_len=seq)
    return w


def ref_forward(w, tokens):
    """Reference forward written from the file layout, not the training module:
    per-head loops, RoPE via complex multiplication with the file's freq_cis."""
    c = w["cfg"]
    dim, nh, nkv = c["dim"], c["n_heads"], c["n_kv_heads"]
    hd = dim // nh
    T = len(tokens)
    x = w["emb"][torch.tensor(tokens, dtype=torch.long)].clone()  # [T, dim]
    fc = torch.complex(w["fcr"][:T], w["fci"][:T])                # [T, hd/2]

    def rms(v, g):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5) * g

    def rot(v):  # [T, hd]
        vc = torch.view_as_complex(v.reshape(T, hd // 2, 2).contiguous())
        return torch.view_as_real(vc * fc).reshape(T, hd)

    causal = torch.ones(T, T).tril().bool()
    for l in range(c["n_layers"]):
        h = rms(x, w["rms_att"][l])
        q, k, v = h @ w["wq"][l].T, h @ w["wk"][l].T, h @ w["wv"][l].T
        heads = []
        for hi in range(nh):
            kv = hi // (nh // nkv)
            qh = rot(q[:, hi * hd:(hi + 1) * hd])
            kh = rot(k[:, kv * hd:(kv + 1) * hd])
            vh = v[:, kv * hd:(kv + 1) * hd]
            s = (qh @ kh.T) / math.sqrt(hd)
            s = s.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(s, dim=-1) @ vh)
        x = x + torch.cat(heads, dim=1) @ w["wo"][l].T
        h = rms(x, w["rms_ffn"][l])
        a = h @ w["w1"][l].T
        x = x + ((a * torch.sigmoid(a)) * (h @ w["w3"][l].T)) @ w["w2"][l].T
    return rms(x, w["rms_final"]) @ w["emb"].T  # [T, vocab]


def ref_generate(w, n, temperature=0.0, gen=None):
    toks = [BOS]
    for _ in range(n):
        logits = ref_forward(w, toks)[-1]
        if temperature == 0.0:
            nxt = int(torch.argmax(logits))
        else:
            p = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(p, 1, generator=gen))
        if nxt == BOS:  # run.c stops on BOS
            break
        toks.append(nxt)
    return toks

# ---------------------------------------------------------------- main


def batches(data, bsz, T, gen):
    ix = torch.randint(len(data) - T - 1, (bsz,), generator=gen)
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
    return x, y


@torch.no_grad()
def evaluate(model, data, T, max_windows=None):
    model.eval()
    n = (len(data) - 1) // T
    if max_windows:
        n = min(n, max_windows)
    tot = 0.0
    for i in range(0, n, 16):
        idx = range(i, min(n, i + 16))
        x = torch.stack([data[j * T:(j + 1) * T] for j in idx])
        y = torch.stack([data[j * T + 1:(j + 1) * T + 1] for j in idx])
        tot += F.cross_entropy(model(x).view(-1, VOCAB_SIZE), y.reshape(-1), reduction="sum").item()
    model.train()
    return tot / (n * T)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--work", default=os.path.join(os.path.expanduser("~"), ".cache", "nesa-story"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repo = os.path.abspath(args.repo)
    out = os.path.join(repo, "share", "models", "story")
    tdata = os.path.join(repo, "tests", "data")
    os.makedirs(out, exist_ok=True)
    os.makedirs(tdata, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)

    # -- tokenizer
    train_docs, val_docs, n_par, n_val = load_documents()
    print("paragraphs %d (val %d), documents train %d val %d" % (n_par, n_val, len(train_docs), len(val_docs)))
    tok_path = os.path.join(out, "tokenizer.bin")
    vocab = train_tokenizer(train_docs)
    write_tokenizer(tok_path, vocab)
    tok = RunCTokenizer(read_tokenizer(tok_path))
    for d in train_docs[:40] + val_docs[:10]:  # heap encoder == run.c's loop
        assert tok.encode(d) == tok.encode_naive(d), d[:60]
        assert tok.decode(tok.encode(d)[1:]) == d, d[:60]
    cache = os.path.join(args.work, "tokens.pt")
    if os.path.exists(cache) and torch.load(cache)["vocab"] == vocab:
        train_data, val_data = torch.load(cache)["train"], torch.load(cache)["val"]
    else:
        t0 = time.time()
        enc = lambda docs: torch.tensor([t for d in docs for t in tok.encode(d)], dtype=torch.long)
        train_data, val_data = enc(train_docs), enc(val_docs)
        torch.save({"vocab": vocab, "train": train_data, "val": val_data}, cache)
        print("encoded in %.1fs" % (time.time() - t0))
    nch = sum(len(d) for d in train_docs)
    print("tokens train %d val %d (%.2f chars/token)" % (len(train_data), len(val_data), nch / len(train_data)))

    # -- training
    c = CONFIG
    T = c["seq_len"]
    ck_path = os.path.join(args.work, "ckpt.pt")
    best_path = os.path.join(args.work, "best.pt")
    if not args.export_only:
        torch.manual_seed(args.seed)
        model = Transformer(c, args.dropout)
        print("parameters %d" % sum(p.numel() for p in model.parameters()))
        decay = [p for p in model.parameters() if p.dim() >= 2]
        nodecay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": nodecay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95))
        gen = torch.Generator().manual_seed(args.seed)
        step, best, t_used, log = 0, float("inf"), 0.0, []
        if args.resume and os.path.exists(ck_path):
            ck = torch.load(ck_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            gen.set_state(ck["gen"])
            torch.set_rng_state(ck["rng"])
            step, best, t_used, log = ck["step"], ck["best"], ck["time"], ck["log"]
            print("resumed at step %d" % step)
        warm = 200
        t0 = time.time() - t_used
        model.train()
        while step < args.iters:
            lr = args.lr * (step + 1) / warm if step < warm else \
                0.05 * args.lr + 0.95 * args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (args.iters - warm)))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = batches(train_data, args.batch, T, gen)
            loss = F.cross_entropy(model(x).view(-1, VOCAB_SIZE), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                print("step %5d loss %.4f lr %.2e  %.0fs" % (step, loss.item(), lr, time.time() - t0), flush=True)
            if step % args.eval_every == 0 or step == args.iters:
                tl = evaluate(model, train_data, T, max_windows=64)
                vl = evaluate(model, val_data, T)
                log.append((step, tl, vl))
                print("step %5d train %.4f val %.4f" % (step, tl, vl), flush=True)
                if vl < best:
                    best = vl
                    torch.save({"model": model.state_dict(), "step": step, "train": tl, "val": vl}, best_path)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "rng": torch.get_rng_state(), "step": step, "best": best,
                            "time": time.time() - t0, "log": log}, ck_path)
        print("training time %.0fs" % (time.time() - t0))

    # -- export the best checkpoint
    bk = torch.load(best_path)
    model = Transformer(c, 0.0)
    model.load_state_dict(bk["model"])
    model.eval()
    full_train = evaluate(model, train_data, T)
    full_val = evaluate(model, val_data, T)
    print("exported checkpoint: step %d, train loss %.4f, val loss %.4f (ppl %.2f)"
          % (bk["step"], full_train, full_val, math.exp(full_val)))
    bin_path = os.path.join(out, "model.bin")
    export_v0(model, bin_path)
    print("model.bin %d bytes" % os.path.getsize(bin_path))

    # -- verify the exported file against the trained module
    w = load_v0(bin_path)
    probe = val_data[:T].tolist()
    with torch.no_grad():
        a = model(torch.tensor([probe]))[0]
    b = ref_forward(w, probe)
    diff = (a - b).abs().max().item()
    print("export check: max |logit diff| module vs reference-from-file = %.3g" % diff)
    if diff > 1e-3:
        raise SystemExit("exported model.bin does not match the trained module")

    # -- references
    with torch.no_grad():
        g = ref_generate(w, 200)
    text = tok.decode(g[1:])
    with open(os.path.join(out, "expected_greedy.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")  # run.c ends its output with a newline
    print("---- greedy (%d tokens)\n%s" % (len(g) - 1, text))
    sample = None
    # a sentence whose encoding is exactly 32 tokens with BOS (word prefix of a val paragraph)
    for doc in val_docs:
        words = doc.split(" ")
        for k in range(1, len(words) + 1):
            n = len(tok.encode(" ".join(words[:k])))
            if n >= 32:
                break
        if n == 32:
            sample = " ".join(words[:k])
            break
    if sample is None:
        raise SystemExit("no 32-token sentence prefix found")
    ids = tok.encode(sample)
    with torch.no_grad():
        logits = ref_forward(w, ids)
    with open(os.path.join(tdata, "story_ref_tokens.i32"), "wb") as f:
        f.write(struct.pack("<%di" % len(ids), *ids))
    with open(os.path.join(tdata, "story_ref_logits.f32"), "wb") as f:
        f.write(logits.numpy().astype("<f4").tobytes())
    print("---- 32-token reference text: %r" % sample)
    print("ids", ids)
    gen = torch.Generator().manual_seed(42)
    for i in range(3):
        with torch.no_grad():
            s = ref_generate(w, 200, 0.8, gen)
        print("---- sample t=0.8 #%d\n%s" % (i + 1, tok.decode(s[1:])))
    print(json.dumps({"step": bk["step"], "train_loss": round(full_train, 4),
                      "val_loss": round(full_val, 4), "tokens_train": len(train_data),
                      "tokens_val": len(val_data)}))


if __name__ == "__main__":
    main()

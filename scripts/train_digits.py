#!/usr/bin/python3
"""Train nesa's small digits CNN (scikit-learn 8x8 digits) and write it as
safetensors plus the test split and an architecture description.

Run with Debian's /usr/bin/python3 (torch 1.13); developers run it, CI never does.
    /usr/bin/python3 scripts/train_digits.py [--repo DIR]

Outputs in share/models/digits/: digits.safetensors, test_images.u8
(450x1x8x8 uint8 0..16), test_labels.u8 (450 uint8), ARCH.md.
Only ops in nesa's graph runtime are used: conv2d, relu, maxpool, flatten, linear.
"""

import argparse
import gzip
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/work/shared/data/sklearn_small/digits.csv.gz"
N_TRAIN = 1347

# (name, shape) in the order the forward uses them
TENSORS = [("conv1.weight", (16, 1, 3, 3)), ("conv1.bias", (16,)),
           ("conv2.weight", (32, 16, 3, 3)), ("conv2.bias", (32,)),
           ("fc.weight", (10, 128)), ("fc.bias", (10,))]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):                                   # x [N,1,8,8]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)          # [N,16,4,4]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)          # [N,32,2,2]
        return self.fc(torch.flatten(x, 1))                 # [N,10]


def write_safetensors(path, tensors):
    """safetensors by hand: u64 LE header length, JSON header (sorted keys,
    F32, shape, data_offsets), then the raw little-endian data."""
    names = sorted(tensors)
    header, off, blobs = {}, 0, []
    for n in names:
        b = tensors[n].detach().contiguous().numpy().astype("<f4").tobytes()
        header[n] = {"dtype": "F32", "shape": list(tensors[n].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        assert v["dtype"] == "F32"
        out[k] = torch.frombuffer(bytearray(data[8 + n + a:8 + n + b]), dtype=torch.float32).view(v["shape"])
    return out


def ref_forward(w, x):
    """Functional forward from the tensors read back out of the file."""
    x = F.max_pool2d(F.relu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"], padding=1)), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, w["conv2.weight"], w["conv2.bias"], padding=1)), 2)
    return x.reshape(x.shape[0], -1) @ w["fc.weight"].T + w["fc.bias"]


def shift(x, gen):
    """Augmentation: translate each image by -1..1 pixels (zero fill)."""
    p = F.pad(x, (1, 1, 1, 1))
    d = torch.randint(0, 3, (x.shape[0], 2), generator=gen)
    return torch.stack([p[i, :, a:a + 8, b:b + 8] for i, (a, b) in enumerate(d.tolist())])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    out = os.path.join(os.path.abspath(args.repo), "share", "models", "digits")
    os.makedirs(out, exist_ok=True)

    with gzip.open(DATA, "rt") as f:
        rows = [[int(v) for v in line.split(",")] for line in f if line.strip()]
    assert len(rows) == 1797 and all(len(r) == 65 for r in rows)
    pix = torch.tensor([r[:64] for r in rows], dtype=torch.uint8).view(-1, 1, 8, 8)
    lab = torch.tensor([r[64] for r in rows], dtype=torch.long)
    xtr, ytr = pix[:N_TRAIN].float() / 16.0, lab[:N_TRAIN]
    xte, yte = pix[N_TRAIN:].float() / 16.0, lab[N_TRAIN:]

    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(N_TRAIN, generator=gen)
        tot = 0.0
        for i in range(0, N_TRAIN, 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(model(shift(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        sched.step()
        if (ep + 1) % 10 == 0:
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).sum().item()
            print("epoch %d loss %.4f test %d/450" % (ep + 1, tot / N_TRAIN, acc))

    st = os.path.join(out, "digits.safetensors")
    write_safetensors(st, dict(model.state_dict()))
    w = read_safetensors(st)
    assert sorted(w) == sorted(n for n, _ in TENSORS)
    for n, shp in TENSORS:
        assert tuple(w[n].shape) == shp, n
    with torch.no_grad():
        logits = ref_forward(w, xte)
        assert (logits - model(xte)).abs().max().item() < 1e-5
    correct = (logits.argmax(1) == yte).sum().item()
    train_correct = (ref_forward(w, xtr).argmax(1) == ytr).sum().item()
    with open(os.path.join(out, "test_images.u8"), "wb") as f:
        f.write(pix[N_TRAIN:].numpy().tobytes())
    with open(os.path.join(out, "test_labels.u8"), "wb") as f:
        f.write(lab[N_TRAIN:].to(torch.uint8).numpy().tobytes())

    lines = ["# digits CNN (share/models/digits)", "",
             "Generated by `/usr/bin/python3 scripts/train_digits.py` (seed %d, torch %s, 1 thread) from"
             % (args.seed, torch.__version__),
             "scikit-learn's digits.csv.gz (1797 8x8 images, pixels 0..16): rows 0..1346 train,",
             "rows 1347..1796 test (the order of the file, no shuffling). Training: AdamW lr 3e-3,",
             "cosine schedule, batch 32, %d epochs, random +-1 pixel shifts." % args.epochs, "",
             "## Files", "",
             "- `digits.safetensors`: F32 weights, names below.",
             "- `test_images.u8`: 450x1x8x8 uint8 pixels 0..16 (row-major, NCHW).",
             "- `test_labels.u8`: 450 uint8 labels 0..9.", "",
             "## Preprocessing", "",
             "x = pixel / 16 as float32, layout NCHW [N,1,8,8].", "",
             "## Layers", "",
             "| # | op | parameters | output |", "|---|---|---|---|",
             "| 1 | conv2d 3x3, stride 1, padding 1, groups 1, bias | `conv1.weight` [16,1,3,3], `conv1.bias` [16] | [N,16,8,8] |",
             "| 2 | relu | | [N,16,8,8] |",
             "| 3 | maxpool 2x2, stride 2 | | [N,16,4,4] |",
             "| 4 | conv2d 3x3, stride 1, padding 1, groups 1, bias | `conv2.weight` [32,16,3,3], `conv2.bias` [32] | [N,32,4,4] |",
             "| 5 | relu | | [N,32,4,4] |",
             "| 6 | maxpool 2x2, stride 2 | | [N,32,2,2] |",
             "| 7 | flatten (C,H,W order: index c*4 + h*2 + w) | | [N,128] |",
             "| 8 | linear y = W x + b | `fc.weight` [10,128], `fc.bias` [10] | [N,10] logits |", "",
             "Convolution weights are [out, in, kh, kw] (PyTorch); the predicted class is the argmax.", "",
             "## Results", "",
             "Test accuracy: %d / 450 (%.2f%%). Train accuracy: %d / %d." % (correct, 100.0 * correct / 450, train_correct, N_TRAIN),
             "", "Reference logits of the first 4 test images (labels %s):" % yte[:4].tolist(), "", "```"]
    for i in range(4):
        lines.append(" ".join("%.6f" % v for v in logits[i].tolist()))
    lines += ["```", ""]
    with open(os.path.join(out, "ARCH.md"), "w") as f:
        f.write("\n".join(lines))
    print("test accuracy %d/450, train %d/%d" % (correct, train_correct, N_TRAIN))
    print("\n".join(lines[-7:]))


if __name__ == "__main__":
    main()

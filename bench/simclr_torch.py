"""PyTorch peer of pretext's SimCLR training step, for benchmarks/train.rs.

Same architecture as src/train/resnet.rs (CIFAR ResNet: 3x3 stride-1 stem, no
max-pool, basic blocks with 1x1 projection shortcuts, global average pool),
the same 2-layer projection head (Linear-BN-ReLU-Linear), NT-Xent loss and SGD
with momentum and weight decay. Inputs are random tensors already augmented
and normalised: this times the training step only.

Usage: python3 bench/simclr_torch.py --preset small --batch 128 --steps 10 --threads 2
Prints one JSON line: {"images_per_sec": ..., "step_ms": ...}.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"small": ([16, 32, 64, 128], [1, 1, 1, 1]), "resnet18": ([64, 128, 256, 512], [2, 2, 2, 2])}


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ConvBn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    """Module names match pretext's safetensors export (stem.conv, layers.s.b.conv1, ...)."""

    def __init__(self, widths, blocks):
        super().__init__()
        self.stem = ConvBn(3, widths[0], 3, 1)
        layers, cin = [], widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(max(n, 1)):
                stage.append(BasicBlock(cin, w, (1 if s == 0 else 2) if b == 0 else 1))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layers(x)
        return x.mean(dim=(2, 3))


def nt_xent(z1, z2, temperature):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    widths, blocks = PRESETS[args.preset]
    backbone = ResNet(widths, blocks)
    head = nn.Sequential(nn.Linear(widths[-1], args.hidden), nn.BatchNorm1d(args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.dim))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    x1 = torch.randn(args.batch, 3, args.size, args.size)
    x2 = torch.randn(args.batch, 3, args.size, args.size)

    def step():
        z1, z2 = head(backbone(x1)), head(backbone(x2))
        loss = nt_xent(z1, z2, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t) / args.steps
    print(json.dumps({"images_per_sec": args.batch / dt, "step_ms": dt * 1000, "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
    main()

"""Recipe probes that are not settings: `recipe_curve.py` with one part of SimCLR's training changed.

The product's settings cover what a user would tune (steps, width, temperature, crops, jitter,
read-out). A probe of something the settings do not expose (another loss, another head, extra
views) would otherwise be a throwaway patch; this script makes each one a flag, so every probe in
research/README.md (*Recipe probes*, rows H1-) reruns from its command. Each flag swaps one part
of lookalike's SimCLR method (`lookalike.stages.encoder.methods.simclr`) for lightly's own module,
then runs benchmarks/recipe_curve.py with the remaining arguments unchanged.

    --loss dcl        lightly's DCLLoss: the positive pair left out of the denominator (Yeh et al. 2022)
    --loss bank       NTXentLoss with a 4,096-vector memory bank of earlier batches' negatives
    --loss nnclr      NNCLR (Dwibedi et al. 2021): each view's positive is its nearest neighbour in a
                      4,096-vector support set, predicted through lightly's NNCLRPredictionHead
    --head-hidden N   the projection head's hidden width (lookalike: 512)
    --head-out N      the projection head's output width (lookalike: 128)
    --rotation DEG    lightly's SimCLRTransform rr_degrees: half the views rotated by up to DEG degrees
    --multiscale      a grid read-out of the third block's map as well as the last's, concatenated
                      (the head and the index both see it)

Usage:
    .venv/bin/python research/recipe_variants.py --loss dcl -- --dataset /tmp/fashion-mnist/test \
        --set encoder.steps=600 --probe-every 1000 --note "dcl" --out /tmp/dcl.json
"""

from __future__ import annotations

import argparse
import functools
import runpy
import sys
from pathlib import Path

import torch
from torch import nn

from lookalike.stages.encoder import backbones
from lookalike.stages.encoder.methods import simclr

HERE = Path(__file__).resolve().parents[1] / "benchmarks"  # recipe_curve.py, which this script runs
BANK = 4096


def patch_multiscale() -> None:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        l3 = self.layer3(self.layer2(self.layer1(out)))
        l4 = self.layer4(l3)
        pool = nn.functional.adaptive_avg_pool2d
        if self.cells == 1:
            return torch.flatten(pool(l4, 1), 1)
        return torch.cat([torch.flatten(pool(l3, self.cells), 1), torch.flatten(pool(l4, self.cells), 1)], 1)

    backbones.SmallImageResNet.forward = forward


def patch_simclr(loss: str, hidden: int, out: int, rotation: float) -> None:
    from lightly.loss import DCLLoss, NTXentLoss
    from lightly.models.modules import NNCLRPredictionHead, NNMemoryBankModule, SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    original_init = simclr.SimCLR.__init__
    original_loss = simclr.SimCLR.training_loss

    def __init__(self, backbone, feature_dim, options):
        original_init(self, backbone, feature_dim, options)
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden, out)
        if loss == "dcl":
            self.criterion = DCLLoss(temperature=options.temperature)
        elif loss == "bank":
            self.criterion = NTXentLoss(temperature=options.temperature, memory_bank_size=(BANK, out))
        elif loss == "nnclr":
            self.prediction_head = NNCLRPredictionHead(out, 512, out)
            self.support = NNMemoryBankModule(size=(BANK, out))
        print(f"variant: loss {loss}, head {feature_dim}->{hidden}->{out}, rotation {rotation:g}", flush=True)

    def training_loss(self, views, epoch, progress):
        if loss != "nnclr":
            return original_loss(self, views, epoch, progress)
        z0, z1 = (self.projection_head(self.backbone(v).flatten(1)) for v in views[:2])
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        n0 = self.support(z0.detach(), update=False)
        n1 = self.support(z1.detach(), update=True)
        return 0.5 * (self.criterion(n0, p1) + self.criterion(n1, p0))

    if rotation:  # the method builds its own transform; only the rotation arguments are added to it
        simclr.SimCLRTransform = functools.partial(SimCLRTransform, rr_prob=0.5, rr_degrees=rotation)
    simclr.SimCLR.__init__ = __init__
    simclr.SimCLR.training_loss = training_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", choices=["ntxent", "dcl", "bank", "nnclr"], default="ntxent")
    parser.add_argument("--head-hidden", type=int, default=512)
    parser.add_argument("--head-out", type=int, default=128)
    parser.add_argument("--rotation", type=float, default=0.0)
    parser.add_argument("--multiscale", action="store_true")
    parser.add_argument("curve_args", nargs=argparse.REMAINDER, help="-- then recipe_curve.py's arguments")
    args = parser.parse_args()
    if args.multiscale:
        patch_multiscale()
    patch_simclr(args.loss, args.head_hidden, args.head_out, args.rotation)
    rest = args.curve_args[1:] if args.curve_args[:1] == ["--"] else args.curve_args
    sys.argv = [str(HERE / "recipe_curve.py"), *rest]
    sys.path.insert(0, str(HERE))
    runpy.run_path(str(HERE / "recipe_curve.py"), run_name="__main__")


if __name__ == "__main__":
    main()

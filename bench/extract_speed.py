"""Feature-extraction throughput of a frozen encoder in fp32 and in bf16 autocast on this machine.

python bench/extract_speed.py                       # ViT-Tiny/4 at 28x28, 1 channel, batch 512
python bench/extract_speed.py --model vit_base --img 224 --patch 16 --chans 3 --batch 64
"""

import argparse
import time

import torch

from openjepa.models.vit import build_encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--img", type=int, default=28)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--chans", type=int, default=1)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    encoder = build_encoder(args.model, args.img, args.patch, args.chans).eval()
    x = torch.randn(args.batch, args.chans, args.img, args.img)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoder(x)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                encoder(x)
            dt = (time.perf_counter() - t0) / args.repeats
        print(f"{name}: {args.batch / dt:.0f} img/s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

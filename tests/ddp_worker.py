"""Run a short decomposition (under torchrun or alone) and dump its history and parameters.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT
    python tests/ddp_worker.py OUT
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

import tl_vpd  # noqa: E402
from model_zoo import make_model  # noqa: E402


def main(out: str, adversary: str) -> None:
    model = make_model("gpt2")
    toks = torch.randint(0, 50, (64, 12), generator=torch.Generator().manual_seed(0))
    cfg = tl_vpd.VPDConfig(C=16, steps=6, batch_size=8, seq_len=12, log_every=1, progress=False,
                           faithfulness_warmup_steps=20, adversary=adversary, ppgd_inner_steps=1,
                           pgd_steps=2, pgd_scope="shared",
                           # fp32: the check is that sharding changes nothing; bf16 matmuls of
                           # half a batch round differently (~6e-5 here) from the whole batch's
                           autocast="none")
    rank = int(os.environ.get("RANK", "0"))
    checksums = []

    def record(step, metrics, dec):
        checksums.append([p.detach().double().sum().item() for p in dec.parameters()])

    seen = []
    real_forward = model.forward

    def counting_forward(tokens, *a, **k):
        seen.append(tokens.shape[0])
        return real_forward(tokens, *a, **k)

    model.forward = counting_forward
    dec = tl_vpd.decompose(model, cfg, toks, callbacks=[record])
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"history": dec.history, "checksums": checksums, "world": world,
                   "batch_rows": sorted(set(seen))}, f)
    if rank == 0:
        torch.save({k: v for k, v in dec.state_dict().items()}, os.path.join(out, "params.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "persistent")

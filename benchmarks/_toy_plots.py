"""Figures of ``reproduce_spd_toys.py``: permuted CI matrices, TMS columns, W_out neuron reading."""

from __future__ import annotations

import torch

from tl_vpd.toy_models import metrics as M


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ci(ci, path, dense=()):
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ci), figsize=(4.2 * len(ci), 3.6), squeeze=False)
    for ax, (site, g) in zip(axes[0], ci.items()):
        g = g.detach()
        permuted = (M.permute_to_dense(g) if site in dense else M.permute_to_identity(g))[0]
        im = ax.imshow(permuted.numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto",
                       interpolation="nearest")
        ax.set_title(site)
        ax.set_xlabel("subcomponent (permuted)")
        ax.set_ylabel("one-hot input feature (0.75)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="causal importance")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_tms_columns(target, dec, path):
    """Target columns of W next to the live linear1 subcomponents' columns."""
    plt = _pyplot()
    comp = dec.components["linear1"]
    g = M.one_hot_causal_importance(dec, target.n_features)["linear1"]
    live = M.alive_subcomponents(g, 0.1).nonzero().flatten().tolist()
    W = target.W.detach()
    if target.n_hidden == 2:
        fig, axes = plt.subplots(1, 1 + len(live), figsize=(2.4 * (1 + len(live)), 2.6))
        panels = [("target W", W)] + [(f"subcomponent {c}", torch.outer(comp.U[:, c], comp.V[c]).detach())
                                      for c in live]
        for ax, (title, M_) in zip(axes, panels):
            for j in range(M_.shape[1]):
                ax.arrow(0, 0, M_[0, j].item(), M_[1, j].item(), head_width=0.05,
                         color=f"C{j}", length_includes_head=True)
            ax.set_xlim(-1.3, 1.3)
            ax.set_ylim(-1.3, 1.3)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        _, best, _ = M.best_matching_subcomponents(W, comp.U, comp.V)
        recon = torch.stack([comp.U[:, c] * comp.V[c, j] for j, c in enumerate(best.tolist())], 1)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3))
        for ax, (title, M_) in zip(axes, [("target W columns", W),
                                          ("best-matching subcomponent columns", recon.detach())]):
            ax.imshow(M_.numpy(), cmap="RdBu", vmin=-1.5, vmax=1.5, aspect="auto")
            ax.set_title(title)
            ax.set_xlabel("feature")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_neuron_alignment(dec, sites, live, path):
    """|cos| between each live W_out subcomponent's read direction ``v_c`` and every neuron axis,
    one panel per layer, subcomponents ordered by the neuron they read best (a diagonal = one
    subcomponent per neuron)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sites), figsize=(4.4 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        cos = M.axis_cosines(dec.components[site].V)[live[site]]
        best, axis = cos.max(dim=1)
        order = sorted(range(len(axis)), key=lambda c: (int(axis[c]), -float(best[c])))
        im = ax.imshow(cos[order].T.numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto",
                       interpolation="nearest")
        ax.set_title(f"{site}: {len(order)} live")
        ax.set_xlabel("live subcomponent (by neuron read)")
        ax.set_ylabel("neuron")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="|cos(v_c, neuron axis)|")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

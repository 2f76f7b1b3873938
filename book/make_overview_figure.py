"""Draw the intro page's overview figure: the forward chain on a real digit, and a reverse chain of the shipped model.

    .venv/bin/python book/make_overview_figure.py      # writes book/_static/overview_chains.png

Top row: the forward process q on the first MNIST test digit, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
(``schedule.q_sample``, one fixed eps, so that the row shows one digit fading). Bottom row: Algorithm 2 with the
shipped checkpoint (``ddpm_lib.sampling.ddpm_sample``, seed 0, the first sample, fp32), x_t recorded on its way
from x_T to x_0. The figure is committed, so the book build does not sample; rerun this script after the shipped
checkpoint changes (it took under three minutes on a 2-core CPU).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ddpm_lib import viz  # noqa: E402
from ddpm_lib.checkpoint import atomic_write_bytes, load_checkpoint  # noqa: E402
from ddpm_lib.data import load_mnist  # noqa: E402
from ddpm_lib.sampling import ddpm_sample  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "overview_chains.png"
SHOW_T = (0, 50, 150, 300, 500, 1000)       # the paper's t (1-based; t = 0 is the data)


def main() -> Path:
    ck = load_checkpoint()
    schedule, T = ck.schedule, ck.schedule.T
    assert SHOW_T[-1] == T

    x0 = load_mnist("test").as_model_input()[:1]                     # (1, 1, 28, 28) in [-1, 1]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    forward = {0: x0}
    for t in SHOW_T[1:]:
        forward[t] = schedule.q_sample(x0, torch.tensor([t - 1]), noise=eps)   # zero-based index t - 1

    reverse = {}

    def record(i, x):                           # after step i (zero-based) x is the paper's x_i
        if i in SHOW_T:
            reverse[i] = x[:1].detach().cpu().clone()

    x_T = torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(0))
    reverse[T] = x_T
    sample = ddpm_sample(ck.model, schedule, 1, seed=0, precision="fp32", x_T=x_T, callback=record)
    assert torch.equal(reverse[0], sample)

    fig, axes = plt.subplots(2, len(SHOW_T), figsize=(1.45 * len(SHOW_T) + 0.6, 3.9), layout="constrained")
    for row, (chain, name) in enumerate([(forward, "forward $q$"), (reverse, r"reverse $p_\theta$")]):
        for ax, t in zip(axes[row], SHOW_T):
            viz.show_images(chain[t], nrow=1, ax=ax, padding=0)
            ax.set_title(f"$x_{{{t}}}$" if t else "$x_0$", fontsize=11)
        axes[row, 0].set_ylabel(name, fontsize=11)
        axes[row, 0].axis("on")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
    fig.text(0.5, 0.505, r"$\longrightarrow$  add noise: $q(x_t \mid x_{t-1})$, no parameters  $\longrightarrow$",
             ha="center", va="center", fontsize=10)
    fig.text(0.5, 0.005, r"$\longleftarrow$  remove noise: $p_\theta(x_{t-1} \mid x_t)$, a trained network  "
             r"$\longleftarrow$", ha="center", va="bottom", fontsize=10)
    fig.get_layout_engine().set(h_pad=0.25)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(OUT, buf.getvalue())
    return OUT


if __name__ == "__main__":
    print(f"wrote {main()}")

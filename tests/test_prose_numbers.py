"""The numbers that the prose of chapters 5, 6, 7 and 12 and the model card quote from committed files.

A chapter computes its numbers in cells, or reads them from a committed file in
a cell that shows them. Where the *prose* must still name one (the protocol an
evaluation used, a library constant, a benchmark figure in the model card), this
test reads the file and checks that the text says the same, so that the two
cannot drift apart when a file is regenerated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ddpm_lib.presets import PRESETS
from ddpm_lib.schedule import cosine_betas

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"


def chapter(name: str) -> str:
    return (ROOT / "notebooks" / f"{name}.md").read_text()


def prose(name: str) -> str:
    """The chapter's text outside code cells and code blocks, with line breaks folded to spaces."""
    out, inside = [], False
    for line in chapter(name).splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return re.sub(r"\s+", " ", " ".join(out))


def model_card() -> str:
    """checkpoints/README.md with line breaks folded to spaces."""
    return re.sub(r"\s+", " ", (CHECKPOINTS / "README.md").read_text())


def report(stem: str) -> dict:
    return json.loads((CHECKPOINTS / f"{stem}.json").read_text())


def test_training_chapter_quotes_the_shipped_ema_decay():
    text = prose("05_training")
    assert PRESETS["shipped"].train.ema_decay == 0.999
    assert r"we average with $\lambda = 0.999$" in text


@pytest.mark.parametrize("stem", ["eval_ddpm_mnist", "eval_ddpm_mnist_10min"])
def test_stored_evaluations_use_the_protocol_the_chapters_state(stem):
    """Chapters 5 and 7: 'N = 1000 samples from 1000-step Algorithm 2 (sigma_t^2 = beta_t, seed 0)'."""
    r = report(stem)
    assert (r["n"], r["n_floor"], r["steps"], r["sampler"], r["variance"], r["seed"]) == (1000, 1000, 1000, "ddpm",
                                                                                         "beta", 0)
    text = prose("07_measuring_samples")
    assert r"scored with $N = 1000$ samples from 1000-step Algorithm 2 ($\sigma_t^2 = \beta_t$, seed 0)" in text
    assert "the first 16 of the 1000 digits that each checkpoint's evaluation drew with the same seed" in prose(
        "05_training")


def test_measuring_chapter_names_the_stored_seeds():
    assert [report(f"eval_ddpm_mnist_seed{s}")["seed"] for s in (1, 2)] == [1, 2]
    seeds = report("eval_ddpm_mnist_seeds")
    assert seeds["seeds"] == list(range(8))
    text = prose("07_measuring_samples")
    assert "made the same way with sampling seeds 1 and 2" in text
    assert "scored that way with eight seeds" in text
    assert "--seeds 0 1 2 3 4 5 6 7" in chapter("07_measuring_samples")


def test_sampling_chapter_quotes_the_cosine_clip():
    assert float(cosine_betas(1000).max()) == pytest.approx(0.999)
    assert "which clips its last $\\beta_t$ to 0.999" in prose("06_sampling")


def test_sampling_chapter_names_the_proxy_the_model_card_used():
    """Chapter 6 says the clipped cosine model was compared with the 100-step DDIM proxy (eta = 1)."""
    card = (CHECKPOINTS / "README.md").read_text()
    assert "--sampler ddim --steps 100 --eta 1" in card
    assert "100-step DDIM with eta = 1" in card
    assert r"the cheaper 100-step DDIM sampler ($\eta = 1$" in prose("06_sampling")


def test_model_card_quotes_the_ddp_bench_file():
    """The model card's two throughputs and their ratio are those of bench/results/ddp_cpu.json."""
    bench = json.loads((ROOT / "bench" / "results" / "ddp_cpu.json").read_text())
    one, two = (next(r for r in bench["runs"] if r["processes"] == p) for p in (1, 2))
    card = model_card()
    assert (f"{one['images_per_s']:.1f} images/s and {two['images_per_s']:.1f} images/s "
            f"({two['images_per_s'] / one['images_per_s']:.2f}x)") in card
    assert f"for {bench['steps']} steps (global batch {bench['global_batch']}, {bench['numerics']})" in card
    # chapter 12 states the conclusion, not the figures: about as fast either way
    assert 0.8 < two["images_per_s"] / one["images_per_s"] < 1.25
    assert "two single-threaded processes train about as fast as one process with two threads" in prose(
        "12_scaling_out")


def test_model_card_quotes_the_ablation_behind_the_half_width_candidate():
    """The candidate section of the model card quotes experiments/results/ablation.json (Zen 4 calibration and
    scores at sampling seeds 0 and 1) and the preset's steps; regenerating the file must not leave it stale."""
    card = model_card()
    entries = json.loads((ROOT / "experiments" / "results" / "ablation.json").read_text())["entries"]
    rate = entries["calibration"]["steps_per_second"]
    assert f"takes {rate['half_width'] / rate['baseline']:.2f} times as many steps" in card

    def pair(name):
        return " and ".join(f"{entries[f'eval:{name}:train0:sample{s}']['fd_ratio']:.2f}" for s in (0, 1))

    assert f"FD ratios of {pair('half_width')} (sampling seeds 0 and 1" in card
    assert f"against {pair('baseline')} for the book's UNet" in card
    assert f"FD ratios {pair('half_width_lr_decay')} with the decaying rate" in card
    assert f"{pair('half_width_cosine_clip')} with the cosine schedule" in card
    recipe = PRESETS["half_width"].train
    assert f"{recipe.steps:,} steps, with the EMA exported at step {recipe.snapshot_steps[0]:,}" in card
    assert f"({PRESETS['half_width'].model.base_channels} base channels" in card


def test_model_card_reports_the_candidate_under_the_protocol():
    """The candidate's scores under the protocol in the model card are those of its committed reports, at five
    sampling seeds, next to the shipped checkpoints' ratios at the same seeds."""
    card = model_card()
    for stem, shipped in (("eval_half_width_10min_seeds", "eval_ddpm_mnist_10min_seeds"),
                          ("eval_half_width_seeds", "eval_ddpm_mnist_seeds")):
        r, ship = report(f"candidates/{stem}"), report(shipped)
        assert r["seeds"] == [0, 1, 2, 3, 4]
        assert (r["n"], r["steps"], r["sampler"], r["variance"], r["batch_size"]) == (1000, 1000, "ddpm", "beta", 1000)
        row = (f"| 0-4 | {r['fd']:.2f} ({r['fd_sd']:.2f}) | {r['fd_floor']:.2f} ({r['fd_floor_sd']:.2f}) | "
               f"**{r['fd_ratio']:.2f}** | {min(r['fd_ratio_per_seed']):.2f} to {max(r['fd_ratio_per_seed']):.2f} "
               f"(sd {r['fd_ratio_sd']:.2f}) | {r['min_fraction']:.1%} to {r['max_fraction']:.1%} | "
               f"{r['mean_confidence']:.3f} |")
        assert row in card, row
        common = [s for s in r["seeds"] if s in ship["seeds"]]
        own = ", ".join(f"{r['fd_ratio_per_seed'][r['seeds'].index(s)]:.2f}" for s in common)
        theirs = ", ".join(f"{ship['fd_ratio_per_seed'][ship['seeds'].index(s)]:.2f}" for s in common)
        assert f"{own} against the shipped {theirs}" in card, (own, theirs)

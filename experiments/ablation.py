"""What matters: each design choice of the book's DDPM against the baseline, under one CPU budget.

    python experiments/ablation.py                          # the whole plan, resuming where it stopped
    python experiments/ablation.py --only baseline origin   # some variants (and what they need)
    python experiments/ablation.py --train-seeds 1          # a second training seed for the trained variants
    python experiments/ablation.py --list                   # the variants and what is done
    python experiments/ablation.py --redo cold_blur         # retrain a run (its state is gone) and re-score what uses it
    python experiments/ablation.py --only baseline v_prediction --train-seeds 2 --sample-seeds 0 --keep-samples --paired
                                                            # keep the images, and compare paired with the baseline

The budget. Every trained variant gets the same training *time* as the baseline's 10-minute
point on a 2-core CPU (the shipped recipe reaches step TEN_MINUTE_STEPS there, on the Zen 4 EPYC of
the model card). Wall time is a poor referee on a shared 2-core machine, so the time is turned
into steps: first, a calibration measures every variant's training speed (steps per second, in
interleaved rounds so that background load touches all alike); a variant then trains for
TEN_MINUTE_STEPS x (its speed / the baseline's speed) steps, the number it reaches in the baseline's
10 minutes (a variant added later is timed in a later round, beside the baseline again).
Everything else is shared: the data order, the seeds (initial weights, t, eps), the
optimizer and its schedule, EMA, batch 64, the numerics chosen by measurement.

The score. Each trained model draws N = 1000 images with the same sampler, SDE-DPM-Solver++(2M)
with 50 network calls (batch 1000, the same x_T for every variant of one sampling seed), scored
with the book's metric (FD against the MNIST test set over the real-data floor of the same
seed). The cold-diffusion variant uses its own sampler, also 50 network calls. Questions about
sampling (Algorithm 2 with and without its noise term; EMA or raw weights) reuse the baseline's
training run. Last come levers of the training recipe (a learning rate that decays to zero, a
larger one, a shorter EMA; a smaller network), the candidates for a better shipped checkpoint; a
change of the recipe alone keeps its network's budget. Training states go to runs/ablation/
(resumable); results, including 8 samples per entry for the chapter, go to
experiments/results/ablation.json, one entry at a time.

Paired comparisons. With ``--keep-samples`` an evaluation also keeps all its N images, compressed, in
experiments/results/ablation_samples/ (committed: any later metric, and any later comparison, reads
them instead of retraining). ``--paired`` then writes, for every variant with kept images, the entry
``paired:VARIANT``: ``ddpm_lib.metrics.compare_paired`` of the baseline against the variant, the
training seeds that both have as groups (variant seed s against baseline seed s, sampled from the
same x_T), the sampling seeds' images of one group pooled. Its verdict reads the bootstrap interval
of FD_variant / FD_baseline; chapter 8 measures how often that rule errs. A variant whose question is
about another variant (recalibrated BatchNorm statistics against raw weights, a noisy cold start against
the plain one) is also compared with that one, in ``paired:VARIANT:vs:OTHER`` (``Variant.paired_with``).
With one training seed as the only group, an interval covers the noise of the samples, not of the training run:
``--seed-null`` measures what that misses, comparing a variant's recipe with itself across two training
seeds (``seed_null:VARIANT``), where every verdict but "unresolved" is a false positive.
"""

from __future__ import annotations

import argparse
import base64
import copy
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import rates  # noqa: E402
from _results import ResultsFile, load_images, save_images  # noqa: E402

from ddpm_lib.checkpoint import STATE_FILE, load_train_state_model  # noqa: E402
from ddpm_lib.cold import BlurDegradation, GaussianMixture1D  # noqa: E402
from ddpm_lib.data import from_model_range, load_mnist  # noqa: E402
from ddpm_lib.ema import ema_update, recalibrate_batchnorm  # noqa: E402
from ddpm_lib.losses import make_loss  # noqa: E402
from ddpm_lib.metrics import compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.models import build_model  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402
from ddpm_lib.optim import train_step  # noqa: E402
from ddpm_lib.presets import TEN_MINUTE_STEPS, PRESETS  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402
from ddpm_lib.sampling.cold import cold_sample  # noqa: E402
from ddpm_lib.schedule import make_schedule  # noqa: E402
from ddpm_lib.training import train  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "ablation.json"
RUNS = ROOT / "runs" / "ablation"
SAMPLES = ROOT / "experiments" / "results" / "ablation_samples"   # --keep-samples: every image of an evaluation
N, BATCH = 1000, 1000
SAMPLER, SAMPLER_STEPS = "dpmpp-sde", 50
SHOWN = 8                                  # samples kept per entry, for the chapter's side-by-side figure
CALIBRATION_SECONDS = 20.0                 # of training steps per variant, interleaved

BASE = PRESETS["ten_minutes"]                   # the shipped recipe, stopped at its 10-minute point


@dataclass(frozen=True)
class Variant:
    about: str
    model: dict = field(default_factory=dict)     # ModelConfig overrides of the baseline's
    schedule: str = "linear"                       # "linear", "cosine", or "blur" (cold diffusion)
    T: int = 1000
    from_run: str | None = None                    # evaluate another variant's training run instead of training
    ema: bool = True                               # sample with the EMA weights (else the raw ones)
    recalibrate_bn: bool = False                   # recompute BatchNorm statistics for the weights sampled with
    sampler: tuple = (SAMPLER, SAMPLER_STEPS, {})  # (sampler, network calls, options)
    train: dict = field(default_factory=dict)      # TrainConfig overrides that leave the cost of a step unchanged
    lr_decay: float = 0.0                          # the LR falls linearly to 0 over this fraction of the budget
    cost_of: str | None = None                     # a step costs what one of this variant costs: its budget
    paired_with: tuple = ()                        # besides the baseline, --paired compares it with these

    def train_config(self, steps: int, seed: int):
        """The baseline's recipe for ``steps`` optimizer steps, with this variant's changes."""
        return replace(BASE.train, steps=steps, seed=seed, checkpoint_every=250, log_every=50, snapshot_steps=(),
                       cooldown_steps=round(self.lr_decay * steps), **self.train)

    def model_config(self):
        if self.schedule == "blur":
            return replace(BASE.model, num_timesteps=self.T, prediction="x0", **self.model)
        if self.model.get("arch") == "simple":
            return replace(PRESETS["origin"].model, **{k: v for k, v in self.model.items() if k != "arch"})
        return replace(BASE.model, num_timesteps=self.T, **self.model)

    def forward_process(self):
        return BlurDegradation(self.T) if self.schedule == "blur" else make_schedule(self.schedule, self.T)


ALG2 = ("ddpm", 100)
VARIANTS: dict[str, Variant] = {
    "baseline": Variant("the book's UNet and recipe: time in every block, GroupNorm, attention at 7x7, width 32, "
                        "1 residual block per level, linear schedule T=1000, eps-prediction, EMA"),
    "origin": Variant("the origin's SimpleUNet as the origin shipped it: time added once at the input, BatchNorm, "
                      "no attention, T=300", model={"arch": "simple"}, T=300),
    "origin_raw": Variant("the origin's run, sampled with its raw weights (the origin kept no EMA; with BatchNorm, "
                          "the EMA weights meet running statistics gathered by the raw ones)", from_run="origin",
                          ema=False, paired_with=("origin",)),
    "origin_recalibrated": Variant("the origin's run, EMA weights with BatchNorm statistics recomputed for them "
                                   "(ema.recalibrate_batchnorm)", from_run="origin", recalibrate_bn=True,
                                   paired_with=("origin_raw",)),
    "time_at_input": Variant("the baseline with the time embedding added once, at the input", {"time_embedding": "input"}),
    "batchnorm": Variant("the baseline with BatchNorm instead of GroupNorm", {"norm": "batch"}),
    "batchnorm_raw": Variant("the BatchNorm run, sampled with its raw weights", from_run="batchnorm", ema=False,
                             paired_with=("batchnorm",)),
    "batchnorm_recalibrated": Variant("the BatchNorm run, EMA weights with BatchNorm statistics recomputed for them",
                                      from_run="batchnorm", recalibrate_bn=True, paired_with=("batchnorm_raw",)),
    "raw_weights": Variant("the baseline's run, sampled with the raw weights instead of the EMA", from_run="baseline",
                           ema=False),
    "alg2_noise": Variant("the baseline sampled with Algorithm 2 (100 respaced steps), sigma_t z included",
                          from_run="baseline", sampler=(*ALG2, {"variance": "beta"})),
    "alg2_no_noise": Variant("the baseline sampled with Algorithm 2 (100 respaced steps) without sigma_t z, as the "
                             "origin sampled", from_run="baseline", sampler=(*ALG2, {"variance": "none"})),
    "two_res_blocks": Variant("deeper: 2 residual blocks per level instead of 1", {"num_res_blocks": 2}),
    "T300": Variant("T=300 steps instead of 1000 (linear schedule rescaled)", T=300),
    "cold_blur": Variant("cold diffusion: no noise, a blur undone step by step (Bansal et al. 2022), T=50, its "
                         "improved sampling from a constant image", schedule="blur", T=50,
                         sampler=("cold", 50, {"noise_std": 0.0})),
    "cold_blur_noisy_start": Variant("the cold run, each constant start given a little Gaussian noise (std 0.002 per "
                                     "pixel; Bansal et al.'s remedy for a deterministic sampler's lack of diversity)",
                                     from_run="cold_blur", sampler=("cold", 50, {"noise_std": 0.002}),
                                     paired_with=("cold_blur",)),
    "cold_blur_noisier_start": Variant("the cold run, each constant start given ten times that noise (std 0.02 per "
                                       "pixel)", from_run="cold_blur", sampler=("cold", 50, {"noise_std": 0.02}),
                                       paired_with=("cold_blur_noisy_start",)),
    "no_attention": Variant("the baseline without self-attention", {"attention": False}),
    "half_width": Variant("half the width: 16 base channels", {"base_channels": 16}),
    "double_width": Variant("double the width: 64 base channels", {"base_channels": 64}),
    "cosine": Variant("the cosine schedule instead of the linear one", schedule="cosine"),
    "cosine_clip": Variant("the cosine run, sampled with each data prediction clipped to [-1, 1] (its beta_T = 0.999 "
                           "leaves alpha_bar_T = 2.4e-9, which magnifies the network's error in x0_hat)",
                           from_run="cosine", sampler=(SAMPLER, SAMPLER_STEPS, {"clip_x0": True}),
                           paired_with=("baseline_clip",)),
    "baseline_clip": Variant("the baseline's run, sampled with each data prediction clipped to [-1, 1]",
                             from_run="baseline", sampler=(SAMPLER, SAMPLER_STEPS, {"clip_x0": True})),
    "x0_prediction": Variant("the network predicts x_0 instead of eps", {"prediction": "x0"}),
    "v_prediction": Variant("the network predicts v instead of eps", {"prediction": "v"}),
    # Levers of the training recipe (for the shipped checkpoint): the baseline's network, so the baseline's budget
    "lr_decay": Variant("the learning rate falls linearly to 0 over the whole budget, after the warm-up",
                        lr_decay=1.0, cost_of="baseline"),
    "lr_decay_2e-3": Variant("twice the learning rate (2e-3), falling linearly to 0 over the whole budget",
                             lr_decay=1.0, train={"lr": 2e-3}, cost_of="baseline"),
    "lr_decay_ema_0.99": Variant("the learning rate falling to 0, and a shorter EMA (decay 0.99 instead of 0.999)",
                                 lr_decay=1.0, train={"ema_decay": 0.99}, cost_of="baseline"),
    # Smaller still, and the smaller network with the LR decay: cheaper steps, more of them
    "quarter_width": Variant("a quarter of the width: 8 base channels", {"base_channels": 8}),
    "half_width_cosine_clip": Variant("half the width and the cosine schedule, sampled with x0_hat clipped to [-1, 1]: "
                                      "the two changes that beat the baseline, together", {"base_channels": 16},
                                      schedule="cosine", sampler=(SAMPLER, SAMPLER_STEPS, {"clip_x0": True}),
                                      cost_of="half_width", paired_with=("half_width",)),
    "half_width_lr_decay": Variant("half the width, the learning rate falling linearly to 0 over the budget",
                                   {"base_channels": 16}, lr_decay=1.0, cost_of="half_width",
                                   paired_with=("half_width",)),
}
TRAINED = [name for name, v in VARIANTS.items() if v.from_run is None]
# Trained variants whose step costs what another's does (the same network, only the recipe differs)
SAME_COST = {name: v.cost_of for name, v in VARIANTS.items() if v.from_run is None and v.cost_of}


def training_data() -> torch.Tensor:
    return load_mnist("train").as_model_input()


def training_step(v: Variant, data: torch.Tensor):
    """One optimizer step of variant ``v`` as train() takes it (ddpm_lib.optim.train_step, then the EMA), as a closure."""
    cfg, process, batch = v.model_config(), v.forward_process(), BASE.train.batch_size
    torch.manual_seed(0)
    model = build_model(cfg)
    numerics = choose_numerics(model, purpose="train", batch_size=batch, precision=BASE.train.precision,
                               channels_last=BASE.train.channels_last)      # as train() chooses them
    model = model.to(memory_format=numerics.memory_format).train()
    ema = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=BASE.train.lr)
    loss = make_loss(process, cfg.prediction)
    g = torch.Generator().manual_seed(0)

    def step():
        x0 = data[torch.randint(0, len(data), (batch,), generator=g)].contiguous(memory_format=numerics.memory_format)
        t = torch.randint(0, process.T, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g).contiguous(memory_format=numerics.memory_format)
        train_step(model, loss, optimizer, x0, t, noise, numerics=numerics, grad_clip=BASE.train.grad_clip)
        ema_update(ema, model, BASE.train.ema_decay)
    return step


def calibrate(results: ResultsFile, data: torch.Tensor) -> dict:
    """Steps per second of every trained variant, measured side by side; the budget in steps follows.

    A variant added after the first calibration is measured in a later round, side by side with
    the baseline again (entry ``calibration:2``, ...), and its budget follows from its speed
    relative to the baseline's *in that round*. Returns the budgets of all rounds, merged.
    """
    rounds = [results.get(k) for k in calibration_keys(results)]
    measured = {name for r in rounds for name in r["budget_steps"]}
    missing = [name for name in TRAINED if name not in SAME_COST and name not in measured]
    if missing:
        names = missing if not rounds else ["baseline", *[n for n in missing if n != "baseline"]]
        steps = {name: training_step(VARIANTS[name], data) for name in names}
        # bench/_common.rates: one call of each variant per round, so that background load touches all alike
        rate = rates(steps, items_per_call=1, seconds=CALIBRATION_SECONDS, warmup=3)
        budget = {name: round(TEN_MINUTE_STEPS * rate[name] / rate["baseline"]) for name in steps}
        entry = {"steps_per_second": rate, "baseline_steps": TEN_MINUTE_STEPS, "budget_steps": budget,
                 "how": f"training steps (batch {BASE.train.batch_size}, each variant's own numerics) timed in "
                        f"interleaved rounds, {CALIBRATION_SECONDS:g} s per variant after 3 warm-up steps; "
                        "budget = baseline_steps x rate / baseline rate"}
        key = "calibration" if not rounds else f"calibration:{len(rounds) + 1}"
        results.put(key, entry)
        rounds.append(entry)
        for name in steps:
            print(f"{key}: {name:16s} {rate[name]:5.2f} steps/s -> {budget[name]} steps", flush=True)
    return merged_calibration(rounds)


def calibration_keys(results: ResultsFile) -> list[str]:
    """The calibration rounds in the order they were measured."""
    keys = [k for k in results.data["entries"] if k == "calibration" or k.startswith("calibration:")]
    return sorted(keys, key=lambda k: 1 if k == "calibration" else int(k.split(":")[1]))


def merged_calibration(rounds: list[dict]) -> dict:
    """Budgets of all rounds in one dict, and each variant's speed relative to the baseline of its own round
    (the baseline keeps its first round's budget; it is TEN_MINUTE_STEPS in every round)."""
    budget, relative = {}, {}
    for r in rounds:
        rate = r["steps_per_second"]
        for name, steps in r["budget_steps"].items():
            budget.setdefault(name, steps)
            relative.setdefault(name, rate[name] / rate["baseline"])
    return {"budget_steps": budget, "relative_speed": relative, "rounds": rounds}


def budget_of(calibration: dict, name: str) -> int:
    """The steps variant ``name`` trains for: its own measured budget, or that of the variant it costs the same as."""
    return calibration["budget_steps"][SAME_COST.get(name, name)]


def run_training(results: ResultsFile, name: str, seed: int, budget: int, data: torch.Tensor) -> None:
    key = f"train:{name}:seed{seed}"
    if results.has(key):
        return
    v = VARIANTS[name]
    config = v.train_config(budget, seed)
    out = RUNS / f"{name}_seed{seed}"
    t0 = time.perf_counter()
    result = train(v.model_config(), v.forward_process(), config, data, out_dir=out, progress=False)
    if result.interrupted or result.step < budget:
        raise SystemExit(f"{key}: stopped at step {result.step} of {budget}; rerun to resume")
    losses = [h[1] for h in result.history]
    results.put(key, {
        "variant": name, "seed": seed, "steps": result.step, "train_seconds": round(result.seconds, 1),
        "this_sitting_seconds": round(time.perf_counter() - t0, 1),
        "parameters": result.model.num_parameters(), "numerics": result.numerics.describe(),
        "final_loss": sum(losses[-4:]) / len(losses[-4:]),
        "loss_history": [[h[0], round(h[1], 5)] for h in result.history],
    })
    print(f"{key}: {result.step} steps in {result.seconds / 60:.1f} min", flush=True)


def encode_images(images: torch.Tensor) -> dict:
    """uint8 images (N, H, W) as JSON: their shape and their bytes in base64 (compact, unlike a list of numbers)."""
    return {"shape": list(images.shape), "uint8_base64": base64.b64encode(images.contiguous().numpy().tobytes()).decode()}


def decode_images(entry: dict) -> torch.Tensor:
    """The inverse of :func:`encode_images`: uint8 images (N, H, W)."""
    raw = bytearray(base64.b64decode(entry["uint8_base64"]))
    return torch.frombuffer(raw, dtype=torch.uint8).reshape(entry["shape"])


_MIXTURE: GaussianMixture1D | None = None


def blur_mixture(data: torch.Tensor) -> GaussianMixture1D:
    """The Gaussian mixture of the training images' means: where cold generation starts."""
    global _MIXTURE
    if _MIXTURE is None:
        _MIXTURE = GaussianMixture1D.fit(data.mean(dim=(1, 2, 3)), k=5)
    return _MIXTURE


def kept_path(name: str, train_seed: int, sample_seed: int) -> Path:
    """Where ``--keep-samples`` keeps the images of one evaluation."""
    return SAMPLES / f"{name}_train{train_seed}_sample{sample_seed}.npz"


def kept_train_seeds(name: str, sample_seeds: list[int]) -> list[int]:
    """The training seeds of ``name`` whose images are kept for every one of ``sample_seeds``, in order."""
    found = {int(m.group(1)) for p in SAMPLES.glob(f"{name}_train*_sample*.npz")
             if (m := re.fullmatch(rf"{re.escape(name)}_train(\d+)_sample\d+\.npz", p.name))}
    return sorted(s for s in found if all(kept_path(name, s, k).exists() for k in sample_seeds))


def kept_features(name: str, train_seed: int, sample_seeds: list[int]) -> torch.Tensor:
    """Classifier features of the kept images of ``name`` at one training seed, its sampling seeds pooled."""
    return features(torch.cat([torch.from_numpy(load_images(kept_path(name, train_seed, k))) for k in sample_seeds]))


def run_eval(results: ResultsFile, name: str, train_seed: int, sample_seed: int, data: torch.Tensor,
             keep: bool = False) -> None:
    key = f"eval:{name}:train{train_seed}:sample{sample_seed}"
    if results.has(key) and (not keep or kept_path(name, train_seed, sample_seed).exists()):
        return
    v = VARIANTS[name]
    run = v.from_run or name
    state = RUNS / f"{run}_seed{train_seed}" / STATE_FILE
    if not state.exists():
        raise SystemExit(f"{key}: the training state {state} is missing (runs/ is not committed, so a fresh clone or "
                         f"another machine lacks it); retrain it with: python experiments/ablation.py --redo {run} "
                         f"--train-seeds {train_seed}")
    model, process, _ = load_train_state_model(state, ema=v.ema)
    if v.recalibrate_bn:
        recalibrate_batchnorm(model, process, data)
    sampler, steps, options = v.sampler
    numerics = choose_numerics(model, purpose="sample", batch_size=BATCH)
    t0 = time.perf_counter()
    if sampler == "cold":
        x = cold_sample(model, process, blur_mixture(data), N, seed=sample_seed, batch_size=BATCH, numerics=numerics,
                        **options)
    else:
        x = sample(model, process, N, sampler, steps, seed=sample_seed, batch_size=BATCH, numerics=numerics, **options)
    seconds = time.perf_counter() - t0
    images = from_model_range(x)
    if keep:
        save_images(kept_path(name, train_seed, sample_seed), images.numpy())
    report = evaluate_samples(images, seed=sample_seed)
    report.update(variant=name, train_seed=train_seed, sample_seed=sample_seed, sampler=sampler, network_calls=steps,
                  options=options, ema=v.ema, recalibrated_bn=v.recalibrate_bn, sample_seconds=round(seconds, 1),
                  samples=encode_images(images[:SHOWN]))
    results.put(key, report)
    print(f"{key}: FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}, ratio {report['fd_ratio']:.2f}) "
          f"in {seconds:.0f} s", flush=True)


def paired_key(name: str, reference: str = "baseline") -> str:
    """The results key of variant ``name``'s paired comparison with ``reference``: ``paired:NAME`` against the
    baseline, ``paired:NAME:vs:REFERENCE`` against any other variant."""
    return f"paired:{name}" if reference == "baseline" else f"paired:{name}:vs:{reference}"


def run_paired(results: ResultsFile, name: str, sample_seeds: list[int], reference: str = "baseline") -> None:
    """Entry ``paired:NAME`` (``paired:NAME:vs:REFERENCE`` for another reference): the reference against variant
    ``name`` (module docstring, "Paired comparisons"), over every training seed for which both keep the images of
    all ``sample_seeds``."""
    key = paired_key(name, reference)
    seeds = sorted(set(kept_train_seeds(name, sample_seeds)) & set(kept_train_seeds(reference, sample_seeds)))
    if not seeds:
        print(f"{key}: no training seed has kept images of both {reference} and {name} "
              f"(sampling seeds {sample_seeds}); run with --keep-samples first", flush=True)
        return

    base, var = ([kept_features(n, s, sample_seeds) for s in seeds] for n in (reference, name))
    c = compare_paired(base, var)
    results.put(key, {"vs": reference, "train_seeds": seeds, "sample_seeds": list(sample_seeds), **c.as_dict()})
    print(f"{key}: {c}", flush=True)


def run_seed_null(results: ResultsFile, name: str, sample_seeds: list[int]) -> None:
    """Entry ``seed_null:NAME``: one variant against *itself*, its first two training seeds with kept images
    compared paired (seed b against seed a, the same x_T), each seed's networks as the only group. The recipe is the
    same, so a verdict other than "unresolved" is a false positive of the one-training-run rule for a question about
    a recipe (module docstring, "Paired comparisons")."""
    key = f"seed_null:{name}"
    seeds = kept_train_seeds(name, sample_seeds)[:2]
    if len(seeds) < 2:
        print(f"{key}: {name} keeps the images of fewer than two training seeds; nothing to compare", flush=True)
        return
    c = compare_paired(*([kept_features(name, s, sample_seeds)] for s in seeds))
    results.put(key, {"train_seeds": seeds, "sample_seeds": list(sample_seeds), **c.as_dict()})
    print(f"{key}: {c}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None, help="these variants (default: all)")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--redo", nargs="+", choices=TRAINED, default=[], metavar="RUN",
                   help="drop these training runs' entries (for --train-seeds) and every score of a variant that "
                        "samples from them, then produce them again: for a run whose state in runs/ablation is gone")
    p.add_argument("--calibrate-only", action="store_true")
    p.add_argument("--keep-samples", action="store_true",
                   help="keep every image of an evaluation in experiments/results/ablation_samples/ (committed), scoring "
                        "again an evaluation whose images are not kept")
    p.add_argument("--paired", action="store_true",
                   help="then write paired:VARIANT, the paired comparison with the baseline, and paired:VARIANT:vs:OTHER "
                        "with each of its Variant.paired_with (module docstring)")
    p.add_argument("--seed-null", action="store_true",
                   help="then write seed_null:VARIANT for each variant (of --only; default: all) with kept images at "
                        "two training seeds: its recipe against itself, one run each (run_seed_null)")
    p.add_argument("--list", action="store_true", help="list the variants and which entries exist, then stop")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "ablation of the book's DDPM under the baseline's 10-minute CPU budget; "
                                    "written by experiments/ablation.py (see its docstring)")
    if args.list:
        for name, v in VARIANTS.items():
            done = sorted(k for k in results.data["entries"] if k.split(":")[1:2] == [name])
            print(f"{name:16s} {v.about}\n{'':16s} done: {', '.join(done) or '-'}")
        return 0
    if args.redo:
        users = [name for name, v in VARIANTS.items() if (v.from_run or name) in args.redo]
        gone = results.drop([f"train:{run}:seed{s}" for run in args.redo for s in args.train_seeds]
                            + [k for k in results.data["entries"] for name in users for s in args.train_seeds
                               if k.startswith(f"eval:{name}:train{s}:")])
        print(f"--redo: dropped {', '.join(gone) or 'nothing'}", flush=True)
        args.only = [*dict.fromkeys([*users, *(args.only or [])])]
    data = training_data()
    calibration = calibrate(results, data)
    if args.calibrate_only:
        return 0
    for name in args.only or list(VARIANTS):
        v = VARIANTS[name]
        run = v.from_run or name
        for seed in args.train_seeds:
            run_training(results, run, seed, budget_of(calibration, run), data)
            for sample_seed in args.sample_seeds:
                run_eval(results, name, seed, sample_seed, data, keep=args.keep_samples)
    if args.paired:
        for name in args.only or list(VARIANTS):
            if name != "baseline":
                for reference in ("baseline", *VARIANTS[name].paired_with):
                    run_paired(results, name, args.sample_seeds, reference)
    if args.seed_null:
        for name in args.only or list(VARIANTS):
            run_seed_null(results, name, args.sample_seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

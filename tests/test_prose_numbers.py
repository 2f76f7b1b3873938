"""The numbers that the model card and the prose of chapters 6, 7, 8 and 13 quote from committed files.

These tests check numbers, not sentences: rewording a sentence passes as long as its
numbers stay, and a number that no longer matches its results file fails.

* The model card's tables of measurements are generated from the results files by
  ``checkpoints/model_card_tables.py``; a test runs its check mode.
* Every other number the card quotes from a results file (or from a preset) is looked for
  as a *run of numbers*: the numbers of the text in order, whatever words stand between
  them, must contain the expected run, each number formatted as the card formats it
  (``numbers("FD 8.89 (ratio 2.31) against 8.40")`` is ``["8.89", "2.31", "8.40"]``). A
  run of a few numbers is specific enough to stand for its sentence, so a rewording that
  keeps the numbers in their order passes; where the same run is quoted in more than one
  place, ``times`` says how often, so that each place is checked. The generated tables
  and the file list are left out of this search, so that they cannot stand in for the
  prose; a row of the file list is checked on its own, found by the file it names.
* Where the chapters name a number (the protocol an evaluation used, a library
  constant), a short notation anchors it (``$\\lambda = X$``, ``N-step DDIM``), and the
  test compares it with the file or the constant.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
import statistics
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
RESULTS = ROOT / "experiments" / "results"
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
# Digit counts of the 60,000 MNIST training images (a property of the data set).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --------------------------------------------------------------------------- reading the texts

def _load_table_script():
    spec = importlib.util.spec_from_file_location("model_card_tables", CHECKPOINTS / "model_card_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_table_script()


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


def card_text() -> str:
    return (CHECKPOINTS / "README.md").read_text()


def file_list() -> list[str]:
    """The rows of the card's first table, the list of files (before its first section)."""
    head = card_text().split("\n## ", 1)[0]
    return [line for line in head.splitlines() if line.startswith("|")]


def file_row(name: str) -> str:
    """The row of the file list whose first cell names `name` (the file name identifies the row)."""
    rows = [row for row in file_list() if f"`{name}`" in row.split("|")[1]]
    assert len(rows) == 1, f"the model card's file list has {len(rows)} rows for {name}"
    return rows[0]


def model_card() -> str:
    """checkpoints/README.md without its generated tables and its file list (both checked on their own), line
    breaks folded to spaces."""
    text = tables.BLOCK.sub("", card_text())
    for row in file_list():
        text = text.replace(row + "\n", "", 1)
    return re.sub(r"\s+", " ", text)


def report(stem: str) -> dict:
    return json.loads((CHECKPOINTS / f"{stem}.json").read_text())


def results(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["entries"]


# --------------------------------------------------------------------------- numbers in a text

NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?%?")


def numbers(text: str) -> list[str]:
    """The numbers of a text in order, as written: '1,964', '8.2%', '1e-3'; not the digits inside a word
    (bf16, x_0, model_step1964) or after a decimal point already taken ('2.14.1' gives '2.14')."""
    return NUMBER.findall(text)


def f2(x: float) -> str:
    return f"{x:.2f}"


def pct(x: float) -> str:
    return f"{x:.1%}"


def sci(x: float) -> str:
    """1e-3 as the card writes it (not 1e-03)."""
    return re.sub(r"e(-?)0*(\d)", r"e\1\2", f"{x:.0e}")


def short(x: float, digits: int = 1) -> str:
    """x to `digits` decimals without trailing zeros: 2.99 -> '3', 2.31 -> '2.3'."""
    return f"{x:.{digits}f}".rstrip("0").rstrip(".")


class Quotes:
    """Collects the runs of numbers a text must contain and reports all that are missing at once."""

    def __init__(self, text: str, where: str):
        self.tokens, self.where, self.missing = numbers(text), where, []

    def count(self, run: tuple[str, ...]) -> int:
        k = len(run)
        return sum(tuple(self.tokens[i:i + k]) == run for i in range(len(self.tokens) - k + 1))

    def expect(self, what: str, *run, times: int = 1) -> None:
        run = tuple(str(x) for x in run)
        found = self.count(run)
        if found < times:
            absent = [x for x in run if x not in self.tokens]
            self.missing.append(f"{what}: {', '.join(run)} (found {found} time(s), expected {times}"
                                + (f"; not anywhere: {', '.join(absent)}" if absent else "") + ")")

    def check(self) -> None:
        assert not self.missing, f"{self.where} does not quote these numbers in this order:\n  " + "\n  ".join(
            self.missing)


def card_quotes() -> Quotes:
    return Quotes(model_card(), "checkpoints/README.md (outside its file list and generated tables)")


def row_quotes(name: str) -> Quotes:
    return Quotes(file_row(name), f"the model card's file list, row {name}")


def test_numbers_reads_numbers_as_the_card_writes_them():
    assert numbers("FD 8.89 (ratio 2.31) against 8.40; 1,964 steps, bf16, x_0, torch 2.14.1, lr 1e-3, 8.2% to "
                   "11.9%, `model_step1964`, 28x28, [-1, 1]") == [
        "8.89", "2.31", "8.40", "1,964", "2.14", "1e-3", "8.2%", "11.9%", "28", "1", "1"]
    q = Quotes("ratios 2.18, 1.76 and 1.41 against 2.31", "text")
    assert q.count(("2.18", "1.76", "1.41")) == 1 and q.count(("1.76", "2.18")) == 0
    assert sci(1e-3) == "1e-3" and sci(2.7e-5) == "3e-5" and short(2.99) == "3" and short(2.31) == "2.3"


# --------------------------------------------------------------------------- the generated tables

def test_model_card_tables_are_generated_from_the_results_files():
    """The tables between `<!-- table:NAME -->` markers are what the script makes of the committed files."""
    diff = tables.check()
    assert not diff, "run python checkpoints/model_card_tables.py:\n" + diff
    assert tables.main(["--check"]) == 0
    card = card_text()
    for name in tables.TABLES:
        assert card.count(f"<!-- table:{name} ") == 1 and card.count(f"<!-- /table:{name} -->") == 1


def test_model_card_table_check_catches_a_changed_results_file(tmp_path):
    """Regenerating a results file with another number makes the check fail, with that number in the diff."""
    for rel in {f for fn in tables.TABLES.values() for f in fn(ROOT)[0]}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    stale = json.loads((tmp_path / "checkpoints/eval_ddpm_mnist.json").read_text())
    stale["fd"] = 8.123
    (tmp_path / "checkpoints/eval_ddpm_mnist.json").write_text(json.dumps(stale))
    diff = tables.check(CHECKPOINTS / "README.md", root=tmp_path)
    assert "+| `ddpm_mnist.safetensors` | 55 min, 10,646 steps | 8.12 |" in diff
    assert re.search(r"^-\| `ddpm_mnist\.safetensors` \| 55 min, 10,646 steps \| [\d.]+ \|", diff, re.MULTILINE)
    with pytest.raises(ValueError, match="missing"):
        tables.render(card_text().replace("<!-- /table:quality -->", ""))


# --------------------------------------------------------------------------- the shipped run

def test_model_card_quotes_the_recipe_and_the_model():
    """Steps, recipe, network and schedule as the presets and the library define them."""
    from ddpm_lib.models import build_model
    from ddpm_lib.presets import PRESETS
    from ddpm_lib.schedule import linear_betas

    q = card_quotes()
    shipped, half, cond = PRESETS["shipped"], PRESETS["half_width"], PRESETS["conditional"]
    steps, ten_min = f"{shipped.train.steps:,}", f"{shipped.train.snapshot_steps[0]:,}"
    t = shipped.train
    # the recipe (the conditional model's recipe repeats its run of five numbers)
    q.expect("recipe: lr, warm-up, batch, clip, EMA decay", sci(t.lr), t.warmup_steps, t.batch_size,
             f"{t.grad_clip:g}", f"{t.ema_decay:g}", times=2)
    q.expect("recipe: seed, steps, export step", t.seed, steps, ten_min)
    q.expect("training-time table header (and the recipe): the two points' steps", steps, ten_min, times=2)
    q.expect("the command for ten minutes of the candidate", half.train.snapshot_steps[0])
    # the network
    m = shipped.model
    resolutions = [28 // 2 ** i for i in range(len(m.channel_mults))]
    q.expect("model: width, multipliers, resolutions", m.base_channels, *m.channel_mults, *resolutions)
    size = {name: sum(p.numel() for p in build_model(PRESETS[name].model).parameters())
            for name in ("shipped", "half_width", "conditional")}
    mb = (CHECKPOINTS / "ddpm_mnist.safetensors").stat().st_size / 1e6
    q.expect("model: parameters and file size", f"{size['shipped']:,}", short(mb))
    q.expect("schedule: linear betas and T", *(sci(x) if x < 1e-3 else f"{x:g}" for x in
                                               (linear_betas.__defaults__[0], linear_betas.__defaults__[1])),
             shipped.T)
    # the half-width candidate's recipe
    q.expect("candidate: preset steps and export", f"{half.train.steps:,}", f"{half.train.snapshot_steps[0]:,}")
    q.expect("candidate: base channels and parameters", half.model.base_channels, f"{size['half_width']:,}")
    # the conditional model
    assert cond.model.num_classes == 10
    q.expect("conditional: parameters", f"{size['conditional']:,}")
    q.expect("conditional: recipe (T, lr, warm-up, batch, clip, EMA, seed)", cond.T, sci(cond.train.lr),
             cond.train.warmup_steps, cond.train.batch_size, f"{cond.train.grad_clip:g}",
             f"{cond.train.ema_decay:g}", cond.train.seed)
    q.expect("conditional: steps against the shipped run's", f"{cond.train.steps:,}", steps)
    embedding = size["conditional"] - size["shipped"]
    q.expect("conditional: parameters the class embedding adds", f"{embedding:,}", pct(embedding / size["shipped"]))
    q.check()
    row = row_quotes("candidates/ddpm_mnist_half_width.safetensors")
    row.expect("candidate: preset steps and export", f"{half.train.steps:,}", f"{half.train.snapshot_steps[0]:,}")
    row.check()
    row = row_quotes("ddpm_mnist_conditional.safetensors")
    row.expect("conditional: steps", f"{cond.train.steps:,}")
    row.check()
    card = model_card()
    assert re.findall(r"GroupNorm \((\d+) groups\)", card) == [str(m.norm_groups)]
    assert re.findall(r"\$p_\\mathrm\{uncond\} = ([\d.]+)\$", card) == [f"{cond.train.p_uncond:g}"]
    assert re.findall(r"nn\.Embedding\((\d+), ", card) == [str(cond.model.num_classes + 1)]


def test_model_card_quotes_the_training_run():
    """Time and throughput of the shipped run, as its reports record them (train_step, train_seconds)."""
    from ddpm_lib.presets import PRESETS

    long, short_run = report("eval_ddpm_mnist"), report("eval_ddpm_mnist_10min")
    batch, n_train = PRESETS["shipped"].train.batch_size, sum(MNIST_TRAIN_COUNTS)
    q = card_quotes()
    seconds, steps = long["train_seconds"], long["train_step"]
    ten = (f"{short_run['train_seconds'] / 60:.0f}", f"{short_run['train_step']:,}")
    q.expect("the run as first defined by time", f"{seconds / 60:.0f}", ten[0], f"{steps:,}", *ten)
    for name, run in (("ddpm_mnist.safetensors", (f"{seconds / 60:.0f}", f"{steps:,}")),
                      ("ddpm_mnist_10min.safetensors", ten)):
        row = row_quotes(name)
        row.expect("minutes and step", *run)
        row.check()
    q.expect("training-time table: steps/s of the full run", f2(steps / seconds))
    q.expect("training-time table: measured minutes", f"{seconds / 60:.1f}", f"{short_run['train_seconds'] / 60:.1f}")
    images = steps * batch
    q.expect("the full run", f"{seconds:,.1f}", f"{seconds / 60:.1f}", f"{steps:,}", batch, f"{images:,}",
             f"{images / n_train:.1f}", f"{steps / seconds:.1f}", f"{images / seconds:.0f}")
    q.expect("the 10-minute export", f"{short_run['train_seconds'] / 60:.0f}", f"{short_run['train_step']:,}",
             f"{short_run['train_seconds']:.1f}")
    q.check()


# --------------------------------------------------------------------------- the evaluations

def test_stored_evaluations_use_the_protocol_the_chapters_state():
    """Chapters 6 and 8 state the protocol of the two stored evaluations: N samples from T-step Algorithm 2
    (sigma_t^2 = beta_t) with one seed, and show the first few of the stored samples."""
    pattern = re.compile(r"\$N = (\d+)\$ samples from (\d+)-step Algorithm 2 \(\$\\sigma_t\^2 = \\(\w+)_t\$, "
                         r"seed (\d+)\)")
    stated = pattern.findall(prose("08_measuring_samples"))
    assert stated, "chapter 8 no longer states the protocol as '$N = ...$ samples from ...-step Algorithm 2 (...)'"
    for stem in ("eval_ddpm_mnist", "eval_ddpm_mnist_10min"):
        r = report(stem)
        assert (r["n"], r["n_floor"], r["sampler"]) == (1000, 1000, "ddpm")
        assert set(stated) == {(str(r["n"]), str(r["steps"]), r["variance"], str(r["seed"]))}
    shown = re.findall(r"first (\d+) of the (\d+)", prose("06_training"))
    code = re.findall(r"stored\[:(\d+)\]", chapter("06_training"))
    assert shown and code and set(shown) == {(code[0], str(report("eval_ddpm_mnist")["n"]))}


def test_measuring_chapter_names_the_stored_seeds():
    singles = [report(f"eval_ddpm_mnist_seed{s}")["seed"] for s in (1, 2)]
    seeds = report("eval_ddpm_mnist_seeds")["seeds"]
    text = prose("08_measuring_samples")
    assert re.findall(r"sampling seeds (\d+) and (\d+)", text) == [tuple(map(str, singles))]
    assert f"with {NUMBER_WORDS[len(seeds)]} seeds" in text
    commands = re.findall(r"--seeds ([\d ]+?) *\\?\n.*?--out checkpoints/(\S+)\.json", chapter("08_measuring_samples"))
    assert commands and all([int(s) for s in given.split()] == report(stem)["seeds"] for given, stem in commands)


def test_evaluate_commands_in_the_model_card_match_their_reports():
    """Every `evaluate ... --out checkpoints/X.json` command in the card asks for what X.json holds."""
    blocks = re.findall(r"```bash\n(.*?)```", card_text(), re.DOTALL)
    commands = [shlex.split(c) for b in blocks for c in b.replace("\\\n", " ").splitlines()
                if "ddpm_lib evaluate" in c and "--out checkpoints/" in c]
    assert len(commands) >= 5
    for argv in commands:
        args = dict(zip(argv, argv[1:]))
        r = json.loads((ROOT / args["--out"]).read_text())
        assert args["--checkpoint"] == r["checkpoint"], argv
        if "--seeds" in argv:
            i = argv.index("--seeds") + 1
            given = [int(s) for s in argv[i:i + len(r["seeds"]) + 1] if s.isdigit()]
            assert given == r["seeds"], argv
        else:
            assert int(args["--seed"]) == r["seed"] and int(args["--n"]) == r["n"], argv
        for flag, key in (("--batch-size", "batch_size"), ("--device", "device")):
            if flag in args and key in r:
                assert str(r[key]) == args[flag], (argv, key)
        assert ("--clip-x0" in argv) == bool(r.get("clip_x0", False)), argv


def test_model_card_quotes_the_single_seed_evaluations():
    """The prose around the one-seed CPU runs of the protocol (seeds 0, 1, 2 and x_0 clipped)."""
    seed0, seed1, seed2 = report("eval_ddpm_mnist"), report("eval_ddpm_mnist_seed1"), report("eval_ddpm_mnist_seed2")
    short_run, clip = report("eval_ddpm_mnist_10min"), report("eval_ddpm_mnist_clip")
    gpu = report("eval_ddpm_mnist_seeds")["per_seed"]
    q = card_quotes()
    q.expect("classifier accuracy", f"{seed0['classifier_test_accuracy']:.2%}")
    for name, run in (("mnist_classifier.safetensors", [f"{seed0['classifier_test_accuracy']:.2%}"]),
                      ("samples.png", [seed0["n"], seed0["steps"]]),
                      ("eval_ddpm_mnist_samples.npy", [seed0["n"], *np.load(CHECKPOINTS / "eval_ddpm_mnist_samples.npy",
                                                                            mmap_mode="r").shape]),
                      ("eval_ddpm_mnist_seed1.json", [seed1["seed"], seed2["seed"]])):
        row = row_quotes(name)
        row.expect("from the reports", *run)
        row.check()
    q.expect("sampling time of the two reports", f"{seed0['sample_seconds']:,.0f}",
             f"{short_run['sample_seconds']:,.0f}")
    # why seed 0 alone is not the verdict
    floors = [r["fd_floor"] for r in gpu[:5]]
    q.expect("floor over five subsets", seed0["n_floor"], f2(min(floors)), f2(max(floors)), f2(statistics.mean(floors)))
    q.expect("seed 0 against the mean floor", f2(seed0["fd"] / statistics.mean(floors)))
    q.expect("seed 1", seed1["seed"], seed1["seed"], f2(seed1["fd"]), f2(seed1["fd_floor"]), f2(seed1["fd_ratio"]),
             f2(seed1["fd"] / seed0["fd_floor"]), seed0["seed"], f2(seed0["fd_floor"]), pct(seed1["min_fraction"]),
             pct(seed1["max_fraction"]), f"{seed1['mean_confidence']:.3f}")
    q.expect("seed 0 to seed 1", f2(seed0["fd"] - seed1["fd"]), f2(seed0["fd_ratio"] - seed1["fd_ratio"]))
    q.expect("seed 2: minutes of sampling", seed2["seed"], f"{seed2['sample_seconds'] / 60:.0f}")
    q.expect("seed 2", f2(seed2["fd"]), f2(seed2["fd_floor"]), f2(seed2["fd_ratio"]), pct(seed2["min_fraction"]),
             pct(seed2["max_fraction"]), f"{seed2['mean_confidence']:.3f}")
    cpu = [seed0, seed1, seed2]
    fd, floor = statistics.mean(r["fd"] for r in cpu), statistics.mean(r["fd_floor"] for r in cpu)
    counts = [sum(r["digit_counts"][d] for r in cpu) for d in range(10)]
    q.expect("seeds 0 to 2 on the CPU", 0, 2, f2(fd / floor), f2(fd), f2(floor), pct(min(counts) / sum(counts)),
             pct(max(counts) / sum(counts)))
    # tried, and not better
    q.expect("the shipped checkpoint's score in 'Tried'", f2(seed0["fd"]), f2(seed0["fd_ratio"]))
    q.expect("x_0 clipped: table row", f2(clip["fd"]), f2(clip["fd_ratio"]), pct(clip["min_fraction"]),
             pct(clip["max_fraction"]), f"{clip['mean_confidence']:.3f}")
    q.expect("x_0 clipped: the FD moves by", f2(clip["fd"] - seed0["fd"]))
    q.expect("doubling the lr: the shipped checkpoint at seeds 5 and 3", f2(gpu[5]["fd"]))
    q.expect("doubling the lr: the shipped checkpoint at seeds 5 and 3", f2(gpu[3]["fd"]))
    q.check()


def test_model_card_quotes_the_eight_seed_verdict():
    """The bullets under 'Eight seeds: the verdict', from eval_ddpm_mnist_seeds.json and the three CPU reports."""
    seeds = report("eval_ddpm_mnist_seeds")
    cpu = [report(s) for s in ("eval_ddpm_mnist", "eval_ddpm_mnist_seed1", "eval_ddpm_mnist_seed2")]
    sets = seeds["per_seed"] + cpu
    ratios = [r["fd_ratio"] for r in sets]
    q = card_quotes()
    minutes, secs = divmod(round(seeds["sample_seconds"]), 60)
    q.expect("GPU sampling time", minutes, secs)
    pooled = statistics.mean(r["fd"] for r in sets) / statistics.mean(r["fd_floor"] for r in sets)
    assert f"all {NUMBER_WORDS[len(sets)]} scored sets" in model_card()
    assert f"with {NUMBER_WORDS[len(seeds['seeds'])]} sampling seeds" in model_card()
    q.expect("all eleven sets", f2(pooled))
    q.expect("the eight GPU seeds", f2(seeds["fd_ratio"]), *map(f2, seeds["fd_ratio_per_seed"]))
    cpu_pooled = statistics.mean(r["fd"] for r in cpu) / statistics.mean(r["fd_floor"] for r in cpu)
    q.expect("the three CPU runs", *(r["seed"] for r in cpu), f2(cpu_pooled), *(f2(r["fd_ratio"]) for r in cpu))
    # the spread between sampling seeds (not a standard error: the sets share floor subsets), and the verdict, which
    # says "met" only if every set meets the target
    target = 2
    above = sum(r > target for r in ratios)
    q.expect("spread over the eleven: range and sd", f2(min(ratios)), f2(max(ratios)), f2(statistics.stdev(ratios)))
    card = model_card()
    assert f"{NUMBER_WORDS[above]} of the {NUMBER_WORDS[len(ratios)]} lie above {target}" in card
    assert "standard error of the pooled ratio" in card and "standard error of about" not in card
    floors = {r["seed"] for r in sets}
    assert f"{NUMBER_WORDS[len(floors)]} floor subsets serve {NUMBER_WORDS[len(sets)]} sets" in card
    if max(ratios) <= target:
        assert "**FD ratio: met" in card
    else:
        assert "**FD ratio: met" not in card and "**FD ratio: at the target line, not settled" in card
    counts, total = seeds["digit_counts"], sum(seeds["digit_counts"])
    rare, common = counts.index(min(counts)), counts.index(max(counts))
    n_train = sum(MNIST_TRAIN_COUNTS)
    q.expect("pooled digit balance", f"{total:,}", rare, pct(counts[rare] / total),
             pct(MNIST_TRAIN_COUNTS[rare] / n_train), common, pct(counts[common] / total),
             pct(MNIST_TRAIN_COUNTS[common] / n_train))
    dips = [(r["digit_counts"].index(min(r["digit_counts"])), r["min_fraction"], r["seed"])
            for r in seeds["per_seed"] if r["min_fraction"] <= 0.07 + 1e-9]
    assert len({d for d, _, _ in dips}) == 1, dips
    q.expect("seeds whose rarest digit reached 7%", dips[0][0], *(x for _, f, s in dips for x in (pct(f), s)))
    q.expect("binomial sd of a 9% share", seeds["n"], "9%", short(100 * math.sqrt(0.09 * 0.91 / seeds["n"])), "7%")
    gpu0 = seeds["per_seed"][0]
    q.expect("GPU seed 0 against CPU seed 0", gpu0["seed"], gpu0["batch_size"], cpu[0]["seed"], cpu[2]["batch_size"],
             f2(gpu0["fd"]), f2(gpu0["fd_ratio"]), f2(cpu[0]["fd"]))
    q.expect("the CPU's scores at seeds 0 and 1", f2(cpu[0]["fd"]), f2(cpu[1]["fd"]))
    q.expect("the clipped sampler against the unclipped at seed 0", 0, f2(gpu0["fd"]))
    q.check()


# --------------------------------------------------------------------------- the bench, the ablation, the candidate

def test_model_card_quotes_the_ddp_bench_file():
    """The model card's two throughputs and their ratio are those of bench/results/ddp_cpu.json."""
    bench = json.loads((ROOT / "bench" / "results" / "ddp_cpu.json").read_text())
    one, two = (next(r for r in bench["runs"] if r["processes"] == p) for p in (1, 2))
    q = card_quotes()
    q.expect("throughputs and ratio", f"{one['images_per_s']:.1f}", f"{two['images_per_s']:.1f}",
             f"{two['images_per_s'] / one['images_per_s']:.2f}")
    q.expect("steps and global batch", bench["steps"], bench["global_batch"])
    q.check()
    card = model_card()
    assert f"python {bench['command']}" in card and bench["numerics"] in card
    # chapter 13 states the conclusion, not the figures: about as fast either way
    assert 0.8 < two["images_per_s"] / one["images_per_s"] < 1.25
    text = prose("13_scaling_out")
    assert "about as fast" in text
    assert re.findall(r"(\w+) single-threaded processes", text) == [NUMBER_WORDS[two["processes"]]]
    assert re.findall(r"one process with (\w+) threads", text) == [NUMBER_WORDS[one["threads_each"]]]
    assert two["threads_each"] == 1 and one["processes"] == 1


def test_model_card_quotes_the_ablation_behind_the_half_width_candidate():
    """The candidate section quotes experiments/results/ablation.json (Zen 4 calibration and scores at sampling
    seeds 0 and 1); regenerating the file must not leave it stale."""
    entries = results("ablation")
    rate = entries["calibration"]["steps_per_second"]

    def pair(name):
        return [f2(entries[f"eval:{name}:train0:sample{s}"]["fd_ratio"]) for s in (0, 1)]

    first = entries["eval:half_width:train0:sample0"]
    q = card_quotes()
    q.expect("half width: parameters and speed-up", f"{entries['train:half_width:seed0']['parameters']:,}",
             f2(rate["half_width"] / rate["baseline"]))
    q.expect("half width against the baseline", *pair("half_width"), 0, 1, first["network_calls"], first["n"],
             *pair("baseline"))
    q.expect("the baseline's parameters", f"{entries['train:baseline:seed0']['parameters']:,}")
    q.check()
    # the section's reading of its paired rows: half the width better; the decaying rate worse (one new run) and
    # the cosine schedule not told apart (two), each against half the width alone
    rows = ("paired:half_width", "paired:half_width_lr_decay:vs:half_width",
            "paired:half_width_cosine_clip:vs:half_width")
    assert [entries[k]["verdict"] for k in rows] == ["better", "worse", "unresolved"]
    assert [entries[k]["train_seeds"] for k in rows] == [[2, 3], [2], [2, 3]]


def test_model_card_states_the_paired_rules_error_rate_where_it_decides_the_leads():
    """'The ablation's leads, paired' quotes the rule's measured false-positive rate (paired_rule.json) and the
    chance that one of the five leads passes by it; its table is generated from ablation.json."""
    nulls = [results("paired_rule")[k] for k in ("null:real", "null:model")]
    rate = sum(r["verdicts"]["better"] + r["verdicts"]["worse"] for r in nulls) / sum(r["repeats"] for r in nulls)
    leads = [k for k in results("ablation") if k.count(":") == 1 and k.startswith("paired:") and k.split(":")[1] in (
        "time_at_input", "v_prediction", "x0_prediction", "lr_decay_2e-3", "cosine_clip")]
    assert len(leads) == 5
    q = card_quotes()
    q.expect("the rule's false-positive rate, and the chance of one pass in five", f"{100 * rate:.1f}%",
             f"{100 * (1 - (1 - rate) ** len(leads)):.0f}%")
    q.check()


def test_model_card_reports_the_candidate_under_the_protocol():
    """The candidate's scores under the protocol are those of its committed reports, at five sampling seeds, next to
    the shipped checkpoints' ratios at the same seeds (the table itself is generated)."""
    q = card_quotes()
    for stem, shipped in (("eval_half_width_10min_seeds", "eval_ddpm_mnist_10min_seeds"),
                          ("eval_half_width_seeds", "eval_ddpm_mnist_seeds")):
        r, ship = report(f"candidates/{stem}"), report(shipped)
        assert r["seeds"] == [0, 1, 2, 3, 4]
        assert (r["n"], r["steps"], r["sampler"], r["variance"], r["batch_size"]) == (1000, 1000, "ddpm", "beta", 1000)
        common = [s for s in r["seeds"] if s in ship["seeds"]]
        own = [r["fd_ratio_per_seed"][r["seeds"].index(s)] for s in common]
        theirs = [ship["fd_ratio_per_seed"][ship["seeds"].index(s)] for s in common]
        quotients = [a / b for a, b in zip(own, theirs)]
        q.expect(f"{stem}: ratios against the shipped, seed by seed", *map(f2, own), *map(f2, theirs),
                 f2(min(quotients)), f2(max(quotients)))
        q.expect(f"{stem}: mean over five seeds", f2(r["fd_ratio"]))
    ten, long = report("candidates/eval_half_width_10min_seeds"), report("candidates/eval_half_width_seeds")
    assert f"(the shipped 10-minute point has {NUMBER_WORDS[len(report('eval_ddpm_mnist_10min_seeds')['seeds'])]})" \
        in model_card()
    q.expect("55 minutes: candidate against the shipped mean", f2(long["fd_ratio"]),
             f2(report("eval_ddpm_mnist_seeds")["fd_ratio"]))
    q.expect("digit balance of both", *(pct(r[k]) for r in (ten, long) for k in ("min_fraction", "max_fraction")))
    q.expect("training: steps and minutes", f"{long['train_step']:,}", f"{long['train_seconds'] / 60:.1f}")
    q.expect("training: steps/s, export step and time", f"{long['train_step'] / long['train_seconds']:.1f}",
             f"{ten['train_step']:,}", f"{ten['train_seconds']:.0f}")
    q.check()


# --------------------------------------------------------------------------- guidance, fast samplers, likelihood

def test_model_card_quotes_the_guidance_sweep():
    sweep = results("guidance_sweep")
    runs = sorted((e for e in sweep.values() if "w" in e), key=lambda e: e["w"])
    by_w = {e["w"]: e for e in runs}
    q = card_quotes()
    assert re.findall(r"(\d+) samples of each digit", model_card()) == [str(runs[0]["n"] // 10)]
    q.expect("seed, sampler steps and weights", runs[0]["seed"], runs[0]["steps"],
             *(f"{e['w']:g}" for e in runs))
    w0, w02 = by_w[0.0], by_w[0.2]
    q.expect("w = 0", 0, pct(w0["accuracy"]), "95%", *map(pct, w0["accuracy_interval"]), f2(w0["fd"]),
             f2(w0["fd_floor"]))
    worst = w02["worst_digit"]
    q.expect("w = 0.2", "0.2", pct(w02["accuracy"]), round(w02["accuracy"] * w02["n"]), w02["n"],
             *map(pct, w02["accuracy_interval"]), worst, f"{w02['accuracy_per_digit'][worst]:.0%}",
             *(f"{x:.0%}" for x in w02["worst_digit_interval"]), f2(w02["fd"]))
    q.expect("w = 0.3", "0.3", pct(by_w[0.3]["accuracy"]), f2(by_w[0.3]["fd"]))
    strong = [e for e in runs if e["w"] >= 0.5]
    accuracies = [e["accuracy"] for e in strong]
    precisions = [e["knn_precision"] for e in runs if e["w"] <= 5]
    q.expect("from w = 0.5 up", "0.5", f"{100 * min(accuracies):.1f}", f"{max(accuracies):.0%}",
             f"{strong[0]['fd']:.3g}", f"{strong[-1]['fd']:.3g}", f"{strong[-1]['w']:g}",
             f2(w0["knn_recall"]), 0, f2(by_w[5.0]["knn_recall"]), 5, f2(min(precisions)), f2(max(precisions)), 5,
             f2(w02["diversity_vs_real"]), "0.2", f2(strong[-1]["diversity_vs_real"]))
    # "Every weight from 0.2 up has a higher FD than w = 0 by the paired interval"
    assert all(e["vs_w0"]["verdict"] == "worse" for e in runs if e["w"] >= 0.2)
    # the verdict: the lowest FD among the weights that reach 99%; "not settled": its interval straddles 99%
    best = min((e for e in runs if e["accuracy"] >= 0.99 - 1e-6), key=lambda e: e["fd"])
    assert best is w02 and best["accuracy_interval"][0] < 0.99 < best["accuracy_interval"][1]
    vs_plain = sweep["balanced:dpmpp-sde:20"]["vs_plain"][f"{best['w']:g}"]
    assert vs_plain["low"] < 1.5 < vs_plain["high"]                                     # "not settled either"
    q.expect("verdict", f"{best['w']:g}", "99%", round(best["accuracy"] * best["n"]), best["n"],
             *map(pct, best["accuracy_interval"]), "1.5", 1000, 1000, "0.2",
             f2(vs_plain["ratio"]), f2(vs_plain["low"]), f2(vs_plain["high"]))
    q.check()


def test_model_card_quotes_the_candidate_pairs():
    # "the candidate's FD is 0.57 times the shipped one's, 95% interval 0.50 to 0.64" and the 55-minute pair
    cand = results("candidate")
    assert (cand["10min"]["verdict"], cand["55min"]["verdict"]) == ("better", "unresolved")
    q = card_quotes()
    q.expect("10-minute pair", 2000, 50, f2(cand["10min"]["ratio"]), "95%", f2(cand["10min"]["low"]),
             f2(cand["10min"]["high"]))
    q.expect("55-minute pair", f2(cand["55min"]["ratio"]), "95%", f2(cand["55min"]["low"]), f2(cand["55min"]["high"]))
    # the cosine candidate: "at 10 minutes ... 0.73 times ... (95% interval 0.60 to 0.90, better ...); at 55 minutes
    # 1.12 (0.63 to 2.02), not resolved"
    assert (cand["cosine_10min"]["verdict"], cand["cosine_55min"]["verdict"]) == ("better", "unresolved")
    c10, c55 = cand["cosine_10min"], cand["cosine_55min"]
    q.expect("cosine, 10 minutes", 2000, 50, 10, f2(c10["ratio"]), "95%", f2(c10["low"]), f2(c10["high"]))
    q.expect("cosine, 55 minutes", 55, f2(c55["ratio"]), f2(c55["low"]), f2(c55["high"]))
    # the decaying lr 2e-3: "its FD is 1.00 times the shipped one's (95% interval 0.69 to 1.48): not resolved
    # (FD 4.67 against 4.68, KID 2.24 against 2.29, x1e-3)"
    ld = cand["lr_decay_55min"]
    assert ld["verdict"] == "unresolved"
    q.expect("lr 2e-3 decaying, 55 minutes", f2(ld["ratio"]), "95%", f2(ld["low"]), f2(ld["high"]),
             f2(ld["lr_decay_2e-3"]["fd"]), f2(ld["book"]["fd"]), f2(ld["lr_decay_2e-3"]["kid"]),
             f2(ld["book"]["kid"]))
    q.check()


def test_model_card_quotes_the_fast_samplers():
    # one sampler at one seed; the file also holds paired comparisons ("paired:...") and ODE distances ("ode:...")
    entries = {k: e for k, e in results("fast_samplers").items() if tables.SAMPLER_ENTRY.match(k)}
    q = card_quotes()
    q.expect("evaluations run", *sorted({e["steps"] for e in entries.values()}))
    # which budgets each sampler was run at, as the card lists them ("... at 10, 20, 50 and 100 network evaluations")
    listed = re.search(r"with DDIM \(\$\\eta = 0\$\) and DPM-Solver\+\+\(2M\) at ([\d, and]+?) network evaluations and "
                       r"with SDE-DPM-Solver\+\+\(2M\) at ([\d, and]+?), from", model_card())
    assert listed, "the fast-sampler section no longer lists the budgets of each sampler"
    steps = {s: sorted(e["steps"] for e in entries.values() if e["sampler"] == s and e["seed"] == 0)
             for s in ("ddim", "dpmpp", "dpmpp-sde")}
    assert steps["ddim"] == steps["dpmpp"] == [int(n) for n in numbers(listed[1])]
    assert steps["dpmpp-sde"] == [int(n) for n in numbers(listed[2])]
    extra = sorted({(e["steps"], e["seed"]) for e in entries.values() if e["seed"] != 0})
    q.expect("the SDE solver with more seeds", *sorted({n for n, _ in extra}), *sorted({s for _, s in extra}))
    # "At N = 1000 no goal is settled either way": every goal's interval straddles its bound
    paired = results("fast_samplers")
    for nfe, goal in tables.SAMPLER_GOALS:
        for sampler in tables.SAMPLER_NAMES:
            e = paired[f"paired:{sampler}:{nfe}"]
            assert e["low"] <= goal < e["high"], (sampler, nfe)
    q.expect("the goals at N = 1000", 1000)
    large = paired["paired:dpmpp:20:vs:dpmpp-sde:20:n10000"]
    assert large["verdict"] == "better"
    q.expect("the ODE distances and the SDE solver at N = 10,000", 100, 20)
    q.expect("the SDE solver against the ODE solver", f2(large["ratio"]), "95%", f2(large["low"]), f2(large["high"]))
    at20 = sorted((e for e in entries.values() if e["steps"] == 20 and e["sampler"] != "edm"),
                  key=lambda e: e["seconds_per_sample"])     # the card's times: the samplers timed on one machine
    first = min(at20, key=lambda e: e["measured"]["when"])
    assert first is at20[-1], "the slowest entry at 20 evaluations is no longer the first one measured"
    lo, hi, outlier = (1000 * e["seconds_per_sample"] for e in (at20[0], at20[-2], at20[-1]))
    q.expect("time per sample at 20 evaluations", f"{lo:.0f}", f"{hi:.0f}", 20, f"{outlier:.0f}",
             short(lo / 20), short(hi / 20), 1000)  # ms per sample at 20 evaluations -> s at 1000
    q.check()


def test_model_card_quotes_the_likelihood_report():
    """The numbers of the likelihood section (tests/test_likelihood.py checks some of them as phrases)."""
    r = report("nll_ddpm_mnist")
    q = card_quotes()
    q.expect("the bound and its terms", r["n"], 8, f"{r['bits_per_dim']:.3f}", f"{r['bits_per_dim_sem']:.3f}",
             f2(min(r["per_image_bits_per_dim"])), f2(max(r["per_image_bits_per_dim"])),
             f"{r['l0_bits_per_dim']:.3f}", f"{r['kl_bits_per_dim']:.3f}")
    q.expect("the KL terms' range, the prior, the network evaluations", 2, r["T"], sci(r["prior_bits_per_dim"]),
             f"{r['network_calls']:,}")
    q.expect("time", f"{r['wall_seconds']:.0f}")
    q.check()


# --------------------------------------------------------------------------- chapters and the experiments README

def test_training_chapter_quotes_the_shipped_ema_decay():
    from ddpm_lib.presets import PRESETS

    decays = set(re.findall(r"\$\\kappa = ([\d.]+)\$", prose("06_training")))  # the EMA decay is kappa
    paper = "0.9999"  # Ho et al. 2020, appendix B
    assert f"{PRESETS['shipped'].train.ema_decay:g}" in decays and decays <= {paper, "0.999"}, decays


def test_sampling_chapter_quotes_the_cosine_clip():
    from ddpm_lib.schedule import cosine_betas

    clip = float(cosine_betas(1000).max())
    assert re.findall(r"\$\\beta_t\$ to ([\d.]+)", prose("07_sampling")) == [f"{clip:.3f}"]


def test_sampling_chapter_names_the_proxy_the_model_card_used():
    """Chapter 7 says the clipped cosine model was compared with the 100-step DDIM proxy (eta = 1)."""
    card = model_card()
    commands = re.findall(r"--sampler ddim --steps (\d+) --eta (\d+)", card)
    said = re.findall(r"(\d+)-step DDIM[^.]*?eta = (\d+)", card)
    chapter6 = re.findall(r"(\d+)-step DDIM[^.]*?\$\\eta = (\d+)\$", prose("07_sampling"))
    assert commands and said and chapter6
    assert set(commands) == set(said) == set(chapter6) == {commands[0]}


def test_experiments_readme_counts_what_the_results_files_hold():
    text = re.sub(r"\s+", " ", (ROOT / "experiments" / "README.md").read_text())
    ablation = results("ablation")
    variants = {k.split(":")[1] for k in ablation if k.startswith("eval:")}
    trained = {k.split(":")[1] for k in ablation if k.startswith("train:")}
    # the sweep's weights as guidance_sweep.py defines them; the results file holds some or all of them
    import ast
    source = (ROOT / "experiments" / "guidance_sweep.py").read_text()
    weights = ast.literal_eval(re.search(r"^WEIGHTS = (\(.*?\))$", source, re.MULTILINE)[1])
    done = {e["w"] for e in results("guidance_sweep").values() if "w" in e}
    assert done <= set(weights)
    assert re.findall(r"(\d+) variants \((\d+) trained\)", text) == [(str(len(variants)), str(len(trained)))]
    assert re.findall(r"(\d+) guidance weights", text) == [str(len(weights))]
    assert re.findall(r"\$w = ([\d.]+)\$ to ([\d.]+)", text) == [(f"{min(weights):g}", f"{max(weights):g}")]
    # every script has its row in the table, with its results file
    for script in sorted((ROOT / "experiments").glob("[a-z]*.py")):
        assert f"| `{script.name}` | `{script.stem}.json` |" in text, script.name


def test_model_card_has_no_dates_or_session_talk():
    card = card_text()
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d:\d\d\b|\bUTC\b", card)
    assert not re.findall(r"\bsessions?\b", card, re.IGNORECASE)
    # provenance (CPU, command, time taken) stays; when a run was made, and who tried what, go
    assert not re.findall(r"\b(?:today|yesterday|tonight|this (?:morning|week)|we tried|next time|"
                          r"this version of the (?:book|code))\b", card, re.IGNORECASE)


def test_model_card_quotes_the_conditional_flow():
    """The conditional flow's recipe, training time and guidance sweep (experiments/results/guidance_flow.json)."""
    from ddpm_lib.checkpoint import load_checkpoint
    from ddpm_lib.presets import PRESETS

    info = load_checkpoint(CHECKPOINTS / "flow_mnist_conditional.safetensors").info
    recipe = PRESETS["conditional"].train
    assert info["step"] == recipe.steps
    sweep = results("guidance_flow")
    by_w = {e["w"]: e for e in sweep.values() if "w" in e}
    flow = load_checkpoint(CHECKPOINTS / "flow_mnist.safetensors").info
    q = card_quotes()
    q.expect("the recipe", recipe.p_uncond, sci(recipe.lr), recipe.warmup_steps, recipe.batch_size, recipe.ema_decay,
             recipe.seed, f"{recipe.steps:,}")
    q.expect("the training time", f"{info['train_seconds']:,.0f}", f"{info['train_seconds'] / 60:.1f}")
    q.expect("the idle estimate", f"{flow['step']:,}", f"{flow['train_seconds']:,.0f}", f"{recipe.steps:,}",
             round(recipe.steps / flow["step"] * flow["train_seconds"] / 60))
    q.expect("the sampler and weights", 20, *(f"{w:g}" for w in sorted(by_w)), 100, 0, 20, 40)
    w0, w02, w5 = by_w[0.0], by_w[0.2], by_w[5.0]
    q.expect("w = 0", 0, pct(w0["accuracy"]), "95%", *map(pct, w0["accuracy_interval"]), f2(w0["fd"]),
             f2(w0["fd_floor"]))
    q.expect("w = 0.2", "0.2", pct(w02["accuracy"]), *map(pct, w02["accuracy_interval"]), f2(w02["fd"]),
             f2(w02["vs_w0"]["ratio"]), 0, f2(w02["vs_w0"]["low"]), f2(w02["vs_w0"]["high"]))
    q.expect("w = 5", 5, f2(w5["fd"]), f2(w5["diversity_vs_real"]))
    assert all(e["vs_w0"]["verdict"] == "worse" for w, e in by_w.items() if w >= 0.2)   # "every weight from 0.2 up"
    balanced = sweep["balanced:euler:20"]["w0_vs_balanced"]
    assert balanced["verdict"] == "better"
    q.expect("balanced", 100, 20, f2(balanced["ratio"]), f2(balanced["low"]), f2(balanced["high"]))
    q.check()


def test_model_card_quotes_the_flow_checkpoints():
    """The flow-matching section: the preset's steps, the run's time (the checkpoint's train_seconds), and the
    reflow stages as experiments/flow_matching.py recorded them."""
    from ddpm_lib.checkpoint import load_checkpoint
    from ddpm_lib.presets import PRESETS

    info = load_checkpoint(CHECKPOINTS / "flow_mnist.safetensors").info
    recipe = PRESETS["flow"].train
    assert info["step"] == recipe.steps == PRESETS["shipped"].train.steps
    fm = results("flow_matching")
    # the reflowed students by training steps; the longest-trained is the shipped flow_mnist_reflow.safetensors
    students = sorted((e["steps"], k.split(":")[0]) for k, e in fm.items() if re.fullmatch(r"reflow\d+:student", k))
    name = students[-1][1]
    pairs, student = fm["reflow:pairs"], fm[f"{name}:student"]
    q = card_quotes()
    q.expect("the recipe", sci(recipe.lr), f"{recipe.warmup_steps}", recipe.batch_size,
             short(recipe.grad_clip), recipe.ema_decay, recipe.seed, f"{recipe.steps:,}")
    q.expect("the training time", f"{info['train_seconds']:,.0f}", f"{info['train_seconds'] / 60:.1f}")
    q.expect("the reflow pairs and student", f"{pairs['n']:,}", pairs["seed"], pairs["calls"],
             f"{student['steps']:,}", 2)
    q.expect("the reflow times", f"{pairs['seconds']:.0f}", f"{student['train_seconds']:,.0f}")
    shorter = fm[f"{students[0][1]}:student"]
    q.expect("the shorter student", f"{shorter['steps']:,}", f"{shorter['steps']}", f"{shorter['train_seconds']:.0f}")
    q.expect("the flow at 20 calls", f2(fm["flow:heun:20"]["fd"]), f2(fm["ddpm:dpmpp:20"]["fd"]),
             f2(fm["ddpm:edm:20"]["fd"]), 1, 50)
    q.expect("reflow's straightness and FD at one and two calls", f"{fm['straightness:flow']['straightness']:.3f}",
             f"{fm[f'straightness:{name}']['straightness']:.4f}", f"{fm['flow:euler:1']['fd']:,.0f}",
             f"{fm[f'{name}:euler:1']['fd']:.1f}", f"{fm['flow:euler:2']['fd']:,.0f}", f"{fm[f'{name}:euler:2']['fd']:.1f}",
             f"{student['steps']:,}")
    longer = fm[f"paired:{students[0][1]}:euler:2:vs:{name}:euler:2"]
    assert longer["verdict"] == "better"
    q.expect("longer training, paired", f"{shorter['steps']:,}", f2(longer["ratio"]), "95%", f2(longer["low"]),
             f2(longer["high"]))
    # "not met at 3,000 steps and not settled at 8,000 (the interval straddles 2) with 20,000 pairs"
    goal_short, goal_long = (fm[f"paired:flow:heun:20:vs:{s}:euler:2"] for s in (students[0][1], name))
    assert goal_short["low"] > 2 and goal_long["low"] <= 2 < goal_long["high"]
    q.expect("the goal's verdicts", 20, f"{shorter['steps']:,}", f"{student['steps']:,}", 2, f"{pairs['n']:,}")
    row = row_quotes("flow_mnist.safetensors")
    row.expect("steps", f"{recipe.steps:,}")
    row.check()
    q.check()
    assert pairs["solver"] == "heun" and student["pairs"] == pairs["n"]
    assert student["checkpoint"] == "checkpoints/flow_mnist_reflow.safetensors"
    assert load_checkpoint(CHECKPOINTS / "flow_mnist_reflow.safetensors").info["step"] == student["steps"]

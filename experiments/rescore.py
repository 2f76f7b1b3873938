"""The shipped checkpoints' committed samples scored with every measure of `ddpm_lib.metrics`.

    python experiments/rescore.py            # every entry not yet in the results file

The quality reports in `checkpoints/` (`python -m ddpm_lib evaluate`, 1000-step Algorithm 2,
N = 1000, seed 0) were written before the kernel distance (KID, Bińkowski et al. 2018) and
precision/recall (Kynkäänniemi et al. 2019) were in the library. Their samples are committed
beside them, so those measures need no new sampling: this script scores each sample file again
with `ddpm_lib.metrics.evaluate_samples` at the report's seed, and refuses to write if the FD it
finds differs from the report's (then the classifier, the reference set or the metric has
changed, and every report needs scoring again). Results go to
`experiments/results/rescore.json`; the model card's quality table reads them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import load_images, open_results  # noqa: E402

from ddpm_lib.metrics import evaluate_samples  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "rescore.json"
# report -> the samples it scored
REPORTS = {
    "checkpoints/eval_ddpm_mnist_10min.json": "checkpoints/eval_ddpm_mnist_10min_samples.npy",
    "checkpoints/eval_ddpm_mnist.json": "checkpoints/eval_ddpm_mnist_samples.npy",
}
KEPT = ("fd", "fd_floor", "fd_ratio", "kid", "kid_se", "knn_precision", "knn_recall", "n", "seed")


def main(argv=None) -> int:
    results = open_results(__doc__, RESULTS, "the shipped checkpoints' committed samples scored again with FD, "
                           "KID and precision/recall; written by experiments/rescore.py", argv)
    for report_file, samples_file in REPORTS.items():
        if results.has(report_file):
            continue
        report = json.loads((ROOT / report_file).read_text())
        images = load_images(ROOT / samples_file)
        if len(images) != report["n"]:
            raise SystemExit(f"{samples_file} holds {len(images)} images, {report_file} scored {report['n']}")
        scored = evaluate_samples(images, seed=report["seed"])
        if not math.isclose(scored["fd"], report["fd"], rel_tol=1e-6):
            raise SystemExit(f"{samples_file}: FD {scored['fd']:.6f} now, {report['fd']:.6f} in {report_file}: the "
                             "classifier, the reference set or the metric changed; score the reports again "
                             "(python -m ddpm_lib evaluate) before adding measures to them")
        results.put(report_file, {"samples": samples_file, **{k: scored[k] for k in KEPT}})
        print(f"{report_file}: FD {scored['fd']:.2f}, KID {scored['kid']:.4f} +- {scored['kid_se']:.4f}, "
              f"precision {scored['knn_precision']:.3f}, recall {scored['knn_recall']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

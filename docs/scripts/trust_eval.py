"""The trust evaluations behind docs/results.md §10: far-OOD (Fashion-MNIST, digits; 1000 images) and the 15 corruptions
at severities 1, 3, 5 (200 test images) of each run given, one JSON per run in OUT_FOLDER.

    python docs/scripts/trust_eval.py OUT_FOLDER RUN_DIR...
"""
import json, sys, time
from pathlib import Path
from cskd_fastai.evaluate import evaluate_run
out = Path(sys.argv[1]); sys.argv = sys.argv[1:]
for run in sys.argv[1:]:
    t = time.time()
    res = evaluate_run(run, ood=["fashion_mnist", "digits"], ood_max=1000, shift="1,3,5", shift_max=200)
    res["wall_s"] = round(time.time() - t, 1)
    name = "-".join(Path(run).parts[-2:])
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    print("done", run, res["wall_s"], flush=True)

#!/usr/bin/env python
"""Everything the first lent GPU must answer, in one call: throughput, memory, the three promised ratios, a
correctness smoke under bf16, the NCCL path, and as much of the paper's CUB schedule as the budget leaves.

    python bench/gpu_suite.py --out OUT [--data .gpu_data/cub100] [--budget-s 480]
    python bench/gpu_suite.py --dry-run --out OUT       # every section for a couple of steps on CPU (CI runs this)

Writes OUT/suite.json and OUT/suite.md (the table is printed too). Sections, each with its own share of the
budget and skipped (and said so) when the budget is spent:

1. env         device, driver, torch / CUDA / cuDNN versions, and a measured bf16 matmul peak (8192^3).
2. throughput  `bench/throughput.py`'s interleaved CE / CS-KD / stored-partner CS-KD / plain-PyTorch reference epochs (the reference: fp32,
               eager, two passes, as the official code) for ResNet-18 at 224 px with 32 anchors and the CIFAR
               ResNet-18 at 32 px with 128 anchors, on synthetic in-memory images, in variants fp32 eager,
               bf16 + channels_last, bf16 + channels_last + compile; on real images (`--data`, the carried cub100
               copy) also + cache + gpu_augment. Images/s and peak GPU memory per trainer.
3. headline    the three numbers docs/performance.md promises: CS-KD/CE time at equal anchors (target <= 1.40),
               CS-KD/reference anchor images/s (target >= 3, fastest fastai variant vs the fp32 reference), and the
               fraction of the measured bf16 matmul peak reached by the fastest CS-KD variant (model FLOPs from
               torch's FlopCounterMode: anchors forward + backward, partners forward).
4. smoke       a few CS-KD steps under fastai's bf16 `MixedPrecision` (CPU: the same events under CPU autocast):
               the KD term the callback computed vs a float32 recomputation from the same logits (tolerance 1e-4
               relative); then `torchrun --nproc_per_node 1 -m cskd_fastai train` on a tiny recipe: the NCCL
               process group (gloo on CPU) initialising and training one epoch.
5. paper_cub   the paper's CUB schedule on the carried subset (ResNet-18, 224 px, from scratch, bs 32, SGD 0.1,
               200 epochs, lr /10 at 50% and 75%), CE and CS-KD (lambda 3, T 4), as many epochs as the remaining
               budget allows: epoch times and the projected duration of the full run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

KEYS = ("env", "throughput", "headline", "smoke", "paper_cub", "sections", "dry_run", "budget_s", "elapsed_s")


class Budget:
    "Wall-clock budget of the whole suite; each section asks for its share of what is left."
    def __init__(self, total: float): self.t0, self.total = time.monotonic(), total
    @property
    def left(self) -> float: return self.total - (time.monotonic() - self.t0)
    def elapsed(self) -> float: return time.monotonic() - self.t0


def _sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


# ---- 1. env ---------------------------------------------------------------------------------------------------
def bf16_peak(dry: bool) -> float:
    "Measured bf16 matmul TFLOP/s (n^3 products, mean of 10 after 3 warm-ups); tiny on CPU."
    n = 256 if dry else 8192
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16); b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3): a @ b
    _sync(); t0 = time.perf_counter()
    for _ in range(10): a @ b
    _sync()
    return 2 * n ** 3 * 10 / (time.perf_counter() - t0) / 1e12


def env(dry: bool) -> dict:
    import fastai
    out = dict(python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
               cpu_count=os.cpu_count())
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        out["driver"] = q.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired): out["driver"] = None
    out["bf16_matmul_tflops"] = round(bf16_peak(dry), 6)
    return out


# ---- 2, 3. throughput and headline ---------------------------------------------------------------------------
VARIANTS = {  # name: throughput.py options of the fastai trainers (the reference stays plain fp32 eager)
    "fp32 eager": dict(),
    "bf16+cl": dict(mixed_precision="bf16", channels_last=True),
    "bf16+cl+compile": dict(mixed_precision="bf16", channels_last=True, compile=True),
    "bf16+cl+cache+gpu_aug": dict(mixed_precision="bf16", channels_last=True, cache=True, gpu_augment=True),
}


def model_gflops(arch: str, size: int) -> float:
    "Forward GFLOPs of one image (FlopCounterMode counts a multiply-add as 2 FLOPs)."
    from torch.utils.flop_counter import FlopCounterMode
    from cskd_fastai.models import create_paper_model
    m = create_paper_model(arch, 100).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad(): m(torch.randn(1, 3, size, size))
    return fc.get_total_flops() / 1e9


def throughput(args, budget: Budget, share: float) -> list[dict]:
    import throughput as T
    deadline = budget.elapsed() + share * budget.left
    rows = []
    plan = [("r18b32", "synthetic"), ("cifar", "synthetic")] + ([("r18b32", "real")] if args.data else [])
    real = None
    if args.data:
        from cskd_fastai.datasets import load_dataset
        real = load_dataset("cub", args.data)
        if args.dry_run: real = T.limit_dataset(real, 4, 5)
    # a dry run times each (config, source) once, in one variant (the cached one on real images): CPU minutes matter
    dry = {("cifar", "synthetic"): "fp32 eager", ("r18b32", "real"): "bf16+cl+cache+gpu_aug"}
    for variant, opts in VARIANTS.items():
        for cfg, src in plan:
            if opts.get("cache") and src != "real": continue
            if args.dry_run and dry.get((cfg, src)) != variant: continue
            if budget.elapsed() > deadline:
                rows.append(dict(config=cfg, source=src, variant=variant, skipped="budget spent")); continue
            a = T.parse_args((["--quick"] if args.dry_run else []) + ["--rounds", "1" if args.dry_run else "3"])
            for k, v in opts.items(): setattr(a, k, v)
            a.cache = bool(opts.get("cache"))
            if src == "real": a.workers = 0 if args.dry_run else min(8, os.cpu_count() or 1)
            arch, size, bs, augment = (T.QUICK if args.dry_run else T.CONFIGS)[cfg]
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            t0 = time.monotonic()
            try:
                r = T.bench_one(cfg, arch, size, bs, augment, src, a, device, real)
            except Exception as e:   # one failing variant (e.g. compile) must not cost the rest of the suite
                rows.append(dict(config=cfg, source=src, variant=variant, error=f"{type(e).__name__}: {str(e)[:300]}"))
                continue
            r.update(variant=variant, seconds=round(time.monotonic() - t0, 1), gflops_fwd=model_gflops(arch, size))
            rows.append(r)
            print(f"  throughput {cfg}/{src}/{variant}: CS-KD {r['ips']['cskd']:.0f} anchor img/s, "
                  f"CS-KD/CE {r['kd_over_ce']:.2f}, stored/CE {r['stored_over_ce']:.2f}, CS-KD/ref {r['kd_vs_ref']:.2f}", flush=True)
    return rows


def headline(rows: list[dict], peak_tflops: float) -> dict:
    ok = [r for r in rows if "ips" in r]
    if not ok: return dict(cskd_over_ce=None, cskd_over_ref=None, bf16_peak_fraction=None, note="no throughput row")
    r18 = [r for r in ok if r["config"] == "r18b32"] or ok
    best = max(r18, key=lambda r: r["ips"]["cskd"])
    ref_fp32 = max((r for r in r18 if r["variant"] == "fp32 eager" and r["source"] == best["source"]),
                   key=lambda r: r["ips"]["ref"], default=best)
    # FLOPs per anchor: anchor forward + backward (~3x forward) + the partner's forward
    tflops = best["ips"]["cskd"] * 4 * best["gflops_fwd"] / 1e3
    return dict(cskd_over_ce=round(statistics.median(r["kd_over_ce"] for r in r18), 3),
                stored_over_ce=round(statistics.median(r["stored_over_ce"] for r in r18), 3),
                cskd_over_ce_by_variant={f"{r['config']}/{r['source']}/{r['variant']}": round(r["kd_over_ce"], 3) for r in ok},
                cskd_over_ref=round(best["ips"]["cskd"] / ref_fp32["ips"]["ref"], 2),
                best_variant=f"{best['config']}/{best['source']}/{best['variant']}",
                achieved_tflops=round(tflops, 2), bf16_peak_fraction=round(tflops / peak_tflops, 4),
                targets=dict(cskd_over_ce="<= 1.40", stored_over_ce="reported (no partner pass: ~1)", cskd_over_ref=">= 3",
                             bf16_peak_fraction="reported"))


# ---- 4. smoke -----------------------------------------------------------------------------------------------
def kd_under_bf16(dry: bool) -> dict:
    "A few CS-KD steps under bf16 mixed precision; the callback's KD term vs float32 recomputed from the same logits."
    from fastai.callback.core import Callback
    from fastai.optimizer import SGD
    import cskd_fastai.callbacks.cskd as C
    from cskd_fastai import class_wise_kd, cskd_learner
    from throughput import synthetic_data, synthetic_dls
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    x, y = synthetic_data(32 if dry else 512, 10, 16 if dry else 32)
    dls = synthetic_dls(x, y, 8, 8 if dry else 64, True, device)
    seen = []
    stock = C.KD_TERMS["plain"]   # the published term (per anchor): CSKD means it
    def recording(a, p, y, T):
        per = stock(a, p, y, T)
        kd = per.mean()
        seen.append((str(p.dtype), kd.item(), stock(a.float(), p.float(), y, T).mean().item(), class_wise_kd(a.double(), p.double(), T).item()))
        return per
    C.KD_TERMS["plain"] = recording
    try:
        if cuda:
            from fastai.callback.fp16 import MixedPrecision
            mp = MixedPrecision(amp_mode="bf16")
        else:
            class mp_cls(Callback):   # fastai's MixedPrecision events, with CPU autocast
                order = 10
                def before_batch(self): self.ac = torch.autocast("cpu", dtype=torch.bfloat16); self.ac.__enter__()
                def after_pred(self): self.learn.pred = self.pred.float()
                def after_loss(self): self.ac.__exit__(None, None, None)
            mp = mp_cls()
        learn = cskd_learner(dls, "small_cnn" if dry else "cifar_resnet18", lam=1.0, temp=4.0, cbs=[mp], opt_func=SGD,
                             lr=0.05)
        learn.model.to(device)
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    finally:
        C.KD_TERMS["plain"] = stock
    # float32 KD on bf16 logits: T² = 16 times float32 rounding of a log-softmax, a few 1e-6; bf16 math: 1e-3 and up
    excess = [abs(kd - ref) - (3e-5 + 1e-4 * abs(ref)) for _, kd, _, ref in seen]
    return dict(steps=len(seen), partner_dtype=seen[0][0] if seen else None,
                max_abs_err_vs_fp64=max(abs(kd - ref) for _, kd, _, ref in seen) if seen else None,
                tolerance="3e-5 + 1e-4 x |KD|", ok=bool(seen) and max(excess) <= 0)


def nccl_one_epoch(dry: bool, timeout: float) -> dict:
    "`torchrun --nproc_per_node 1 -m cskd_fastai train` on a tiny digits recipe: the process group and one epoch."
    with tempfile.TemporaryDirectory() as d:
        rec = Path(d) / "tiny.yaml"
        rec.write_text("name: nccl\ndataset: {name: digits, image_size: 16, valid_pct: 0.15}\nmodel: {arch: small_cnn}\n"
                       "train: {epochs: 1, bs: 32, lr: 0.05, schedule: one_cycle, augment: crop}\n"
                       "methods: [{name: cskd, lam: 1.0, temp: 4.0}]\n")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "cskd_fastai", "train", str(rec), "--out", str(Path(d) / "runs"), "--no-progress"]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.monotonic()
        try: r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired: return dict(ok=False, error=f"timed out after {timeout:.0f}s")
        done = list((Path(d) / "runs").rglob("DONE"))
        env_json = next((Path(d) / "runs").rglob("env.json"), None)
        world = json.loads(env_json.read_text()).get("world_size") if env_json else None
        return dict(ok=r.returncode == 0 and bool(done), returncode=r.returncode, seconds=round(time.monotonic() - t0, 1),
                    backend="nccl" if torch.cuda.is_available() else "gloo", world_size=world,
                    tail=(r.stdout + r.stderr)[-600:] if r.returncode else "")


# ---- 5. the paper's CUB schedule -------------------------------------------------------------------------------
def paper_cub(args, seconds: float) -> dict:
    "CE then CS-KD on the paper's CUB recipe for as many epochs as `seconds` allows (half each); epoch times."
    if not args.data: return dict(skipped="no --data (the carried cub100 copy)")
    if seconds < 30: return dict(skipped=f"budget spent ({seconds:.0f}s left)")
    out = {}
    for method in ("ce", "cskd-lam3-T4"):
        with tempfile.TemporaryDirectory() as d:
            sets = ["--set", "train.workers=" + ("0" if args.dry_run else str(min(8, os.cpu_count() or 1)))]
            if args.dry_run: sets += ["--set", "dataset.image_size=32", "--set", "train.bs=4", "--set", "train.epochs=1",
                                      "--set", "dataset.valid_pct=0.5"]   # the tiny replica has few images per class
            else: sets += ["--set", "train.mixed_precision=bf16", "--set", "train.channels_last=true",
                           "--set", "train.cache=memory"]
            cmd = [sys.executable, "-m", "cskd_fastai", "train", str(ROOT / "recipes" / "cub.yaml"), "--data-root",
                   str(args.data), "--out", d, "--only", method, "--seed", "0", "--no-progress", *sets]
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
            try: log, _ = p.communicate(timeout=seconds / 2)
            except subprocess.TimeoutExpired:
                p.kill(); log, _ = p.communicate()
            hist = next(Path(d).rglob("history.csv"), None)
            times, errs = [], []
            if hist:
                import csv
                for row in csv.DictReader(hist.open()):
                    m, s = row["time"].split(":")[-2:]
                    times.append(int(m) * 60 + int(s)); errs.append(float(row["top1_err"]))
            out[method] = dict(epochs_done=len(times), epoch_times_s=times, valid_top1_err=errs,
                               median_epoch_s=statistics.median(times) if times else None,
                               projected_200_epochs_h=round(200 * statistics.median(times) / 3600, 2) if times else None,
                               log_tail=log[-400:] if not times else "")
    return out


# ---- the table -------------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    e, h = res["env"], res["headline"]
    lines = [f"# GPU suite ({'dry run, CPU' if res['dry_run'] else e['device']})", "",
             f"device {e['device']}, driver {e.get('driver')}, torch {e['torch']} (CUDA {e['cuda']}, cuDNN {e['cudnn']}), "
             f"fastai {e['fastai']}, python {e['python']}; bf16 matmul {e['bf16_matmul_tflops']} TFLOP/s measured", "",
             "| config | data | variant | CE img/s | CS-KD img/s | ref img/s | CS-KD/CE time | stored/CE time | CS-KD/ref | "
             "peak GiB CE / CS-KD / stored / ref |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["throughput"]:
        if "ips" not in r:
            lines.append(f"| {r['config']} | {r['source']} | {r['variant']} | {r.get('skipped') or r.get('error')} | | | | | | |"); continue
        i, m = r["ips"], r["mem"]
        lines.append(f"| {r['config']} | {r['source']} | {r['variant']} | {i['ce']:.0f} | {i['cskd']:.0f} | {i['ref']:.0f} | "
                     f"{r['kd_over_ce']:.2f} | {r['stored_over_ce']:.2f} | {r['kd_vs_ref']:.2f} | "
                     f"{m['ce']:.2f} / {m['cskd']:.2f} / {m['stored']:.2f} / {m['ref']:.2f} |")
    lines += ["", f"**Headline**: CS-KD/CE time {h.get('cskd_over_ce')} (target <= 1.40); stored/CE time "
              f"{h.get('stored_over_ce')}; CS-KD/reference anchor "
              f"img/s {h.get('cskd_over_ref')} (target >= 3; {h.get('best_variant')}); {h.get('achieved_tflops')} TFLOP/s "
              f"= {h.get('bf16_peak_fraction')} of the measured bf16 matmul peak.", ""]
    s = res["smoke"]
    lines.append(f"**Smoke**: KD under bf16: {s['kd_bf16']}; one epoch through torchrun "
                 f"({s['nccl'].get('backend')}): ok={s['nccl'].get('ok')} in {s['nccl'].get('seconds')} s.")
    lines.append("")
    for m, p in (res["paper_cub"] or {}).items():
        if isinstance(p, dict):
            lines.append(f"**Paper CUB schedule, {m}**: {p.get('epochs_done')} epochs, median {p.get('median_epoch_s')} s/epoch, "
                         f"200 epochs ~ {p.get('projected_200_epochs_h')} h.")
        else: lines.append(f"**Paper CUB schedule**: {p}")
    lines.append(f"\nsections: {res['sections']}; {res['elapsed_s']} s of a {res['budget_s']} s budget.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="cub100 in the CUB layout (bench/gpu_prepare.py writes one)")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--dry-run", action="store_true", help="a couple of steps of every section on CPU")
    args = ap.parse_args(argv)
    if args.data is None and (ROOT / ".gpu_data" / "cub100").is_dir(): args.data = ROOT / ".gpu_data" / "cub100"
    if torch.cuda.is_available(): torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget_s)
    res = dict.fromkeys(KEYS)
    res.update(dry_run=args.dry_run, budget_s=args.budget_s, sections={})
    def section(name, fn):
        t0 = time.monotonic()
        try: res[name] = fn(); status = "ok"
        except Exception as e: res[name] = dict(error=f"{type(e).__name__}: {str(e)[:400]}"); status = "error"
        res["sections"][name] = f"{status} {time.monotonic() - t0:.0f}s"
        print(f"[{budget.elapsed():.0f}s] {name}: {status}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "suite.json").write_text(json.dumps(res, indent=2, default=str))   # partial results survive a kill
    section("env", lambda: env(args.dry_run))
    section("smoke", lambda: dict(kd_bf16=kd_under_bf16(args.dry_run), nccl=nccl_one_epoch(args.dry_run, min(180, budget.left))))
    section("throughput", lambda: throughput(args, budget, 0.6))
    section("headline", lambda: headline(res["throughput"] if isinstance(res["throughput"], list) else [],
                                          (res["env"] or {}).get("bf16_matmul_tflops") or float("nan")))
    section("paper_cub", lambda: paper_cub(args, budget.left - 20))
    res["elapsed_s"] = round(budget.elapsed(), 1)
    md = markdown(res)
    (args.out / "suite.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / "suite.md").write_text(md + "\n")
    print(md)
    return res


if __name__ == "__main__":
    main()

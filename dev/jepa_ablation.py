#!/usr/bin/env python3
"""The CPU qualitative checks of the JEPA reports (issue: "the synthetic default must show the reference's
qualitative results"), run with ./train_jepa_cpu on the synthetic data, and their table:

    python3 dev/jepa_ablation.py [--out dev/results/jepa_cpu_qualitative] [--jobs 2] [key=value ...]

Every run is a small model (D=32, 2 relational blocks, P=32) with the reference's K=768 codes, 30 epochs of batch
64 (810 steps, about 12 minutes a run here), plus its own keys (extra key=value arguments
go to every run). Writes <out>.md (the table: final diagnostics and validation loss of each run) and <out>.log (all
the output). Compared: VQ vs no VQ (effective rank), the fixed dead-code refresh vs the reference's fraction-of-mass
refresh, alone and with the rest of the reference's codebook (codebook usage: distinct codes and perplexity), and, with InfoNCE off (objective=sigreg), SIGReg as LeJEPA defines it vs no regulariser vs
the reference's deprecated variant (collapse).
"""
import argparse
import concurrent.futures
import datetime
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["data_path=data/synth/train.bin", "hidden_dim=32", "relational_layers=2", "relational_heads=4", "num_embeddings=768",
        "projection_dim=32", "batch_size=64", "grad_accum_steps=1", "epochs=30", "lr=1e-3", "warmup_steps=50",
        "queue_size=1024", "sigreg_slices=256", "diag_every=54", "diag_window=1024", "log_every=54", "val_fraction=0.1",
        "refresh_interval=100", "early_stop_patience=0"]
RUNS = [
    ("VQ, fixed refresh (default)", []),
    ("no VQ", ["vq_enabled=0"]),
    ("VQ, reference refresh (fraction 0.05)", ["refresh_mode=fraction", "refresh_threshold=0.05"]),
    ("VQ, the reference's codebook (fraction 0.05, padded slots counted, no commitment)",
     ["refresh_mode=fraction", "refresh_threshold=0.05", "vq_count_padded=1", "vq_loss_in_objective=0"]),
    ("L-JEPA: MSE + SIGReg (LeJEPA)", ["objective=sigreg"]),
    ("L-JEPA: MSE only", ["objective=sigreg", "sigreg_weight=0"]),
    ("L-JEPA: MSE + SIGReg (reference variant)", ["objective=sigreg", "sigreg_mode=reference"]),
]


def run(name, extra, common):
    args = [os.path.join(ROOT, "train_jepa_cpu")] + BASE + extra + common
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    return name, extra, p.returncode, p.stdout + p.stderr


def last(text, prefix):
    lines = [l for l in text.splitlines() if l.startswith(prefix)]
    return dict(re.findall(r"(\w+)=(\S+)", lines[-1])) if lines else {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="dev/results/jepa_cpu_qualitative")
    ap.add_argument("--jobs", type=int, default=2)
    a, common = ap.parse_known_args()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        results = list(ex.map(lambda r: run(r[0], r[1], common), RUNS))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    rows = ["| run | extra keys | val loss | ctx erank (RankMe / cov) | tgt erank (RankMe / cov) | ctx variance | "
            "VQ usage: distinct codes (share of K) | VQ usage: effective (perplexity / K) | codes re-seeded (last window) |",
            "|---|---|---|---|---|---|---|---|---|"]
    log = []
    for name, extra, rc, out in results:
        log.append(f"==== {name}: {' '.join(BASE + extra + common)} (exit {rc})\n{out}")
        d, v = last(out, "diag "), last(out, "val ")
        usage = f"{d['vq_active']} ({float(d['vq_usage']):.1%})" if "vq_usage" in d else "-"
        K = float(d["vq_active"]) / float(d["vq_usage"]) if float(d.get("vq_usage", 0)) > 0 else 0
        effective = f"{d['vq_perplexity']} ({float(d['vq_perplexity']) / K:.1%})" if K else "-"
        rows.append(f"| {name} | `{' '.join(extra) or '-'}` | {v.get('loss', 'n/a')} | {d.get('ctx_erank_rankme', '?')} / "
                    f"{d.get('ctx_erank_cov', '?')} | {d.get('tgt_erank_rankme', '?')} / {d.get('tgt_erank_cov', '?')} | "
                    f"{d.get('ctx_variance', '?')} | {usage} | {effective} | {d.get('vq_refreshed', '-')} |")
    header = (f"# JEPA qualitative checks on the CPU backend\n\n`python3 dev/jepa_ablation.py` on {datetime.date.today()}, "
              f"commit {commit}, this repository's CPU machine (2 cores). Base configuration (a small model with the "
              f"reference's K=768 codes, 810 steps): `{' '.join(BASE + common)}`. Diagnostics from the last `diag` line: "
              f"effective ranks and variance of the last 1024 context/target projections of rank 0; codebook usage "
              f"over the objects the online encoder quantised since the previous `diag` line (54 steps): the distinct "
              f"codes used (the reference's vq_usage_ratio) and the perplexity of their counts (the number of equally "
              f"used codes with the same entropy). Validation loss from the last `val` line (the objective; not "
              f"comparable across objectives). Raw output: `{os.path.basename(a.out)}.log`.\n\n")
    with open(os.path.join(ROOT, a.out + ".md"), "w") as f:
        f.write(header + "\n".join(rows) + "\n")
    with open(os.path.join(ROOT, a.out + ".log"), "w") as f:
        f.write("\n".join(log))
    print("\n".join(rows))
    return 1 if any(rc for _, _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Training curves from train_etrm and train_jepa run logs: a PNG (with matplotlib), a CSV and a text summary.

Usage:  python3 dev/plot.py LOG [LOG ...] [--out curves.png] [--keys loss,exact_acc,...]
                            [--csv out.csv] [--smooth N]

LOG is a log.txt or a checkpoint directory holding one.  Only lines of the form
  train step=12 loss=2.0155 lm_loss=2.0122 ... samples_per_s=13.8
  eval step=20 set=eval tasks=10 ... pass@1=0.0000 pass@2=0.0000 pass@5=0.0000 seconds=3.3
and train_jepa's
  diag step=200 rows=1024 ctx_erank_rankme=7.1 ... vq_usage=0.24 vq_perplexity=80.1 vq_refreshed=0
  val step=95 epoch=1 loss=8.66 infonce=8.51 ...
(diag fields join the train fields of their step; val lines are the eval set "val") are read; anything else
(headers, progress, checkpoint lines) is ignored.  A train/eval/diag/val line that does not have that form
(a token without "=", no whole-number step, an eval line without set=; e.g. a line cut short by a crash) is
skipped with one warning per log naming its line numbers.  A resumed run appends
to the same log, so a step may appear twice: the later line wins.

Keys are the train fields (loss, lm_loss, ..., samples_per_s) and the eval fields prefixed with
"eval/" (eval/pass@1, eval/exact_acc, ...; one curve per eval set).  The default keys are those
of DEFAULT_KEYS present in the logs; the grad_norm panel also shows grad_norm_enc/grad_norm_dec.
The PNG has one panel per key, several logs overlaid and labelled by their directory names;
--smooth N draws the train curves as a trailing N-step moving average.

The CSV (--csv, or --out with a .csv suffix when matplotlib is missing) has the columns
  log,kind,set,step,<every field in first-seen order>
with one row per train step and per eval (set, step), values copied from the log as written,
empty where a line lacks the field.  A summary (steps, last and best value of each key) is
always printed.  Bad input (a missing log, no usable train/eval lines, an unknown key) exits 1 with one
line "error: ..." naming the file.  The CSV and the PNG are written atomically (a temporary file, then
os.replace()), so a failure never leaves half a file.
"""
import argparse
import csv
import os
import sys

DEFAULT_KEYS = ("loss", "lm_loss", "q_halt_loss", "kl", "token_acc", "exact_acc", "q_halt_acc", "act_steps", "lr",
                "grad_norm", "encoder_cross_sample_var", "samples_per_s", "eval/pass@1", "eval/pass@2",
                "eval/exact_acc",
                # train_jepa
                "infonce", "mse", "sigreg", "commitment", "tau", "ctx_erank_rankme", "ctx_erank_cov", "tgt_erank_rankme",
                "tgt_erank_cov", "ctx_gaussian", "vq_usage", "vq_perplexity", "vq_refreshed", "eval/loss")
COMPANIONS = {"grad_norm": ("grad_norm_enc", "grad_norm_dec")}   # drawn in the same panel
HIGHER_BETTER = ("acc", "pass@", "samples_per_s")
LOWER_BETTER = ("loss", "kl", "ms", "seconds")
EVAL = "eval/"


class InputError(Exception):
    pass


def log_path(arg):
    path = os.path.join(arg, "log.txt") if os.path.isdir(arg) else arg
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such log file")
    return path


def parse_line(line):
    """('train' | 'eval' | 'diag', fields) for a train/eval/diag/val line, None for a line of another
    kind; raises ValueError (what is wrong) for a train/eval/diag/val line that is malformed."""
    tokens = line.split()
    if not tokens or tokens[0] not in ("train", "eval", "diag", "val"):
        return None
    bad = [t for t in tokens[1:] if t.startswith("=") or "=" not in t]
    if bad:
        raise ValueError(f"{bad[0]!r} is not key=value")
    fields = dict(t.split("=", 1) for t in tokens[1:])
    if tokens[0] == "val":
        tokens[0], fields["set"] = "eval", "val"
    step = fields.get("step", "")
    if not (step.isascii() and step.isdigit()):   # isdigit() alone also takes "²", which int() refuses
        raise ValueError(f"step {step!r} is not a whole number" if "step" in fields else "no step=")
    if tokens[0] == "eval" and not fields.get("set"):
        raise ValueError("eval line without set=")
    return tokens[0], fields


def parse_log(path):
    """{"path", "train": {step: fields}, "eval": {(set, step): fields}, "skipped": [(line number, why)]},
    later lines winning; "skipped" lists the malformed train/eval/diag/val lines."""
    run = {"path": path, "train": {}, "eval": {}, "skipped": []}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    parsed = parse_line(line)
                except ValueError as e:
                    run["skipped"].append((number, str(e)))
                    continue
                if parsed is None:
                    continue
                kind, fields = parsed
                step = int(fields["step"])
                if kind == "diag":
                    run["train"].setdefault(step, {"step": fields["step"]}).update(fields)
                elif kind == "train":
                    run["train"][step] = {**fields, **{k: v for k, v in run["train"].get(step, {}).items() if k not in fields}}
                else:
                    run["eval"][(fields["set"], step)] = fields
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}")
    if not run["train"] and not run["eval"]:
        skipped = f" ({len(run['skipped'])} malformed line(s) skipped)" if run["skipped"] else ""
        raise InputError(f"{path}: no train or eval lines{skipped}, expected lines like 'train step=N loss=X ...'")
    return run


def skipped_warning(run):
    """One line about the run's malformed lines, or None."""
    skipped = run["skipped"]
    if not skipped:
        return None
    numbers = ", ".join(str(n) for n, _ in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    return (f"{run['path']}: skipped {len(skipped)} malformed line(s) (line{'s' if len(skipped) > 1 else ''} "
            f"{numbers}); line {skipped[0][0]}: {skipped[0][1]}, expected 'kind step=N key=value ...'")


def write_atomic(path, mode, write):
    """Call write(f) on path + ".tmp" opened with `mode`, then os.replace() it over `path`: a failure
    (also in matplotlib, or an interrupt) never leaves half a file, nor the temporary one."""
    tmp = path + ".tmp"
    try:
        try:
            with open(tmp, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):   # only when something above failed
                os.remove(tmp)
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}")


def label_runs(runs, args):
    """Label each run by its directory's name, or by the path given where those names collide."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(r["path"]))) for r in runs]
    for run, name, arg in zip(runs, names, args):
        run["label"] = name if names.count(name) == 1 else arg


def rows(run):
    """The run's records in CSV order: (kind, set, step, fields)."""
    out = [("train", "", step, run["train"][step]) for step in sorted(run["train"])]
    out += [("eval", s, step, run["eval"][(s, step)]) for s, step in sorted(run["eval"], key=lambda k: (k[1], k[0]))]
    return out


def write_csv(path, runs):
    fields = []
    for run in runs:
        for _, _, _, rec in rows(run):
            fields += [k for k in rec if k not in ("step", "set") and k not in fields]

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["log", "kind", "set", "step"] + fields)
        for run in runs:
            for kind, s, step, rec in rows(run):
                w.writerow([run["label"], kind, s, step] + [rec.get(k, "") for k in fields])
    write_atomic(path, "w", write)


def number(text):
    try:
        return float(text)
    except ValueError:
        return None


def series(run, key):
    """{curve name: [(step, value, text)]}: one curve for a train key, one per eval set for an eval key."""
    curves = {}
    if key.startswith(EVAL):
        for (s, step), rec in sorted(run["eval"].items(), key=lambda kv: kv[0][1]):
            curves.setdefault(s, []).append((step, rec.get(key[len(EVAL):])))
    else:
        curves[""] = [(step, run["train"][step].get(key)) for step in sorted(run["train"])]
    out = {}
    for name, points in curves.items():
        kept = [(step, number(text), text) for step, text in points if text is not None]
        kept = [p for p in kept if p[1] is not None]
        if kept:
            out[name] = kept
    return out


def available_keys(runs):
    keys = []
    for run in runs:
        for kind, _, _, rec in rows(run):
            prefix = EVAL if kind == "eval" else ""
            keys += [prefix + k for k, v in rec.items()
                     if k not in ("step", "set") and number(v) is not None and prefix + k not in keys]
    return keys


def choose_keys(spec, runs):
    available = available_keys(runs)
    if spec is None:
        return [k for k in DEFAULT_KEYS if k in available]
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    for k in keys:
        if k not in available:
            raise InputError(f"unknown key '{k}'; available: {', '.join(available)}")
    return keys


def best(key, points):
    """'best=... (step N)' in the key's better direction, or the range when it has none."""
    name = key[len(EVAL):] if key.startswith(EVAL) else key
    if any(s in name for s in HIGHER_BETTER):
        step, _, text = max(points, key=lambda p: p[1])
    elif any(s in name for s in LOWER_BETTER):
        step, _, text = min(points, key=lambda p: p[1])
    else:
        return f"min={min(points, key=lambda p: p[1])[2]} max={max(points, key=lambda p: p[1])[2]}"
    return f"best={text} (step {step})"


def summary(runs, keys):
    lines = []
    for run in runs:
        steps = sorted(run["train"])
        sets = sorted({s for s, _ in run["eval"]})
        head = f"{run['label']} ({run['path']}): {len(steps)} train steps"
        head += f" ({steps[0]}..{steps[-1]})" if steps else ""
        lines.append(head + f", {len(run['eval'])} eval points" + (f" (sets {', '.join(sets)})" if sets else ""))
        for key in keys:
            for name, points in series(run, key).items():
                step, _, text = points[-1]
                tag = f"{key}[{name}]" if name else key
                lines.append(f"  {tag:28s} last={text} (step {step})  {best(key, points)}")
    return "\n".join(lines)


def moving_average(values, n):
    """Trailing n-point moving average (shorter windows at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - n] if i >= n else 0.0)
        out.append(total / min(i + 1, n))
    return out


def plot(path, runs, keys, smooth, plt):
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run in runs:
            prefix = run["label"] if len(runs) > 1 else ""
            for k in (key,) + COMPANIONS.get(key, ()):
                for name, points in series(run, k).items():
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    if k.startswith(EVAL):
                        label = " ".join(filter(None, (prefix, name)))
                        ax.plot(xs, ys, marker="o", label=label or None)
                    else:
                        ys = moving_average(ys, smooth) if smooth > 1 else ys
                        label = " ".join(filter(None, (prefix, k if key in COMPANIONS else "")))
                        ax.plot(xs, ys, label=label or None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    # savefig takes the format from the file name, which the temporary file does not have
    image_format = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        write_atomic(path, "wb", lambda f: fig.savefig(f, format=image_format, dpi=100))
    except ValueError as e:   # a format matplotlib does not know
        raise InputError(f"{path}: cannot write: {e}")
    finally:
        plt.close(fig)


def load_pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def main(argv):
    ap = argparse.ArgumentParser(description="Plot / tabulate train_etrm run logs.")
    ap.add_argument("logs", metavar="LOG", nargs="+", help="log.txt or checkpoint directory")
    ap.add_argument("--out", default="curves.png", help="PNG to write (default curves.png)")
    ap.add_argument("--keys", help="comma-separated keys (default: the usual ones present)")
    ap.add_argument("--csv", help="also write the train and eval series to this CSV")
    ap.add_argument("--smooth", type=int, default=1, metavar="N", help="moving average over N train steps")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        ap.error("--smooth must be at least 1")
    try:
        runs = [parse_log(log_path(arg)) for arg in args.logs]
        for warning in filter(None, map(skipped_warning, runs)):
            print(f"{ap.prog}: warning: {warning}", file=sys.stderr)
        label_runs(runs, args.logs)
        keys = choose_keys(args.keys, runs)
        plt = load_pyplot()
        csv_path = args.csv or (None if plt else os.path.splitext(args.out)[0] + ".csv")
        written = [csv_path] if csv_path else []
        if csv_path:
            write_csv(csv_path, runs)
        if plt and keys:
            plot(args.out, runs, keys, args.smooth, plt)
            written.append(args.out)
    except InputError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 1
    print(summary(runs, keys))
    print("wrote " + " and ".join(written) if written else "wrote nothing (no keys to plot)")
    if plt is None:
        print(f"{ap.prog}: matplotlib is not installed (pip install matplotlib): CSV only, no PNG", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

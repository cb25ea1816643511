#!/usr/bin/env python3
"""A stand-in for ./train_cvae used by test/test_cvae_sweep.py only: it takes the trainer's key=value flags and
writes, in a few milliseconds, the log lines of train_cvae's contract (to stdout and to <checkpoint_path>/log.txt,
appended, as common/logger.h does), checkpoints ckpt_<8-digit step>.bin at eval steps and the end (resume=1
continues from the newest), and with mode=lm the Hugging Face export hf_<step>/ (config.json, model.safetensors).
Numbers are made-up functions of the step and of posterior_variance_weight / router_marginal_kl_to_prior_weight
(with rmkl weight 0 the rmkl term grows to about 3800, as in the seed report). Every invocation appends its argv
(JSON) to <checkpoint_path>/argv.txt for the test to read. Under mpirun only rank 0 writes.

Flags it reads: mode (lm), checkpoint_path (required), resume, max_steps (20), eval_every (0: the end only),
log_every (10), tasks (all: two made-up tasks), init_from (when given: a folder holding config.json, else exit 1
with an error line), posterior_variance_weight, router_marginal_kl_to_prior_weight; others are accepted and
ignored; a key given twice is an error, as the real trainer's.
Environment (set by the test, so that a rerun of the sweep has the same flags):
  FAKE_FAIL=SUBSTR         a run whose checkpoint_path contains SUBSTR prints "error: step 3: ..." to stderr and
                           exits 1 at step 3
  FAKE_KILL=SUBSTR:STEP    ... kills itself with SIGKILL at STEP (after the checkpoints of the steps before it)
  FAKE_NO_FINAL=SUBSTR     ... writes no final lines (and exits 0)
  FAKE_MEM_MIB=N           holds N MiB (touched) while it runs
  FAKE_STEP_SECONDS=S      sleeps S seconds per step
"""
import json
import os
import signal
import sys
import time


def fail(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv):
    """{key: value} of key=value arguments, as the trainers read them (test/fake_train_etrm.py uses it too)."""
    flags = {}
    for a in argv:
        if "=" not in a:
            fail(f"{a!r}: expected key=value")
        k, v = a.split("=", 1)
        if k in flags:
            fail(f"{k} is given twice")
        flags[k] = v
    return flags


def main(argv):
    flags = parse_flags(argv)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    cp = flags.get("checkpoint_path") or fail("checkpoint_path is required")
    mode = flags.get("mode", "lm")
    init_from = flags.get("init_from")
    if init_from and not os.path.isfile(os.path.join(init_from, "config.json")):
        fail(f"cannot open {init_from}/config.json: No such file or directory")
    model = flags.get("model", "small")
    if model.endswith(".json") and not os.path.isfile(model):
        fail(f"model={model}: not a preset and {model} does not exist")
    max_steps, eval_every = int(flags.get("max_steps", 20)), int(flags.get("eval_every", 0))
    log_every = int(flags.get("log_every", 10))
    tasks = ["task_a", "task_b"] if flags.get("tasks", "all") == "all" else flags["tasks"].split(",")
    pv_w = float(flags.get("posterior_variance_weight", 0))
    rmkl_w = float(flags.get("router_marginal_kl_to_prior_weight", 0))
    fail_on = os.environ.get("FAKE_FAIL", "")
    kill = os.environ.get("FAKE_KILL", "")
    kill_on, kill_step = (kill.rsplit(":", 1)[0], int(kill.rsplit(":", 1)[1])) if kill else ("", 0)
    memory = b"\x01" * (int(os.environ.get("FAKE_MEM_MIB", "0")) << 20)   # written, so resident
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0"))

    log = None
    if rank == 0:
        os.makedirs(cp, exist_ok=True)
        with open(os.path.join(cp, "argv.txt"), "a") as f:
            f.write(json.dumps(argv) + "\n")
        log = open(os.path.join(cp, "log.txt"), "a")

    def out(line):
        if rank == 0:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

    step = 0
    if flags.get("resume") == "1":
        ckpts = sorted(n for n in os.listdir(cp) if n.startswith("ckpt_")) if os.path.isdir(cp) else []
        if ckpts:
            step = int(ckpts[-1][5:13])
            out(f"resumed from {cp}/{ckpts[-1]} at step {step}")
        else:
            out(f"resume=1: no checkpoint in {cp} yet, starting from step 0")
    out(f"arc.cu train_cvae mode={mode} (fake trainer)  model={model}")
    out("memory: 0.12 GiB allocated (activations 0.10 GiB for micro-batch 8 of 8 x 64 tokens)")

    def metrics(s):
        t = s / max_steps
        rmkl = 1.0 + 3800 * t if rmkl_w == 0 else 1.0 + 0.5 / s
        pv = 0.5 / (1 + 10 * pv_w * s)
        probe = 0.34 + (0.5 if rmkl_w > 0 else 0.1) * t
        return dict(recon_ratio=1 - 0.5 * t, kl=2 + t, pv=pv, rmkl=rmkl, w_pv=pv_w * pv, w_rmkl=rmkl_w * rmkl,
                    answer_acc=0.8 * t, router_probe=probe, posterior_mu_probe=probe - 0.05 + 0.2 * pv_w,
                    chance=1 / 3, alignment_one_to_one=probe + 0.1)

    for step in range(step + 1, max_steps + 1):
        time.sleep(step_seconds)
        if fail_on and fail_on in cp and step == 3:
            fail("step 3: the loss is nan: the run diverged (try a lower lr); the checkpoints written so far are kept")
        if kill_on and kill_on in cp and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        m = metrics(step)
        if step == 1 or step == max_steps or step % log_every == 0:
            if mode == "cvae":
                out(f"train step={step} loss={m['recon_ratio'] + 0.1 * m['kl']:.5f} recon={m['recon_ratio'] * 2:.5f} "
                    f"recon_ratio={m['recon_ratio']:.5f} kl={m['kl']:.5f} pv={m['pv']:.5f} rmkl={m['rmkl']:.4f} "
                    f"w_recon=1 w_kl=0.1 w_pv={m['w_pv']:.6f} w_rmkl={m['w_rmkl']:.5f} gn_recon=1 gn_kl=0.1 gn_pv=0 "
                    f"gn_rmkl=0 token_acc=0.5 lr=1e-3 grad_norm=1.0 ms=1.0 tokens_per_s=1000")
            else:
                out(f"train step={step} loss={2 - step / max_steps:.5f} token_acc=0.5 lr=1e-3 grad_norm=1.0 ms=1.0 "
                    f"tokens_per_s=1000")
        if step == 1:
            out("memory: 0.20 GiB in use on the device after the first step")
        if (eval_every and step % eval_every == 0) or step == max_steps:
            for t in tasks + ["all"]:
                out(f"val step={step} task={t} recon_ratio={m['recon_ratio']:.4f} nll={m['recon_ratio']:.4f} "
                    f"kl={m['kl']:.4f} pv={m['pv']:.4f} rmkl={m['rmkl']:.4f} token_acc=0.5 tokens=100")
            out(f"gen step={step} traces={4 * len(tasks)} tokens=100 seconds=0.1 tokens_per_s=1000 file=x.jsonl")
            for t in tasks + ["all"]:
                out(f"gen step={step} task={t} n=4 answer_acc={m['answer_acc']:.3f} detected=1.000 "
                    f"mix=a:0.500,b:0.500 undetected=0.000 match=0.500")
            if mode == "cvae":
                for t in tasks:
                    out(f"probe step={step} task={t} router_probe={m['router_probe']:.4f} "
                        f"posterior_mu_probe={m['posterior_mu_probe']:.4f} chance={m['chance']:.4f} "
                        f"alignment_one_to_one={m['alignment_one_to_one']:.4f} router_majority=0.3750 "
                        f"posterior_majority=0.4375 n_router=16 n_posterior=16")
            if rank == 0:
                name = f"{step:08d}"
                with open(os.path.join(cp, f"ckpt_{name}.bin"), "w") as f:
                    f.write(f"{step}\n")
                export = ""
                if mode == "lm":
                    hf = os.path.join(cp, f"hf_{name}")
                    os.makedirs(hf, exist_ok=True)
                    with open(os.path.join(hf, "config.json"), "w") as f:
                        json.dump({"model_type": "qwen2", "step": step}, f)
                    with open(os.path.join(hf, "model.safetensors"), "wb") as f:
                        f.write(b"\0" * 16)
                    export = f" export={hf}"
                out(f"checkpoint step={step} path={cp}/ckpt_{name}.bin{export}")
    no_final = os.environ.get("FAKE_NO_FINAL", "")
    if mode == "cvae" and not (no_final and no_final in cp):
        m = metrics(max_steps)
        for t in tasks + (["all"] if len(tasks) > 1 else []):
            out(f"final task={t} answer_acc={m['answer_acc']:.3f} recon_ratio={m['recon_ratio']:.4f} kl={m['kl']:.4f} "
                f"pv={m['pv']:.4f} rmkl={m['rmkl']:.4f} router_probe={m['router_probe']:.4f} "
                f"posterior_mu_probe={m['posterior_mu_probe']:.4f} chance={m['chance']:.4f} "
                f"alignment_one_to_one={m['alignment_one_to_one']:.4f} router_majority=0.3750 posterior_majority=0.4375")
    del memory
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Checks an arc.cu debug state against an independent PyTorch implementation of TRM / ETRM.

    ./train_etrm_cpu ... debug_state=state.safetensors max_steps=1
    python3 dev/check_debug_state.py state.safetensors [--oracle ../shared/bench] [--dtype float64]

The debug state holds the initial weights (upstream state_dict names), the first batch, the first ACT step's
outputs and every gradient (see train_etrm.cu, debug_state_write). This script builds the PyTorch model of
the oracle module `torch_trm.py` (found in --oracle; it is not part of arc.cu) from the configuration stored
in the file, loads the same weights, runs the same step on the same batch (the variational latents use the
stored noise batch.eps), backpropagates loss / batch size, and compares logits, q values, losses and every
gradient. Prints one line per tensor and exits 1 if any differs beyond the tolerance.

Needs torch (and numpy) — the only place in arc.cu besides dev/convert_trm_checkpoint.py that does.
"""
import argparse
import math
import os
import sys


def parse_config(text):
    cfg = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            cfg[k] = v
    return cfg


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state", help="safetensors file written with debug_state=PATH")
    ap.add_argument("--oracle", default=os.path.join(here, "..", "..", "shared", "bench"),
                    help="directory holding torch_trm.py (default: ../shared/bench next to the repository)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                    help="oracle precision (float64: the exact reference for an FP32 arc.cu run)")
    ap.add_argument("--rtol", type=float, default=2e-4, help="tolerance relative to each tensor's largest value")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("dev/check_debug_state.py: needs torch (e.g. Debian's python3-torch, or pip install torch)")
    sys.path.insert(0, os.path.abspath(a.oracle))
    try:
        import torch_trm as T
    except ImportError:
        sys.exit(f"dev/check_debug_state.py: no torch_trm.py in {a.oracle} (pass --oracle DIR)")

    st = T.load_safetensors(a.state)
    with open(a.state, "rb") as f:                        # the metadata (load_safetensors returns tensors only)
        import json, struct
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n)).get("__metadata__", {})
    cfg = parse_config(meta.get("config", ""))
    if not cfg:
        sys.exit(f"dev/check_debug_state.py: {a.state} has no config metadata (not an arc.cu debug state?)")
    if cfg.get("set_encoder_final_norm", "1") != "1" or float(cfg.get("encoder_prefix_scale", "0")) != 0:
        sys.exit("dev/check_debug_state.py: set_encoder_final_norm=0 / encoder_prefix_scale are arc.cu options the oracle lacks")
    if cfg.get("latent_mode", "sample") == "mean":
        sys.exit("dev/check_debug_state.py: latent_mode=mean: store the state with latent_mode=sample (the oracle samples)")

    B, S = st["batch.inputs"].shape
    enc = cfg["encoder_type"]
    dt = getattr(torch, a.dtype)
    tc = T.TRMConfig(seq_len=S, hidden_size=int(cfg["hidden_size"]), num_heads=int(cfg["num_heads"]),
                     expansion=float(cfg["expansion"]), L_layers=int(cfg["L_layers"]), H_cycles=int(cfg["H_cycles"]),
                     L_cycles=int(cfg["L_cycles"]), rope_theta=float(cfg["rope_theta"]),
                     rms_norm_eps=float(cfg["rms_norm_eps"]), halt_max_steps=int(cfg["halt_max_steps"]),
                     halt_exploration_prob=float(cfg["halt_exploration_prob"]), forward_dtype=a.dtype,
                     puzzle_emb_len=int(cfg["puzzle_emb_len"]), batch_size=B,
                     encoder_type=None if enc == "none" else enc, encoder_num_layers=int(cfg["encoder_num_layers"]),
                     encoder_set_layers=int(cfg["encoder_set_layers"]), encoder_norm_style=cfg["encoder_norm_style"])
    if enc == "none":
        table = st["inner.puzzle_emb.weights"]
        tc.num_puzzle_identifiers, tc.puzzle_emb_ndim = table.shape
    else:
        tc.puzzle_emb_ndim = 0
    model = T.TRM(tc)
    state = {k: v for k, v in st.items() if not k.startswith(("grad.", "batch.", "out."))}
    missing, unexpected = model.load_state_dict({k: v.to(dt) for k, v in state.items()}, strict=False)
    if unexpected or [k for k in missing if "rope" not in k]:
        sys.exit(f"dev/check_debug_state.py: state_dict mismatch: missing {missing}, unexpected {unexpected}")

    if "batch.eps" in st:                                  # the stored noise replaces torch.randn_like
        eps = st["batch.eps"].to(dt)

        def sample(self, mu, logvar):
            e = eps if eps.shape == mu.shape else eps.view(mu.shape)
            return mu + e * torch.exp(0.5 * logvar)
        T.DemoEncoder.sample = sample

    batch = {"inputs": st["batch.inputs"].long(), "labels": st["batch.labels"].long(),
             "puzzle_identifiers": st["batch.puzzle_identifiers"].long()}
    if enc != "none":
        batch.update(demo_inputs=st["batch.demo_inputs"].long(), demo_labels=st["batch.demo_labels"].long(),
                     demo_mask=st["batch.demo_mask"].bool())
    kl_weight = float(cfg["kl_weight"])
    anneal = int(cfg.get("kl_anneal_steps", "0"))
    if anneal > 0:
        kl_weight *= min(1.0, 1.0 / anneal)
    head = T.ACTLossHead(model, kl_weight=kl_weight).train()
    carry = head.initial_carry(batch)
    torch.manual_seed(0)
    _, loss, metrics, out, _ = head(carry, batch, return_keys=("logits", "q_halt_logits", "q_continue_logits"))
    (loss / B).backward()

    rows, failed = [], 0

    def compare(name, ours, ref):
        nonlocal failed
        ours, ref = ours.double().reshape(-1), ref.detach().double().reshape(-1)
        if ours.shape != ref.shape:
            rows.append((name, "shape", f"{tuple(ours.shape)} vs {tuple(ref.shape)}", "FAIL"))
            failed += 1
            return
        diff = (ours - ref).abs().max().item() if ours.numel() else 0.0
        scale = ref.abs().max().item() if ref.numel() else 0.0
        ok = diff <= a.rtol * scale + 1e-7 and math.isfinite(diff)
        failed += not ok
        rows.append((name, f"{diff:.3e}", f"{scale:.3e}", "ok" if ok else "FAIL"))

    compare("out.logits", st["out.logits"], out["logits"])
    compare("out.q_halt_logits", st["out.q_halt_logits"], out["q_halt_logits"])
    compare("out.q_continue_logits", st["out.q_continue_logits"], out["q_continue_logits"])
    compare("out.loss", st["out.loss"], loss)
    compare("out.lm_loss", st["out.lm_loss"], metrics["lm_loss"])
    compare("out.q_halt_loss", st["out.q_halt_loss"], metrics["q_halt_loss"])
    if "kl_loss" in metrics:
        compare("out.kl", st["out.kl"], metrics["kl_loss"])
    params = dict(model.named_parameters())
    for name in sorted(k for k in st if k.startswith("grad.")):
        pname = name[len("grad."):]
        if pname == "inner.puzzle_emb.local_weights":
            ref = model.inner.puzzle_emb.local_weights.grad
        elif pname in params:
            ref = params[pname].grad
            ref = torch.zeros_like(params[pname]) if ref is None else ref
        else:
            rows.append((name, "-", "-", "FAIL (no such parameter in the oracle)"))
            failed += 1
            continue
        compare(name, st[name], ref)
    ours_grads = {k[len("grad."):] for k in st if k.startswith("grad.")}
    for pname in params:
        if pname not in ours_grads:
            rows.append(("grad." + pname, "-", "-", "FAIL (missing from the debug state)"))
            failed += 1

    width = max(len(r[0]) for r in rows)
    print(f"{'tensor':<{width}}  {'max |diff|':>10}  {'max |ref|':>10}  result   (oracle {a.dtype}, rtol {a.rtol:g})")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>10}  {r[3]}")
    print(f"{len(rows) - failed} ok, {failed} differ")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

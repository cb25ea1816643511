#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of the attention labs (dev/cuda/attention_forward.cu and
attention_backward.cu), bf16, printing RESULT lines in the labs' format (version=torch_sdpa) to set beside them.

    python3 dev/cuda/attention_sdpa.py [--repeats 20]

Timed with CUDA events, the L2 cache flushed (a write of twice its size) before each run, median of the repeats:
  attention_forward*            the forward (inputs requiring grad, as in training)
  attention_backward*           the backward alone: torch.autograd.grad over the graph of one forward (retained)
  attention_forward_backward*   forward and backward together
FLOPs as the labs count them: forward 4 B NH pairs HD (pairs = Tq Tk, or the (query, key) pairs the causal mask
leaves, about half), backward 2.5x that (FlashAttention-2's count), forward+backward 3.5x. The unmasked
self-attention asks for the flash backend; the masked cross-attention takes what SDPA picks (flash takes no mask).
GQA (NKV < NH) passes enable_gqa=True where this torch has it, else repeats the kv heads inside the timed forward
(Hugging Face's repeat_kv). Without torch or a CUDA device it prints a SKIP line and exits 0.
"""
import argparse
import statistics
import sys

# (op suffix, B, Tq, Tk, NH, NKV, HD, self-attention from fused qkv rows, key mask, causal), as in the labs
SHAPES = [
    ("", 64, 916, 916, 8, 8, 64, True, False, False),               # ARC default: 30x30 canvas + 16 puzzle tokens
    ("_cross", 768, 16, 10, 8, 8, 64, False, True, False),          # ETRM: 16 learned queries over <= 10 demo encodings
    ("_causal_gqa", 8, 1024, 1024, 14, 2, 64, True, False, True),   # Qwen2.5-0.5B: 14 query heads on 2 kv heads
]


def attention_pairs(Tq, Tk, causal):
    """The (query, key) pairs computed per (batch, head), as the labs' attention_pairs."""
    return sum(max(0, min(Tk, i + Tk - Tq + 1)) for i in range(Tq)) if causal else Tq * Tk


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("SKIP attention_sdpa: torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("SKIP attention_sdpa: torch sees no CUDA device")
        return 0
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    flush = torch.empty(2 * getattr(props, "L2_cache_size", 64 << 20), dtype=torch.uint8, device=dev)

    def time_ms(fn):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()                                              # warm-up
        torch.cuda.synchronize()
        times = []
        for r in range(args.repeats):
            flush.fill_(r & 0xFF)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    def report(op, ms, flops):
        print(f"RESULT op={op} version=torch_sdpa block=0 ms={ms:.4f} gbps=0.0 tflops={flops / (ms * 1e-3) / 1e12:.2f} "
              f"pct=0 of=matmul", flush=True)

    print(f"torch {torch.__version__} on {props.name}")
    gen = torch.Generator(device=dev).manual_seed(0)
    for suffix, B, Tq, Tk, NH, NKV, HD, self_attn, masked, causal in SHAPES:
        bf16 = dict(device=dev, dtype=torch.bfloat16)
        if self_attn:        # q (B, NH, T, HD), k, v (B, NKV, T, HD): views of fused (B, T, NH + 2 NKV, HD) rows
            qkv = torch.empty(B, Tq, NH + 2 * NKV, HD, **bf16).uniform_(-2, 2, generator=gen).requires_grad_()
            q, k, v = (qkv[:, :, a:b].transpose(1, 2) for a, b in ((0, NH), (NH, NH + NKV), (NH + NKV, NH + 2 * NKV)))
        else:
            qkv = None
            q = torch.empty(B, NH, Tq, HD, **bf16).uniform_(-2, 2, generator=gen).requires_grad_()
            k = torch.empty(B, NKV, Tk, HD, **bf16).uniform_(-2, 2, generator=gen).requires_grad_()
            v = torch.empty(B, NKV, Tk, HD, **bf16).uniform_(-1, 1, generator=gen).requires_grad_()
        mask = None
        if masked:           # (B, 1, 1, Tk), True = the key takes part; key 0 always does (no all-masked row: NaN)
            mask = torch.rand(B, 1, 1, Tk, device=dev, generator=gen) < 0.7
            mask[..., 0] = True
        dout = torch.empty(B, NH, Tq, HD, **bf16).uniform_(-1, 1, generator=gen)
        backends = [SDPBackend.FLASH_ATTENTION] if mask is None else [SDPBackend.FLASH_ATTENTION,
                                                                       SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        inputs = (q, k, v)
        with sdpa_kernel(backends):
            def sdpa(gqa_arg):
                if NKV == NH:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
                if gqa_arg:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
                group = NH // NKV
                return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                      attn_mask=mask, is_causal=causal)

            try:                 # enable_gqa: torch >= 2.5, and a backend among `backends` that takes it
                out, gqa_arg = sdpa(True), True
            except (TypeError, RuntimeError):
                out, gqa_arg = sdpa(False), False

            def forward():
                return sdpa(gqa_arg)

            fwd_ms = time_ms(forward)
            bwd_ms = time_ms(lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True))
            fwd_bwd_ms = time_ms(lambda: torch.autograd.grad(forward(), inputs, dout))
        flops = 4.0 * B * NH * attention_pairs(Tq, Tk, causal) * HD
        print(f"shape B={B} Tq={Tq} Tk={Tk} NH={NH} NKV={NKV} HD={HD} "
              f"{'self-attention (fused qkv)' if self_attn else 'cross-attention'}{', key mask' if masked else ''}"
              f"{', causal' if causal else ''}{', GQA: enable_gqa' if NKV < NH and gqa_arg else ''}"
              f"{', GQA: repeated kv heads' if NKV < NH and not gqa_arg else ''}")
        report("attention_forward" + suffix, fwd_ms, flops)
        report("attention_backward" + suffix, bwd_ms, 2.5 * flops)
        report("attention_forward_backward" + suffix, fwd_bwd_ms, 3.5 * flops)
        del out, q, k, v, qkv, dout, mask
    return 0


if __name__ == "__main__":
    sys.exit(main())

// GPU-vs-CPU checks of the JEPA relational ops (included by test_kernels.cu after its helpers):
//   object_attention_forward / _backward     kernels/object_attention.cuh
//   relational_loss_forward / _backward      kernels/relational_loss.cuh
//   context_attention_forward / _backward    kernels/context_attention.cuh
//   gru_cell_forward / _backward             kernels/gru.cuh
// Each launcher against its double reference on random inputs (rounded through floatX / floatS first), at the
// trainer's shapes and at odd ones; outputs poisoned before the launch; += outputs start from known values of
// the size of the increment (so that a missing increment cannot pass); the backward passes get the reference's
// saved tensors (att, gates) rounded as the device stores them; every launcher run twice on the same inputs
// must give the same bits.
#include "../kernels/context_attention.cuh"
#include "../kernels/gru.cuh"
#include "../kernels/object_attention.cuh"
#include "../kernels/relational_loss.cuh"

static double rms_of(const vecd& v) {
    double ss = 0;
    for (double x : v) ss += x * x;
    return v.empty() ? 0.0 : sqrt(ss / v.size());
}
// n graphs of N objects: mask with probability p_valid (slot 0 always valid), adjacency symmetric with density
// p_edge and a zero diagonal; graph 1 (if any) has no edges, graph 2 (if any) is all padding but slot 0.
static void rnd_graphs(vecu8& adj, vecu8& mask, size_t n, int N, double p_valid, double p_edge) {
    adj.assign(n * N * N, 0);
    mask.assign(n * N, 0);
    const vecd u = rnd(n * N * N + n * N, 0, 1);
    for (size_t g = 0; g < n; g++) {
        for (int i = 0; i < N; i++) mask[g * N + i] = i == 0 || u[n * N * N + g * N + i] < p_valid;
        if (g == 2) std::fill(mask.begin() + g * N + 1, mask.begin() + (g + 1) * N, 0);
        if (g == 1) continue;
        for (int i = 0; i < N; i++)
            for (int j = i + 1; j < N; j++)
                adj[(g * N + i) * N + j] = adj[(g * N + j) * N + i] = u[(g * N + i) * N + j] < p_edge;
    }
}

// =========================================================================================================
// object attention

static void test_object_attention(int G, int N, int H, int HD, float p) {
    const std::string tag = fmt("G=%d N=%d H=%d HD=%d dropout=%g", G, N, H, HD, p);
    const int D = H * HD;
    const uint64_t seed = fresh_seed();
    const vecd qkv = rx(rnd((size_t)G * N * 3 * D, -2, 2)), dout = rx(rnd((size_t)G * N * D, -1, 1));
    vecu8 adj, mask;
    rnd_graphs(adj, mask, G, N, 0.75, 0.4);
    vecd out((size_t)G * N * D), att((size_t)G * H * N * N);
    object_attention_forward_ref<double>(out.data(), att.data(), qkv.data(), adj.data(), mask.data(), G, N, H, HD, p, seed);
    Dev<floatX> d_qkv(qkv), d_out(out.size()), d_dout(dout), d_dqkv(qkv.size());
    Dev<floatS> d_att(att.size());
    Dev<uint8_t> d_adj(adj), d_mask(mask);
    d_out.poison();
    d_att.poison();
    const std::string fname = BK " object_attention_forward " + tag;
    object_attention_forward(d_out.p, d_att.p, d_qkv.p, d_adj.p, d_mask.p, G, N, H, HD, p, seed, st);
    launched(fname);
    expect_close(fname + " out", d_out.get(), out, TOL_RED);
    expect_close(fname + " att", d_att.get(), att, TOL_S);
    const std::vector<floatX> out1 = d_out.raw();
    const std::vector<floatS> att1 = d_att.raw();
    d_out.poison();
    d_att.poison();
    object_attention_forward(d_out.p, d_att.p, d_qkv.p, d_adj.p, d_mask.p, G, N, H, HD, p, seed, st);
    launched(fname + " (again)");
    expect_bitwise(fname + " out bitwise repeatable", d_out.raw(), out1);
    expect_bitwise(fname + " att bitwise repeatable", d_att.raw(), att1);

    // backward from the reference's att as floatS holds it
    const vecd att_in = rs(att);
    vecd dqkv(qkv.size());
    object_attention_backward_ref<double>(dqkv.data(), dout.data(), att_in.data(), qkv.data(), adj.data(), mask.data(), G, N, H,
                                          HD, p, seed);
    Dev<floatS> d_att_in(att_in);
    const std::string bname = BK " object_attention_backward " + tag;
    d_dqkv.poison();
    object_attention_backward(d_dqkv.p, d_dout.p, d_att_in.p, d_qkv.p, d_adj.p, d_mask.p, G, N, H, HD, p, seed, st);
    launched(bname);
    expect_close(bname + " dqkv (=)", d_dqkv.get(), dqkv, TOL_RED);
    const std::vector<floatX> dqkv1 = d_dqkv.raw();
    d_dqkv.poison();
    object_attention_backward(d_dqkv.p, d_dout.p, d_att_in.p, d_qkv.p, d_adj.p, d_mask.p, G, N, H, HD, p, seed, st);
    launched(bname + " (again)");
    expect_bitwise(bname + " dqkv bitwise repeatable", d_dqkv.raw(), dqkv1);
}

// =========================================================================================================
// relational loss

static void test_relational_loss(int B, int L, int N, int D, bool with_tgt, bool identical_ctx) {
    const std::string tag = fmt("B=%d L=%d N=%d D=%d%s%s", B, L, N, D, with_tgt ? "" : " de_tgt=null",
                                identical_ctx ? " identical context grids" : "");
    vecd e_ctx = rx(rnd((size_t)B * L * N * D, -1, 1));
    const vecd e_tgt = rx(rnd((size_t)B * N * D, -1, 1));
    vecu8 adj_ctx, mask_ctx, adj_tgt, mask_tgt;
    rnd_graphs(adj_ctx, mask_ctx, (size_t)B * L, N, 0.8, 0.5);
    rnd_graphs(adj_tgt, mask_tgt, (size_t)B, N, 0.8, 0.5);
    if (identical_ctx)        // the trainer's data: the input grid three times
        for (size_t b = 0; b < (size_t)B; b++)
            for (int l = 1; l < L; l++) {
                const size_t g0 = b * L, g = g0 + l;
                std::copy(e_ctx.begin() + g0 * N * D, e_ctx.begin() + (g0 + 1) * N * D, e_ctx.begin() + g * N * D);
                std::copy(adj_ctx.begin() + g0 * N * N, adj_ctx.begin() + (g0 + 1) * N * N, adj_ctx.begin() + g * N * N);
                std::copy(mask_ctx.begin() + g0 * N, mask_ctx.begin() + (g0 + 1) * N, mask_ctx.begin() + g * N);
            }
    const float w_rel = 0.05f, w_self = 0.025f;
    const float scale_t = 1.0f / std::max(1.0f, (float)B * N * N), scale_s = 1.0f / std::max(1.0f, (float)B * L * N * N);
    const float dloss = (float)rs1(rnd(1, 0.3, 1.5)[0]);
    vecd loss(2);
    relational_loss_forward_ref<double>(loss.data(), e_ctx.data(), adj_ctx.data(), mask_ctx.data(), e_tgt.data(), adj_tgt.data(),
                                        mask_tgt.data(), B, L, N, D, w_rel, w_self, scale_t, scale_s);
    Dev<floatX> d_ectx(e_ctx), d_etgt(e_tgt);
    Dev<uint8_t> d_actx(adj_ctx), d_mctx(mask_ctx), d_atgt(adj_tgt), d_mtgt(mask_tgt);
    Dev<floatS> d_loss(2);
    d_loss.poison();
    const std::string fname = BK " relational_loss_forward " + tag;
    relational_loss_forward(d_loss.p, d_ectx.p, d_actx.p, d_mctx.p, d_etgt.p, d_atgt.p, d_mtgt.p, B, L, N, D, w_rel, w_self,
                            scale_t, scale_s, st);
    launched(fname);
    const vecd got = d_loss.get();
    expect_close(fname + " loss[0] (target term)", vecd{got[0]}, vecd{loss[0]}, TOL_S);
    if (identical_ctx || L <= 1) expect_exact(fname + " loss[1] (self term) exactly 0", vecd{got[1]}, vecd{0.0});
    else expect_close(fname + " loss[1] (self term)", vecd{got[1]}, vecd{loss[1]}, TOL_S);
    const std::vector<floatS> loss1 = d_loss.raw();
    d_loss.poison();
    relational_loss_forward(d_loss.p, d_ectx.p, d_actx.p, d_mctx.p, d_etgt.p, d_atgt.p, d_mtgt.p, B, L, N, D, w_rel, w_self,
                            scale_t, scale_s, st);
    launched(fname + " (again)");
    expect_bitwise(fname + " bitwise repeatable", d_loss.raw(), loss1);

    // backward (+=): the increments from zero first, to start both sides from values of their size
    vecd g_ctx(e_ctx.size(), 0.0), g_tgt(e_tgt.size(), 0.0);
    relational_loss_backward_ref<double>(g_ctx.data(), g_tgt.data(), e_ctx.data(), adj_ctx.data(), mask_ctx.data(), e_tgt.data(),
                                         adj_tgt.data(), mask_tgt.data(), B, L, N, D, w_rel, w_self, scale_t, scale_s, dloss);
    const double s_ctx = std::max(rms_of(g_ctx), 1e-30), s_tgt = std::max(rms_of(g_tgt), 1e-30);
    vecd init_ctx = rnd(e_ctx.size(), -1, 1), init_tgt = rnd(e_tgt.size(), -1, 1);
    for (double& v : init_ctx) v *= s_ctx;
    for (double& v : init_tgt) v *= s_tgt;
    init_ctx = rx(init_ctx);
    init_tgt = rx(init_tgt);
    vecd de_ctx = init_ctx, de_tgt = init_tgt;
    relational_loss_backward_ref<double>(de_ctx.data(), with_tgt ? de_tgt.data() : nullptr, e_ctx.data(), adj_ctx.data(),
                                         mask_ctx.data(), e_tgt.data(), adj_tgt.data(), mask_tgt.data(), B, L, N, D, w_rel, w_self,
                                         scale_t, scale_s, dloss);
    Dev<floatX> d_dectx(init_ctx), d_detgt(init_tgt);
    const std::string bname = BK " relational_loss_backward " + tag;
    relational_loss_backward(d_dectx.p, with_tgt ? d_detgt.p : nullptr, d_ectx.p, d_actx.p, d_mctx.p, d_etgt.p, d_atgt.p,
                             d_mtgt.p, B, L, N, D, w_rel, w_self, scale_t, scale_s, dloss, st);
    launched(bname);
    expect_close(bname + " de_ctx (+=)", d_dectx.get(), de_ctx, TOL_RED);
    if (with_tgt) expect_close(bname + " de_tgt (+=)", d_detgt.get(), de_tgt, TOL_RED);
    else expect_exact(bname + " de_tgt buffer untouched", d_detgt.get(), rx(init_tgt));
    const std::vector<floatX> dctx1 = d_dectx.raw(), dtgt1 = d_detgt.raw();
    d_dectx.set(init_ctx);
    d_detgt.set(init_tgt);
    relational_loss_backward(d_dectx.p, with_tgt ? d_detgt.p : nullptr, d_ectx.p, d_actx.p, d_mctx.p, d_etgt.p, d_atgt.p,
                             d_mtgt.p, B, L, N, D, w_rel, w_self, scale_t, scale_s, dloss, st);
    launched(bname + " (again)");
    expect_bitwise(bname + " de_ctx bitwise repeatable", d_dectx.raw(), dctx1);
    if (with_tgt) expect_bitwise(bname + " de_tgt bitwise repeatable", d_detgt.raw(), dtgt1);
}

// =========================================================================================================
// context attention

static void test_context_attention(int B, int L, int D) {
    const std::string tag = fmt("B=%d L=%d D=%d", B, L, D);
    const vecd x = rx(rnd((size_t)B * L * D, -2, 2)), W = rx(rnd((size_t)L * L, -1, 1)), bias = rx(rnd(L, -1, 1));
    const vecd dout = rx(rnd((size_t)B * D, -1, 1));
    vecd out((size_t)B * D), att((size_t)B * L * D);
    context_attention_forward_ref<double>(out.data(), att.data(), x.data(), W.data(), bias.data(), B, L, D);
    Dev<floatX> d_x(x), d_W(W), d_bias(bias), d_out(out.size()), d_dout(dout), d_dx(x.size());
    Dev<floatS> d_att(att.size());
    d_out.poison();
    d_att.poison();
    const std::string fname = BK " context_attention_forward " + tag;
    context_attention_forward(d_out.p, d_att.p, d_x.p, d_W.p, d_bias.p, B, L, D, st);
    launched(fname);
    expect_close(fname + " out", d_out.get(), out, TOL_RED);
    expect_close(fname + " att", d_att.get(), att, TOL_S);

    const vecd att_in = rs(att);
    vecd g_W((size_t)L * L, 0.0), g_b(L, 0.0), dx(x.size());
    context_attention_backward_ref<double>(dx.data(), g_W.data(), g_b.data(), dout.data(), att_in.data(), x.data(), W.data(), B, L, D);
    vecd dW0 = rnd(g_W.size(), -1, 1), db0 = rnd(L, -1, 1);
    for (double& v : dW0) v *= std::max(rms_of(g_W), 1e-30);
    for (double& v : db0) v *= std::max(rms_of(g_b), 1e-30);
    dW0 = rs(dW0);
    db0 = rs(db0);
    vecd dW = dW0, db = db0;
    context_attention_backward_ref<double>(dx.data(), dW.data(), db.data(), dout.data(), att_in.data(), x.data(), W.data(), B, L, D);
    Dev<floatS> d_att_in(att_in), d_dW(dW0), d_db(db0);
    d_dx.poison();
    const std::string bname = BK " context_attention_backward " + tag;
    context_attention_backward(d_dx.p, d_dW.p, d_db.p, d_dout.p, d_att_in.p, d_x.p, d_W.p, B, L, D, st);
    launched(bname);
    expect_close(bname + " dx (=)", d_dx.get(), dx, TOL_RED);
    expect_close(bname + " dW (+=)", d_dW.get(), dW, TOL_S);
    expect_close(bname + " dbias (+=)", d_db.get(), db, TOL_S);
    const std::vector<floatX> dx1 = d_dx.raw();
    const std::vector<floatS> dW1 = d_dW.raw(), db1 = d_db.raw();
    d_dx.poison();
    d_dW.set(dW0);
    d_db.set(db0);
    context_attention_backward(d_dx.p, d_dW.p, d_db.p, d_dout.p, d_att_in.p, d_x.p, d_W.p, B, L, D, st);
    launched(bname + " (again)");
    expect_bitwise(bname + " dx bitwise repeatable", d_dx.raw(), dx1);
    expect_bitwise(bname + " dW bitwise repeatable", d_dW.raw(), dW1);
    expect_bitwise(bname + " dbias bitwise repeatable", d_db.raw(), db1);
}

// =========================================================================================================
// GRU cell: gi rows gi_stride apart at column offset `off` of a wider buffer (the trainer's (B, L, 3D) gi)

static void test_gru_cell(int B, int D, int gi_stride, int off, bool with_h) {
    const std::string tag = fmt("B=%d D=%d gi_stride=%d offset=%d%s", B, D, gi_stride, off, with_h ? "" : " h=null");
    const vecd gi = rx(rnd((size_t)B * gi_stride, -3, 3)), gh = rx(rnd((size_t)B * 3 * D, -3, 3)), h = rx(rnd((size_t)B * D, -1, 1));
    vecd h_out((size_t)B * D), gates((size_t)B * 3 * D);
    gru_cell_forward_ref<double>(h_out.data(), gates.data(), gi.data() + off, gi_stride, gh.data(), with_h ? h.data() : nullptr, B, D);
    Dev<floatX> d_gi(gi), d_gh(gh), d_h(h), d_hout(h_out.size()), d_gates(gates.size());
    d_hout.poison();
    d_gates.poison();
    const std::string fname = BK " gru_cell_forward " + tag;
    gru_cell_forward(d_hout.p, d_gates.p, d_gi.p + off, gi_stride, d_gh.p, with_h ? d_h.p : nullptr, B, D, st);
    launched(fname);
    expect_close(fname + " h_out", d_hout.get(), h_out, TOL_EW);
    expect_close(fname + " gates", d_gates.get(), gates, TOL_EW);

    // backward into a strided dgi (the same layout as gi); the columns outside the rows' 3D must keep the poison
    const vecd gates_in = rx(gates), dh_out = rx(rnd((size_t)B * D, -1, 1));
    vecd dgi((size_t)B * gi_stride, NaN), dgh((size_t)B * 3 * D), dh((size_t)B * D, NaN);
    gru_cell_backward_ref<double>(dgi.data() + off, gi_stride, dgh.data(), with_h ? dh.data() : nullptr, dh_out.data(),
                                  gates_in.data(), gh.data(), with_h ? h.data() : nullptr, B, D);
    Dev<floatX> d_gates_in(gates_in), d_dhout(dh_out), d_dgi(dgi.size()), d_dgh(dgh.size()), d_dh(dh.size());
    d_dgi.poison();
    d_dgh.poison();
    d_dh.poison();
    const std::string bname = BK " gru_cell_backward " + tag;
    gru_cell_backward(d_dgi.p + off, gi_stride, d_dgh.p, with_h ? d_dh.p : nullptr, d_dhout.p, d_gates_in.p, d_gh.p,
                      with_h ? d_h.p : nullptr, B, D, st);
    launched(bname);
    expect_close(bname + " dgi (=, strided; the rest untouched)", d_dgi.get(), dgi, TOL_EW);
    expect_close(bname + " dgh (=)", d_dgh.get(), dgh, TOL_EW);
    if (with_h) expect_close(bname + " dh (=)", d_dh.get(), dh, TOL_EW);
    const std::vector<floatX> dgi1 = d_dgi.raw();
    d_dgi.poison();
    gru_cell_backward(d_dgi.p + off, gi_stride, d_dgh.p, with_h ? d_dh.p : nullptr, d_dhout.p, d_gates_in.p, d_gh.p,
                      with_h ? d_h.p : nullptr, B, D, st);
    launched(bname + " (again)");
    expect_bitwise(bname + " dgi bitwise repeatable", d_dgi.raw(), dgi1);
    if (!with_h) {      // h = null: a dh buffer passed anyway is not written
        Dev<floatX> d_dh2(dh.size());
        d_dh2.poison();
        gru_cell_backward(d_dgi.p + off, gi_stride, d_dgh.p, d_dh2.p, d_dhout.p, d_gates_in.p, d_gh.p, nullptr, B, D, st);
        launched(bname + " (dh given)");
        expect_exact(bname + " h = null leaves dh untouched", d_dh2.get(), vecd(dh.size(), NaN));
    }
}

// =========================================================================================================
// Empty sizes: nothing is launched and nothing written, except the two losses (0 for an empty batch). The
// outputs are one-element buffers holding poison (or known values for the += gradients).

static void test_relational_empty() {
    const std::string name = BK " JEPA relational ops, empty sizes";
    Dev<floatX> x(1), out(1), dx(1), dy(1);
    Dev<floatS> att(1), loss(2), dW(vecd{0.25}), db(vecd{-0.5});
    Dev<uint8_t> u8(std::vector<uint8_t>{1});
    x.set(vecd{0.5});
    out.poison();
    dx.poison();
    dy.poison();
    att.poison();
    loss.poison();
    object_attention_forward(out.p, att.p, x.p, u8.p, u8.p, 0, 16, 8, 48, 0.1f, 1, st);
    object_attention_forward(out.p, att.p, x.p, u8.p, u8.p, 3, 0, 8, 48, 0.1f, 1, st);
    object_attention_backward(dx.p, x.p, att.p, x.p, u8.p, u8.p, 0, 16, 8, 48, 0.1f, 1, st);
    relational_loss_forward(loss.p, x.p, u8.p, u8.p, x.p, u8.p, u8.p, 0, 3, 16, 384, 1, 1, 1, 1, st);
    relational_loss_backward(dx.p, dy.p, x.p, u8.p, u8.p, x.p, u8.p, u8.p, 0, 3, 16, 384, 1, 1, 1, 1, 1, st);
    context_attention_forward(out.p, att.p, x.p, x.p, x.p, 0, 3, 384, st);
    context_attention_backward(dx.p, dW.p, db.p, x.p, att.p, x.p, x.p, 0, 3, 384, st);
    context_attention_backward(dx.p, dW.p, db.p, x.p, att.p, x.p, x.p, 4, 3, 0, st);
    gru_cell_forward(out.p, dy.p, x.p, 3, x.p, x.p, 0, 384, st);
    gru_cell_backward(dx.p, 3, dy.p, dy.p, x.p, x.p, x.p, x.p, 5, 0, st);
    launched(name);
    const vecd got = {out.get()[0], dx.get()[0], dy.get()[0], att.get()[0], dW.get()[0], db.get()[0]};
    expect_exact(name + ": outputs untouched", got, vecd{NaN, NaN, NaN, NaN, 0.25, -0.5});
    expect_exact(name + ": relational_loss of an empty batch = 0", loss.get(), vecd{0.0, 0.0});
}

// =========================================================================================================

static void test_jepa_relational() {
    test_relational_empty();

    // object attention: the trainer (N = 16, H = 8, HD = 48, dropout 0.1 in training, 0 in eval), then odd shapes
    test_object_attention(2048, 16, 8, 48, 0.1f);
    test_object_attention(2048, 16, 8, 48, 0.0f);
#ifdef __CUDACC__
    test_object_attention(8192, 16, 8, 48, 0.1f);
#endif
    for (int HD : {16, 32, 64}) test_object_attention(37, 16, 4, HD, 0.1f);
    test_object_attention(5, 32, 2, 64, 0.2f);         // a full warp per softmax row
    test_object_attention(3, 32, 2, 128, 0.1f);        // shared memory beyond 48 KB: 54 KB forward, 78 KB backward
    test_object_attention(9, 5, 3, 7, 0.1f);
    test_object_attention(4, 1, 2, 16, 0.0f);
    test_object_attention(4, 1, 2, 16, 0.5f);
    test_object_attention(3, 7, 1, 1, 0.0f);

    // relational loss: the trainer (B = 512, L = 3, N = 16, D = 384; identical context copies in practice)
    test_relational_loss(512, 3, 16, 384, true, false);
    test_relational_loss(512, 3, 16, 384, false, true);
    test_relational_loss(512, 3, 16, 384, true, true);
    test_relational_loss(7, 2, 5, 33, true, false);
    test_relational_loss(3, 4, 32, 64, false, false);
    test_relational_loss(3, 7, 40, 32, true, false);   // shared memory beyond 48 KB: 51 KB (+ static) forward, 102 KB backward
    test_relational_loss(2, 1, 9, 17, true, false);
    test_relational_loss(1, 1, 1, 1, true, false);

    // context attention: the trainer (B = 512, L = 3, D = 384), then odd shapes
    test_context_attention(512, 3, 384);
    test_context_attention(2048, 3, 384);
    test_context_attention(7, 5, 33);
    test_context_attention(3, 32, 17);
    test_context_attention(1000, 2, 5);
    test_context_attention(1, 1, 1);

    // GRU cell: the trainer's step l of (B, L, 3D) gi (stride L*3D), then odd shapes and a misaligned stride
    test_gru_cell(512, 384, 3 * 3 * 384, 0, false);
    test_gru_cell(512, 384, 3 * 3 * 384, 2 * 3 * 384, true);
    test_gru_cell(37, 5, 3 * 5 + 1, 1, true);
    test_gru_cell(1, 1, 3, 0, true);
    test_gru_cell(3, 7, 2 * 3 * 7, 3 * 7, false);
}

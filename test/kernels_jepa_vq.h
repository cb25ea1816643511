// GPU-vs-CPU checks of the JEPA VQ ops (kernels/vq.cuh, kernels/vq_gumbel.cuh) and InfoNCE (kernels/infonce.cuh);
// included by test_kernels.cu after its helpers. Every launcher against its double reference on random inputs
// rounded as the device holds them; outputs poisoned (or, for += / in-place outputs, started from known values);
// the trainer's shapes (R = 4096 object rows, K = 768 codes, D = 384; InfoNCE Bc = Bt = 512, Q = 8192 or 0,
// P = 256) and odd ones; valid masks with zeros; the reductions run twice and compared bit for bit.
//
// vq_nearest's index is compared exactly with the float reference (the CPU backend's computation: the same fma
// sequence, so the same bits in both builds), and against the double reference a different index is accepted
// only when its exact distance is within 1e-5 (relative) of the true minimum (a near tie).
#include "../kernels/infonce.cuh"
#include "../kernels/vq.cuh"
#include "../kernels/vq_gumbel.cuh"

static double vqt_dist(const vecd& x, const vecd& E, int r, int k, int D) {
    double s = 0;
    for (int d = 0; d < D; d++) s += (x[(size_t)r * D + d] - E[(size_t)k * D + d]) * (x[(size_t)r * D + d] - E[(size_t)k * D + d]);
    return s;
}
static std::vector<float> vqt_float(const vecd& v) { return std::vector<float>(v.begin(), v.end()); }
static vecu8 vqt_mask(int R, int every) {          // every-th row padded (0 = none)
    vecu8 m(R, 1);
    if (every > 0)
        for (int r = 1; r < R; r += every) m[r] = 0;
    return m;
}

// ---------------------------------------------------------------------------------------------------------
// vq_nearest

static void test_vq_nearest(int R, int K, int D, bool ties) {
    const std::string tag = fmt("R=%d K=%d D=%d%s", R, K, D, ties ? " (exact ties planted)" : "");
    vecd E = rs(rnd((size_t)K * D, -1, 1)), x = rx(rnd((size_t)R * D, -1, 1));
    if (ties) {
        // the first quarter of the codes (at least 2) in floatX precision, code 2j+1 a copy of 2j (duplicates after
        // a refresh); every 3rd row exactly one of the even ones: distance 0, the smaller index
        const int nq = std::min(K, std::max(2, K / 4));
        for (size_t i = 0; i < (size_t)nq * D; i++) E[i] = rx1(E[i]);
        for (int k = 0; k + 1 < nq; k += 2)
            for (int d = 0; d < D; d++) E[(size_t)(k + 1) * D + d] = E[(size_t)k * D + d];
        for (int r = 0; r < R; r += 3) {
            const int k = 2 * ((r / 3) % std::max(1, nq / 2));
            for (int d = 0; d < D; d++) x[(size_t)r * D + d] = E[(size_t)k * D + d];
        }
    }
    veci idx_d(R), idx_f(R);
    vecd dist_d(R);
    std::vector<float> dist_f(R);
    vq_nearest_ref(idx_d.data(), dist_d.data(), x.data(), E.data(), R, K, D);
    const std::vector<float> xf = vqt_float(x), Ef = vqt_float(E);
    vq_nearest_ref(idx_f.data(), dist_f.data(), xf.data(), Ef.data(), R, K, D);
    Dev<floatX> d_x(x);
    Dev<floatS> d_E(E), d_dist(R);
    Dev<int> d_idx((size_t)R);
    d_idx.poison();
    d_dist.poison();
    const std::string name = BK " vq_nearest " + tag;
    vq_nearest(d_idx.p, d_dist.p, d_x.p, d_E.p, R, K, D, st);
    launched(name);
    const veci idx = d_idx.raw();
    const vecd dist = d_dist.get();
    expect_equal(name + " idx = the float reference's (the CPU backend)", idx, idx_f);
    expect_exact(name + " dist = the float reference's, bit for bit", dist, vecd(dist_f.begin(), dist_f.end()));
    // against the double reference: equal, or a near tie
    int differ = 0, bad = 0, first_bad = -1;
    for (int r = 0; r < R; r++) {
        if (idx[r] == idx_d[r]) continue;
        differ++;
        const bool in_range = idx[r] >= 0 && idx[r] < K;
        const double dg = in_range ? vqt_dist(x, E, r, idx[r], D) : INFINITY;
        if (!(dg <= dist_d[r] * (1 + 1e-5) + 1e-12) && bad++ == 0) first_bad = r;
    }
    check(bad == 0, (name + " idx vs the double reference (a different index only at a near tie)").c_str(),
          "%d rows pick a code farther than the nearest by > 1e-5 relative; first row %d: idx %d vs %d", bad, first_bad,
          first_bad >= 0 ? idx[first_bad] : 0, first_bad >= 0 ? idx_d[first_bad] : 0);
    if (differ) printf("     %d of %d rows at a near tie pick another code than the double reference\n", differ, R);
    expect_close(name + " dist vs the double reference", dist, dist_d, TOL_F32);
    // no dist output (small shapes: the references are slow on the host)
    if ((size_t)R * K * D > ((size_t)1 << 24)) return;
    d_idx.poison();
    vq_nearest(d_idx.p, nullptr, d_x.p, d_E.p, R, K, D, st);
    launched(name + " dist=null");
    expect_equal(name + " dist=null: the same idx", d_idx.raw(), idx);
}

// ---------------------------------------------------------------------------------------------------------
// vq_quantize, vq_code_stats

static void test_vq_quantize(int R, int K, int D, int pad_every) {
    const std::string name = fmt(BK " vq_quantize R=%d K=%d D=%d%s", R, K, D, pad_every ? " masked" : "");
    const vecd E = rs(rnd((size_t)K * D, -1, 1)), x = rx(rnd((size_t)R * D, -1, 1));
    const veci idx = rnd_int(R, K);
    const vecu8 valid = vqt_mask(R, pad_every);
    vecd ref((size_t)R * D);
    vq_quantize_ref(ref.data(), idx.data(), E.data(), x.data(), pad_every ? valid.data() : nullptr, R, D);
    Dev<floatX> d_x(x), d_out(ref.size());
    Dev<floatS> d_E(E);
    Dev<int> d_idx(idx);
    Dev<uint8_t> d_valid(valid);
    d_out.poison();
    vq_quantize(d_out.p, d_idx.p, d_E.p, d_x.p, pad_every ? d_valid.p : nullptr, R, D, st);
    launched(name);
    expect_exact(name, d_out.get(), rx(ref));
}

static void test_vq_code_stats(int R, int K, int D, int pad_every) {
    const std::string name = fmt(BK " vq_code_stats R=%d K=%d D=%d%s", R, K, D, pad_every ? " masked" : "");
    const vecd x = rx(rnd((size_t)R * D, -1, 1));
    veci idx = rnd_int(R, K);
    for (int r = 5; r < R; r += 11) idx[r] = -1;              // Gumbel padded rows: ignored
    const vecu8 valid = vqt_mask(R, pad_every);
    vecd counts(K), sums((size_t)K * D);
    vq_code_stats_ref(counts.data(), sums.data(), idx.data(), x.data(), pad_every ? valid.data() : nullptr, R, K, D);
    Dev<floatX> d_x(x);
    Dev<int> d_idx(idx);
    Dev<uint8_t> d_valid(valid);
    Dev<floatS> d_counts(K), d_sums(sums.size());
    d_counts.poison();
    d_sums.poison();
    vq_code_stats(d_counts.p, d_sums.p, d_idx.p, d_x.p, pad_every ? d_valid.p : nullptr, R, K, D, st);
    launched(name);
    expect_exact(name + " counts", d_counts.get(), counts);
    expect_close(name + " sums", d_sums.get(), sums, TOL_S);
    const std::vector<floatS> c1 = d_counts.raw(), s1 = d_sums.raw();
    d_sums.poison();
    vq_code_stats(d_counts.p, d_sums.p, d_idx.p, d_x.p, pad_every ? d_valid.p : nullptr, R, K, D, st);
    launched(name + " (again)");
    expect_bitwise(name + " bitwise repeatable", s1, d_sums.raw());
}

// ---------------------------------------------------------------------------------------------------------
// vq_ema_update, vq_refresh_codes

static void test_vq_ema(int K, int D, float decay, bool never_counted) {
    const std::string name = fmt(BK " vq_ema_update K=%d D=%d decay=%g%s", K, D, decay, never_counted ? " (n = 0)" : "");
    vecd N = rs(rnd(K, 0, 6)), counts(K), m = rs(rnd((size_t)K * D, -2, 2)), E = rs(rnd((size_t)K * D, -1, 1));
    const veci cnt = rnd_int(K, 9);
    for (int k = 0; k < K; k++) counts[k] = never_counted ? 0.0 : (double)cnt[k];
    // codes 0, 5, 10, ... unused so far: N = 0, m ~ 1e-5 (Ntilde = eps n / (n + K eps) ~ 1e-5: e stays ~1)
    for (int k = 0; k < K; k += 5) {
        N[k] = 0;
        for (int d = 0; d < D; d++) m[(size_t)k * D + d] = rs1(1e-5 * m[(size_t)k * D + d]);
    }
    if (never_counted) std::fill(N.begin(), N.end(), 0.0);
    const vecd sums = rs(rnd((size_t)K * D, -4, 4));
    Dev<floatS> d_E(E), d_N(N), d_m(m), d_counts(counts), d_sums(sums);
    vecd E_ref = E, N_ref = N, m_ref = m;
    vq_ema_update_ref(E_ref.data(), N_ref.data(), m_ref.data(), counts.data(), sums.data(), K, D, decay, 1e-5f);
    vq_ema_update(d_E.p, d_N.p, d_m.p, d_counts.p, d_sums.p, K, D, decay, 1e-5f, st);
    launched(name);
    expect_close(name + " N", d_N.get(), N_ref, TOL_F32);
    expect_close(name + " m", d_m.get(), m_ref, TOL_F32);
    if (never_counted) expect_exact(name + " E unchanged", d_E.get(), E);
    else expect_close(name + " E", d_E.get(), E_ref, TOL_F32);
    const std::vector<floatS> e1 = d_E.raw();
    d_E.set(E);
    d_N.set(N);
    d_m.set(m);
    vq_ema_update(d_E.p, d_N.p, d_m.p, d_counts.p, d_sums.p, K, D, decay, 1e-5f, st);
    launched(name + " (again)");
    expect_bitwise(name + " bitwise repeatable", e1, d_E.raw());
}

static void test_vq_refresh(int K, int D, int n, float new_count, float sum_scale) {
    const std::string name = fmt(BK " vq_refresh_codes K=%d D=%d n=%d count=%g scale=%g", K, D, n, new_count, sum_scale);
    veci perm(K);
    for (int k = 0; k < K; k++) perm[k] = k;
    const veci keys = rnd_int(K, 1 << 30);
    std::sort(perm.begin(), perm.end(), [&](int a, int b) { return keys[a] < keys[b] || (keys[a] == keys[b] && a < b); });
    const veci codes(perm.begin(), perm.begin() + n);
    const vecd E = rs(rnd((size_t)K * D, -1, 1)), N = rs(rnd(K, 0, 5)), m = rs(rnd((size_t)K * D, -2, 2)),
               v = rs(rnd((size_t)n * D, -1, 1));
    vecd E_ref = E, N_ref = N, m_ref = m;
    vq_refresh_codes_ref(E_ref.data(), N_ref.data(), m_ref.data(), codes.data(), v.data(), n, D, new_count, sum_scale);
    Dev<floatS> d_E(E), d_N(N), d_m(m), d_v(v);
    Dev<int> d_codes(codes);
    vq_refresh_codes(d_E.p, d_N.p, d_m.p, d_codes.p, d_v.p, n, D, new_count, sum_scale, st);
    launched(name);
    expect_exact(name + " E", d_E.get(), E_ref);
    expect_exact(name + " N", d_N.get(), N_ref);
    expect_exact(name + " m", d_m.get(), rs(m_ref));
}

// ---------------------------------------------------------------------------------------------------------
// commitment loss

static void test_vq_commitment(int R, int D, int pad_every) {
    const std::string tag = fmt("R=%d D=%d%s", R, D, pad_every ? " masked" : "");
    const float scale = 0.15f / (float)std::max(1, R * D), dloss = 0.5f;
    const double g = 2.0 * dloss * scale;        // dx0 of the increments' size, so that the check sees them
    const vecd x = rx(rnd((size_t)R * D, -1, 1)), q = rx(rnd((size_t)R * D, -1, 1)), dx0 = rx(rnd((size_t)R * D, -2 * g, 2 * g));
    const vecu8 valid = vqt_mask(R, pad_every);
    const uint8_t* vh = pad_every ? valid.data() : nullptr;
    double loss = 0;
    vecd dx = dx0;
    vq_commitment_forward_ref(&loss, x.data(), q.data(), vh, R, D, scale);
    vq_commitment_backward_ref(dx.data(), x.data(), q.data(), vh, R, D, scale, dloss);
    Dev<floatX> d_x(x), d_q(q), d_dx(dx0);
    Dev<uint8_t> d_valid(valid);
    Dev<floatS> d_loss(1);
    const uint8_t* vd = pad_every ? d_valid.p : nullptr;
    d_loss.poison();
    vq_commitment_forward(d_loss.p, d_x.p, d_q.p, vd, R, D, scale, st);
    launched(BK " vq_commitment_forward " + tag);
    expect_close(BK " vq_commitment_forward " + tag, d_loss.get(), vecd{loss}, TOL_S);
    const std::vector<floatS> l1 = d_loss.raw();
    d_loss.poison();
    vq_commitment_forward(d_loss.p, d_x.p, d_q.p, vd, R, D, scale, st);
    launched(BK " vq_commitment_forward (again) " + tag);
    expect_bitwise(BK " vq_commitment_forward bitwise repeatable " + tag, l1, d_loss.raw());
    vq_commitment_backward(d_dx.p, d_x.p, d_q.p, vd, R, D, scale, dloss, st);
    launched(BK " vq_commitment_backward " + tag);
    expect_close(BK " vq_commitment_backward (+=) " + tag, d_dx.get(), dx, TOL_EW);
}

// Larger gradients: scale 1 (the increment dominates dx0), every build.
static void test_vq_commitment_big(int R, int D) {
    const std::string name = fmt(BK " vq_commitment_backward (+=) R=%d D=%d scale=1 masked", R, D);
    const vecd x = rx(rnd((size_t)R * D, -1, 1)), q = rx(rnd((size_t)R * D, -1, 1)), dx0 = rx(rnd((size_t)R * D, -1, 1));
    const vecu8 valid = vqt_mask(R, 4);
    vecd dx = dx0;
    vq_commitment_backward_ref(dx.data(), x.data(), q.data(), valid.data(), R, D, 1.0f, 0.75f);
    Dev<floatX> d_x(x), d_q(q), d_dx(dx0);
    Dev<uint8_t> d_valid(valid);
    vq_commitment_backward(d_dx.p, d_x.p, d_q.p, d_valid.p, R, D, 1.0f, 0.75f, st);
    launched(name);
    expect_close(name, d_dx.get(), dx, TOL_EW);
}

// ---------------------------------------------------------------------------------------------------------
// Gumbel

// y_soft in fp32: the distances' fp32 rounding (~1e-6 absolute at D = 384) divided by tau moves z_k - z_max by
// ~1e-5 at tau = 0.1, so y_soft relative ~1e-5 (no bf16 rounding is involved: x is rounded for the reference too).
static const Tol TOL_YSOFT = BF16 ? TOL_S : Tol{2e-4, 1e-6};

// x and E in [-a, a] with a = 0.1: distances ~2.6 at D = 384, so z = (-dist + g) / tau stays moderate and y_soft is
// not one-hot (the fp32 rounding of a z of magnitude ~1e3 alone would move y_soft by ~1e-4).
static void test_vq_gumbel_forward(int R, int K, int D, float tau, int pad_every, bool training) {
    const std::string name = fmt(BK " vq_gumbel_forward R=%d K=%d D=%d tau=%g%s%s", R, K, D, tau, pad_every ? " masked" : "",
                                 training ? "" : " eval");
    const double a = 0.1;
    const vecd x = rx(rnd((size_t)R * D, -a, a)), E = rs(rnd((size_t)K * D, -a, a));
    const vecu8 valid = vqt_mask(R, pad_every);
    const uint8_t* vh = pad_every ? valid.data() : nullptr;
    const uint64_t seed = fresh_seed();
    vecd out((size_t)R * D), ys((size_t)R * K, NaN);
    veci idx(R);
    vq_gumbel_forward_ref(out.data(), idx.data(), ys.data(), x.data(), E.data(), vh, R, K, D, tau, seed, training);
    Dev<floatX> d_x(x), d_out(out.size());
    Dev<floatS> d_E(E), d_ys(ys.size());
    Dev<int> d_idx((size_t)R);
    Dev<uint8_t> d_valid(valid);
    d_out.poison();
    d_ys.poison();
    d_idx.poison();
    vq_gumbel_forward(d_out.p, d_idx.p, training ? d_ys.p : nullptr, d_x.p, d_E.p, pad_every ? d_valid.p : nullptr, R, K, D,
                      tau, seed, training, st);
    launched(name);
    const veci gidx = d_idx.raw();
    // idx: equal to the reference, or a near tie of z (training) / of the distance (eval); -1 exactly on padded rows
    int differ = 0, bad = 0, first_bad = -1;
    for (int r = 0; r < R; r++) {
        if (gidx[r] == idx[r]) continue;
        differ++;
        bool ok = idx[r] >= 0 && gidx[r] >= 0 && gidx[r] < K;
        if (ok) {
            auto z = [&](int k) {
                return training ? (-vqt_dist(x, E, r, k, D) + vq_gumbel_noise<double>(seed, r, k)) / tau : -vqt_dist(x, E, r, k, D);
            };
            const double zr = z(idx[r]), zg = z(gidx[r]);
            ok = zg >= zr - 1e-5 * (1 + fabs(zr));
        }
        if (!ok && bad++ == 0) first_bad = r;
    }
    check(bad == 0, (name + " idx (a different index only at a near tie)").c_str(), "%d bad rows; first %d: idx %d vs %d", bad,
          first_bad, first_bad >= 0 ? gidx[first_bad] : 0, first_bad >= 0 ? idx[first_bad] : 0);
    if (differ) printf("     %d of %d rows at a near tie pick another code than the double reference\n", differ, R);
    // out = e_{gpu idx} (x on padded rows), exactly
    vecd want_out((size_t)R * D);
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++)
            want_out[(size_t)r * D + d] = gidx[r] >= 0 && gidx[r] < K ? rx1(E[(size_t)gidx[r] * D + d]) : x[(size_t)r * D + d];
    expect_exact(name + " out = e_idx (x on padded rows)", d_out.get(), want_out);
    if (training) {
        expect_close(name + " y_soft", d_ys.get(), ys, TOL_YSOFT);
        const std::vector<floatS> y1 = d_ys.raw();
        d_ys.poison();
        vq_gumbel_forward(d_out.p, d_idx.p, d_ys.p, d_x.p, d_E.p, pad_every ? d_valid.p : nullptr, R, K, D, tau, seed, true, st);
        launched(name + " (again)");
        expect_bitwise(name + " y_soft bitwise repeatable", y1, d_ys.raw());
        expect_equal(name + " idx repeatable", d_idx.raw(), gidx);
    } else {
        // eval idx is vq_nearest's (the float reference's bits)
        veci idx_f(R);
        const std::vector<float> xf = vqt_float(x), Ef = vqt_float(E);
        vq_nearest_ref(idx_f.data(), (float*)nullptr, xf.data(), Ef.data(), R, K, D);
        for (int r = 0; r < R; r++)
            if (pad_every && !valid[r]) idx_f[r] = -1;
        expect_equal(name + " idx = the float reference's nearest code", gidx, idx_f);
    }
}

static void test_vq_gumbel_backward(int R, int K, int D, float tau, int pad_every) {
    const std::string name = fmt(BK " vq_gumbel_backward R=%d K=%d D=%d tau=%g%s", R, K, D, tau, pad_every ? " masked" : "");
    const double a = 0.1;
    const vecd x = rx(rnd((size_t)R * D, -a, a)), E = rs(rnd((size_t)K * D, -a, a));
    const vecu8 valid = vqt_mask(R, pad_every);
    const uint8_t* vh = pad_every ? valid.data() : nullptr;
    const uint64_t seed = fresh_seed();
    vecd out((size_t)R * D), ys((size_t)R * K);
    veci idx(R);
    vq_gumbel_forward_ref(out.data(), idx.data(), ys.data(), x.data(), E.data(), vh, R, K, D, tau, seed, true);
    ys = rs(ys);
    const vecd dout = rx(rnd((size_t)R * D, -1, 1)), dx0 = rx(rnd((size_t)R * D, -1, 1)), dE0 = rs(rnd((size_t)K * D, -1, 1));
    vecd dx = dx0, dE = dE0;
    vq_gumbel_backward_ref(dx.data(), dE.data(), dout.data(), ys.data(), idx.data(), x.data(), E.data(), vh, R, K, D, tau);
    Dev<floatX> d_x(x), d_dout(dout), d_dx(dx0);
    Dev<floatS> d_E(E), d_ys(ys), d_dE(dE0);
    Dev<int> d_idx(idx);
    Dev<uint8_t> d_valid(valid);
    const uint8_t* vd = pad_every ? d_valid.p : nullptr;
    vq_gumbel_backward(d_dx.p, d_dE.p, d_dout.p, d_ys.p, d_idx.p, d_x.p, d_E.p, vd, R, K, D, tau, st);
    launched(name);
    expect_close(name + " dx (+=)", d_dx.get(), dx, TOL_RED);
    expect_close(name + " dcodebook (+=)", d_dE.get(), dE, TOL_S);
    const std::vector<floatS> e1 = d_dE.raw();
    const std::vector<floatX> x1 = d_dx.raw();
    d_dE.set(dE0);
    d_dx.set(dx0);
    vq_gumbel_backward(d_dx.p, d_dE.p, d_dout.p, d_ys.p, d_idx.p, d_x.p, d_E.p, vd, R, K, D, tau, st);
    launched(name + " (again)");
    expect_bitwise(name + " dcodebook bitwise repeatable", e1, d_dE.raw());
    expect_bitwise(name + " dx bitwise repeatable", x1, d_dx.raw());
}

// ---------------------------------------------------------------------------------------------------------
// InfoNCE

struct NceInputs {
    vecd c, t, queue;
    veci pos;
};
static vecd vqt_unit_rows(vecd v, int n, int P) {
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int p = 0; p < P; p++) ss += v[(size_t)i * P + p] * v[(size_t)i * P + p];
        const double inv = ss > 0 ? 1 / sqrt(ss) : 0;
        for (int p = 0; p < P; p++) v[(size_t)i * P + p] *= inv;
    }
    return v;
}
// Unit-norm rows in the positive orthant's neighbourhood (the projection head ends in ReLU): entries in [-0.2, 1)
// before normalising. Positives: row i's target is a noisy copy of c_i, at column pos[i] (a shuffled order).
static NceInputs nce_inputs(int Bc, int Bt, int Q, int P) {
    NceInputs n;
    n.c = rx(vqt_unit_rows(rnd((size_t)Bc * P, -0.2, 1), Bc, P));
    n.pos = rnd_int(Bc, Bt);
    vecd t = rnd((size_t)Bt * P, -0.2, 1);
    for (int i = 0; i < Bc && i < Bt; i++)
        for (int p = 0; p < P; p++) t[(size_t)n.pos[i] * P + p] += 2 * n.c[(size_t)i * P + p];
    n.t = rx(vqt_unit_rows(t, Bt, P));
    n.queue = rs(vqt_unit_rows(rnd((size_t)Q * P, -0.2, 1), Q, P));
    return n;
}

static void test_infonce(int Bc, int Bt, int Q, int P, double tau, float tmin, float tmax, bool with_dt) {
    const std::string tag = fmt("Bc=%d Bt=%d Q=%d P=%d tau=%g [%g, %g]%s%s", Bc, Bt, Q, P, tau, tmin, tmax,
                                (tau < tmin || tau > tmax) ? " (clamped)" : "", with_dt ? "" : " dt=null");
    const NceInputs n = nce_inputs(Bc, Bt, Q, P);
    const int Nc = Bt + Q;
    const double log_tau = rs1(log(tau));
    const float scale = 1.0f / std::max(Bc, 1), dloss = 0.5f;
    double loss = 0;
    vecd probs((size_t)Bc * Nc);
    infonce_forward_ref(&loss, probs.data(), n.c.data(), n.t.data(), n.queue.data(), n.pos.data(), &log_tau, Bc, Bt, Q, P, tmin,
                        tmax, scale);
    Dev<floatX> d_c(n.c), d_t(n.t), d_dc((size_t)Bc * P), d_dt((size_t)Bt * P);
    Dev<floatS> d_queue(n.queue), d_lt(vecd{log_tau}), d_loss(1), d_probs(probs.size()), d_dlt(vecd{0.125});
    Dev<int> d_pos(n.pos);
    d_loss.poison();
    d_probs.poison();
    const std::string fname = BK " infonce_forward " + tag;
    infonce_forward(d_loss.p, d_probs.p, d_c.p, d_t.p, d_queue.p, d_pos.p, d_lt.p, Bc, Bt, Q, P, tmin, tmax, scale, st);
    launched(fname);
    expect_close(fname + " loss", d_loss.get(), vecd{loss}, TOL_S);
    expect_close(fname + " probs", d_probs.get(), probs, TOL_S);
    const std::vector<floatS> l1 = d_loss.raw(), p1 = d_probs.raw();
    d_loss.poison();
    infonce_forward(d_loss.p, d_probs.p, d_c.p, d_t.p, d_queue.p, d_pos.p, d_lt.p, Bc, Bt, Q, P, tmin, tmax, scale, st);
    launched(fname + " (again)");
    expect_bitwise(fname + " loss bitwise repeatable", l1, d_loss.raw());
    expect_bitwise(fname + " probs bitwise repeatable", p1, d_probs.raw());

    // backward from the reference's probabilities (as floatS holds them)
    const vecd pr = rs(probs);
    d_probs.set(pr);
    vecd dc((size_t)Bc * P), dt((size_t)Bt * P, NaN);
    double dlt = 0.125;
    infonce_backward_ref(dc.data(), with_dt ? dt.data() : nullptr, &dlt, pr.data(), n.c.data(), n.t.data(), n.queue.data(),
                         n.pos.data(), &log_tau, Bc, Bt, Q, P, tmin, tmax, scale, dloss);
    d_dc.poison();
    d_dt.poison();
    const std::string bname = BK " infonce_backward " + tag;
    infonce_backward(d_dc.p, with_dt ? d_dt.p : nullptr, d_dlt.p, d_probs.p, d_c.p, d_t.p, d_queue.p, d_pos.p, d_lt.p, Bc, Bt,
                     Q, P, tmin, tmax, scale, dloss, st);
    launched(bname);
    expect_close(bname + " dc", d_dc.get(), dc, TOL_RED);
    if (with_dt) expect_close(bname + " dt", d_dt.get(), dt, TOL_RED);
    else expect_exact(bname + " dt untouched", d_dt.get(), dt);
    if (tau < tmin || tau > tmax) expect_exact(bname + " dlog_tau unchanged (clamped)", d_dlt.get(), vecd{0.125});
    else {
        // the increment, so that the check sees it (0.125 is added on both sides)
        vecd g = d_dlt.get();
        g[0] -= 0.125;
        expect_close(bname + " dlog_tau (+=) increment", g, vecd{dlt - 0.125}, TOL_S);
    }
    const std::vector<floatX> dc1 = d_dc.raw(), dt1 = d_dt.raw();
    const std::vector<floatS> g1 = d_dlt.raw();
    d_dlt.set(vecd{0.125});
    infonce_backward(d_dc.p, with_dt ? d_dt.p : nullptr, d_dlt.p, d_probs.p, d_c.p, d_t.p, d_queue.p, d_pos.p, d_lt.p, Bc, Bt,
                     Q, P, tmin, tmax, scale, dloss, st);
    launched(bname + " (again)");
    expect_bitwise(bname + " dc bitwise repeatable", dc1, d_dc.raw());
    if (with_dt) expect_bitwise(bname + " dt bitwise repeatable", dt1, d_dt.raw());
    expect_bitwise(bname + " dlog_tau bitwise repeatable", g1, d_dlt.raw());
}

static void test_jepa_vq() {
    // trainer shapes
    test_vq_nearest(4096, 768, 384, true);
    test_vq_quantize(4096, 768, 384, 4);
    test_vq_code_stats(4096, 768, 384, 4);
    test_vq_code_stats(4096, 768, 384, 0);
    test_vq_ema(768, 384, 0.99f, false);
    test_vq_ema(768, 384, 0.95f, true);
    test_vq_refresh(768, 384, 100, 3.5f, 1.0f);
    test_vq_refresh(768, 384, 7, 2.0f, 2.0f);
    test_vq_commitment(4096, 384, 4);
    test_vq_commitment_big(4096, 384);
    test_vq_gumbel_forward(4096, 256, 384, 1.0f, 4, true);       // the reference's Gumbel config: K = 256
    test_vq_gumbel_forward(1024, 768, 384, 0.1f, 4, true);
    test_vq_gumbel_forward(4096, 256, 384, 0.5f, 4, false);
    test_vq_gumbel_backward(4096, 256, 384, 1.0f, 4);
    test_vq_gumbel_backward(1024, 768, 384, 0.1f, 0);
    test_infonce(512, 512, 8192, 256, 0.07, 0.05f, 0.2f, true);
    test_infonce(512, 512, 0, 256, 0.07, 0.05f, 0.2f, true);
    test_infonce(512, 512, 8192, 256, 0.3, 0.05f, 0.2f, false);  // clamped at tau_max, no target gradient
    // odd shapes
    test_vq_nearest(37, 5, 7, true);
    test_vq_nearest(1, 1, 1, false);
    test_vq_nearest(130, 70, 33, true);
    test_vq_nearest(65, 65, 17, false);
    test_vq_nearest(1000, 300, 64, false);
    test_vq_quantize(37, 5, 7, 3);
    test_vq_quantize(1, 1, 1, 0);
    test_vq_code_stats(1000, 13, 130, 3);
    test_vq_code_stats(1, 1, 1, 0);
    test_vq_code_stats(513, 70, 5, 2);
    test_vq_ema(37, 7, 0.9f, false);
    test_vq_ema(1, 1, 0.5f, false);
    test_vq_refresh(5, 3, 5, 1.0f, 1.0f);
    test_vq_commitment(37, 7, 3);
    test_vq_commitment(1, 1, 0);
    test_vq_gumbel_forward(37, 5, 7, 0.7f, 3, true);
    test_vq_gumbel_forward(130, 70, 33, 0.3f, 0, true);
    test_vq_gumbel_forward(37, 5, 7, 0.7f, 3, false);
    test_vq_gumbel_forward(1, 1, 1, 1.0f, 0, true);
    test_vq_gumbel_backward(37, 5, 7, 0.7f, 3);
    test_vq_gumbel_backward(130, 70, 33, 0.3f, 0);
    test_vq_gumbel_backward(1, 1, 1, 1.0f, 0);
    test_infonce(37, 29, 13, 5, 0.1, 0.05f, 0.2f, true);
    test_infonce(1, 1, 0, 1, 0.1, 0.05f, 0.2f, true);
    test_infonce(70, 65, 130, 33, 0.03, 0.05f, 0.2f, true);       // clamped at tau_min
}

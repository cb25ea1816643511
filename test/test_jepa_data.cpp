// Tests of common/jepa_data.h (JEPA samples, grid augmentations, object batches, invariance perturbations) and
// common/embedding_metrics.h (embedding diagnostics, symmetric eigenvalues, codebook perplexity):
//
//   make build/test_jepa_data && ./build/test_jepa_data
//
// Run from the repository root. Task files are built in memory from hand-made grids; the synthetic files in
// data/synth (made by `make`) are used when present (SKIP otherwise).
//  - examples: repeat mode (every pair with a known output), frames mode (every window of k+1 frames, unknown last
//    output, too-short tasks skipped and counted), a non-sequence file refused in frames mode;
//  - batches: each context slot / target holds grid_objects of the right grid (bitwise), empty grids give padded slots,
//    B = 0, all-off augmentation is the identity;
//  - augmentations, each alone on a hand-made grid: palette (a permutation of the present colours, its probability),
//    mask (only coloured cells cleared, its rate), translation (exactly one shift within the radius, all 25 drawn,
//    the size condition), D4 (exactly one of the 8, all drawn, its probability), dropout (whole objects only);
//    determinism in (seed, key); shared draws by default (equal grids stay equal; context and target keep their
//    relation: one palette map, shift and transform explain both), independent with per_grid; the batch equals the
//    objects of jepa_augment_sample's grids and a sample does not depend on the rest of the batch; fatal errors;
//  - perturbations: exact effect on hand-made rows (rounding and clamping of the colour, clamping of coordinates),
//    padded rows untouched, uniform permutations, both symmetry modes, role seeds;
//  - metrics: eigenvalues of diagonal, 2x2, rotated-diagonal (repeated eigenvalues; d = 200 over 6 decades), rank-1
//    matrices; erank of isotropic Gaussian data ~d and of rank-1 data ~1; RankMe and the covariance form against
//    their formulas on a known spectrum; the moment estimators on 4 values; Gaussian vs exponential data; degenerate
//    inputs (NaN), n < d; codebook perplexity.
#include <math.h>
#include <sys/stat.h>
#include <time.h>
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>
#include "../common/arc_tasks.h"
#include "../common/embedding_metrics.h"
#include "../common/jepa_data.h"
#include "../common/objects.h"
#include "../common/rand.h"
#include "test.h"

// ------------------------------------------------------------------------------------------------ helpers

static TestGrid blank_grid(int rows, int cols, uint8_t colour = 0) {
    TestGrid g;
    g.rows = rows;
    g.cols = cols;
    g.cells.assign((size_t)rows * cols, colour);
    return g;
}

static GridView view(const TestGrid& g) { return GridView{g.rows, g.cols, g.cells.data()}; }

struct TPair { TestGrid in, out; bool known = true; };
struct TTask { std::string name; int n_train; std::vector<TPair> pairs; };

// An ArcTaskFile in memory: the same structure arc_tasks_load returns (one shared cells buffer).
static ArcTaskFile make_file(const std::vector<TTask>& tasks, const char* path = "memory.bin") {
    auto cells = std::make_shared<std::vector<uint8_t>>();
    std::vector<std::vector<std::pair<long, long>>> offsets;
    for (const TTask& t : tasks) {
        offsets.emplace_back();
        for (const TPair& p : t.pairs) {
            const long in = (long)cells->size();
            cells->insert(cells->end(), p.in.cells.begin(), p.in.cells.end());
            long out = -1;
            if (p.known) {
                out = (long)cells->size();
                cells->insert(cells->end(), p.out.cells.begin(), p.out.cells.end());
            }
            offsets.back().push_back({in, out});
        }
    }
    ArcTaskFile f;
    f.path = path;
    f.canvas = f.max_side = 30;
    f.cells = cells;
    for (size_t ti = 0; ti < tasks.size(); ti++) {
        const TTask& t = tasks[ti];
        ArcTask task;
        task.name = t.name;
        task.n_train = t.n_train;
        task.n_test = (int)t.pairs.size() - t.n_train;
        task.storage = cells;
        for (size_t pi = 0; pi < t.pairs.size(); pi++) {
            const TPair& p = t.pairs[pi];
            ArcPair ap;
            ap.input = GridView{p.in.rows, p.in.cols, cells->data() + offsets[ti][pi].first};
            ap.output = p.known ? GridView{p.out.rows, p.out.cols, cells->data() + offsets[ti][pi].second} : GridView{0, 0, nullptr};
            task.pairs.push_back(ap);
        }
        f.tasks.push_back(task);
    }
    return f;
}

// A sequence task: pairs (f_0, f_1), ..., (f_{S-1}, f_S); the last pair is the test pair.
static TTask sequence_task(const std::string& name, const std::vector<TestGrid>& frames, bool last_known = true) {
    TTask t;
    t.name = name;
    for (size_t i = 0; i + 1 < frames.size(); i++) t.pairs.push_back({frames[i], frames[i + 1], true});
    t.pairs.back().known = last_known;
    t.n_train = (int)t.pairs.size() - 1;
    return t;
}

static ObjectSet objects_of(const uint8_t* cells, int rows, int cols) {
    ObjectSet s;
    grid_objects(cells, rows, cols, OBJ_MAX_OBJECTS, &s);
    return s;
}
static ObjectSet objects_of(const GridView& g) { return objects_of(g.cells, g.rows, g.cols); }

// Does grid g of the batch hold exactly the object set s (features bitwise, mask, adjacency)?
static bool batch_slot_is(const ObjectBatch& b, int g, const ObjectSet& s) {
    const size_t N = OBJ_MAX_OBJECTS;
    if (b.N != OBJ_MAX_OBJECTS || g < 0 || g >= b.G) return false;
    return memcmp(&b.features[(size_t)g * N * OBJ_FEATURES], s.features.data(), N * OBJ_FEATURES * sizeof(float)) == 0 &&
           memcmp(&b.mask[(size_t)g * N], s.mask.data(), N) == 0 &&
           memcmp(&b.adjacency[(size_t)g * N * N], s.adjacency.data(), N * N) == 0;
}

static bool batch_shapes_ok(const ObjectBatch& b, int G) {
    const size_t N = OBJ_MAX_OBJECTS;
    return b.G == G && b.N == OBJ_MAX_OBJECTS && b.features.size() == (size_t)G * N * OBJ_FEATURES &&
           b.mask.size() == (size_t)G * N && b.adjacency.size() == (size_t)G * N * N;
}

static bool same_batch(const ObjectBatch& a, const ObjectBatch& b) {
    return a.G == b.G && a.N == b.N && a.features.size() == b.features.size() &&
           memcmp(a.features.data(), b.features.data(), a.features.size() * sizeof(float)) == 0 && a.mask == b.mask &&
           a.adjacency == b.adjacency;
}

static bool grid_equals(const JepaGrid& a, const TestGrid& b) {
    return a.rows == b.rows && a.cols == b.cols && memcmp(a.cells, b.cells.data(), b.cells.size()) == 0;
}
static bool grid_equals(const JepaGrid& a, const JepaGrid& b) {
    return a.rows == b.rows && a.cols == b.cols && memcmp(a.cells, b.cells, (size_t)a.rows * a.cols) == 0;
}

// The grid shifted by (dy, dx) (written here: cells shifted off vanish, uncovered cells are 0).
static TestGrid shifted(const TestGrid& g, int dy, int dx) {
    TestGrid s = blank_grid(g.rows, g.cols);
    for (int y = 0; y < g.rows; y++)
        for (int x = 0; x < g.cols; x++) {
            const int ny = y + dy, nx = x + dx;
            if (ny >= 0 && ny < g.rows && nx >= 0 && nx < g.cols) s.cells[(size_t)ny * g.cols + nx] = g.cells[(size_t)y * g.cols + x];
        }
    return s;
}

static TestGrid dihedral(const TestGrid& g, int t) {
    TestGrid d = blank_grid(g.rows, g.cols);
    grid_dihedral(g.cells.data(), g.rows, g.cols, t, d.cells.data(), &d.rows, &d.cols);
    return d;
}

static TestGrid recoloured(const TestGrid& g, const int map[10]) {
    TestGrid r = g;
    for (auto& c : r.cells) c = (uint8_t)map[c];
    return r;
}

// Augments one grid alone (n = 1) and returns it.
static JepaGrid augment_one(const TestGrid& g, const JepaAugment& a, uint64_t seed, uint64_t key) {
    GridView v = view(g);
    JepaGrid out;
    jepa_augment_sample(&v, 1, a, seed, key, &out);
    return out;
}

// The test grids.
static const TestGrid ASYM = grid_from({"110020", "100000", "000300", "044000", "000005"});   // no symmetry, 4 colours

static std::vector<double> random_normal(size_t n, Rng* r) {
    std::vector<double> v(n);
    for (auto& x : v) x = rng_normal(r);
    return v;
}

// ------------------------------------------------------------------------------------------------ examples

static ArcTaskFile repeat_file() {
    TTask t0{"t0", 2, {{grid_from({"10", "02"}), grid_from({"01", "20"})}, {grid_from({"3"}), grid_from({"33"})},
                       {grid_from({"400", "004"}), grid_from({"4"})}}};
    TTask t1{"t1", 1, {{grid_from({"5"}), grid_from({"6"})}, {grid_from({"7"}), TestGrid(), false}}};
    return make_file({t0, t1}, "repeat.bin");
}

static std::vector<TestGrid> frames_of(int count, int rows, int cols, uint8_t colour) {
    // a pixel walking right along row 1: distinct frames
    std::vector<TestGrid> frames;
    for (int i = 0; i < count; i++) {
        TestGrid g = blank_grid(rows, cols);
        g.cells[(size_t)1 * cols + i] = colour;
        g.cells[0] = 9;   // a fixed second object
        frames.push_back(g);
    }
    return frames;
}

static ArcTaskFile frames_file() {
    return make_file({sequence_task("s0", frames_of(4, 4, 6, 2)), sequence_task("s1", frames_of(2, 3, 5, 3)),
                      sequence_task("s2", frames_of(3, 5, 5, 4), false)},
                     "frames.bin");
}

static bool examples_are(const std::vector<JepaExample>& got, const std::vector<std::pair<int, int>>& want) {
    if (got.size() != want.size()) return false;
    for (size_t i = 0; i < got.size(); i++)
        if (got[i].task != want[i].first || got[i].first_pair != want[i].second) return false;
    return true;
}

static void test_examples() {
    const ArcTaskFile rf = repeat_file();
    int skipped = -1;
    auto ex = jepa_examples(rf, CONTEXT_REPEAT, 3, &skipped);
    check(examples_are(ex, {{0, 0}, {0, 1}, {0, 2}, {1, 0}}) && skipped == 0, "examples_repeat",
          "%zu examples, %d skipped (expected 4: every pair with a known output; 0 skipped)", ex.size(), skipped);

    const ArcTaskFile ff = frames_file();
    // s0: 4 frames; s1: 2 frames; s2: 3 frames (2 inputs, unknown last output... 2 pairs -> inputs f0, f1 only)
    ex = jepa_examples(ff, CONTEXT_FRAMES, 3, &skipped);
    check(examples_are(ex, {{0, 0}}) && skipped == 2, "examples_frames_k3", "%zu examples, %d skipped", ex.size(), skipped);
    ex = jepa_examples(ff, CONTEXT_FRAMES, 2, &skipped);
    check(examples_are(ex, {{0, 0}, {0, 1}}) && skipped == 2, "examples_frames_k2", "%zu examples, %d skipped", ex.size(), skipped);
    ex = jepa_examples(ff, CONTEXT_FRAMES, 1, &skipped);
    check(examples_are(ex, {{0, 0}, {0, 1}, {0, 2}, {1, 0}, {2, 0}}) && skipped == 0, "examples_frames_k1",
          "%zu examples, %d skipped", ex.size(), skipped);
    check(jepa_frame_count(ff.tasks[2]) == 2 && jepa_frame_count(ff.tasks[0]) == 4, "examples_frames_unknown_last_output",
          "frame counts %d and %d, expected 2 (inputs only) and 4", jepa_frame_count(ff.tasks[2]), jepa_frame_count(ff.tasks[0]));
    ex = jepa_examples(ff, CONTEXT_FRAMES, 4, &skipped);
    check(ex.empty() && skipped == 3, "examples_frames_too_short", "%zu examples, %d skipped", ex.size(), skipped);

    expect_fatal("examples_frames_not_a_sequence", [] { jepa_examples(repeat_file(), CONTEXT_FRAMES, 1); },
                 {"repeat.bin", "task 0 (t0)", "pair 0", "context_mode=repeat"});
    expect_fatal("examples_bad_k", [] { jepa_examples(repeat_file(), CONTEXT_REPEAT, 0); }, {"k = 0"});
}

// ------------------------------------------------------------------------------------------------ batches

static void test_fill_plain() {
    const ArcTaskFile rf = repeat_file();
    const int k = 3;
    auto ex = jepa_examples(rf, CONTEXT_REPEAT, k);
    ObjectBatch ctx, tgt;
    jepa_fill(&ctx, &tgt, rf, ex.data(), (int)ex.size(), k, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    bool ok = batch_shapes_ok(ctx, (int)ex.size() * k) && batch_shapes_ok(tgt, (int)ex.size());
    for (size_t b = 0; ok && b < ex.size(); b++) {
        const ArcPair& p = rf.tasks[(size_t)ex[b].task].pairs[(size_t)ex[b].first_pair];
        for (int l = 0; l < k; l++) ok = ok && batch_slot_is(ctx, (int)b * k + l, objects_of(p.input));
        ok = ok && batch_slot_is(tgt, (int)b, objects_of(p.output));
    }
    check(ok, "fill_repeat_objects", "context slots must hold the input's objects k times, the target the output's");

    const ArcTaskFile ff = frames_file();
    ok = true;
    for (int kk = 1; kk <= 3; kk++) {
        auto fe = jepa_examples(ff, CONTEXT_FRAMES, kk);
        jepa_fill(&ctx, &tgt, ff, fe.data(), (int)fe.size(), kk, CONTEXT_FRAMES, JepaAugment(), 1, nullptr);
        ok = ok && batch_shapes_ok(ctx, (int)fe.size() * kk) && batch_shapes_ok(tgt, (int)fe.size());
        for (size_t b = 0; ok && b < fe.size(); b++) {
            const ArcTask& t = ff.tasks[(size_t)fe[b].task];
            for (int l = 0; l < kk; l++) ok = ok && batch_slot_is(ctx, (int)b * kk + l, objects_of(jepa_frame(t, fe[b].first_pair + l)));
            ok = ok && batch_slot_is(tgt, (int)b, objects_of(jepa_frame(t, fe[b].first_pair + kk)));
        }
    }
    check(ok, "fill_frames_objects", "context slot l must hold frame s+l, the target frame s+k");

    // an all-background grid: no object, every slot padded
    const ArcTaskFile ef = make_file({{"empty", 1, {{blank_grid(4, 4), grid_from({"0000", "0100"})}, {blank_grid(1, 1), blank_grid(30, 30)}}}});
    auto ee = jepa_examples(ef, CONTEXT_REPEAT, 2);
    jepa_fill(&ctx, &tgt, ef, ee.data(), (int)ee.size(), 2, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    bool zero = batch_shapes_ok(ctx, 4) && batch_shapes_ok(tgt, 2);
    for (float v : ctx.features) zero = zero && v == 0;
    for (uint8_t v : ctx.mask) zero = zero && v == 0;
    for (uint8_t v : ctx.adjacency) zero = zero && v == 0;
    zero = zero && tgt.mask[0] == 1 && tgt.mask[1] == 0;
    for (int n = 0; n < OBJ_MAX_OBJECTS; n++) zero = zero && tgt.mask[(size_t)OBJ_MAX_OBJECTS + n] == 0;
    // with every augmentation on as well
    JepaAugment all;
    all.palette_prob = all.translate_prob = all.dihedral_prob = 1;
    all.mask_ratio = all.object_dropout = 0.5f;
    all.translate_radius = 2;
    const uint64_t keys[2] = {5, 6};
    jepa_fill(&ctx, &tgt, ef, ee.data(), (int)ee.size(), 2, CONTEXT_REPEAT, all, 1, keys);
    for (uint8_t v : ctx.mask) zero = zero && v == 0;
    check(zero, "fill_empty_grid", "an all-background grid must give 0 objects and all slots padded");

    jepa_fill(&ctx, &tgt, rf, ex.data(), 0, 3, CONTEXT_REPEAT, all, 1, nullptr);
    check(batch_shapes_ok(ctx, 0) && batch_shapes_ok(tgt, 0) && ctx.features.empty(), "fill_zero_batch", "B = 0 must give empty batches");

    // all augmentations off (the default) with keys: the same as without
    ObjectBatch ctx2, tgt2;
    jepa_fill(&ctx, &tgt, rf, ex.data(), (int)ex.size(), k, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    std::vector<uint64_t> ks(ex.size());
    for (size_t i = 0; i < ks.size(); i++) ks[i] = jepa_sample_key(3, i);
    JepaAugment off;
    off.translate_radius = 3;     // a radius without a probability is still off
    off.per_grid = true;
    jepa_fill(&ctx2, &tgt2, rf, ex.data(), (int)ex.size(), k, CONTEXT_REPEAT, off, 99, ks.data());
    check(!jepa_augment_active(JepaAugment()) && !jepa_augment_active(off) && same_batch(ctx, ctx2) && same_batch(tgt, tgt2),
          "fill_identity_augment", "augmentations off must leave the grids unchanged");
}

// ------------------------------------------------------------------------------------------------ augmentations

static void test_augment_palette() {
    JepaAugment a;
    a.palette_prob = 1;
    std::set<std::vector<int>> perms;
    bool ok = true;
    std::string why;
    for (uint64_t key = 0; key < 60 && ok; key++) {
        const JepaGrid out = augment_one(ASYM, a, 7, key);
        int map[10];
        for (int c = 0; c < 10; c++) map[c] = -1;
        ok = out.rows == ASYM.rows && out.cols == ASYM.cols;
        for (size_t i = 0; ok && i < ASYM.cells.size(); i++) {
            const int from = ASYM.cells[i], to = out.cells[i];
            if (map[from] < 0) map[from] = to;
            ok = map[from] == to && ((from == 0) == (to == 0));
        }
        std::set<int> image;
        for (int c = 1; c < 10; c++)
            if (map[c] >= 0) image.insert(map[c]);
        ok = ok && image == std::set<int>({1, 2, 3, 4, 5});   // a permutation of the colours present
        if (!ok) why = fmt("key %d: not a permutation of the present colours", (int)key);
        perms.insert(std::vector<int>(map, map + 10));
    }
    check(ok && perms.size() >= 20, "augment_palette", "%s; %zu distinct permutations in 60 draws", why.c_str(), perms.size());

    a.palette_prob = 0.5f;
    int changed = 0;
    for (uint64_t key = 0; key < 400; key++) changed += !grid_equals(augment_one(ASYM, a, 7, key), ASYM);
    // P(changed) = 0.5 * (1 - 1/120)
    check(changed > 160 && changed < 240, "augment_palette_probability", "%d of 400 grids changed at palette_prob 0.5", changed);
}

static void test_augment_mask() {
    JepaAugment a;
    a.mask_ratio = 1;
    const JepaGrid all = augment_one(ASYM, a, 1, 2);
    bool ok = grid_equals(all, blank_grid(ASYM.rows, ASYM.cols));
    TestGrid full = blank_grid(30, 30, 6);
    for (int i = 0; i < 30; i++) full.cells[(size_t)i * 31] = 0;   // a background diagonal
    a.mask_ratio = 0.5f;
    const JepaGrid half = augment_one(full, a, 1, 2);
    int masked = 0, coloured = 0;
    for (size_t i = 0; i < full.cells.size(); i++) {
        ok = ok && (half.cells[i] == full.cells[i] || (full.cells[i] != 0 && half.cells[i] == 0));
        coloured += full.cells[i] != 0;
        masked += full.cells[i] != 0 && half.cells[i] == 0;
    }
    const double frac = (double)masked / coloured;
    check(ok && frac > 0.44 && frac < 0.56, "augment_mask",
          "mask_ratio 1 must clear every cell; at 0.5, only coloured cells may turn background (fraction %.3f)", frac);
}

static void test_augment_translate() {
    TestGrid g = blank_grid(9, 11);
    g.cells[4 * 11 + 5] = 3;
    g.cells[0 * 11 + 0] = 7;   // falls off on a negative shift
    g.cells[8 * 11 + 10] = 2;
    JepaAugment a;
    a.translate_prob = 1;
    a.translate_radius = 2;
    std::set<std::pair<int, int>> seen;
    bool ok = true;
    for (uint64_t key = 0; key < 300 && ok; key++) {
        const JepaGrid out = augment_one(g, a, 3, key);
        int found = 0;
        for (int dy = -3; dy <= 3; dy++)
            for (int dx = -3; dx <= 3; dx++)
                if (grid_equals(out, shifted(g, dy, dx))) {
                    found++;
                    ok = ok && abs(dy) <= 2 && abs(dx) <= 2;
                    seen.insert({dy, dx});
                }
        ok = ok && found == 1;
    }
    check(ok && seen.size() == 25, "augment_translate", "every result must be one shift within the radius; %zu of 25 shifts seen",
          seen.size());

    a.min_grid_for_translate = 10;   // the 9 x 11 grid is too small
    bool same = true;
    for (uint64_t key = 0; key < 50; key++) same = same && grid_equals(augment_one(g, a, 3, key), g);
    a.min_grid_for_translate = 9;
    bool moved = false;
    for (uint64_t key = 0; key < 50; key++) moved = moved || !grid_equals(augment_one(g, a, 3, key), g);
    a.translate_prob = 0;
    for (uint64_t key = 0; key < 50; key++) same = same && grid_equals(augment_one(g, a, 3, key), g);
    check(same && moved, "augment_translate_conditions",
          "no shift when the smaller side < min_grid_for_translate or translate_prob = 0; shifts when it is equal");
}

static void test_augment_dihedral() {
    JepaAugment a;
    a.dihedral_prob = 1;
    std::set<int> seen;
    bool ok = true;
    for (uint64_t key = 0; key < 300 && ok; key++) {
        const JepaGrid out = augment_one(ASYM, a, 4, key);
        int found = 0;
        for (int t = 0; t < 8; t++)
            if (grid_equals(out, dihedral(ASYM, t))) { found++; seen.insert(t); }
        ok = found == 1;
    }
    a.dihedral_prob = 0.25f;
    int changed = 0;
    for (uint64_t key = 0; key < 800; key++) changed += !grid_equals(augment_one(ASYM, a, 4, key), ASYM);
    // P(changed) = 0.25 * 7/8 = 0.219
    check(ok && seen.size() == 8 && changed > 130 && changed < 220, "augment_dihedral",
          "each result must be one of the 8 transforms, all 8 drawn (%zu seen); %d of 800 changed at probability 0.25",
          seen.size(), changed);
}

static void test_augment_dropout() {
    // 7 objects, two of them colour 1 (separate components)
    const TestGrid g = grid_from({"1100022", "0000002", "3030000", "0000110", "4000000", "4005550"});
    int label[ARC_MAX_SIDE * ARC_MAX_SIDE];
    const int n = jepa_label_objects(g.cells.data(), g.rows, g.cols, label);
    JepaAugment a;
    a.object_dropout = 1;
    bool ok = n == 7 && grid_equals(augment_one(g, a, 5, 1), blank_grid(g.rows, g.cols));
    a.object_dropout = 0.5f;
    int kept = 0, dropped = 0;
    for (uint64_t key = 0; key < 100 && ok; key++) {
        const JepaGrid out = augment_one(g, a, 5, key);
        for (int o = 0; o < n; o++) {
            int same = 0, cleared = 0, cells = 0;
            for (int c = 0; c < g.rows * g.cols; c++)
                if (label[c] == o) {
                    cells++;
                    same += out.cells[c] == g.cells[c];
                    cleared += out.cells[c] == 0;
                }
            ok = ok && (same == cells || cleared == cells);   // whole objects only
            kept += same == cells;
            dropped += cleared == cells;
        }
        for (int c = 0; c < g.rows * g.cols; c++) ok = ok && (g.cells[c] != 0 || out.cells[c] == 0);
    }
    check(ok && kept > 280 && dropped > 280, "augment_dropout",
          "objects must be dropped whole (kept %d, dropped %d of 700 at 0.5; 7 objects expected, found %d)", kept, dropped, n);
}

static JepaAugment all_on() {
    JepaAugment a;
    a.palette_prob = a.translate_prob = a.dihedral_prob = 1;
    a.mask_ratio = 0.2f;
    a.object_dropout = 0.2f;
    a.translate_radius = 2;
    return a;
}

static void test_augment_keys() {
    const JepaAugment a = all_on();
    const TestGrid g2 = grid_from({"1200", "0030", "4400"});
    GridView grids[3] = {view(ASYM), view(g2), view(ASYM)};
    JepaGrid x[3], y[3];
    bool det = true, key_differs = false, seed_differs = false;
    for (uint64_t key = 0; key < 20; key++) {
        jepa_augment_sample(grids, 3, a, 11, key, x);
        jepa_augment_sample(grids, 3, a, 11, key, y);
        for (int i = 0; i < 3; i++) det = det && grid_equals(x[i], y[i]);
        jepa_augment_sample(grids, 3, a, 11, key + 1000, y);
        key_differs = key_differs || !grid_equals(x[0], y[0]);
        jepa_augment_sample(grids, 3, a, 12, key, y);
        seed_differs = seed_differs || !grid_equals(x[0], y[0]);
    }
    check(det && key_differs && seed_differs, "augment_deterministic_in_keys",
          "the same (seed, key) must give the same grids, another key or seed other grids");

    // default (per_grid = false): one draw for the sample, so equal grids stay equal; per_grid: independent draws
    bool shared_equal = true, per_grid_differs = false;
    JepaAugment pg = a;
    pg.per_grid = true;
    for (uint64_t key = 0; key < 40; key++) {
        jepa_augment_sample(grids, 3, a, 11, key, x);
        shared_equal = shared_equal && grid_equals(x[0], x[2]);
        jepa_augment_sample(grids, 3, pg, 11, key, y);
        per_grid_differs = per_grid_differs || !grid_equals(y[0], y[2]);
    }
    check(shared_equal && per_grid_differs, "augment_shared_by_default",
          "per_grid = false must augment equal grids of a sample equally, per_grid = true independently");
}

// Shared draws keep the context -> target relation: with palette, translation and D4 on, the augmented input and
// output are (P, T, D)(input) and (P, T, D)(output) for ONE palette map P, shift T and transform D.
static void test_augment_relation() {
    TestGrid in = blank_grid(7, 8), out = blank_grid(7, 8);
    in.cells[3 * 8 + 3] = 2;
    in.cells[1 * 8 + 1] = 5;
    out.cells[3 * 8 + 4] = 2;   // colour 2 moved right by one
    out.cells[1 * 8 + 1] = 5;
    JepaAugment a;
    a.palette_prob = a.translate_prob = a.dihedral_prob = 1;
    a.translate_radius = 1;
    bool ok = true;
    int not_identity = 0;
    for (uint64_t key = 0; key < 60 && ok; key++) {
        GridView grids[2] = {view(in), view(out)};
        JepaGrid x[2];
        jepa_augment_sample(grids, 2, a, 21, key, x);
        int matches = 0;
        for (int swap = 0; swap < 2; swap++) {
            int map[10];
            for (int c = 0; c < 10; c++) map[c] = c;
            if (swap) { map[2] = 5; map[5] = 2; }
            for (int t = 0; t < 8; t++)
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++)
                        if (grid_equals(x[0], dihedral(shifted(recoloured(in, map), dy, dx), t)) &&
                            grid_equals(x[1], dihedral(shifted(recoloured(out, map), dy, dx), t))) {
                            matches++;
                            not_identity += swap || t || dy || dx;
                        }
        }
        ok = matches >= 1;
    }
    check(ok && not_identity > 40, "augment_relation_survives",
          "the augmented context and target must come from one palette map, shift and transform");
}

static void test_fill_augmented() {
    const ArcTaskFile ff = make_file({sequence_task("s0", frames_of(5, 6, 7, 2)), sequence_task("s1", frames_of(4, 5, 8, 6))});
    const int k = 2;
    auto ex = jepa_examples(ff, CONTEXT_FRAMES, k);
    const int B = (int)ex.size();   // 3 + 2
    std::vector<uint64_t> keys((size_t)B);
    for (int b = 0; b < B; b++) keys[(size_t)b] = jepa_sample_key(7, (uint64_t)(100 + b));
    JepaAugment a = all_on();
    for (int per_grid = 0; per_grid < 2; per_grid++) {
        a.per_grid = per_grid;
        ObjectBatch ctx, tgt;
        jepa_fill(&ctx, &tgt, ff, ex.data(), B, k, CONTEXT_FRAMES, a, 33, keys.data());
        bool ok = batch_shapes_ok(ctx, B * k) && batch_shapes_ok(tgt, B);
        for (int b = 0; ok && b < B; b++) {
            GridView grids[k + 1];
            for (int l = 0; l <= k; l++) grids[l] = jepa_frame(ff.tasks[(size_t)ex[(size_t)b].task], ex[(size_t)b].first_pair + l);
            JepaGrid out[k + 1];
            jepa_augment_sample(grids, k + 1, a, 33, keys[(size_t)b], out);
            for (int l = 0; l < k; l++) ok = ok && batch_slot_is(ctx, b * k + l, objects_of(out[l].cells, out[l].rows, out[l].cols));
            ok = ok && batch_slot_is(tgt, b, objects_of(out[k].cells, out[k].rows, out[k].cols));
        }
        check(ok, per_grid ? "fill_augmented_per_grid" : "fill_augmented",
              "the batch must hold the objects of jepa_augment_sample's grids");
        // a sample's tensors depend on its example and key only, not on its position or the batch
        ObjectBatch c1, t1;
        jepa_fill(&c1, &t1, ff, &ex[3], 1, k, CONTEXT_FRAMES, a, 33, &keys[3]);
        bool same = true;
        const size_t F = OBJ_MAX_OBJECTS * OBJ_FEATURES;
        for (int l = 0; l < k; l++)
            same = same && memcmp(&c1.features[(size_t)l * F], &ctx.features[(size_t)(3 * k + l) * F], F * sizeof(float)) == 0;
        same = same && memcmp(t1.features.data(), &tgt.features[3 * F], F * sizeof(float)) == 0;
        check(same, per_grid ? "fill_sample_independent_of_batch_per_grid" : "fill_sample_independent_of_batch",
              "sample 3 filled alone must equal its slots in the batch of 5");
    }
}

static void test_fill_errors() {
    static ArcTaskFile rf = repeat_file();
    static ArcTaskFile ff = frames_file();
    static JepaExample good = {0, 0};
    expect_fatal("fill_error_no_keys", [] {
        ObjectBatch c, t;
        jepa_fill(&c, &t, rf, &good, 1, 2, CONTEXT_REPEAT, all_on(), 1, nullptr);
    }, {"no sample keys"});
    expect_fatal("fill_error_task_range", [] {
        ObjectBatch c, t;
        JepaExample e = {2, 0};
        jepa_fill(&c, &t, rf, &e, 1, 2, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    }, {"repeat.bin", "task 2"});
    expect_fatal("fill_error_unknown_output", [] {
        ObjectBatch c, t;
        JepaExample e = {1, 1};
        jepa_fill(&c, &t, rf, &e, 1, 2, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    }, {"repeat.bin", "task 1 (t1)", "unknown output"});
    expect_fatal("fill_error_window", [] {
        ObjectBatch c, t;
        JepaExample e = {0, 1};
        jepa_fill(&c, &t, ff, &e, 1, 3, CONTEXT_FRAMES, JepaAugment(), 1, nullptr);
    }, {"frames.bin", "task 0 (s0)", "window 1..4"});
    expect_fatal("fill_error_not_a_sequence", [] {
        ObjectBatch c, t;
        jepa_fill(&c, &t, rf, &good, 1, 1, CONTEXT_FRAMES, JepaAugment(), 1, nullptr);
    }, {"repeat.bin", "not a frame sequence"});
    expect_fatal("fill_error_probability", [] {
        ObjectBatch c, t;
        JepaAugment a;
        a.mask_ratio = 1.5f;
        uint64_t key = 0;
        jepa_fill(&c, &t, rf, &good, 1, 1, CONTEXT_REPEAT, a, 1, &key);
    }, {"mask_ratio", "1.5"});
    expect_fatal("fill_error_k", [] {
        ObjectBatch c, t;
        jepa_fill(&c, &t, rf, &good, 1, 0, CONTEXT_REPEAT, JepaAugment(), 1, nullptr);
    }, {"k = 0"});
}

// ------------------------------------------------------------------------------------------------ perturbations

// G = 2 grids of N = 3 slots: valid (0,0), (0,1), (1,0); padded (0,2) holding garbage (7s), (1,1), (1,2) zeros.
static ObjectBatch hand_batch() {
    ObjectBatch b;
    b.G = 2;
    b.N = 3;
    b.features.assign((size_t)2 * 3 * OBJ_FEATURES, 0.0f);
    b.mask = {1, 1, 0, 1, 0, 0};
    b.adjacency.assign(18, 0);
    const float dom[3] = {3.0f, 2.5f, 12.0f};   // 2.5 rounds to 2 (half to even); 12 clamps to 9
    const int valid[3] = {0, 1, 3};
    const float coords[3][6] = {{0.5f, 0.5f, 0.25f, 0.25f, 0.75f, 0.75f},    // cy, cx, min_y, min_x, max_y, max_x
                                {0.02f, 0.97f, 0.0f, 0.9f, 0.05f, 0.99f},     // near the borders: clamping
                                {0.4f, 0.3f, 0.3f, 0.1f, 0.5f, 0.6f}};
    for (int r = 0; r < 3; r++) {
        float* f = &b.features[(size_t)valid[r] * OBJ_FEATURES];
        for (int j = 0; j < OBJ_FEATURES; j++) f[j] = 0.001f * (float)(j + 1) + (float)r;   // distinct values
        f[OBJ_DOMINANT_COLOR] = dom[r];
        f[OBJ_CENTROID_Y] = coords[r][0];
        f[OBJ_CENTROID_X] = coords[r][1];
        f[OBJ_BBOX_MIN_Y] = coords[r][2];
        f[OBJ_BBOX_MIN_X] = coords[r][3];
        f[OBJ_BBOX_MAX_Y] = coords[r][4];
        f[OBJ_BBOX_MAX_X] = coords[r][5];
    }
    for (int j = 0; j < OBJ_FEATURES; j++) b.features[(size_t)2 * OBJ_FEATURES + j] = 7.0f;
    return b;
}

static bool rows_untouched(const ObjectBatch& a, const ObjectBatch& b, const std::vector<int>& rows) {
    for (int r : rows)
        if (memcmp(&a.features[(size_t)r * OBJ_FEATURES], &b.features[(size_t)r * OBJ_FEATURES], OBJ_FEATURES * sizeof(float)) != 0)
            return false;
    return a.mask == b.mask && a.adjacency == b.adjacency;
}

static bool is_perm10(const uint8_t* p) {
    int seen = 0;
    for (int i = 0; i < 10; i++) seen |= p[i] < 10 ? 1 << p[i] : 1 << 10;
    return seen == 0x3FF;
}

static void test_perturb_color() {
    bool ok = true;
    std::string why;
    for (uint64_t seed = 1; seed <= 50 && ok; seed++) {
        const ObjectBatch before = hand_batch();
        ObjectBatch b = before;
        perturb_color(&b, seed);
        uint8_t cp[10], sp[10];
        jepa_color_perms(seed, cp, sp);
        ok = is_perm10(cp) && is_perm10(sp) && rows_untouched(before, b, {2, 4, 5});
        const int valid[3] = {0, 1, 3}, colour[3] = {3, 2, 9};
        for (int r = 0; r < 3 && ok; r++) {
            const float* f0 = &before.features[(size_t)valid[r] * OBJ_FEATURES];
            const float* f1 = &b.features[(size_t)valid[r] * OBJ_FEATURES];
            ok = f1[OBJ_DOMINANT_COLOR] == (float)cp[colour[r]];
            for (int j = 0; j < OBJ_COLOR_SLOTS; j++) ok = ok && f1[OBJ_COLOR_SLOT0 + j] == f0[OBJ_COLOR_SLOT0 + sp[j]];
            for (int j = 0; j < OBJ_COLOR_SLOT0; j++) ok = ok && (j == OBJ_DOMINANT_COLOR || f1[j] == f0[j]);
            if (!ok) why = fmt("seed %d row %d", (int)seed, valid[r]);
        }
    }
    check(ok, "perturb_color_exact",
          "%s: dominant colour -> P[clamp(round)], slot j <- slot S[j], other features and padded rows unchanged", why.c_str());

    // the permutations are uniform: each value at each position ~1/10 of 5000 draws
    int counts[2][10][10] = {};
    for (uint64_t seed = 0; seed < 5000; seed++) {
        uint8_t cp[10], sp[10];
        jepa_color_perms(seed, cp, sp);
        for (int i = 0; i < 10; i++) { counts[0][i][cp[i]]++; counts[1][i][sp[i]]++; }
    }
    int lo = 5000, hi = 0;
    for (auto& a : counts)
        for (auto& row : a)
            for (int c : row) { lo = std::min(lo, c); hi = std::max(hi, c); }
    check(lo > 400 && hi < 600, "perturb_color_uniform", "position counts %d..%d of 5000, expected ~500", lo, hi);
}

static void test_perturb_translation() {
    bool ok = true;
    std::string why;
    double dmin = 1, dmax = -1;
    for (uint64_t seed = 1; seed <= 300 && ok; seed++) {
        const ObjectBatch before = hand_batch();
        ObjectBatch b = before;
        perturb_translation(&b, 0.1f, seed);
        ok = rows_untouched(before, b, {2, 4, 5});
        if (!ok) why = fmt("seed %d: padded rows changed", (int)seed);
        const int valid[3] = {0, 1, 3};
        float d0[2] = {0, 0};
        for (int r = 0; r < 3 && ok; r++) {
            const size_t o = (size_t)valid[r];
            const float* f0 = &before.features[o * OBJ_FEATURES];
            const float* f1 = &b.features[o * OBJ_FEATURES];
            for (int axis = 0; axis < 2; axis++) {
                const float d = jepa_translation_delta(seed, o, axis, 0.1f);
                ok = ok && fabsf(d) <= 0.1f;
                if (r == 0) { d0[axis] = d; dmin = std::min(dmin, (double)d); dmax = std::max(dmax, (double)d); }
                if (r == 2) ok = ok && (d != d0[axis]);   // independent per object
                const int cols[3] = {axis ? OBJ_CENTROID_X : OBJ_CENTROID_Y, axis ? OBJ_BBOX_MIN_X : OBJ_BBOX_MIN_Y,
                                     axis ? OBJ_BBOX_MAX_X : OBJ_BBOX_MAX_Y};
                for (int c : cols) {
                    const float want = std::min(1.0f, std::max(0.0f, f0[c] + d));
                    ok = ok && f1[c] == want && f1[c] >= 0 && f1[c] <= 1;
                }
            }
            for (int j = 0; j < OBJ_FEATURES; j++)
                if (j != OBJ_CENTROID_Y && j != OBJ_CENTROID_X && (j < OBJ_BBOX_MIN_Y || j > OBJ_BBOX_MAX_X)) ok = ok && f1[j] == f0[j];
            // row 0 sits at 0.25..0.75: no clamping, the same shift on its three y (x) features
            if (r == 0)
                ok = ok && fabsf((f1[OBJ_CENTROID_Y] - f0[OBJ_CENTROID_Y]) - (f1[OBJ_BBOX_MAX_Y] - f0[OBJ_BBOX_MAX_Y])) < 1e-6f;
            if (!ok) why = fmt("seed %d row %d", (int)seed, valid[r]);
        }
    }
    check(ok && dmin < -0.09 && dmax > 0.09, "perturb_translation_exact",
          "%s: per-object shifts in [-d, d], clamped to [0, 1]; shifts seen %.3f..%.3f", why.c_str(), dmin, dmax);
    ObjectBatch b = hand_batch();
    perturb_translation(&b, 0.0f, 5);
    check(same_batch(b, hand_batch()), "perturb_translation_zero", "max_delta 0 must change nothing");
}

static void test_perturb_symmetry() {
    bool ok = true;
    int modes[2] = {0, 0};
    for (uint64_t seed = 1; seed <= 200 && ok; seed++) {
        const ObjectBatch before = hand_batch();
        ObjectBatch b = before;
        perturb_symmetry(&b, seed);
        const int mode = jepa_symmetry_mode(seed);
        modes[mode]++;
        ok = rows_untouched(before, b, {2, 4, 5});
        const int c = mode == 0 ? OBJ_CENTROID_X : OBJ_CENTROID_Y, lo = mode == 0 ? OBJ_BBOX_MIN_X : OBJ_BBOX_MIN_Y;
        const int hi = mode == 0 ? OBJ_BBOX_MAX_X : OBJ_BBOX_MAX_Y;
        for (int r : {0, 1, 3}) {
            const float* f0 = &before.features[(size_t)r * OBJ_FEATURES];
            const float* f1 = &b.features[(size_t)r * OBJ_FEATURES];
            ok = ok && f1[c] == 1.0f - f0[c] && f1[lo] == 1.0f - f0[hi] && f1[hi] == 1.0f - f0[lo];
            for (int j = 0; j < OBJ_FEATURES; j++)
                if (j != c && j != lo && j != hi) ok = ok && f1[j] == f0[j];
        }
    }
    check(ok && modes[0] > 70 && modes[1] > 70, "perturb_symmetry_exact",
          "one axis reflected (c -> 1-c, min -> 1-max, max -> 1-min), the other untouched; modes %d horizontal, %d vertical",
          modes[0], modes[1]);
}

static void test_perturb_roles() {
    // the same seed on the context and the target batch: the same colour permutation in both
    ObjectBatch ctx = hand_batch(), tgt = hand_batch();
    tgt.G = 1;
    tgt.features.resize((size_t)3 * OBJ_FEATURES);
    tgt.mask.resize(3);
    tgt.adjacency.resize(9);
    perturb_color(&ctx, 77);
    perturb_color(&tgt, 77);
    const bool same = ctx.features[OBJ_DOMINANT_COLOR] == tgt.features[OBJ_DOMINANT_COLOR];
    // the role seeds differ, as the reference's independent draws for the two branches
    bool differ = true;
    for (int kind = 0; kind < 3; kind++)
        differ = differ && jepa_perturb_seed(1, 10, kind, JEPA_ROLE_CONTEXT) != jepa_perturb_seed(1, 10, kind, JEPA_ROLE_TARGET);
    check(same && differ, "perturb_roles", "same seed: same permutation; role seeds must differ");
    expect_fatal("perturb_bad_batch", [] {
        ObjectBatch b = hand_batch();
        b.G = 3;
        perturb_color(&b, 1);
    }, {"perturb_color", "G 3"});
}

// ------------------------------------------------------------------------------------------------ metrics

// Random orthogonal d x d (Gram-Schmidt on Gaussian columns, twice).
static std::vector<double> random_orthogonal(int d, Rng* r) {
    std::vector<double> Q = random_normal((size_t)d * d, r);   // column j: Q[i*d + j]
    for (int j = 0; j < d; j++)
        for (int pass = 0; pass < 2; pass++) {
            for (int p = 0; p < j; p++) {
                double dot = 0;
                for (int i = 0; i < d; i++) dot += Q[(size_t)i * d + j] * Q[(size_t)i * d + p];
                for (int i = 0; i < d; i++) Q[(size_t)i * d + j] -= dot * Q[(size_t)i * d + p];
            }
            double norm = 0;
            for (int i = 0; i < d; i++) norm += Q[(size_t)i * d + j] * Q[(size_t)i * d + j];
            for (int i = 0; i < d; i++) Q[(size_t)i * d + j] /= sqrt(norm);
        }
    return Q;
}

static void test_eigenvalues() {
    Rng r = rng_make(42);
    std::vector<double> diag = {3, -1, 0.5, 10, 2};
    std::vector<double> A(25, 0.0);
    for (int i = 0; i < 5; i++) A[(size_t)i * 6] = diag[(size_t)i];
    std::vector<double> got = symmetric_eigenvalues(A, 5), want = {-1, 0.5, 2, 3, 10};
    double derr = got.size() == 5 ? 0 : INFINITY;
    for (size_t i = 0; i < got.size() && i < 5; i++) derr = std::max(derr, fabs(got[i] - want[i]));
    check(derr < 1e-14, "eig_diagonal", "diagonal eigenvalues must come back sorted; max error %.3g", derr);

    got = symmetric_eigenvalues({2, 1, 1, 2}, 2);
    check(got.size() == 2 && fabs(got[0] - 1) < 1e-14 && fabs(got[1] - 3) < 1e-14, "eig_2x2", "got %.17g %.17g, expected 1 3",
          got.size() > 1 ? got[0] : NAN, got.size() > 1 ? got[1] : NAN);

    const int d = 40;
    std::vector<double> Q = random_orthogonal(d, &r), lambda((size_t)d);
    for (int i = 0; i < d; i++) lambda[(size_t)i] = (double)(i % 7) - 2.5 + (i % 3 == 0 ? 1e-3 * i : 0.0);   // repeats
    std::vector<double> M((size_t)d * d, 0.0);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += Q[(size_t)i * d + k] * lambda[(size_t)k] * Q[(size_t)j * d + k];
            M[(size_t)i * d + j] = s;
        }
    got = symmetric_eigenvalues(M, d);
    std::sort(lambda.begin(), lambda.end());
    double err = 0;
    for (int i = 0; i < d; i++) err = std::max(err, fabs(got[(size_t)i] - lambda[(size_t)i]));
    check(err < 1e-12, "eig_rotated_diagonal", "Q diag(lambda) Q^T: max error %.3g (repeated eigenvalues)", err);

    {   // larger: d = 200, eigenvalues spread over 1e-3..1e3 and a negative one
        const int n = 200;
        std::vector<double> Q2 = random_orthogonal(n, &r), l2((size_t)n), M2((size_t)n * n, 0.0), QL((size_t)n * n);
        for (int i = 0; i < n; i++) l2[(size_t)i] = i == 0 ? -5.0 : pow(10.0, -3.0 + 6.0 * i / (n - 1));
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++) QL[(size_t)i * n + k] = Q2[(size_t)i * n + k] * l2[(size_t)k];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double acc = 0;
                for (int k = 0; k < n; k++) acc += QL[(size_t)i * n + k] * Q2[(size_t)j * n + k];
                M2[(size_t)i * n + j] = acc;
            }
        got = symmetric_eigenvalues(M2, n);
        std::sort(l2.begin(), l2.end());
        double e2 = 0;
        for (int i = 0; i < n; i++) e2 = std::max(e2, fabs(got[(size_t)i] - l2[(size_t)i]));
        check(e2 < 1e-10, "eig_d200", "max error %.3g for eigenvalues up to 1e3", e2);
    }

    std::vector<double> v = random_normal((size_t)d, &r);
    double vv = 0;
    for (double x : v) vv += x * x;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) M[(size_t)i * d + j] = v[(size_t)i] * v[(size_t)j];
    got = symmetric_eigenvalues(M, d);
    double rest = 0;
    for (int i = 0; i < d - 1; i++) rest = std::max(rest, fabs(got[(size_t)i]));
    check(fabs(got.back() - vv) < 1e-13 * vv && rest < 1e-13 * vv, "eig_rank1", "top %.17g vs |v|^2 %.17g, others up to %.3g",
          got.back(), vv, rest);

    got = symmetric_eigenvalues({-4.5}, 1);
    std::vector<double> none = symmetric_eigenvalues({}, 0);
    std::vector<double> bad = symmetric_eigenvalues({1, NAN, NAN, 1}, 2);
    check(got.size() == 1 && fabs(got[0] + 4.5) < 1e-14 && none.empty() && bad.size() == 2 && isnan(bad[0]) && isnan(bad[1]),
          "eig_small_and_bad", "d = 1 gives its entry, d = 0 nothing, a NaN entry NaNs");
}

static std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

static void test_metrics() {
    Rng r = rng_make(7);
    {   // isotropic Gaussian
        const int n = 4000, d = 16;
        std::vector<float> Z = to_float(random_normal((size_t)n * d, &r));
        EmbeddingMetrics m = embedding_metrics(Z.data(), n, d);
        check(m.erank_cov > 15.5 && m.erank_cov <= 16 && m.erank_rankme > 15.5 && m.erank_rankme <= 16.001 &&
              fabs(m.variance - 1) < 0.05 && m.isotropy > 0.6 && m.isotropy <= 1,
              "metrics_isotropic_gaussian", "erank_cov %.3f, rankme %.3f (expected ~16), variance %.3f, isotropy %.3f",
              m.erank_cov, m.erank_rankme, m.variance, m.isotropy);
    }
    {   // rank-1: z_i = a_i v
        const int n = 2000, d = 16;
        std::vector<double> v = random_normal((size_t)d, &r), a = random_normal((size_t)n, &r);
        std::vector<float> Z((size_t)n * d);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) Z[(size_t)i * d + j] = (float)(a[(size_t)i] * v[(size_t)j]);
        EmbeddingMetrics m = embedding_metrics(Z.data(), n, d);
        check(m.erank_cov < 1.01 && m.erank_cov >= 1 && m.erank_rankme < 1.01 && m.erank_rankme >= 1 && m.isotropy < 1e-4,
              "metrics_rank1", "erank_cov %.5f, rankme %.5f (expected ~1), isotropy %.3g", m.erank_cov, m.erank_rankme, m.isotropy);
    }
    {   // a known spectrum: Z = sum_k s_k u_k e_k^T with orthonormal zero-mean columns u_k, so the centred and the
        // uncentred Z have the singular values s_k
        const int n = 64, d = 6;
        const double s[d] = {8, 4, 2, 1, 0.5, 0.25};
        std::vector<double> U = random_normal((size_t)n * (d + 1), &r);   // column 0: ones, to make the others zero-mean
        for (int i = 0; i < n; i++) U[(size_t)i * (d + 1)] = 1;
        for (int j = 0; j <= d; j++)
            for (int pass = 0; pass < 2; pass++) {
                for (int p = 0; p < j; p++) {
                    double dot = 0;
                    for (int i = 0; i < n; i++) dot += U[(size_t)i * (d + 1) + j] * U[(size_t)i * (d + 1) + p];
                    for (int i = 0; i < n; i++) U[(size_t)i * (d + 1) + j] -= dot * U[(size_t)i * (d + 1) + p];
                }
                double norm = 0;
                for (int i = 0; i < n; i++) norm += U[(size_t)i * (d + 1) + j] * U[(size_t)i * (d + 1) + j];
                for (int i = 0; i < n; i++) U[(size_t)i * (d + 1) + j] /= sqrt(norm);
            }
        std::vector<float> Z((size_t)n * d);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < d; k++) Z[(size_t)i * d + k] = (float)(s[k] * U[(size_t)i * (d + 1) + k + 1]);
        EmbeddingMetrics m = embedding_metrics(Z.data(), n, d);
        double ssum = 0, lsum = 0, Hs = 0, Hl = 0, var = 0;
        double lam[d];
        for (int k = 0; k < d; k++) {
            ssum += s[k];
            lam[k] = s[k] * s[k] / (n - 1) + 1e-6;
            lsum += lam[k];
            var += s[k] * s[k] / n / d;
        }
        for (int k = 0; k < d; k++) {
            const double p = s[k] / ssum + 1e-7, q = lam[k] / lsum;
            Hs -= p * log(p);
            Hl -= q * log(q + 1e-12);
        }
        const double iso = (lam[d - 1] + 1e-8) / (lam[0] + 1e-8);
        const double e1 = fabs(m.erank_rankme / exp(Hs) - 1), e2 = fabs(m.erank_cov / exp(Hl) - 1);
        const double e3 = fabs(m.variance / var - 1), e4 = fabs(m.isotropy / iso - 1);
        check(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5 && e4 < 1e-5 && m.erank_rankme > m.erank_cov, "metrics_known_spectrum",
              "rankme %.6f vs %.6f, erank_cov %.6f vs %.6f, variance %.6g vs %.6g, isotropy %.6g vs %.6g", m.erank_rankme,
              exp(Hs), m.erank_cov, exp(Hl), m.variance, var, m.isotropy, iso);
    }
    {   // the skewness and kurtosis estimators on 4 values: 0 0 0 1 -> skew 2/sqrt(3), kurtosis 7/3
        const float Z[4] = {0, 0, 0, 1};
        EmbeddingMetrics m = embedding_metrics(Z, 4, 1);
        const double want = 1.0 / (1.0 + 2.0 / sqrt(3.0) + fabs(7.0 / 3.0 - 3.0));
        check(fabs(m.gaussian_score - want) < 1e-12 && fabs(m.variance - 0.1875) < 1e-15, "metrics_moments_exact",
              "gaussian_score %.15f, expected %.15f; variance %.15f, expected 0.1875", m.gaussian_score, want, m.variance);
    }
    {   // Gaussian vs skewed data
        const int n = 20000, d = 8;
        std::vector<float> Z = to_float(random_normal((size_t)n * d, &r)), E((size_t)n * d);
        for (auto& x : E) x = (float)-log(1.0 - rng_uniform(&r));   // exponential: skew 2, kurtosis 9
        EmbeddingMetrics g = embedding_metrics(Z.data(), n, d), e = embedding_metrics(E.data(), n, d);
        check(g.gaussian_score > 0.93 && e.gaussian_score < 0.2, "metrics_gaussian_score",
              "Gaussian %.4f (expected near 1), exponential %.4f (expected ~1/9)", g.gaussian_score, e.gaussian_score);
    }
    {   // degenerate inputs
        const float one[3] = {1, 2, 3};
        std::vector<float> Z(20, 0.5f);
        EmbeddingMetrics a = embedding_metrics(one, 1, 3), b = embedding_metrics(one, 3, 0), c = embedding_metrics(nullptr, 0, 4);
        std::vector<float> W = Z;
        W[7] = NAN;
        EmbeddingMetrics w = embedding_metrics(W.data(), 5, 4);
        auto all_nan = [](const EmbeddingMetrics& m) {
            return isnan(m.variance) && isnan(m.isotropy) && isnan(m.erank_cov) && isnan(m.erank_rankme) && isnan(m.gaussian_score);
        };
        EmbeddingMetrics k = embedding_metrics(Z.data(), 5, 4);   // every row equal
        std::vector<float> zero(20, 0.0f);
        EmbeddingMetrics zm = embedding_metrics(zero.data(), 5, 4);
        check(all_nan(a) && all_nan(b) && all_nan(c) && all_nan(w) && k.variance == 0 && fabs(k.isotropy - 1) < 1e-12 &&
              fabs(k.erank_cov - 4) < 1e-9 && fabs(k.gaussian_score - 0.25) < 1e-12 && fabs(k.erank_rankme - 1) < 1e-3 &&
              zm.erank_rankme == 0,
              "metrics_degenerate",
              "n < 2, d < 1, NaN: all NaN; constant rows: variance 0 (%g), isotropy 1 (%g), erank_cov d (%g), score 1/4 (%g), "
              "rankme 1 (%g); zero Z: rankme 0 (%g)", k.variance, k.isotropy, k.erank_cov, k.gaussian_score, k.erank_rankme,
              zm.erank_rankme);
    }
    {   // fewer rows than columns: RankMe from the n x n Gram matrix, at most n
        const int n = 10, d = 50;
        std::vector<float> Z = to_float(random_normal((size_t)n * d, &r));
        EmbeddingMetrics m = embedding_metrics(Z.data(), n, d), m2 = embedding_metrics(Z.data(), n, d);
        check(m.erank_rankme > 7 && m.erank_rankme <= 10 && isfinite(m.erank_cov) && memcmp(&m, &m2, sizeof m) == 0,
              "metrics_wide_and_deterministic", "rankme %.3f (expected <= n = 10), erank_cov %.3f; repeat bitwise equal",
              m.erank_rankme, m.erank_cov);
    }
    {   // the size of the reference's rolling buffer, timed (information)
        const int n = 4096, d = 256;
        std::vector<float> Z = to_float(random_normal((size_t)n * d, &r));
        timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        EmbeddingMetrics m = embedding_metrics(Z.data(), n, d);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        check(m.erank_cov > 240 && m.erank_rankme > 240, "metrics_4096x256", "erank_cov %.2f, rankme %.2f", m.erank_cov, m.erank_rankme);
        printf("     embedding_metrics(n = 4096, d = 256): %.2f s\n", secs);
    }

    std::vector<float> counts(768, 3.0f);
    const double uniform = codebook_perplexity(counts.data(), 768);
    std::vector<float> onehot(10, 0.0f), two(10, 0.0f), zeros(10, 0.0f), negative(10, 1.0f);
    onehot[4] = 12;
    two[1] = two[8] = 5;
    negative[3] = -1;
    const double p1 = codebook_perplexity(onehot.data(), 10), p2 = codebook_perplexity(two.data(), 10);
    check(fabs(uniform - 768) < 1e-9 && p1 == 1 && fabs(p2 - 2) < 1e-12 && isnan(codebook_perplexity(zeros.data(), 10)) &&
          isnan(codebook_perplexity(negative.data(), 10)) && isnan(codebook_perplexity(counts.data(), 0)),
          "codebook_perplexity", "uniform %.12g (768), one code %.12g (1), two codes %.12g (2); no counts, negative or K = 0: NaN",
          uniform, p1, p2);
}

// ------------------------------------------------------------------------------------------------ the synthetic files

static bool exists(const char* path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void test_synthetic_files() {
    const char* seq = "data/synth/sequences_train.bin";
    const char* arc = "data/synth/train.bin";
    if (!exists(seq) || !exists(arc)) {
        skip("synthetic_files", "data/synth/sequences_train.bin or train.bin missing (run make)");
        return;
    }
    const ArcTaskFile sf = arc_tasks_load(seq);
    int skipped = -1;
    auto ex = jepa_examples(sf, CONTEXT_FRAMES, 3, &skipped);
    size_t windows = 0;
    for (const ArcTask& t : sf.tasks) windows += t.pairs.size() + 1 >= 4 ? t.pairs.size() + 1 - 3 : 0;
    check(ex.size() == windows && ex.size() >= sf.tasks.size() && skipped == 0, "synthetic_sequences_examples",
          "%zu windows of 4 frames in %zu sequences, %d skipped", ex.size(), sf.tasks.size(), skipped);
    const int B = std::min<int>(256, (int)ex.size());
    std::vector<uint64_t> keys((size_t)B);
    for (int b = 0; b < B; b++) keys[(size_t)b] = jepa_sample_key(0, (uint64_t)b);
    ObjectBatch ctx, tgt;
    jepa_fill(&ctx, &tgt, sf, ex.data(), B, 3, CONTEXT_FRAMES, all_on(), 1, keys.data());
    int objects = 0;
    for (uint8_t m : ctx.mask) objects += m;
    check(batch_shapes_ok(ctx, 3 * B) && batch_shapes_ok(tgt, B) && objects > 3 * B, "synthetic_sequences_fill",
          "%d objects in %d context grids", objects, 3 * B);

    const ArcTaskFile af = arc_tasks_load(arc);
    ex = jepa_examples(af, CONTEXT_REPEAT, 3, &skipped);
    check(ex.size() == af.n_pairs() && skipped == 0, "synthetic_arc_repeat_examples", "%zu examples for %zu pairs", ex.size(),
          af.n_pairs());
    expect_fatal("synthetic_arc_frames_refused", [] { jepa_examples(arc_tasks_load("data/synth/train.bin"), CONTEXT_FRAMES, 3); },
                 {"data/synth/train.bin", "not a frame sequence", "context_mode=repeat"});
}

int main() {
    test_examples();
    test_fill_plain();
    test_augment_palette();
    test_augment_mask();
    test_augment_translate();
    test_augment_dihedral();
    test_augment_dropout();
    test_augment_keys();
    test_augment_relation();
    test_fill_augmented();
    test_fill_errors();
    test_perturb_color();
    test_perturb_translation();
    test_perturb_symmetry();
    test_perturb_roles();
    test_eigenvalues();
    test_metrics();
    test_synthetic_files();
    return test_summary();
}

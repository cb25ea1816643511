// Tests of common/arc_tasks.h (binary task file loader) and common/augment.h (grid transforms, TRM
// tokenisation, augmentation table, translation offsets).
//
//   g++ -O2 -std=c++17 test/test_augment.cpp -o build/test_augment && ./build/test_augment
//
// Run from the repository root. The real-data checks convert ../shared/data/arc-agi-{1,2}/data/{training,
// evaluation} into build/ with python3 data/arc.py and print SKIP lines when that data is absent; every
// other check uses grids made here.
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <set>
#include <string>
#include <vector>
#include "../common/arc_tasks.h"
#include "../common/augment.h"
#include "test.h"

// ------------------------------------------------------------------------------------------------ helpers

struct Grid {
    int rows = 0, cols = 0;
    std::vector<uint8_t> c;
    uint8_t at(int i, int j) const { return c[(size_t)(i * cols + j)]; }
    bool operator==(const Grid& o) const { return rows == o.rows && cols == o.cols && c == o.c; }
};

static Grid make_grid(int rows, int cols, const std::vector<uint8_t>& cells) { Grid g; g.rows = rows; g.cols = cols; g.c = cells; return g; }
static Grid grid_of(const GridView& v) { Grid g; g.rows = v.rows; g.cols = v.cols; if (v.cells) g.c.assign(v.cells, v.cells + v.rows * v.cols); return g; }

static Grid random_grid(int rows, int cols, uint64_t seed) {
    Grid g; g.rows = rows; g.cols = cols; g.c.resize((size_t)(rows * cols));
    for (int k = 0; k < rows * cols; k++) g.c[(size_t)k] = (uint8_t)hash_below(10, seed, (uint64_t)k);
    return g;
}

// Reference dihedral transforms built from numpy-style primitives, each written as a scatter (where does
// source cell (r, c) go?) rather than the library's gather, and composed the way upstream composes them.
static Grid ref_rot90(const Grid& a) {        // np.rot90(a, k=1): counter-clockwise
    Grid b; b.rows = a.cols; b.cols = a.rows; b.c.resize(a.c.size());
    for (int r = 0; r < a.rows; r++) for (int c = 0; c < a.cols; c++) b.c[(size_t)((a.cols - 1 - c) * b.cols + r)] = a.at(r, c);
    return b;
}
static Grid ref_fliplr(const Grid& a) {
    Grid b = a;
    for (int r = 0; r < a.rows; r++) for (int c = 0; c < a.cols; c++) b.c[(size_t)(r * a.cols + a.cols - 1 - c)] = a.at(r, c);
    return b;
}
static Grid ref_flipud(const Grid& a) {
    Grid b = a;
    for (int r = 0; r < a.rows; r++) for (int c = 0; c < a.cols; c++) b.c[(size_t)((a.rows - 1 - r) * a.cols + c)] = a.at(r, c);
    return b;
}
static Grid ref_transpose(const Grid& a) {
    Grid b; b.rows = a.cols; b.cols = a.rows; b.c.resize(a.c.size());
    for (int r = 0; r < a.rows; r++) for (int c = 0; c < a.cols; c++) b.c[(size_t)(c * b.cols + r)] = a.at(r, c);
    return b;
}
static Grid ref_dihedral(const Grid& a, int t) {
    switch (t) {
        case 0: return a;
        case 1: return ref_rot90(a);
        case 2: return ref_rot90(ref_rot90(a));
        case 3: return ref_rot90(ref_rot90(ref_rot90(a)));
        case 4: return ref_fliplr(a);
        case 5: return ref_flipud(a);
        case 6: return ref_transpose(a);
        default: return ref_fliplr(ref_rot90(a));
    }
}

static Grid lib_dihedral(const Grid& a, int t) {
    Grid b; b.c.resize(a.c.size());
    grid_dihedral(a.c.data(), a.rows, a.cols, t, b.c.data(), &b.rows, &b.cols);
    return b;
}
static Grid lib_augment(const Grid& a, const Augmentation& aug) {
    Grid b; b.c.resize(a.c.size());
    grid_augment(a.c.data(), a.rows, a.cols, aug, b.c.data(), &b.rows, &b.cols);
    return b;
}
static Grid lib_unaugment(const Grid& a, const Augmentation& aug) {
    Grid b; b.c.resize(a.c.size());
    grid_unaugment(a.c.data(), a.rows, a.cols, aug, b.c.data(), &b.rows, &b.cols);
    return b;
}
// Tokenise at (0, 0) on the canvas, then crop: must give the grid back.
static bool tokenize_crop_roundtrip(const Grid& g, int canvas) {
    std::vector<int32_t> tok((size_t)(canvas * canvas));
    std::vector<uint8_t> back((size_t)(canvas * canvas));
    grid_tokenize(tok.data(), g.c.data(), g.rows, g.cols, canvas, 0, 0);
    int r, c;
    int area = grid_crop_tokens(tok.data(), canvas, back.data(), &r, &c);
    back.resize((size_t)(r * c));
    return area == g.rows * g.cols && make_grid(r, c, back) == g;
}

static Augmentation random_perm_aug(int t, uint64_t seed) {
    Augmentation a = augmentation_identity();
    a.dihedral = (uint8_t)t;
    for (int i = 9; i >= 2; i--) { int j = 1 + (int)hash_below((uint32_t)i, seed, (uint64_t)i); std::swap(a.perm[i], a.perm[j]); }
    return a;
}

// An in-memory task (the cells owned by its storage like a loaded one). An output with rows == 0 is unknown.
static ArcTask make_task(const std::string& name, int n_train, const std::vector<std::pair<Grid, Grid>>& pairs) {
    auto buf = std::make_shared<std::vector<uint8_t>>();
    std::vector<long> offs;
    for (const auto& p : pairs) {
        offs.push_back((long)buf->size()); buf->insert(buf->end(), p.first.c.begin(), p.first.c.end());
        offs.push_back(p.second.rows ? (long)buf->size() : -1); buf->insert(buf->end(), p.second.c.begin(), p.second.c.end());
    }
    ArcTask t; t.name = name; t.n_train = n_train; t.n_test = (int)pairs.size() - n_train; t.storage = buf;
    for (size_t i = 0; i < pairs.size(); i++) {
        ArcPair ap;
        ap.input = {pairs[i].first.rows, pairs[i].first.cols, buf->data() + offs[2 * i]};
        ap.output = {pairs[i].second.rows, pairs[i].second.cols, offs[2 * i + 1] >= 0 ? buf->data() + offs[2 * i + 1] : nullptr};
        t.pairs.push_back(ap);
    }
    return t;
}

// The same bytes data/arc_format.py writes (cells in order: each pair's input, then its output).
static void put32(std::vector<uint8_t>& b, int32_t v) { for (int k = 0; k < 4; k++) b.push_back((uint8_t)((uint32_t)v >> (8 * k))); }
static std::vector<uint8_t> encode_task_file(const std::vector<ArcTask>& tasks, int canvas) {
    std::vector<uint8_t> task_b, pair_b, cells, names;
    int n_pairs = 0, max_side = 0;
    for (const ArcTask& t : tasks) {
        put32(task_b, n_pairs); put32(task_b, t.n_train); put32(task_b, t.n_test); put32(task_b, (int32_t)names.size());
        names.insert(names.end(), t.name.begin(), t.name.end()); names.push_back(0);
        for (const ArcPair& p : t.pairs) {
            put32(pair_b, p.input.rows); put32(pair_b, p.input.cols); put32(pair_b, p.output.rows); put32(pair_b, p.output.cols);
            put32(pair_b, (int32_t)cells.size());
            cells.insert(cells.end(), p.input.cells, p.input.cells + p.input.rows * p.input.cols);
            put32(pair_b, p.output.cells ? (int32_t)cells.size() : -1);
            if (p.output.cells) cells.insert(cells.end(), p.output.cells, p.output.cells + p.output.rows * p.output.cols);
            max_side = std::max({max_side, p.input.rows, p.input.cols, p.output.rows, p.output.cols});
            n_pairs++;
        }
    }
    std::vector<uint8_t> b;
    int32_t h[ARC_TASKS_HEADER_INTS] = {ARC_TASKS_MAGIC, ARC_TASKS_VERSION, (int32_t)tasks.size(), n_pairs,
                                        (int32_t)cells.size(), (int32_t)names.size(), canvas, max_side};
    for (int i = 0; i < ARC_TASKS_HEADER_INTS; i++) put32(b, h[i]);
    for (auto* part : {&task_b, &pair_b, &cells, &names}) b.insert(b.end(), part->begin(), part->end());
    return b;
}
static void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    FILE* f = fopen_check(path.c_str(), "wb");
    fwrite_check(b.data(), b.size(), f, path.c_str());
    fclose(f);
}
static std::vector<uint8_t> read_bytes(const std::string& path) {
    std::vector<uint8_t> b((size_t)regular_file_size(path.c_str(), "file"));
    FILE* f = fopen_check(path.c_str(), "rb");
    fread_check(b.data(), b.size(), f, path.c_str());
    fclose(f);
    return b;
}
static void set32(std::vector<uint8_t>& b, size_t at, int32_t v) { for (int k = 0; k < 4; k++) b[at + (size_t)k] = (uint8_t)((uint32_t)v >> (8 * k)); }

// Exact (slow) identity of an augmented task, as upstream's puzzle_hash sees it: the sorted list of its
// augmented (input, output) pairs, shapes included, train and test pooled.
static std::string slow_task_key(const ArcTask& task, const Augmentation& a) {
    std::vector<std::string> pairs;
    for (const ArcPair& p : task.pairs) {
        std::string s;
        for (const GridView* v : {&p.input, &p.output}) {
            Grid g = grid_of(*v), ag = v->cells ? lib_augment(g, a) : g;
            s += (char)ag.rows; s += (char)ag.cols; s.append(ag.c.begin(), ag.c.end()); s += '|';
        }
        pairs.push_back(s);
    }
    std::sort(pairs.begin(), pairs.end());
    std::string key;
    for (const std::string& s : pairs) key += s + "#";
    return key;
}

// Replays the table's candidate draws with the exact comparison: the kept list must be the table.
static bool slow_table_matches(const ArcTask& task, int task_index, int num_aug, uint64_t seed,
                               const std::vector<Augmentation>& table, std::string* why) {
    std::set<std::string> seen = {slow_task_key(task, augmentation_identity())};
    std::vector<Augmentation> kept = {augmentation_identity()};
    for (int trial = 0; trial < ARC_AUGMENT_RETRIES * num_aug && (int)kept.size() < num_aug + 1; trial++) {
        Augmentation a = augmentation_candidate(seed, task_index, trial);
        if (seen.insert(slow_task_key(task, a)).second) kept.push_back(a);
    }
    if (kept.size() != table.size()) { *why = "exact replay keeps " + std::to_string(kept.size()) + ", table has " + std::to_string(table.size()); return false; }
    for (size_t i = 0; i < kept.size(); i++)
        if (memcmp(&kept[i], &table[i], sizeof(Augmentation)) != 0) { *why = "entry " + std::to_string(i) + " differs"; return false; }
    return true;
}

static int count_json(const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return -1;
    int n = 0;
    while (dirent* e = readdir(d)) { std::string s = e->d_name; if (s.size() > 5 && s.substr(s.size() - 5) == ".json") n++; }
    closedir(d);
    return n;
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ------------------------------------------------------------------------------------------------ tests

static void test_dihedral() {
    // numpy's own results on [[1,2,3],[4,5,6]] for ids 0..7 (np.rot90 k=1,2,3, fliplr, flipud, .T, fliplr(rot90)).
    Grid a = make_grid(2, 3, {1, 2, 3, 4, 5, 6});
    const std::vector<Grid> want = {
        a, make_grid(3, 2, {3, 6, 2, 5, 1, 4}), make_grid(2, 3, {6, 5, 4, 3, 2, 1}), make_grid(3, 2, {4, 1, 5, 2, 6, 3}),
        make_grid(2, 3, {3, 2, 1, 6, 5, 4}), make_grid(2, 3, {4, 5, 6, 1, 2, 3}), make_grid(3, 2, {1, 4, 2, 5, 3, 6}),
        make_grid(3, 2, {6, 3, 5, 2, 4, 1})};
    bool ok = true;
    for (int t = 0; t < 8; t++) ok = ok && lib_dihedral(a, t) == want[(size_t)t] && ref_dihedral(a, t) == want[(size_t)t];
    check(ok, "dihedral_matches_numpy_on_2x3");

    // Every shape 1..30 x 1..30, every id: library (gather formula) == reference (scatter compositions);
    // DIHEDRAL_INVERSE[t] undoes t; the 8 transforms of an asymmetric grid are distinct.
    int bad = 0, bad_inv = 0, bad_distinct = 0;
    for (int r = 1; r <= 30; r++)
        for (int c = 1; c <= 30; c++) {
            Grid g = random_grid(r, c, 1000 + (uint64_t)(r * 31 + c));
            for (int k = 0; k < r * c; k++) g.c[(size_t)k] = (uint8_t)(k % 10);   // distinguishes positions well
            if (r * c > 1) { g.c[0] = 9; g.c[1] = 8; }
            std::set<std::vector<uint8_t>> outs;
            for (int t = 0; t < 8; t++) {
                Grid d = lib_dihedral(g, t);
                if (!(d == ref_dihedral(g, t))) bad++;
                if (!(lib_dihedral(d, DIHEDRAL_INVERSE[t]) == g)) bad_inv++;
                std::vector<uint8_t> key = d.c; key.push_back((uint8_t)d.rows);
                outs.insert(key);
            }
            if (r >= 3 && c >= 3 && outs.size() != 8) bad_distinct++;
        }
    check(bad == 0, "dihedral_matches_reference_all_shapes_all_ids", "%d (shape, id) mismatches", bad);
    check(bad_inv == 0, "dihedral_inverse_table_undoes_each_id", "%d failures", bad_inv);
    check(bad_distinct == 0, "dihedral_ids_give_8_distinct_transforms", "%d shapes with fewer than 8", bad_distinct);

    // Group structure: composing two transforms is one of the 8 (checked on an asymmetric 3x4 grid).
    Grid g = random_grid(3, 4, 7);
    for (int k = 0; k < 12; k++) g.c[(size_t)k] = (uint8_t)(k % 10 + (k >= 10));
    int not_closed = 0;
    for (int t1 = 0; t1 < 8; t1++)
        for (int t2 = 0; t2 < 8; t2++) {
            Grid d = lib_dihedral(lib_dihedral(g, t1), t2);
            bool found = false;
            for (int t = 0; t < 8; t++) found = found || d == lib_dihedral(g, t);
            not_closed += !found;
        }
    check(not_closed == 0, "dihedral_composition_closed", "%d compositions outside the group", not_closed);
}

static void test_augment_shapes() {
    // Augment then unaugment gives each grid back; augment == dihedral of the colour-mapped grid; tokenise at
    // (0,0) then crop gives the augmented grid back; for every shape on a 30 canvas and a 10 canvas.
    int bad_rt = 0, bad_def = 0, bad_crop = 0, n = 0;
    for (int canvas : {30, 10})
        for (int r = 1; r <= canvas; r++)
            for (int c = 1; c <= canvas; c++)
                for (int t = 0; t < 8; t++) {
                    Grid g = random_grid(r, c, (uint64_t)(canvas * 100000 + r * 1000 + c * 10 + t));
                    Augmentation a = random_perm_aug(t, (uint64_t)(r * 1000 + c * 10 + t));
                    Grid ag = lib_augment(g, a);
                    Grid mapped = g;
                    for (auto& v : mapped.c) v = a.perm[v];
                    bad_def += !(ag == ref_dihedral(mapped, t));
                    bad_rt += !(lib_unaugment(ag, a) == g);
                    bad_crop += !tokenize_crop_roundtrip(ag, canvas);
                    n++;
                }
    check(bad_def == 0, "augment_is_colour_map_then_dihedral", "%d of %d", bad_def, n);
    check(bad_rt == 0, "unaugment_inverts_augment_all_shapes", "%d of %d", bad_rt, n);
    check(bad_crop == 0, "tokenize_then_crop_roundtrip_all_shapes", "%d of %d", bad_crop, n);

    Grid unknown;
    Augmentation a = random_perm_aug(1, 5);
    Grid au = lib_augment(unknown, a);
    check(au.rows == 0 && au.cols == 0, "augment_of_unknown_0x0_grid_is_0x0");
}

static void test_tokenize_translation() {
    // Every cell of a translated tokenisation against the spec, for many shapes/offsets, incl. grids touching
    // the canvas edge (no EOS row / column) and the corner cell that stays PAD.
    int bad = 0, n = 0;
    for (int canvas : {30, 12, 1}) {
        for (int trial = 0; trial < 4000; trial++) {
            int r = 1 + (int)hash_below((uint32_t)canvas, 11, (uint64_t)trial, (uint64_t)canvas);
            int c = 1 + (int)hash_below((uint32_t)canvas, 12, (uint64_t)trial, (uint64_t)canvas);
            int pr = (int)hash_below((uint32_t)(canvas - r + 1), 13, (uint64_t)trial, (uint64_t)canvas);
            int pc = (int)hash_below((uint32_t)(canvas - c + 1), 14, (uint64_t)trial, (uint64_t)canvas);
            if (trial % 4 == 1) pr = canvas - r;   // touching the bottom edge
            if (trial % 4 == 2) pc = canvas - c;   // touching the right edge
            Grid g = random_grid(r, c, (uint64_t)trial);
            std::vector<int32_t> tok((size_t)(canvas * canvas), -7);
            grid_tokenize(tok.data(), g.c.data(), r, c, canvas, pr, pc);
            for (int i = 0; i < canvas; i++)
                for (int j = 0; j < canvas; j++) {
                    int want = ARC_TOKEN_PAD;
                    if (i >= pr && i < pr + r && j >= pc && j < pc + c) want = g.at(i - pr, j - pc) + 2;
                    else if (i == pr + r && j >= pc && j < pc + c) want = ARC_TOKEN_EOS;
                    else if (j == pc + c && i >= pr && i < pr + r) want = ARC_TOKEN_EOS;
                    bad += tok[(size_t)(i * canvas + j)] != want;
                }
            n++;
        }
    }
    check(bad == 0, "tokenize_translated_cells_match_spec", "%d wrong tokens over %d grids", bad, n);

    // A concrete picture: 2x3 grid at (1, 2) on a 6 canvas.
    Grid g = make_grid(2, 3, {0, 1, 2, 3, 4, 9});
    std::vector<int32_t> tok(36);
    grid_tokenize(tok.data(), g.c.data(), 2, 3, 6, 1, 2);
    const std::vector<int32_t> want = {0, 0, 0, 0, 0, 0,
                                       0, 0, 2, 3, 4, 1,
                                       0, 0, 5, 6, 11, 1,
                                       0, 0, 1, 1, 1, 0,
                                       0, 0, 0, 0, 0, 0,
                                       0, 0, 0, 0, 0, 0};
    check(tok == want, "tokenize_2x3_at_1_2_picture");
    Grid full = random_grid(30, 30, 3);
    std::vector<int32_t> t30(900);
    grid_tokenize(t30.data(), full.c.data(), 30, 30, 30, 0, 0);
    bool no_eos = true;
    for (int k = 0; k < 900; k++) no_eos = no_eos && t30[(size_t)k] == full.c[(size_t)k] + 2;
    check(no_eos, "tokenize_30x30_fills_canvas_without_eos");
    std::vector<int32_t> t0(25, 5);
    grid_tokenize(t0.data(), nullptr, 0, 0, 5, 0, 0);
    check(std::all_of(t0.begin(), t0.end(), [](int32_t v) { return v == ARC_TOKEN_PAD; }), "tokenize_unknown_0x0_is_all_pad");

    expect_fatal("tokenize_rejects_grid_off_canvas", [] {
        uint8_t cells[9] = {0};
        int32_t tok[100];
        grid_tokenize(tok, cells, 3, 3, 10, 8, 0);
    }, {"does not fit"});
}

static void test_crop() {
    const int C = 6;
    auto crop = [&](const std::vector<int32_t>& tok, Grid* out) {
        std::vector<uint8_t> cells(C * C);
        int r, c;
        int area = grid_crop_tokens(tok.data(), C, cells.data(), &r, &c);
        cells.resize((size_t)(r * c));
        *out = make_grid(r, c, cells);
        return area;
    };
    Grid g;
    std::vector<int32_t> pad(C * C, 0);
    check(crop(pad, &g) == 0 && g.rows == 0 && g.cols == 0, "crop_all_pad_is_0x0");
    std::vector<int32_t> eos0 = pad; eos0[0] = 1; eos0[1] = 5;
    check(crop(eos0, &g) == 0 && g.rows == 0, "crop_leading_eos_is_0x0");
    // Ragged rows: widths 5, 3, 3, then EOS: areas 5, 6, 9 -> 3x3.
    std::vector<int32_t> rag = {2, 3, 4, 5, 6, 1,
                                7, 8, 9, 1, 6, 6,
                                10, 11, 2, 0, 0, 0,
                                1, 1, 1, 1, 1, 1,
                                3, 3, 3, 3, 3, 3,
                                3, 3, 3, 3, 3, 3};
    check(crop(rag, &g) == 9 && g == make_grid(3, 3, {0, 1, 2, 5, 6, 7, 8, 9, 0}), "crop_ragged_rows_largest_area",
          "got %dx%d", g.rows, g.cols);
    // Width only shrinks: a later, longer row is cut to the earlier width (2, then 2 -> 2x2).
    std::vector<int32_t> grow = {2, 3, 1, 0, 0, 0,
                                 4, 5, 6, 7, 8, 9,
                                 0, 0, 0, 0, 0, 0,
                                 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    check(crop(grow, &g) == 4 && g == make_grid(2, 2, {0, 1, 2, 3}), "crop_width_only_shrinks", "got %dx%d", g.rows, g.cols);
    // Tie: widths 4 then 2: areas 4 and 4: the first (1x4) wins.
    std::vector<int32_t> tie = {2, 2, 2, 2, 1, 0,
                                3, 3, 12, 3, 3, 3,
                                0, 0, 0, 0, 0, 0,
                                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    check(crop(tie, &g) == 4 && g.rows == 1 && g.cols == 4, "crop_tie_first_maximum_wins_and_token_12_stops",
          "got %dx%d", g.rows, g.cols);
    std::vector<int32_t> neg = pad; for (int j = 0; j < C; j++) neg[(size_t)j] = 4; neg[3] = -3;
    check(crop(neg, &g) == 3 && g.rows == 1 && g.cols == 3, "crop_negative_token_stops_row");
    std::vector<int32_t> full(C * C, 11);
    check(crop(full, &g) == C * C && g.rows == C && g.cols == C, "crop_full_canvas");
    // 1xN and Nx1 extremes through tokenize on the 30 canvas.
    bool ok = true;
    for (int n = 1; n <= 30; n++) ok = ok && tokenize_crop_roundtrip(random_grid(1, n, (uint64_t)n), 30) &&
                                       tokenize_crop_roundtrip(random_grid(n, 1, (uint64_t)n + 50), 30);
    check(ok, "tokenize_crop_1xN_and_Nx1");
}

static void test_loader_synthetic() {
    // A small valid file written by this test's encoder (same layout as data/arc_format.py).
    ArcTask t1 = make_task("alpha", 2, {{make_grid(1, 2, {1, 2}), make_grid(2, 1, {3, 4})},
                                        {make_grid(2, 2, {0, 9, 9, 0}), make_grid(1, 1, {5})},
                                        {make_grid(3, 1, {7, 7, 7}), make_grid(1, 3, {8, 8, 8})}});
    ArcTask t2 = make_task("beta", 1, {{make_grid(1, 1, {6}), make_grid(1, 1, {6})}, {make_grid(2, 3, {1, 2, 3, 4, 5, 6}), Grid()}});
    std::vector<uint8_t> good = encode_task_file({t1, t2}, 30);
    const std::string path = "build/test_augment_good.bin";
    write_bytes(path, good);
    ArcTaskFile f = arc_tasks_load(path.c_str());
    bool ok = f.tasks.size() == 2 && f.canvas == 30 && f.max_side == 3 && f.tasks[0].name == "alpha" && f.tasks[1].name == "beta" &&
              f.tasks[0].n_train == 2 && f.tasks[0].n_test == 1 && f.tasks[1].n_train == 1 && f.tasks[1].n_test == 1;
    for (size_t p = 0; ok && p < 3; p++)
        ok = grid_of(f.tasks[0].pairs[p].input) == grid_of(t1.pairs[p].input) && grid_of(f.tasks[0].pairs[p].output) == grid_of(t1.pairs[p].output);
    ok = ok && f.tasks[1].pairs[1].output.cells == nullptr && f.tasks[1].pairs[1].output.rows == 0 && !grid_known(f.tasks[1].pairs[1].output);
    check(ok, "loader_reads_synthetic_file_with_unknown_output");

    // Copies and moves never leave dangling views: take a task out of a file that then dies.
    ArcTask survivor;
    {
        ArcTaskFile tmp = arc_tasks_load(path.c_str());
        ArcTaskFile moved = std::move(tmp);
        ArcTaskFile copy = moved;
        survivor = copy.tasks[0];
    }
    std::vector<uint8_t> junk(1 << 20, 0xAB);   // reuse freed memory if anything dangled
    check(grid_of(survivor.pairs[1].input) == make_grid(2, 2, {0, 9, 9, 0}) && survivor.storage.use_count() == 1,
          "loader_views_survive_copy_move_and_file_destruction");

    auto corrupt = [&](const char* name, const std::function<void(std::vector<uint8_t>&)>& edit, std::vector<std::string> want) {
        std::vector<uint8_t> b = good;
        edit(b);
        std::string p = std::string("build/test_augment_") + name + ".bin";
        write_bytes(p, b);
        want.push_back(p);
        expect_fatal((std::string("loader_rejects_") + name).c_str(), [p] { arc_tasks_load(p.c_str()); }, want);
        remove(p.c_str());
    };
    const size_t tasks_at = 1024, pairs_at = tasks_at + 16 * 2, cells_at = pairs_at + 24 * 5;
    corrupt("truncated", [](std::vector<uint8_t>& b) { b.pop_back(); }, {"truncated", "data/arc.py"});
    corrupt("truncated_header", [](std::vector<uint8_t>& b) { b.resize(100); }, {"truncated", "header"});
    corrupt("wrong_magic", [](std::vector<uint8_t>& b) { set32(b, 0, 12345); }, {"not an arc.cu task file", "12345"});
    corrupt("wrong_version", [](std::vector<uint8_t>& b) { set32(b, 4, 2); }, {"version 2", "reads version 1", "data/arc.py"});
    corrupt("bad_colour", [&](std::vector<uint8_t>& b) { b[cells_at + 3] = 10; }, {"colour 10", "0..9", "alpha"});
    corrupt("unreferenced_bad_colour", [&](std::vector<uint8_t>& b) {   // an extra byte 200 at the end of the cells block
        const int32_t n_cells = arc_tasks_le32(good.data() + 16);
        b.insert(b.begin() + (long)(cells_at + (size_t)n_cells), 200);
        set32(b, 16, n_cells + 1);
    }, {"colour 200", "cells block"});
    corrupt("trailing_bytes", [](std::vector<uint8_t>& b) { b.push_back(0); }, {"trailing"});
    corrupt("negative_count", [](std::vector<uint8_t>& b) { set32(b, 12, -5); }, {"negative"});
    corrupt("offset_outside_cells", [&](std::vector<uint8_t>& b) { set32(b, pairs_at + 16, 1000); }, {"outside", "cells block"});
    corrupt("side_31", [&](std::vector<uint8_t>& b) { set32(b, pairs_at, 31); }, {"31x2", "1..30"});
    corrupt("zero_side_known_output", [&](std::vector<uint8_t>& b) { set32(b, pairs_at + 8, 0); }, {"0x1", "unknown"});
    corrupt("unknown_train_output", [&](std::vector<uint8_t>& b) { set32(b, pairs_at + 8, 0); set32(b, pairs_at + 12, 0); set32(b, pairs_at + 20, -1); },
            {"train pair 0", "unknown output"});
    corrupt("no_test_pair", [&](std::vector<uint8_t>& b) { set32(b, tasks_at + 16 + 8, 0); }, {"beta", "0 test"});
    corrupt("pairs_outside", [&](std::vector<uint8_t>& b) { set32(b, tasks_at + 16, 4); }, {"outside", "pairs"});
    corrupt("name_offset_outside", [&](std::vector<uint8_t>& b) { set32(b, tasks_at + 12, 99); }, {"name offset 99"});
    corrupt("name_not_terminated", [&](std::vector<uint8_t>& b) { b.back() = 'x'; }, {"NUL-terminated"});
    corrupt("max_side_wrong", [](std::vector<uint8_t>& b) { set32(b, 28, 5); }, {"max_side"});
    expect_fatal("loader_rejects_missing_file", [] { arc_tasks_load("build/no_such_task_file.bin"); },
                 {"build/no_such_task_file.bin", "data/arc.py"});
    remove(path.c_str());
}

struct DataSet { std::string name, dir, bin; ArcTaskFile file; bool loaded = false; };

static void test_real_data(std::vector<DataSet>& sets) {
    for (DataSet& s : sets) {
        if (count_json(s.dir) < 0) { skip(("load_" + s.name).c_str(), (s.dir + " not found").c_str()); continue; }
        std::string cmd = "python3 data/arc.py " + s.bin + " " + s.dir + " > /dev/null";
        int rc = system(cmd.c_str());
        if (!check(rc == 0, ("convert_" + s.name + "_with_data_arc_py").c_str(), "'%s' exited with %d", cmd.c_str(), rc)) continue;
        s.file = arc_tasks_load(s.bin.c_str());
        s.loaded = true;
        int n_json = count_json(s.dir);
        size_t pairs = s.file.n_pairs();
        bool ok = (int)s.file.tasks.size() == n_json && s.file.canvas == 30;
        for (const ArcTask& t : s.file.tasks) ok = ok && t.n_train >= 1 && t.n_test >= 1 && (int)t.pairs.size() == t.n_train + t.n_test;
        check(ok, ("load_" + s.name).c_str(), "%zu tasks (%d json files), canvas %d", s.file.tasks.size(), n_json, s.file.canvas);
        printf("     %s: %zu tasks, %zu pairs, max side %d\n", s.name.c_str(), s.file.tasks.size(), pairs, s.file.max_side);
        // The test's encoder and data/arc.py agree byte for byte (both sides of the format contract).
        check(encode_task_file(s.file.tasks, s.file.canvas) == read_bytes(s.bin), ("reencode_matches_data_arc_py_" + s.name).c_str());
    }

    for (DataSet& s : sets) {
        if (!s.loaded) { skip(("roundtrip_" + s.name).c_str(), "data not loaded"); continue; }
        long n = 0, bad_rt = 0, bad_crop = 0;
        for (size_t ti = 0; ti < s.file.tasks.size(); ti++) {
            const ArcTask& task = s.file.tasks[ti];
            std::vector<Augmentation> augs = augmentation_table(task, (int)ti, 16, 42);
            for (int t = 0; t < 8; t++) augs.push_back(random_perm_aug(t, ti * 8 + (uint64_t)t));
            for (const Augmentation& a : augs)
                for (const ArcPair& p : task.pairs)
                    for (const GridView* v : {&p.input, &p.output}) {
                        if (!v->cells) continue;
                        Grid g = grid_of(*v), ag = lib_augment(g, a);
                        bad_rt += !(lib_unaugment(ag, a) == g);
                        bad_crop += !tokenize_crop_roundtrip(ag, 30);
                        n++;
                    }
        }
        check(bad_rt == 0, ("unaugment_inverts_augment_" + s.name).c_str(), "%ld of %ld grids", bad_rt, n);
        check(bad_crop == 0, ("tokenize_crop_roundtrip_" + s.name).c_str(), "%ld of %ld grids", bad_crop, n);
    }
}

static void test_table_synthetic() {
    auto zeros = [](int r, int c) { return make_grid(r, c, std::vector<uint8_t>((size_t)(r * c), 0)); };
    ArcTask z = make_task("zeros3x3", 1, {{zeros(3, 3), zeros(3, 3)}, {zeros(3, 3), zeros(3, 3)}});
    auto tz = augmentation_table(z, 0, 1000, 1);
    check(tz.size() == 1 && augmentation_is_identity(tz[0]), "table_all_zero_square_task_is_identity_only", "%zu entries", tz.size());
    // All-zero 1x2 grids: every transform gives 1x2 or 2x1 zeros: exactly 2 distinct tasks.
    ArcTask z12 = make_task("zeros1x2", 1, {{zeros(1, 2), zeros(1, 2)}, {zeros(1, 2), zeros(1, 2)}});
    auto t12 = augmentation_table(z12, 0, 1000, 1);
    int d = t12.size() == 2 ? t12[1].dihedral : -1;
    check(t12.size() == 2 && (d == 1 || d == 3 || d == 6 || d == 7), "table_all_zero_1x2_task_has_2_entries", "%zu entries", t12.size());
    // One colour-5 cell in a corner of a 2x2 grid: 4 corners x 9 colours = 36 distinct tasks.
    Grid corner = make_grid(2, 2, {5, 0, 0, 0});
    ArcTask tc = make_task("corner", 1, {{corner, corner}, {corner, corner}});
    auto tcor = augmentation_table(tc, 3, 1000, 9);
    std::string why;
    check(tcor.size() == 36 && slow_table_matches(tc, 3, 1000, 9, tcor, &why), "table_single_corner_cell_has_36_entries",
          "%zu entries %s", tcor.size(), why.c_str());
    check(augmentation_table(tc, 3, 10, 9).size() == 11, "table_fills_to_num_aug_plus_1");
    check(augmentation_table(tc, 3, 0, 9).size() == 1, "table_num_aug_0_is_identity_only");
    // Pair order is ignored (as upstream's sorted puzzle_hash): pairs {A, fliplr A} are unchanged by fliplr.
    Grid A = make_grid(2, 3, {1, 2, 3, 4, 5, 6}), B = ref_fliplr(A);
    ArcTask sym = make_task("swap", 1, {{A, A}, {B, B}});
    std::vector<uint64_t> W;
    int used, cols[10], nc = 0;
    augment_fingerprint_tables(sym, &W, &used);
    for (int k = 0; k < 10; k++) if (used >> k & 1) cols[nc++] = k;
    uint64_t R[10];
    for (int k = 0; k < 10; k++) R[k] = augment_colour_weight(k);
    Augmentation flip = augmentation_identity(); flip.dihedral = 4;
    Augmentation flipud = augmentation_identity(); flipud.dihedral = 5;
    uint64_t h0 = augment_task_hash(augmentation_identity(), W.data(), 2, cols, nc, R);
    check(augment_task_hash(flip, W.data(), 2, cols, nc, R) == h0 && augment_task_hash(flipud, W.data(), 2, cols, nc, R) != h0,
          "table_hash_ignores_pair_order");
    auto tsym = augmentation_table(sym, 0, 1000, 2);
    check(tsym.size() == 1001 && slow_table_matches(sym, 0, 1000, 2, tsym, &why), "table_pair_swap_symmetry_matches_exact_replay",
          "%zu entries %s", tsym.size(), why.c_str());
    // All nine colours in an asymmetric grid: all 8 x 9! candidates are distinct tasks: the table fills.
    Grid rich = make_grid(3, 3, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    ArcTask tr = make_task("rich", 1, {{rich, rich}, {rich, rich}});
    check(augmentation_table(tr, 0, 1000, 5).size() == 1001, "table_asymmetric_task_fills_1001");
    // An unknown test output is handled (contributes nothing).
    ArcTask tu = make_task("unknown", 1, {{corner, corner}, {corner, Grid()}});
    auto tun = augmentation_table(tu, 0, 100, 5);
    check(tun.size() == 36 && slow_table_matches(tu, 0, 100, 5, tun, &why), "table_with_unknown_test_output", "%zu entries %s", tun.size(), why.c_str());
}

static void test_table_real(std::vector<DataSet>& sets) {
    std::vector<const ArcTask*> arc1;
    for (DataSet& s : sets)
        if (s.loaded && s.name.rfind("arc1", 0) == 0)
            for (const ArcTask& t : s.file.tasks) arc1.push_back(&t);
    if (arc1.empty()) { skip("table_arc1", "ARC-AGI-1 data not loaded"); return; }

    // The whole ARC-1 table build (training + evaluation) at num_aug = 1000, timed (the check uses CPU time,
    // which other jobs on the machine inflate less than wall time).
    auto t0 = std::chrono::steady_clock::now();
    clock_t c0 = clock();
    std::vector<std::vector<Augmentation>> tables(arc1.size());
    for (size_t i = 0; i < arc1.size(); i++) tables[i] = augmentation_table(*arc1[i], (int)i, 1000, 42);
    double secs = seconds_since(t0), cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    size_t total = 0, short_tables = 0, smallest = SIZE_MAX;
    for (auto& t : tables) { total += t.size(); short_tables += t.size() < 1001; smallest = std::min(smallest, t.size()); }
    printf("     ARC-1 augmentation tables: %zu tasks x num_aug 1000 in %.3f s wall, %.3f s CPU (%zu entries; %zu tasks short "
           "of 1001, smallest %zu)\n", arc1.size(), secs, cpu, total, short_tables, smallest);
    check(cpu < 1.0, "table_arc1_num_aug_1000_under_1s", "took %.3f s CPU", cpu);

    bool ok = true;
    for (auto& t : tables) {
        ok = ok && augmentation_is_identity(t[0]);
        for (auto& a : t) ok = ok && augmentation_valid(a);
    }
    check(ok, "table_entry0_identity_and_entries_valid");

    // Deterministic given the seed; another seed gives another table.
    bool same = true, differs = false;
    for (size_t i = 0; i < arc1.size(); i += 37) {
        auto again = augmentation_table(*arc1[i], (int)i, 1000, 42);
        same = same && again.size() == tables[i].size() && memcmp(again.data(), tables[i].data(), again.size() * sizeof(Augmentation)) == 0;
        auto other = augmentation_table(*arc1[i], (int)i, 1000, 43);
        differs = differs || other.size() < 2 || memcmp(&other[1], &tables[i][1], sizeof(Augmentation)) != 0;
    }
    check(same && differs, "table_deterministic_given_seed");

    // Exact replay (slow full-grid comparison) gives the same table: every ARC-1 task at num_aug = 16, and
    // at num_aug = 1000 the tasks with genuine duplicates (short tables) plus a sample of full ones.
    long bad = 0, checked = 0;
    std::string why, first_why;
    for (size_t i = 0; i < arc1.size(); i++) {
        auto t = augmentation_table(*arc1[i], (int)i, 16, 7);
        checked++;
        if (!slow_table_matches(*arc1[i], (int)i, 16, 7, t, &why)) { bad++; if (first_why.empty()) first_why = arc1[i]->name + ": " + why; }
    }
    check(bad == 0, "table_matches_exact_replay_all_arc1_num_aug_16", "%ld of %ld tasks: %s", bad, checked, first_why.c_str());
    bad = checked = 0;
    long dup_tasks = 0;
    std::vector<size_t> picks;
    for (size_t i = 0; i < arc1.size(); i++) if (tables[i].size() < 1001) picks.push_back(i);
    std::sort(picks.begin(), picks.end(), [&](size_t a, size_t b) { return tables[a].size() < tables[b].size(); });
    if (picks.size() > 12) picks.resize(12);
    dup_tasks = (long)picks.size();
    for (size_t i = 0; i < arc1.size() && picks.size() < (size_t)dup_tasks + 3; i += 97) if (tables[i].size() == 1001) picks.push_back(i);
    auto t1 = std::chrono::steady_clock::now();
    for (size_t i : picks) {
        checked++;
        if (!slow_table_matches(*arc1[i], (int)i, 1000, 42, tables[i], &why)) { bad++; if (first_why.empty()) first_why = arc1[i]->name + ": " + why; }
    }
    printf("     exact replay at num_aug 1000: %ld tasks (%ld with duplicates, sizes", checked, dup_tasks);
    for (size_t k = 0; k < picks.size() && k < (size_t)dup_tasks; k++) printf(" %s:%zu", arc1[picks[k]]->name.c_str(), tables[picks[k]].size());
    printf(") in %.2f s\n", seconds_since(t1));
    check(bad == 0 && checked > 0, "table_matches_exact_replay_arc1_num_aug_1000", "%ld of %ld tasks: %s", bad, checked, first_why.c_str());
}

static void test_translation() {
    // Offsets uniform over the whole allowed range, deterministic, and independent across pairs.
    int bad = 0;
    bool covers = true, det = true;
    for (int trial = 0; trial < 40; trial++) {
        int canvas = trial % 2 ? 30 : 12;
        int ir = 1 + (int)hash_below((uint32_t)canvas, 1, (uint64_t)trial), ic = 1 + (int)hash_below((uint32_t)canvas, 2, (uint64_t)trial);
        int orr = 1 + (int)hash_below((uint32_t)canvas, 3, (uint64_t)trial), oc = 1 + (int)hash_below((uint32_t)canvas, 4, (uint64_t)trial);
        int max_r = canvas - std::max(ir, orr), max_c = canvas - std::max(ic, oc);
        std::vector<int> seen_r((size_t)max_r + 1, 0), seen_c((size_t)max_c + 1, 0);
        for (int k = 0; k < 3000; k++) {
            int pr, pc, pr2, pc2;
            translation_offset(canvas, ir, ic, orr, oc, 42, trial, k / 10, k % 10, &pr, &pc);
            translation_offset(canvas, ir, ic, orr, oc, 42, trial, k / 10, k % 10, &pr2, &pc2);
            det = det && pr == pr2 && pc == pc2;
            if (pr < 0 || pr > max_r || pc < 0 || pc > max_c) { bad++; continue; }
            seen_r[(size_t)pr]++; seen_c[(size_t)pc]++;
        }
        for (int v : seen_r) covers = covers && v > 0;
        for (int v : seen_c) covers = covers && v > 0;
    }
    check(bad == 0, "translation_offset_in_range", "%d out of range", bad);
    check(covers, "translation_offset_covers_whole_range");
    check(det, "translation_offset_deterministic");
    int pr, pc;
    translation_offset(30, 30, 30, 30, 30, 1, 2, 3, 4, &pr, &pc);
    check(pr == 0 && pc == 0, "translation_offset_30x30_is_0_0");
    translation_offset(30, 5, 7, 0, 0, 1, 2, 3, 4, &pr, &pc);
    check(pr >= 0 && pr <= 25 && pc >= 0 && pc <= 23, "translation_offset_unknown_output");
    std::vector<int> hits(5, 0);
    for (int k = 0; k < 5000; k++) hits[(size_t)untranslated_pair(5, 42, k % 50, k / 50)]++;
    check(*std::min_element(hits.begin(), hits.end()) > 800, "untranslated_pair_uniform_in_range", "hits %d %d %d %d %d", hits[0], hits[1],
          hits[2], hits[3], hits[4]);
    expect_fatal("translation_offset_rejects_grid_larger_than_canvas", [] { int a, b; translation_offset(10, 11, 3, 2, 2, 1, 0, 0, 0, &a, &b); },
                 {"does not fit"});
}

int main() {
    if (system("mkdir -p build") != 0) fatal("cannot create build/");
    auto t0 = std::chrono::steady_clock::now();
    test_dihedral();
    test_augment_shapes();
    test_tokenize_translation();
    test_crop();
    test_translation();
    test_table_synthetic();
    test_loader_synthetic();
    const std::string root = "../shared/data/";
    std::vector<DataSet> sets(4);
    const char* names[4][3] = {{"arc1_training", "arc-agi-1/data/training", "build/test_augment_arc1_training.bin"},
                               {"arc1_evaluation", "arc-agi-1/data/evaluation", "build/test_augment_arc1_evaluation.bin"},
                               {"arc2_training", "arc-agi-2/data/training", "build/test_augment_arc2_training.bin"},
                               {"arc2_evaluation", "arc-agi-2/data/evaluation", "build/test_augment_arc2_evaluation.bin"}};
    for (int i = 0; i < 4; i++) { sets[(size_t)i].name = names[i][0]; sets[(size_t)i].dir = root + names[i][1]; sets[(size_t)i].bin = names[i][2]; }
    test_real_data(sets);
    test_table_real(sets);
    printf("     total %.2f s\n", seconds_since(t0));
    return test_summary();
}

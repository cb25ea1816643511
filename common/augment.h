// ARC grid transforms, TRM tokenisation, and the deterministic per-task augmentation table.
//
// Conventions (as upstream TinyRecursiveModels, dataset/common.py and dataset/build_arc_dataset.py):
//  - A grid is rows x cols colours 0..9, row-major.
//  - Dihedral transform ids, as numpy on an array of shape (rows, cols):
//      0 identity   1 rot90 (counter-clockwise)   2 rot180   3 rot270 (= np.rot90(k=3), clockwise)
//      4 fliplr     5 flipud                      6 transpose  7 fliplr(rot90) (anti-transpose)
//    ids 1, 3, 6, 7 swap the sides. DIHEDRAL_INVERSE[t] undoes t.
//  - An augmentation is (dihedral id t, colour permutation perm) with perm[0] = 0 (black stays black) and
//    perm[1..9] a permutation of 1..9. augmented = dihedral_t(perm[grid]) (colours first, then the transform);
//    its inverse is inv_perm[dihedral_{DIHEDRAL_INVERSE[t]}(grid)].
//  - Tokens on a canvas x canvas sequence (row-major): 0 PAD, 1 EOS, colour c -> c + 2. A grid placed at
//    (pr, pc) is followed by an EOS row under it and an EOS column right of it where they fit on the canvas
//    (the corner cell diagonally below-right stays PAD); everything else is PAD.
//  - grid_crop_tokens() is the evaluator's inverse of the tokenisation (upstream evaluators/arc.py _crop).
//
// Everything random here is a pure function of (seed, task index, ...) through common/rand.h's hash, so the
// table and the offsets are the same on every backend, every process count and after a resume.
#pragma once
#include <stdint.h>
#include <string.h>
#include <vector>
#include "arc_tasks.h"
#include "rand.h"
#include "utils.h"

#define ARC_TOKEN_PAD 0
#define ARC_TOKEN_EOS 1
#define ARC_TOKEN_COLOUR0 2        // colour c is token c + 2
#define ARC_VOCAB 12
#define ARC_AUGMENT_RETRIES 5      // upstream ARCAugmentRetriesFactor: at most 5 * num_aug candidate draws

typedef struct { uint8_t dihedral; uint8_t perm[10]; } Augmentation;   // perm[0] == 0

inline constexpr int DIHEDRAL_INVERSE[8] = {0, 3, 2, 1, 4, 5, 6, 7};

inline Augmentation augmentation_identity() {
    Augmentation a;
    a.dihedral = 0;
    for (int k = 0; k < 10; k++) a.perm[k] = (uint8_t)k;
    return a;
}

inline bool augmentation_is_identity(const Augmentation& a) {
    if (a.dihedral != 0) return false;
    for (int k = 0; k < 10; k++) if (a.perm[k] != k) return false;
    return true;
}

// dihedral < 8, perm[0] == 0 and perm a permutation of 0..9.
inline bool augmentation_valid(const Augmentation& a) {
    if (a.dihedral >= 8 || a.perm[0] != 0) return false;
    int seen = 0;
    for (int k = 0; k < 10; k++) {
        if (a.perm[k] > 9) return false;
        seen |= 1 << a.perm[k];
    }
    return seen == 0x3FF;
}

inline void augmentation_inverse_perm(const Augmentation& a, uint8_t inv[10]) {
    for (int k = 0; k < 10; k++) inv[a.perm[k]] = (uint8_t)k;
}

// Shape of dihedral_t of a rows x cols grid.
inline void dihedral_shape(int t, int rows, int cols, int* out_rows, int* out_cols) {
    const bool swap = t == 1 || t == 3 || t == 6 || t == 7;
    *out_rows = swap ? cols : rows;
    *out_cols = swap ? rows : cols;
}

// Row-major index into the source grid (rows x cols) of the cell that dihedral_t puts at (i, j) of its result.
inline int dihedral_source_index(int t, int rows, int cols, int i, int j) {
    switch (t) {
        case 0: return i * cols + j;
        case 1: return j * cols + (cols - 1 - i);                      // rot90 ccw: B[i][j] = A[j][C-1-i]
        case 2: return (rows - 1 - i) * cols + (cols - 1 - j);
        case 3: return (rows - 1 - j) * cols + i;                      // rot90 cw:  B[i][j] = A[R-1-j][i]
        case 4: return i * cols + (cols - 1 - j);
        case 5: return (rows - 1 - i) * cols + j;
        case 6: return j * cols + i;
        case 7: return (rows - 1 - j) * cols + (cols - 1 - i);         // anti-transpose
        default: fatal("dihedral transform id %d, expected 0..7", t);
    }
}

// dst = dihedral_t(src); dst must not overlap src and holds rows * cols cells. A 0x0 grid stays 0x0.
inline void grid_dihedral(const uint8_t* src, int rows, int cols, int t, uint8_t* dst, int* out_rows, int* out_cols) {
    if (t < 0 || t > 7) fatal("grid_dihedral: transform id %d, expected 0..7", t);
    int R, C;
    dihedral_shape(t, rows, cols, &R, &C);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) dst[i * C + j] = src[dihedral_source_index(t, rows, cols, i, j)];
    *out_rows = R;
    *out_cols = C;
}

// dst = dihedral_t(perm[src]): the augmented grid (dst must not overlap src).
inline void grid_augment(const uint8_t* src, int rows, int cols, const Augmentation& a, uint8_t* dst, int* out_rows, int* out_cols) {
    if (a.dihedral > 7) fatal("grid_augment: transform id %d, expected 0..7", a.dihedral);
    int R, C;
    dihedral_shape(a.dihedral, rows, cols, &R, &C);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            uint8_t v = src[dihedral_source_index(a.dihedral, rows, cols, i, j)];
            dst[i * C + j] = v < 10 ? a.perm[v] : v;
        }
    *out_rows = R;
    *out_cols = C;
}

// The exact inverse of grid_augment: dst = inv_perm[dihedral_{DIHEDRAL_INVERSE[t]}(src)], for an augmented
// grid (or a model's prediction of one) of shape rows x cols.
inline void grid_unaugment(const uint8_t* src, int rows, int cols, const Augmentation& a, uint8_t* dst, int* out_rows, int* out_cols) {
    if (a.dihedral > 7) fatal("grid_unaugment: transform id %d, expected 0..7", a.dihedral);
    uint8_t inv[10];
    augmentation_inverse_perm(a, inv);
    const int t = DIHEDRAL_INVERSE[a.dihedral];
    int R, C;
    dihedral_shape(t, rows, cols, &R, &C);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            uint8_t v = src[dihedral_source_index(t, rows, cols, i, j)];
            dst[i * C + j] = v < 10 ? inv[v] : v;
        }
    *out_rows = R;
    *out_cols = C;
}

// Writes canvas * canvas tokens: the grid at (pr, pc), its EOS row and column where they fit, PAD elsewhere.
// A 0x0 grid (an unknown output) gives all PAD. Fatal if the grid does not fit on the canvas at that offset.
inline void grid_tokenize(int32_t* tokens, const uint8_t* cells, int rows, int cols, int canvas, int pr, int pc) {
    if (canvas < 1) fatal("grid_tokenize: canvas side %d, expected >= 1", canvas);
    if (rows < 0 || cols < 0 || (rows == 0) != (cols == 0))
        fatal("grid_tokenize: grid shape %dx%d (expected both sides >= 1, or 0x0 for an unknown grid)", rows, cols);
    if (pr < 0 || pc < 0 || pr + rows > canvas || pc + cols > canvas)
        fatal("grid_tokenize: a %dx%d grid at offset (%d, %d) does not fit on a %dx%d canvas (use a larger canvas "
              "or a smaller offset)", rows, cols, pr, pc, canvas, canvas);
    for (int k = 0; k < canvas * canvas; k++) tokens[k] = ARC_TOKEN_PAD;
    if (rows == 0) return;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) tokens[(pr + i) * canvas + pc + j] = ARC_TOKEN_COLOUR0 + cells[i * cols + j];
    if (pr + rows < canvas)
        for (int j = 0; j < cols; j++) tokens[(pr + rows) * canvas + pc + j] = ARC_TOKEN_EOS;
    if (pc + cols < canvas)
        for (int i = 0; i < rows; i++) tokens[(pr + i) * canvas + pc + cols] = ARC_TOKEN_EOS;
}

// The grid a canvas x canvas token prediction spells out from (0, 0), as upstream's evaluator reads it:
// going down the rows, each row's width is its run of leading colour tokens (2..11) within the previous
// width (the width only shrinks); the result is the top-left rectangle (rows so far x current width) of
// the largest area, the first one on a tie, with tokens mapped back to colours. cells must hold
// canvas * canvas bytes. Returns rows * cols (0 for an empty prediction, then rows = cols = 0).
inline int grid_crop_tokens(const int32_t* tokens, int canvas, uint8_t* cells, int* rows, int* cols) {
    int best_area = 0, best_r = 0, best_c = 0, width = canvas;
    for (int r = 1; r <= canvas; r++) {
        const int32_t* row = tokens + (r - 1) * canvas;
        for (int c = 0; c < width; c++)
            if (row[c] < ARC_TOKEN_COLOUR0 || row[c] > ARC_TOKEN_COLOUR0 + 9) { width = c; break; }
        if (r * width > best_area) {
            best_area = r * width;
            best_r = r;
            best_c = width;
        }
        if (width == 0) break;      // no later row can have a positive area
    }
    for (int i = 0; i < best_r; i++)
        for (int j = 0; j < best_c; j++) cells[i * best_c + j] = (uint8_t)(tokens[i * canvas + j] - ARC_TOKEN_COLOUR0);
    *rows = best_r;
    *cols = best_c;
    return best_area;
}

// ---------------------------------------------------------------------------------------------------------
// Augmentation table.
//
// augmentation_table(task, task_index, num_aug, seed) is the list of augmentations a task is trained and
// evaluated under (what upstream materialises as up to num_aug augmented copies of each puzzle):
//   entry 0 is the identity; then, for trial = 0, 1, ..., 5 * num_aug - 1, the candidate
//   augmentation_candidate(seed, task_index, trial) is kept if the task it produces differs from the task
//   every kept entry produces; it stops once num_aug + 1 entries are kept.
// Two augmented tasks are "the same" as upstream's puzzle_hash decides: same multiset of (input, output)
// pairs, shapes included, train and test pairs pooled (pair order is ignored). A task whose grids are
// symmetric or use few colours has fewer distinct augmentations than num_aug; its table is then shorter
// (e.g. a task of one all-black square grid pair has only the identity).
//
// Fast duplicate test, without transforming any grid per trial. For each cell x = (input/output, position
// in the augmented grid, augmented shape) draw a pseudo-random w(x) and for each colour c a random R[c], both
// in GF(p), p = 2^61 - 1; the fingerprint of an augmented pair G is F(G) = sum over its cells of
// w(x) * R[G(x)]. As a polynomial in the w's and R's, F(G) - F(G') is zero iff G == G' (distinct pairs
// differ in a cell, or in shape and hence in which x occur), so by Schwartz-Zippel distinct pairs collide
// with probability <= 2/p. Since the colour map is applied cell by cell, for augmentation (t, perm):
//   F(aug pair) = sum_k R[perm[k]] * W[t][pair][k],   W[t][pair][k] = sum of w(x) over the cells of colour k
//   of the source pair, each taken at its position and shape after transform t,
// so W (8 transforms x pairs x 10 colours) is built once per task and a trial costs ~10 multiply-adds per
// pair. The task hash is sum over pairs of mix64(F) (order-free, like upstream's sorted hash list).
// Equal augmented tasks always get equal hashes, so a true duplicate is never kept; a distinct one is
// wrongly dropped only on a collision: <= 2/p per comparison in GF(p), plus 2^-64 for the 64-bit sum, so
// below 1e-11 per task even at num_aug = 1000 (5000 trials x 1000 kept entries).
// Cost: ARC-AGI-1 (800 tasks) at num_aug = 1000 builds in ~0.2 s of CPU (test/test_augment.cpp times it).
// ---------------------------------------------------------------------------------------------------------

#define AUGMENT_TAG_TABLE 0x41524341554754ull      // purpose tags mixed into the counter-based hash
#define AUGMENT_TAG_TRANSLATE 0x4152435452414eull
#define AUGMENT_TAG_NOTRANSLATE 0x4152434e4f5452ull

// The candidate drawn at `trial` for task `task_index`: uniform dihedral id, uniform permutation of 1..9.
inline Augmentation augmentation_candidate(uint64_t seed, int task_index, int trial) {
    const uint64_t h = hash_u64(seed, AUGMENT_TAG_TABLE, (uint64_t)(uint32_t)task_index, (uint64_t)(uint32_t)trial);
    Augmentation a = augmentation_identity();
    a.dihedral = (uint8_t)(((h >> 32) * 8) >> 32);
    for (int i = 9; i >= 2; i--) {      // Fisher-Yates over perm[1..9]
        const uint64_t r = mix64(h + (uint64_t)i);
        const int j = 1 + (int)(((r >> 32) * (uint64_t)i) >> 32);
        uint8_t tmp = a.perm[i];
        a.perm[i] = a.perm[j];
        a.perm[j] = tmp;
    }
    return a;
}

static const uint64_t AUGMENT_MODP = (1ull << 61) - 1;

inline uint64_t augment_modp_reduce128(unsigned __int128 z) {   // z mod 2^61 - 1, for any z < 2^128
    uint64_t s = (uint64_t)(z & AUGMENT_MODP) + (uint64_t)((z >> 61) & AUGMENT_MODP) + (uint64_t)(z >> 122);
    s = (s & AUGMENT_MODP) + (s >> 61);
    return s >= AUGMENT_MODP ? s - AUGMENT_MODP : s;
}

// w(x) for a cell of an augmented grid: which (0 input, 1 output), the grid's shape, the cell's position.
inline uint64_t augment_cell_weight(int which, int rows, int cols, int i, int j) {
    const uint64_t key = ((((uint64_t)which * 32 + (uint64_t)rows) * 32 + (uint64_t)cols) * 32 + (uint64_t)i) * 32 + (uint64_t)j;
    return augment_modp_reduce128(mix64(key ^ 0x5745494748545321ull));
}

inline uint64_t augment_colour_weight(int colour) { return augment_modp_reduce128(mix64(0x434f4c4f55520000ull + (uint64_t)colour)); }

// Fingerprint tables W[(t * n_pairs + pair) * 10 + k] of a task (see above), and the colours it uses.
inline void augment_fingerprint_tables(const ArcTask& task, std::vector<uint64_t>* W, int* colours_used) {
    const size_t n_pairs = task.pairs.size();
    W->assign(8 * n_pairs * 10, 0);
    int used = 0;
    for (size_t p = 0; p < n_pairs; p++)
        for (int which = 0; which < 2; which++) {
            const GridView& g = which ? task.pairs[p].output : task.pairs[p].input;
            if (!g.cells) continue;   // unknown output: no cells
            for (int k = 0; k < g.rows * g.cols; k++) used |= 1 << g.cells[k];
            for (int t = 0; t < 8; t++) {
                uint64_t* w = W->data() + (t * n_pairs + p) * 10;
                int R, C;
                dihedral_shape(t, g.rows, g.cols, &R, &C);
                for (int i = 0; i < R; i++)
                    for (int j = 0; j < C; j++) {
                        const int k = g.cells[dihedral_source_index(t, g.rows, g.cols, i, j)];
                        uint64_t s = w[k] + augment_cell_weight(which, R, C, i, j);
                        w[k] = s >= AUGMENT_MODP ? s - AUGMENT_MODP : s;
                    }
            }
        }
    *colours_used = used;
}

// Order-free 64-bit hash of the task that augmentation a produces, from the task's fingerprint tables.
inline uint64_t augment_task_hash(const Augmentation& a, const uint64_t* W, size_t n_pairs, const int* colours, int n_colours,
                                  const uint64_t* R) {
    uint64_t h = 0;
    const uint64_t* w = W + (size_t)a.dihedral * n_pairs * 10;
    for (size_t p = 0; p < n_pairs; p++, w += 10) {
        unsigned __int128 acc = 0;    // <= 10 products < 2^122 each: no overflow
        for (int c = 0; c < n_colours; c++) acc += (unsigned __int128)R[a.perm[colours[c]]] * w[colours[c]];
        h += mix64(augment_modp_reduce128(acc) ^ 0x5041495250414952ull);
    }
    return h;
}

inline std::vector<Augmentation> augmentation_table(const ArcTask& task, int task_index, int num_aug, uint64_t seed) {
    if (num_aug < 0) fatal("augmentation_table: num_aug %d, expected >= 0", num_aug);
    std::vector<Augmentation> table;
    table.reserve((size_t)num_aug + 1);
    table.push_back(augmentation_identity());
    if (num_aug == 0) return table;

    std::vector<uint64_t> W;
    int used;
    augment_fingerprint_tables(task, &W, &used);
    int colours[10], n_colours = 0;
    for (int k = 0; k < 10; k++) if (used >> k & 1) colours[n_colours++] = k;
    uint64_t R[10];
    for (int k = 0; k < 10; k++) R[k] = augment_colour_weight(k);
    const size_t n_pairs = task.pairs.size();

    // Open-addressing set of the kept tasks' hashes (0 marks an empty slot).
    size_t cap = 16;
    while (cap < 4 * ((size_t)num_aug + 1)) cap <<= 1;
    std::vector<uint64_t> set(cap, 0);
    auto insert = [&](uint64_t h) -> bool {   // true if h was new
        if (h == 0) h = 1;
        for (size_t i = (size_t)mix64(h) & (cap - 1);; i = (i + 1) & (cap - 1)) {
            if (set[i] == h) return false;
            if (set[i] == 0) { set[i] = h; return true; }
        }
    };
    insert(augment_task_hash(table[0], W.data(), n_pairs, colours, n_colours, R));
    const long long trials = (long long)ARC_AUGMENT_RETRIES * num_aug;
    for (long long trial = 0; trial < trials && (int)table.size() < num_aug + 1; trial++) {
        const Augmentation a = augmentation_candidate(seed, task_index, (int)trial);
        if (insert(augment_task_hash(a, W.data(), n_pairs, colours, n_colours, R))) table.push_back(a);
    }
    return table;
}

// Random top-left offset (pr, pc) for one pair under translation augmentation: uniform in
// [0, canvas - max(in_rows, out_rows)] x [0, canvas - max(in_cols, out_cols)], with the shapes taken after
// the augmentation (an unknown output counts as 0x0). Keyed by (seed, task, augmentation entry, pair).
inline void translation_offset(int canvas, int in_rows, int in_cols, int out_rows, int out_cols, uint64_t seed,
                               int task_index, int aug_index, int pair_index, int* pr, int* pc) {
    const int R = in_rows > out_rows ? in_rows : out_rows, C = in_cols > out_cols ? in_cols : out_cols;
    if (R > canvas || C > canvas)
        fatal("translation_offset: a pair of %dx%d and %dx%d grids does not fit on a %dx%d canvas", in_rows, in_cols,
              out_rows, out_cols, canvas, canvas);
    const uint64_t h = hash_u64(hash_u64(seed, AUGMENT_TAG_TRANSLATE, (uint64_t)(uint32_t)task_index),
                                (uint64_t)(uint32_t)aug_index, (uint64_t)(uint32_t)pair_index);
    *pr = (int)(((h >> 32) * (uint64_t)(canvas - R + 1)) >> 32);
    *pc = (int)(((h & 0xFFFFFFFFull) * (uint64_t)(canvas - C + 1)) >> 32);
}

// Which of the n_pairs pairs of (task, augmentation entry) stays at offset (0, 0) when the others are
// translated (upstream leaves one random example per puzzle untranslated in the train split).
inline int untranslated_pair(int n_pairs, uint64_t seed, int task_index, int aug_index) {
    if (n_pairs < 1) fatal("untranslated_pair: n_pairs %d, expected >= 1", n_pairs);
    return (int)hash_below((uint32_t)n_pairs, seed, AUGMENT_TAG_NOTRANSLATE, (uint64_t)(uint32_t)task_index,
                           (uint64_t)(uint32_t)aug_index);
}

// JEPA data (train_jepa.cu): (context, target) samples from task files, their grid augmentations, the object
// tensors of a batch, and the invariance perturbations of object features. Follows ../shared/spec/jepa_reference.md
// sections 1, 2 and 5 ("Invariance"), and DESIGN.md "JEPA" decision 7 (reference: arc-jepa-rl
// training/jepa/dataset.py, training/jepa/invariance.py, training/jepa/loop.py).
//
// Samples (jepa_examples). A sample is a context of k grids and a target grid.
//   CONTEXT_REPEAT  the reference's {input, output} records: one example per pair with a known output (every train
//                   pair and every test pair whose output is known): context = the input repeated k times,
//                   target = the output. (The reference pads a 1-grid context to k by repeating its last grid.)
//   CONTEXT_FRAMES  the reference's {frames} records, from the sequence files of data/synth.py
//                   (sequences_train.bin, sequences_val.bin): a task's frames are its pair inputs in order, then the
//                   last pair's output if known (f_0..f_S for a sequence of S pairs), and every window of k+1
//                   consecutive frames is an example: context = frames s..s+k-1, target = frame s+k
//                   (target_offset 1). A task with fewer than k+1 frames gives no example (skipped, counted).
//                   Frames mode needs pair i's output to equal pair i+1's input in every task (a sequence file);
//                   anything else is fatal, naming the file and the task.
//   JepaExample {task, first_pair}: the task's index in the file and, in repeat mode, the pair's index in the task
//   (train pairs first, then test pairs), in frames mode the window's first frame s. Examples are listed task by
//   task, then by first_pair.
//
// Augmentations (JepaAugment, all off by default): the reference's grid augmentations (dataset.py _augment_grid), in
// its order, background colour 0:
//   1. palette   with probability palette_prob: a uniformly random permutation of the non-background colours present
//                (the reference: palette_permutation, always; the sorted present colours are shuffled among
//                themselves, so no new colour appears and 0 stays 0)
//   2. mask      each non-background cell becomes background with probability mask_ratio
//   3. translate with probability translate_prob, when translate_radius > 0 and the grid's smaller side is
//                >= max(min_grid_for_translate, 1): a shift by (dy, dx), each uniform in [-radius, radius]; the grid
//                keeps its shape, cells shifted off are lost, uncovered cells are background
//                (the reference: random_crop_radius, always; min_grid_size_for_crop)
//      (the reference's "gaussian noise" step, std 0 in every config, is not offered)
//   4. D4        with probability dihedral_prob: one of the 8 dihedral transforms, uniform (common/augment.h ids;
//                the reference: geometric_augmentation, always, uniform over its 8 transforms, "none" included)
//   5. dropout   each object (4-connected single-colour component of non-background cells, numbered in raster
//                order of its first cell, found after steps 1-4) becomes background with probability
//                object_dropout (the reference's _apply_object_dropout)
// A probability of 1 always applies the step, 0 never.
// Draws. Every random number is hash_*(seed, sample key, grid key, purpose, index): a pure function of its keys, so
// a sample's augmentation is the same on every rank, backend and after a resume. sample_keys[b] names the sample
// (the trainer passes jepa_sample_key(epoch or step, global example index)); the grid key is:
//   per_grid = false (default): one key for all k+1 grids of the sample, so every grid gets the SAME draws: the same
//       palette permutation (of the colours present in any of the k+1 grids), the same masked cell positions (keyed
//       by (row, col)), the same shift, the same D4 transform, and the same dropped object numbers. The
//       context -> target relation survives palette, translation and D4 (up to the conjugation by the transform),
//       and in repeat mode the k context copies stay identical. (Masking and dropout remove the same positions /
//       object numbers everywhere, which need not be the same objects in two different frames.)
//   per_grid = true: grid key = slot (context slot l = 0..k-1, target = k): independent draws per grid, as the
//       reference (which draws every grid's steps from one sequential rng), so the k context copies differ.
// The shift and the D4 transform are drawn once per unit (sample or grid); a grid too small for the translation
// is not shifted (with a shared draw, its sample's other grids still are).
//
// Object tensors (jepa_fill): grid_objects (common/objects.h) of every grid, N = OBJ_MAX_OBJECTS, F = OBJ_FEATURES:
//   ctx: G = B*k grids, grid g = b*k + l for context slot l of sample b;  tgt: G = B, grid g = b
//   features (G, N, F) float, mask (G, N) uint8 (1 = object), adjacency (G, N, N) uint8; padded slots are 0.
// A grid with no object (all background, e.g. after masking) has every slot padded.
//
// Invariance perturbations (perturb_*), in place on an ObjectBatch, valid objects (mask 1) only, padded rows never
// touched; every draw is a pure function of the seed (invariance.py):
//   perturb_color        one permutation P of the 10 colours per call: dominant_color v -> P[clamp(round(v), 0, 9)]
//                        (round half to even, as torch.round); and one permutation S of the 10 colour slots per call:
//                        slot j takes the value of slot S[j] (torch index_select)
//   perturb_translation  per object: dy, dx ~ U(-max_delta, max_delta), independent; centroid_y, bbox_min_y,
//                        bbox_max_y += dy and the x features += dx, each clamped to [0, 1]; max_delta = 0: nothing
//   perturb_symmetry     one mode per call, horizontal or vertical with probability 1/2: on that axis, for x
//                        (horizontal) c -> 1 - c, min -> 1 - max, max -> 1 - min (each clamped to [0, 1]). As the
//                        reference, this reflects about 1 in the normalised coordinates, not the exact mirror
//                        ((W-1-max_x)/W would be), so bbox values move by 1/W.
// Context and target. The reference perturbs the context features and the target features with INDEPENDENT draws:
// color_permuted_batch / translated_batch / symmetry_flipped_batch call _permute_color_tokens / _apply_translation /
// _apply_symmetry once on the context tensor (B, L, N, F) and once on the target tensor (B, N, F), each call drawing
// its own torch.randperm / torch.rand / torch.randint. To do the same, perturb the context batch and the target
// batch with different seeds: jepa_perturb_seed(seed, step, kind, JEPA_ROLE_CONTEXT) and (..., JEPA_ROLE_TARGET).
// The same seed for both gives them the same colour permutations and symmetry mode, and the same per-slot shifts for
// grid indices present in both (a deliberate choice, not the reference's). The invariance loss compares each branch
// only with itself (MSE(ctx', ctx) + MSE(tgt', tgt)), so either choice gives each term the same distribution.
//
// Cost: jepa_fill is O(cells) per grid for the augmentation plus grid_objects' O(H*W + C log C + N^2); samples are
// filled in parallel (OpenMP), each writing only its own slots, so the result does not depend on the thread count.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <vector>
#include "arc_tasks.h"
#include "augment.h"
#include "objects.h"
#include "rand.h"
#include "utils.h"

enum ContextMode { CONTEXT_REPEAT, CONTEXT_FRAMES };

struct JepaExample { int task; int first_pair; };   // repeat: the pair; frames: the window's first frame

struct JepaAugment {
    float palette_prob = 0, mask_ratio = 0, translate_prob = 0;
    int translate_radius = 0, min_grid_for_translate = 0;
    float dihedral_prob = 0, object_dropout = 0;
    bool per_grid = false;
};

struct ObjectBatch {
    int G = 0, N = 0;
    std::vector<float> features;                 // (G, N, F)
    std::vector<uint8_t> mask, adjacency;        // (G, N), (G, N, N)
};

// One augmented grid (sides 1..30; the cells beyond rows * cols are unused).
struct JepaGrid { int rows = 0, cols = 0; uint8_t cells[ARC_MAX_SIDE * ARC_MAX_SIDE]; };

// Purpose tags mixed into the hashes.
#define JEPA_TAG_SAMPLE 0x4a45504153414dull
#define JEPA_TAG_AUGMENT 0x4a455041554755ull
#define JEPA_TAG_SHARED_GRID 0x4a455041534852ull    // the grid key of per_grid = false
enum JepaDrawPurpose {
    JEPA_DRAW_PALETTE = 1, JEPA_DRAW_PALETTE_PERM, JEPA_DRAW_MASK, JEPA_DRAW_TRANSLATE, JEPA_DRAW_TRANSLATE_DY,
    JEPA_DRAW_TRANSLATE_DX, JEPA_DRAW_DIHEDRAL, JEPA_DRAW_DIHEDRAL_ID, JEPA_DRAW_DROPOUT,
    JEPA_DRAW_COLOR_PERM, JEPA_DRAW_SLOT_PERM, JEPA_DRAW_TRANSLATION, JEPA_DRAW_SYMMETRY
};
enum JepaPerturbKind { JEPA_PERTURB_COLOR, JEPA_PERTURB_TRANSLATION, JEPA_PERTURB_SYMMETRY };
enum JepaPerturbRole { JEPA_ROLE_CONTEXT, JEPA_ROLE_TARGET };

// The key of a sample: which epoch (or step) and which example of the whole training set.
inline uint64_t jepa_sample_key(uint64_t epoch_or_step, uint64_t example_index) {
    return hash_u64(JEPA_TAG_SAMPLE, epoch_or_step, example_index);
}

// The seed of one invariance perturbation of one branch (see "Context and target" above).
inline uint64_t jepa_perturb_seed(uint64_t seed, uint64_t step, int kind, int role) {
    return hash_u64(seed, step, (uint64_t)kind, (uint64_t)role);
}

// --------------------------------------------------------------------------------------------------------------------
// Samples

// Frames of a task in frames mode: the pair inputs, then the last pair's output if it is known.
inline int jepa_frame_count(const ArcTask& t) {
    const int n = (int)t.pairs.size();
    return n == 0 ? 0 : n + (grid_known(t.pairs[(size_t)n - 1].output) ? 1 : 0);
}

inline GridView jepa_frame(const ArcTask& t, int i) {
    const int n = (int)t.pairs.size();
    return i < n ? t.pairs[(size_t)i].input : t.pairs[(size_t)n - 1].output;
}

inline bool jepa_grids_equal(const GridView& a, const GridView& b) {
    return a.rows == b.rows && a.cols == b.cols && grid_known(a) && grid_known(b) &&
           memcmp(a.cells, b.cells, (size_t)a.rows * (size_t)a.cols) == 0;
}

// Frames mode: pair i's output must be pair i+1's input for every i in [from, to). Fatal otherwise.
inline void jepa_check_chain(const ArcTaskFile& f, int task, int from, int to) {
    const ArcTask& t = f.tasks[(size_t)task];
    for (int i = from; i < to; i++) {
        const GridView& out = t.pairs[(size_t)i].output;
        const GridView& in = t.pairs[(size_t)i + 1].input;
        if (!jepa_grids_equal(out, in))
            fatal("%s: task %d (%s) is not a frame sequence: pair %d's output (%dx%d%s) differs from pair %d's input "
                  "(%dx%d); context_mode=frames needs sequence files (data/synth.py writes sequences_train.bin and "
                  "sequences_val.bin); use context_mode=repeat for ARC tasks", f.path.c_str(), task, t.name.c_str(), i,
                  out.rows, out.cols, grid_known(out) ? "" : ", unknown", i + 1, in.rows, in.cols);
    }
}

// The examples of a file (see the header comment). *n_skipped (optional): tasks that give no example (frames mode:
// fewer than k+1 frames; repeat mode: no pair with a known output, which a loaded file never has).
inline std::vector<JepaExample> jepa_examples(const ArcTaskFile& f, ContextMode mode, int k, int* n_skipped = nullptr) {
    if (k < 1) fatal("jepa_examples: context length k = %d, expected >= 1", k);
    if (mode != CONTEXT_REPEAT && mode != CONTEXT_FRAMES) fatal("jepa_examples: unknown context mode %d", (int)mode);
    std::vector<JepaExample> examples;
    int skipped = 0;
    for (int ti = 0; ti < (int)f.tasks.size(); ti++) {
        const ArcTask& t = f.tasks[(size_t)ti];
        const size_t before = examples.size();
        if (mode == CONTEXT_REPEAT) {
            for (int p = 0; p < (int)t.pairs.size(); p++)
                if (grid_known(t.pairs[(size_t)p].output)) examples.push_back({ti, p});
        } else {
            jepa_check_chain(f, ti, 0, (int)t.pairs.size() - 1);
            const int frames = jepa_frame_count(t);
            for (int s = 0; s + k < frames; s++) examples.push_back({ti, s});
        }
        if (examples.size() == before) skipped++;
    }
    if (n_skipped) *n_skipped = skipped;
    return examples;
}

// --------------------------------------------------------------------------------------------------------------------
// Augmentations

inline bool jepa_augment_active(const JepaAugment& a) {
    return a.palette_prob > 0 || a.mask_ratio > 0 || (a.translate_prob > 0 && a.translate_radius > 0) ||
           a.dihedral_prob > 0 || a.object_dropout > 0;
}

inline void jepa_augment_check(const JepaAugment& a) {
    const struct { const char* name; float v; } probs[] = {{"palette_prob", a.palette_prob}, {"mask_ratio", a.mask_ratio},
        {"translate_prob", a.translate_prob}, {"dihedral_prob", a.dihedral_prob}, {"object_dropout", a.object_dropout}};
    for (const auto& p : probs)
        if (!(p.v >= 0 && p.v <= 1)) fatal("JEPA augmentation: %s = %g, expected a probability in [0, 1]", p.name, (double)p.v);
    if (a.translate_radius < 0 || a.translate_radius > ARC_MAX_SIDE)
        fatal("JEPA augmentation: translate_radius = %d, expected 0..%d", a.translate_radius, ARC_MAX_SIDE);
    if (a.min_grid_for_translate < 0)
        fatal("JEPA augmentation: min_grid_for_translate = %d, expected >= 0", a.min_grid_for_translate);
}

// Uniform permutation of the colours whose bits are set in `colours` (bit c = colour c), as a map of 0..9:
// perm[c] = c for the others. Fisher-Yates over the sorted present colours.
inline void jepa_palette_perm(uint64_t unit, int colours, uint8_t perm[10]) {
    int present[10], n = 0;
    for (int c = 0; c < 10; c++) {
        perm[c] = (uint8_t)c;
        if (colours >> c & 1) present[n++] = c;
    }
    int shuffled[10];
    for (int i = 0; i < n; i++) shuffled[i] = present[i];
    for (int i = n - 1; i >= 1; i--) {
        const int j = (int)hash_below((uint32_t)(i + 1), unit, JEPA_DRAW_PALETTE_PERM, (uint64_t)i);
        std::swap(shuffled[i], shuffled[j]);
    }
    for (int i = 0; i < n; i++) perm[present[i]] = (uint8_t)shuffled[i];
}

// Labels the objects (4-connected single-colour components of non-background cells) of a grid in raster order of
// their first cell: label[cell] = object number, -1 for background. Returns the number of objects.
inline int jepa_label_objects(const uint8_t* cells, int rows, int cols, int* label) {
    int queue[ARC_MAX_SIDE * ARC_MAX_SIDE];
    std::fill(label, label + rows * cols, -1);
    int count = 0;
    for (int start = 0; start < rows * cols; start++) {
        if (cells[start] == 0 || label[start] >= 0) continue;
        int head = 0, tail = 0;
        label[start] = count;
        queue[tail++] = start;
        while (head < tail) {
            const int cell = queue[head++], y = cell / cols, x = cell % cols;
            const int ny[4] = {y - 1, y + 1, y, y}, nx[4] = {x, x, x - 1, x + 1};
            for (int d = 0; d < 4; d++) {
                if (ny[d] < 0 || ny[d] >= rows || nx[d] < 0 || nx[d] >= cols) continue;
                const int next = ny[d] * cols + nx[d];
                if (cells[next] == cells[start] && label[next] < 0) { label[next] = count; queue[tail++] = next; }
            }
        }
        count++;
    }
    return count;
}

// Augments one grid with the draws of `unit` (= hash(seed, JEPA_TAG_AUGMENT, sample key, grid key));
// palette_colours: the colours the palette step permutes (bit c = colour c).
inline void jepa_augment_grid(const GridView& src, const JepaAugment& a, uint64_t unit, int palette_colours, JepaGrid* out) {
    int rows = src.rows, cols = src.cols;
    uint8_t buf[ARC_MAX_SIDE * ARC_MAX_SIDE];
    memcpy(buf, src.cells, (size_t)rows * (size_t)cols);
    // 1. palette
    if (a.palette_prob > 0 && hash_uniform(unit, JEPA_DRAW_PALETTE) < a.palette_prob) {
        uint8_t perm[10];
        jepa_palette_perm(unit, palette_colours & ~1, perm);
        for (int c = 0; c < rows * cols; c++) buf[c] = perm[buf[c]];
    }
    // 2. mask: keyed by (row, col), so a shared draw masks the same positions in every grid
    if (a.mask_ratio > 0)
        for (int y = 0; y < rows; y++)
            for (int x = 0; x < cols; x++)
                if (buf[y * cols + x] != 0 && hash_uniform(unit, JEPA_DRAW_MASK, (uint64_t)(y * ARC_MAX_SIDE + x)) < a.mask_ratio)
                    buf[y * cols + x] = 0;
    // 3. translate
    if (a.translate_radius > 0 && a.translate_prob > 0 && std::min(rows, cols) >= std::max(a.min_grid_for_translate, 1) &&
        hash_uniform(unit, JEPA_DRAW_TRANSLATE) < a.translate_prob) {
        const uint32_t span = (uint32_t)(2 * a.translate_radius + 1);
        const int dy = (int)hash_below(span, unit, JEPA_DRAW_TRANSLATE_DY) - a.translate_radius;
        const int dx = (int)hash_below(span, unit, JEPA_DRAW_TRANSLATE_DX) - a.translate_radius;
        uint8_t moved[ARC_MAX_SIDE * ARC_MAX_SIDE];
        memset(moved, 0, (size_t)rows * (size_t)cols);
        for (int y = 0; y < rows; y++)
            for (int x = 0; x < cols; x++)
                if (y + dy >= 0 && y + dy < rows && x + dx >= 0 && x + dx < cols) moved[(y + dy) * cols + x + dx] = buf[y * cols + x];
        memcpy(buf, moved, (size_t)rows * (size_t)cols);
    }
    // 4. D4
    if (a.dihedral_prob > 0 && hash_uniform(unit, JEPA_DRAW_DIHEDRAL) < a.dihedral_prob) {
        const int t = (int)hash_below(8, unit, JEPA_DRAW_DIHEDRAL_ID);
        grid_dihedral(buf, rows, cols, t, out->cells, &rows, &cols);
        memcpy(buf, out->cells, (size_t)rows * (size_t)cols);
    }
    // 5. object dropout
    if (a.object_dropout > 0) {
        int label[ARC_MAX_SIDE * ARC_MAX_SIDE];
        const int n = jepa_label_objects(buf, rows, cols, label);
        bool drop[ARC_MAX_SIDE * ARC_MAX_SIDE];
        for (int i = 0; i < n; i++) drop[i] = hash_uniform(unit, JEPA_DRAW_DROPOUT, (uint64_t)i) < a.object_dropout;
        for (int c = 0; c < rows * cols; c++)
            if (label[c] >= 0 && drop[label[c]]) buf[c] = 0;
    }
    out->rows = rows;
    out->cols = cols;
    memcpy(out->cells, buf, (size_t)rows * (size_t)cols);
}

// Augments the n grids of one sample (context slots 0..k-1, then the target: n = k+1); out[i] is grid i.
inline void jepa_augment_sample(const GridView* grids, int n, const JepaAugment& a, uint64_t seed, uint64_t sample_key,
                                JepaGrid* out) {
    int all_colours = 0;
    if (!a.per_grid)
        for (int i = 0; i < n; i++)
            for (int c = 0; c < grids[i].rows * grids[i].cols; c++) all_colours |= 1 << grids[i].cells[c];
    for (int i = 0; i < n; i++) {
        const GridView& g = grids[i];
        if (!a.per_grid) {
            jepa_augment_grid(g, a, hash_u64(seed, JEPA_TAG_AUGMENT, sample_key, JEPA_TAG_SHARED_GRID), all_colours, &out[i]);
            continue;
        }
        int colours = 0;
        for (int c = 0; c < g.rows * g.cols; c++) colours |= 1 << g.cells[c];
        jepa_augment_grid(g, a, hash_u64(seed, JEPA_TAG_AUGMENT, sample_key, (uint64_t)i), colours, &out[i]);
    }
}

// --------------------------------------------------------------------------------------------------------------------
// Batches

// The k+1 grids of an example: context slots 0..k-1, then the target. Fatal for an example the file does not have.
inline void jepa_example_grids(const ArcTaskFile& f, const JepaExample& e, int k, ContextMode mode, GridView* grids) {
    if (e.task < 0 || e.task >= (int)f.tasks.size())
        fatal("%s: JEPA example names task %d, the file has tasks 0..%d", f.path.c_str(), e.task, (int)f.tasks.size() - 1);
    const ArcTask& t = f.tasks[(size_t)e.task];
    if (mode == CONTEXT_REPEAT) {
        if (e.first_pair < 0 || e.first_pair >= (int)t.pairs.size())
            fatal("%s: task %d (%s): JEPA example names pair %d, the task has pairs 0..%d", f.path.c_str(), e.task,
                  t.name.c_str(), e.first_pair, (int)t.pairs.size() - 1);
        const ArcPair& p = t.pairs[(size_t)e.first_pair];
        if (!grid_known(p.output))
            fatal("%s: task %d (%s): pair %d has an unknown output, so it cannot be a JEPA target", f.path.c_str(),
                  e.task, t.name.c_str(), e.first_pair);
        for (int l = 0; l < k; l++) grids[l] = p.input;
        grids[k] = p.output;
    } else if (mode == CONTEXT_FRAMES) {
        const int frames = jepa_frame_count(t);
        if (e.first_pair < 0 || e.first_pair + k >= frames)
            fatal("%s: task %d (%s): JEPA frames window %d..%d outside the task's frames 0..%d", f.path.c_str(), e.task,
                  t.name.c_str(), e.first_pair, e.first_pair + k, frames - 1);
        jepa_check_chain(f, e.task, e.first_pair, std::min(e.first_pair + k, (int)t.pairs.size() - 1));
        for (int l = 0; l <= k; l++) grids[l] = jepa_frame(t, e.first_pair + l);
    } else {
        fatal("jepa_fill: unknown context mode %d", (int)mode);
    }
}

inline void jepa_batch_resize(ObjectBatch* b, int G) {
    b->G = G;
    b->N = OBJ_MAX_OBJECTS;
    b->features.assign((size_t)G * OBJ_MAX_OBJECTS * OBJ_FEATURES, 0.0f);
    b->mask.assign((size_t)G * OBJ_MAX_OBJECTS, 0);
    b->adjacency.assign((size_t)G * OBJ_MAX_OBJECTS * OBJ_MAX_OBJECTS, 0);
}

inline void jepa_batch_put(ObjectBatch* b, int g, const ObjectSet& s) {
    const size_t N = OBJ_MAX_OBJECTS;
    std::copy(s.features.begin(), s.features.end(), b->features.begin() + (ptrdiff_t)((size_t)g * N * OBJ_FEATURES));
    std::copy(s.mask.begin(), s.mask.end(), b->mask.begin() + (ptrdiff_t)((size_t)g * N));
    std::copy(s.adjacency.begin(), s.adjacency.end(), b->adjacency.begin() + (ptrdiff_t)((size_t)g * N * N));
}

// Fills ctx (G = B*k) and tgt (G = B) with the objects of the B samples ex[0..B-1], augmented with aug (seed,
// sample_keys[b]; sample_keys may be null when aug is all off). B = 0 gives empty batches.
inline void jepa_fill(ObjectBatch* ctx, ObjectBatch* tgt, const ArcTaskFile& f, const JepaExample* ex, int B, int k,
                      ContextMode mode, const JepaAugment& aug, uint64_t seed, const uint64_t* sample_keys) {
    if (B < 0) fatal("jepa_fill: batch size %d, expected >= 0", B);
    if (k < 1) fatal("jepa_fill: context length k = %d, expected >= 1", k);
    jepa_augment_check(aug);
    const bool active = jepa_augment_active(aug);
    if (active && B > 0 && !sample_keys) fatal("jepa_fill: augmentation is on but no sample keys were given");
    std::vector<GridView> grids((size_t)B * (size_t)(k + 1));   // (B, k+1): validated before the parallel loop
    for (int b = 0; b < B; b++) jepa_example_grids(f, ex[b], k, mode, &grids[(size_t)b * (size_t)(k + 1)]);
    jepa_batch_resize(ctx, B * k);
    jepa_batch_resize(tgt, B);
    // One sample per iteration: its k+1 grids are augmented and their objects written to its own slots.
#pragma omp parallel for schedule(dynamic, 4)
    for (int b = 0; b < B; b++) {
        const GridView* g = &grids[(size_t)b * (size_t)(k + 1)];
        std::vector<JepaGrid> augmented(active ? (size_t)(k + 1) : 0);
        if (active) jepa_augment_sample(g, k + 1, aug, seed, sample_keys[b], augmented.data());
        ObjectSet s;
        for (int l = 0; l <= k; l++) {
            if (active) grid_objects(augmented[(size_t)l].cells, augmented[(size_t)l].rows, augmented[(size_t)l].cols, OBJ_MAX_OBJECTS, &s);
            else grid_objects(g[l].cells, g[l].rows, g[l].cols, OBJ_MAX_OBJECTS, &s);
            if (l < k) jepa_batch_put(ctx, b * k + l, s);
            else jepa_batch_put(tgt, b, s);
        }
    }
}

// --------------------------------------------------------------------------------------------------------------------
// Invariance perturbations

inline void jepa_batch_check(const ObjectBatch* b, const char* who) {
    if (b->G < 0 || b->N < 0 || b->features.size() != (size_t)b->G * b->N * OBJ_FEATURES || b->mask.size() != (size_t)b->G * b->N)
        fatal("%s: object batch of G %d, N %d holds %zu features and %zu mask entries, expected G*N*%d and G*N", who, b->G,
              b->N, b->features.size(), b->mask.size(), OBJ_FEATURES);
}

// Uniform permutation of 0..9 (torch.randperm(10)) drawn from (seed, purpose).
inline void jepa_randperm10(uint64_t seed, uint64_t purpose, uint8_t perm[10]) {
    for (int i = 0; i < 10; i++) perm[i] = (uint8_t)i;
    for (int i = 9; i >= 1; i--) std::swap(perm[i], perm[hash_below((uint32_t)(i + 1), seed, purpose, (uint64_t)i)]);
}

// The two permutations perturb_color(seed) applies: colours (dominant_color) and colour slots.
inline void jepa_color_perms(uint64_t seed, uint8_t colour_perm[10], uint8_t slot_perm[10]) {
    jepa_randperm10(seed, JEPA_DRAW_COLOR_PERM, colour_perm);
    jepa_randperm10(seed, JEPA_DRAW_SLOT_PERM, slot_perm);
}

inline void perturb_color(ObjectBatch* b, uint64_t seed) {
    jepa_batch_check(b, "perturb_color");
    static_assert(OBJ_COLOR_SLOTS == 10, "perturb_color permutes 10 colours and 10 colour slots");
    uint8_t colour_perm[10], slot_perm[10];
    jepa_color_perms(seed, colour_perm, slot_perm);
    for (size_t o = 0; o < (size_t)b->G * (size_t)b->N; o++) {
        if (!b->mask[o]) continue;
        float* f = &b->features[o * OBJ_FEATURES];
        const float r = nearbyintf(f[OBJ_DOMINANT_COLOR]);     // half to even in the default rounding mode
        const int colour = r >= 9.0f ? 9 : r > 0.0f ? (int)r : 0;   // clamp(0, 9); NaN -> 0
        f[OBJ_DOMINANT_COLOR] = (float)colour_perm[colour];
        float slots[OBJ_COLOR_SLOTS];
        for (int j = 0; j < OBJ_COLOR_SLOTS; j++) slots[j] = f[OBJ_COLOR_SLOT0 + slot_perm[j]];
        for (int j = 0; j < OBJ_COLOR_SLOTS; j++) f[OBJ_COLOR_SLOT0 + j] = slots[j];
    }
}

inline float jepa_clamp01(float v) { return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; }

// The shift of object slot o = g*N + n on axis 0 (y) or 1 (x): (2u - 1) * max_delta, u uniform in [0, 1).
inline float jepa_translation_delta(uint64_t seed, size_t o, int axis, float max_delta) {
    return (hash_uniform(seed, JEPA_DRAW_TRANSLATION, (uint64_t)o, (uint64_t)axis) * 2.0f - 1.0f) * max_delta;
}

inline void perturb_translation(ObjectBatch* b, float max_delta, uint64_t seed) {
    jepa_batch_check(b, "perturb_translation");
    if (!(max_delta >= 0 && max_delta <= 1)) fatal("perturb_translation: max_delta = %g, expected 0..1", (double)max_delta);
    if (max_delta == 0) return;
    for (size_t o = 0; o < (size_t)b->G * (size_t)b->N; o++) {
        if (!b->mask[o]) continue;
        float* f = &b->features[o * OBJ_FEATURES];
        const float dy = jepa_translation_delta(seed, o, 0, max_delta), dx = jepa_translation_delta(seed, o, 1, max_delta);
        for (int c : {OBJ_CENTROID_Y, OBJ_BBOX_MIN_Y, OBJ_BBOX_MAX_Y}) f[c] = jepa_clamp01(f[c] + dy);
        for (int c : {OBJ_CENTROID_X, OBJ_BBOX_MIN_X, OBJ_BBOX_MAX_X}) f[c] = jepa_clamp01(f[c] + dx);
    }
}

// The mode perturb_symmetry(seed) applies: 0 horizontal (x reflected), 1 vertical (y reflected).
inline int jepa_symmetry_mode(uint64_t seed) { return (int)hash_below(2, seed, JEPA_DRAW_SYMMETRY); }

inline void perturb_symmetry(ObjectBatch* b, uint64_t seed) {
    jepa_batch_check(b, "perturb_symmetry");
    const bool horizontal = jepa_symmetry_mode(seed) == 0;
    const int c_idx = horizontal ? OBJ_CENTROID_X : OBJ_CENTROID_Y;
    const int min_idx = horizontal ? OBJ_BBOX_MIN_X : OBJ_BBOX_MIN_Y, max_idx = horizontal ? OBJ_BBOX_MAX_X : OBJ_BBOX_MAX_Y;
    for (size_t o = 0; o < (size_t)b->G * (size_t)b->N; o++) {
        if (!b->mask[o]) continue;
        float* f = &b->features[o * OBJ_FEATURES];
        const float c = f[c_idx], lo = f[min_idx], hi = f[max_idx];
        f[c_idx] = jepa_clamp01(1.0f - c);
        f[min_idx] = jepa_clamp01(1.0f - hi);
        f[max_idx] = jepa_clamp01(1.0f - lo);
    }
}

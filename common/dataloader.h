// TRM / ETRM samples, built on the fly from task files (data/arc.py, data/synth.py output).
//
// Nothing is materialised per augmentation: every task has a deterministic augmentation table (entry 0 is
// the original; see common/augment.h) and a sample is tokenised when it is drawn.
//
// Two splits, one per model family (upstream's):
//   ETRM  (encoder_type != none)  training: the tasks of the training files; a sample is one test pair (the
//         "query") with the task's train pairs as demonstrations. Evaluation tasks are never trained on: their
//         demonstrations only reach the encoder at evaluation.
//   TRM   (encoder_type == none, puzzle embedding)  transductive: a sample is one pair with the identifier of
//         (task, augmentation); training covers every pair of the training files' tasks and the train pairs
//         of the evaluation tasks (their puzzle embeddings must be learned); evaluation is on their test pairs.
//
// Training stream (as upstream's samplers): each epoch visits the training tasks ("groups") in a random
// order; for each it picks one random augmentation and appends its examples (ETRM: its queries; TRM: its
// pairs) in random order, truncated to fill the batch. Epochs follow one another without a gap. In training,
// every pair of an augmented task but one is translated to a random offset on the canvas (upstream's
// translation augmentation); evaluation samples are never translated. All randomness is a hash of
// (seed, epoch, position), so the loader's whole state is (epoch, cursor).
#pragma once
#include <stdint.h>
#include <algorithm>
#include <string>
#include <vector>
#include "arc_tasks.h"
#include "augment.h"
#include "rand.h"
#include "utils.h"

#define LOADER_IGNORE_LABEL (-100)

typedef struct {
    std::vector<int32_t> inputs, labels;             // (S) query tokens; labels = tokens with PAD -> -100
    std::vector<int32_t> demo_inputs, demo_labels;   // (n_demos * S) demonstration tokens (PAD stays 0)
    int n_demos;
    int puzzle_id;      // TRM identifier of (task, augmentation); 0 = blank
    int task;           // index into DataLoader::tasks; -1 for a blank (padding) sample
    int aug, pair;      // augmentation entry and pair index within the task
} Sample;

typedef struct {
    int file;                          // index into DataLoader::files
    int index;                         // task index within that file
    std::vector<Augmentation> augs;    // augmentation table, entry 0 the identity
    int puzzle_base;                   // TRM identifiers puzzle_base .. puzzle_base + augs.size() - 1
    bool all_pairs_trained;            // TRM: test pairs trained too (training files), else train pairs only
} LoaderTask;

typedef struct {
    bool etrm;
    int canvas, S, max_demos;
    uint64_t seed;
    std::vector<ArcTaskFile> files;
    std::vector<LoaderTask> tasks;
    std::vector<int> train_groups;                 // tasks trained on
    std::vector<std::string> test_names;           // one evaluation set per data_paths_test entry
    std::vector<std::vector<int>> test_tasks;      // the tasks evaluated in each set
    int n_puzzle_ids;                              // TRM table rows: 1 + sum of table sizes (0 = blank)
    double mean_group_examples;                    // examples per training group (for total_steps)
    // position in the training stream (saved in checkpoints)
    int64_t epoch, cursor;
    std::vector<int> order;                        // train_groups in the order of `epoch`
} DataLoader;

enum { LOADER_TAG_ORDER = 1, LOADER_TAG_AUG = 2, LOADER_TAG_EXAMPLES = 3 };

inline const ArcTask& loader_task(const DataLoader& dl, int t) { return dl.files[dl.tasks[t].file].tasks[dl.tasks[t].index]; }

// The examples a training group contributes: ETRM its test pairs with known outputs; TRM its trained pairs.
inline std::vector<int> loader_group_examples(const DataLoader& dl, int t) {
    const ArcTask& task = loader_task(dl, t);
    std::vector<int> pairs;
    const int first = dl.etrm ? task.n_train : 0;
    const int last = (dl.etrm || dl.tasks[t].all_pairs_trained) ? task.n_train + task.n_test : task.n_train;
    for (int p = first; p < last; p++)
        if (grid_known(task.pairs[p].output)) pairs.push_back(p);
    return pairs;
}

// Loads the files and builds the augmentation tables. canvas 0 takes the largest canvas the files suggest.
inline void loader_init(DataLoader* dl, const std::vector<std::string>& train_paths, const std::vector<std::string>& test_paths,
                        bool etrm, int canvas, int num_aug, int max_demos, int max_train_groups, int max_eval_groups, uint64_t seed) {
    dl->etrm = etrm;
    dl->max_demos = max_demos;
    dl->seed = seed;
    dl->files.clear(); dl->tasks.clear(); dl->train_groups.clear(); dl->test_names.clear(); dl->test_tasks.clear();
    std::vector<std::string> paths;
    auto file_index = [&](const std::string& path) {       // a file given twice is loaded (and trained) once
        for (size_t i = 0; i < paths.size(); i++) if (paths[i] == path) return (int)i;
        paths.push_back(path);
        dl->files.push_back(arc_tasks_load(path.c_str()));
        return (int)paths.size() - 1;
    };
    int suggested = 0, max_side = 0;
    std::vector<int> first_task;                           // per file: index of its first task in dl->tasks
    auto add_file_tasks = [&](int f, bool training) {
        if (f < (int)first_task.size()) return;
        first_task.push_back((int)dl->tasks.size());
        const ArcTaskFile& file = dl->files[f];
        suggested = std::max(suggested, file.canvas);
        max_side = std::max(max_side, file.max_side);
        for (int i = 0; i < (int)file.tasks.size(); i++) {
            LoaderTask lt;
            lt.file = f; lt.index = i; lt.puzzle_base = 0; lt.all_pairs_trained = training;
            dl->tasks.push_back(lt);
        }
    };
    for (const std::string& p : train_paths) add_file_tasks(file_index(p), true);
    const int n_train_tasks = (int)dl->tasks.size();
    for (const std::string& p : test_paths) add_file_tasks(file_index(p), false);

    dl->canvas = canvas > 0 ? canvas : suggested;
    if (max_side > dl->canvas)
        fatal("canvas=%d is smaller than the largest grid (%d) in the data files: use canvas=%d or more (ARC: 30)", dl->canvas, max_side, max_side);
    dl->S = dl->canvas * dl->canvas;

    for (int t = 0; t < (int)dl->tasks.size(); t++) dl->tasks[t].augs = augmentation_table(loader_task(*dl, t), t, num_aug, seed);
    dl->n_puzzle_ids = 1;
    for (LoaderTask& lt : dl->tasks) { lt.puzzle_base = dl->n_puzzle_ids; dl->n_puzzle_ids += (int)lt.augs.size(); }

    // Training groups: the training files' tasks (the first max_train_groups), plus in TRM the evaluated tasks.
    for (int t = 0; t < n_train_tasks && (max_train_groups <= 0 || t < max_train_groups); t++) dl->train_groups.push_back(t);
    for (const std::string& p : test_paths) {
        const int f = file_index(p);
        std::vector<int> tasks;
        for (int i = 0; i < (int)dl->files[f].tasks.size() && (max_eval_groups <= 0 || i < max_eval_groups); i++) tasks.push_back(first_task[f] + i);
        dl->test_names.push_back(p);
        dl->test_tasks.push_back(tasks);
        if (!etrm)
            for (int t : tasks)
                if (std::find(dl->train_groups.begin(), dl->train_groups.end(), t) == dl->train_groups.end()) dl->train_groups.push_back(t);
    }
    size_t examples = 0, groups = 0;
    for (int t : dl->train_groups) {
        size_t n = loader_group_examples(*dl, t).size();
        examples += n;
        groups += n > 0;
    }
    if (!train_paths.empty() && examples == 0)
        fatal("%s: no training examples (ETRM trains on test pairs with known outputs; are the solutions missing?)", train_paths[0].c_str());
    dl->mean_group_examples = groups ? (double)examples / groups : 0;
    dl->epoch = 0;
    dl->cursor = 0;
    dl->order.clear();
}

// Tokens of pair `pair` of task t under augmentation entry a (inputs and raw output tokens).
inline void loader_pair_tokens(const DataLoader& dl, int t, int a, int pair, bool translate, int32_t* in_tokens, int32_t* out_tokens) {
    const ArcTask& task = loader_task(dl, t);
    const Augmentation& aug = dl.tasks[t].augs[a];
    const GridView& gi = task.pairs[pair].input;
    const GridView& go = task.pairs[pair].output;
    uint8_t in_cells[ARC_MAX_SIDE * ARC_MAX_SIDE], out_cells[ARC_MAX_SIDE * ARC_MAX_SIDE];
    int ir, ic, orows = 0, ocols = 0;
    grid_augment(gi.cells, gi.rows, gi.cols, aug, in_cells, &ir, &ic);
    if (grid_known(go)) grid_augment(go.cells, go.rows, go.cols, aug, out_cells, &orows, &ocols);
    int pr = 0, pc = 0;
    if (translate && pair != untranslated_pair((int)task.pairs.size(), dl.seed, t, a))
        translation_offset(dl.canvas, ir, ic, orows, ocols, dl.seed, t, a, pair, &pr, &pc);
    grid_tokenize(in_tokens, in_cells, ir, ic, dl.canvas, pr, pc);
    if (grid_known(go)) grid_tokenize(out_tokens, out_cells, orows, ocols, dl.canvas, pr, pc);
    else for (int i = 0; i < dl.S; i++) out_tokens[i] = ARC_TOKEN_PAD;
}

inline Sample loader_blank_sample(const DataLoader& dl) {
    Sample s;
    s.inputs.assign(dl.S, ARC_TOKEN_PAD);
    s.labels.assign(dl.S, LOADER_IGNORE_LABEL);
    s.n_demos = 0; s.puzzle_id = 0; s.task = -1; s.aug = 0; s.pair = 0;
    return s;
}

// A sample: pair `pair` of task t under augmentation a, with (ETRM) the task's first max_demos train pairs.
inline Sample loader_make_sample(const DataLoader& dl, int t, int a, int pair, bool translate) {
    Sample s;
    s.task = t; s.aug = a; s.pair = pair;
    s.puzzle_id = dl.tasks[t].puzzle_base + a;
    s.inputs.resize(dl.S);
    s.labels.resize(dl.S);
    loader_pair_tokens(dl, t, a, pair, translate, s.inputs.data(), s.labels.data());
    for (int32_t& v : s.labels) if (v == ARC_TOKEN_PAD) v = LOADER_IGNORE_LABEL;
    s.n_demos = 0;
    if (dl.etrm) {
        s.n_demos = std::min(loader_task(dl, t).n_train, dl.max_demos);
        s.demo_inputs.resize((size_t)s.n_demos * dl.S);
        s.demo_labels.resize((size_t)s.n_demos * dl.S);
        for (int k = 0; k < s.n_demos; k++)
            loader_pair_tokens(dl, t, a, k, translate, &s.demo_inputs[(size_t)k * dl.S], &s.demo_labels[(size_t)k * dl.S]);
    }
    return s;
}

// Appends the next B samples of the training stream.
inline void loader_next_train_batch(DataLoader* dl, int B, std::vector<Sample>* out) {
    out->clear();
    const int n = (int)dl->train_groups.size();
    while ((int)out->size() < B) {
        if (dl->cursor >= n) { dl->epoch++; dl->cursor = 0; dl->order.clear(); }
        if (dl->order.empty()) {                                  // Fisher-Yates from the epoch's hash stream
            dl->order = dl->train_groups;
            for (int i = n - 1; i > 0; i--)
                std::swap(dl->order[i], dl->order[hash_below((uint32_t)(i + 1), dl->seed, LOADER_TAG_ORDER, (uint64_t)dl->epoch, (uint64_t)i)]);
        }
        const int t = dl->order[dl->cursor];
        const uint64_t key = ((uint64_t)dl->epoch << 32) | (uint64_t)dl->cursor;
        dl->cursor++;
        std::vector<int> examples = loader_group_examples(*dl, t);
        if (examples.empty()) continue;
        const int a = (int)hash_below((uint32_t)dl->tasks[t].augs.size(), dl->seed, LOADER_TAG_AUG, key);
        for (int i = (int)examples.size() - 1; i > 0; i--)
            std::swap(examples[i], examples[hash_below((uint32_t)(i + 1), dl->seed, LOADER_TAG_EXAMPLES, key, (uint64_t)i)]);
        const int take = std::min((int)examples.size(), B - (int)out->size());
        for (int i = 0; i < take; i++) out->push_back(loader_make_sample(*dl, t, a, examples[i], true));
    }
}

// Evaluation of one set: every test pair of every evaluated task under the first n_aug entries of its table
// (eval_num_aug = 0: all of them), in order, untranslated.
typedef struct {
    int set;
    size_t task_pos;
    int aug, pair;
} EvalCursor;

inline EvalCursor loader_eval_begin(int set) { EvalCursor c; c.set = set; c.task_pos = 0; c.aug = 0; c.pair = 0; return c; }

inline int loader_eval_augs(const DataLoader& dl, int t, int eval_num_aug) {
    const int n = (int)dl.tasks[t].augs.size();
    return eval_num_aug > 0 ? std::min(n, eval_num_aug) : n;
}

// Fills `out` with up to B evaluation samples, padded with blanks to exactly B; returns how many are real.
inline int loader_next_eval_batch(const DataLoader& dl, EvalCursor* c, int B, int eval_num_aug, std::vector<Sample>* out) {
    out->clear();
    const std::vector<int>& tasks = dl.test_tasks[c->set];
    while ((int)out->size() < B && c->task_pos < tasks.size()) {
        const int t = tasks[c->task_pos];
        const ArcTask& task = loader_task(dl, t);
        out->push_back(loader_make_sample(dl, t, c->aug, task.n_train + c->pair, false));
        if (++c->pair == task.n_test) {
            c->pair = 0;
            if (++c->aug == loader_eval_augs(dl, t, eval_num_aug)) { c->aug = 0; c->task_pos++; }
        }
    }
    const int real = (int)out->size();
    while ((int)out->size() < B) out->push_back(loader_blank_sample(dl));
    return real;
}

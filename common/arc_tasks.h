// Loader for the arc.cu binary task file (written by data/arc.py from ARC-AGI JSON, and by data/synth.py).
//
// Format (little-endian int32 unless stated; data/arc_format.py is the Python side of the same contract):
//   header  int32[256]          [0] magic 20261121  [1] version 1  [2] n_tasks  [3] n_pairs  [4] n_cells
//                               [5] names_bytes  [6] canvas (suggested canvas side)  [7] max_side  [8..255] 0
//   tasks   int32[n_tasks][4]   first_pair, n_train, n_test, name_offset   (train pairs first, then test pairs)
//   pairs   int32[n_pairs][6]   in_rows, in_cols, out_rows, out_cols, in_offset, out_offset
//                               (an unknown test output: out_rows = out_cols = 0, out_offset = -1)
//   cells   uint8[n_cells]      colours 0..9, row-major grids back to back
//   names   char[names_bytes]   NUL-terminated task names
//   file length == 1024 + 16*n_tasks + 24*n_pairs + n_cells + names_bytes
//
// arc_tasks_load() validates everything (a bad file exits with one line naming the file, what is wrong and
// how to fix it), so code using the result can trust it: sides are 1..30 (0x0 only for an unknown test
// output, whose cells pointer is null), colours are 0..9, every task has >= 1 train and >= 1 test pair.
//
// Lifetime of the cell pointers: GridView::cells points into one heap buffer that is owned jointly, through
// a shared_ptr, by the ArcTaskFile and by every ArcTask taken from it. Copying or moving an ArcTaskFile or an
// ArcTask never reallocates that buffer, and the buffer lives as long as any of them does, so a GridView
// obtained from a live ArcTask (or from any copy of it) can never dangle. (Only a GridView copied out on its
// own, with every ArcTask and ArcTaskFile holding the buffer gone, would: keep the task, not the view.)
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <memory>
#include <string>
#include <vector>
#include "utils.h"

#define ARC_TASKS_MAGIC 20261121
#define ARC_TASKS_VERSION 1
#define ARC_TASKS_HEADER_INTS 256
#define ARC_MAX_SIDE 30                 // largest grid side ARC allows
#define ARC_MAX_CANVAS 1024             // sanity bound on the header's suggested canvas side

typedef struct { int rows, cols; const uint8_t* cells; } GridView;   // cells == nullptr (0x0) for an unknown output
typedef struct { GridView input, output; } ArcPair;

struct ArcTask {
    std::string name;
    int n_train, n_test;
    std::vector<ArcPair> pairs;                              // n_train demonstrations, then n_test tests
    std::shared_ptr<const std::vector<uint8_t>> storage;     // keeps the cells the views point into alive
};

struct ArcTaskFile {
    std::string path;
    int canvas, max_side;                                    // suggested canvas side; largest grid side in the file
    std::vector<ArcTask> tasks;
    std::shared_ptr<const std::vector<uint8_t>> cells;       // the cells block (shared with every task)
    size_t n_pairs() const { size_t n = 0; for (const ArcTask& t : tasks) n += t.pairs.size(); return n; }
};

inline bool grid_known(const GridView& g) { return g.cells != nullptr; }

inline int32_t arc_tasks_le32(const uint8_t* p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

// Loads and validates a task file; any problem is fatal (exit 1) with a message naming the file.
inline ArcTaskFile arc_tasks_load(const char* path) {
    static const char* REGEN = "regenerate it with python3 data/arc.py OUT.bin ARC_JSON_DIR (or data/synth.py)";
    const long size = regular_file_size(path, "task file", " (create it with python3 data/arc.py OUT.bin ARC_JSON_DIR)");
    FILE* f = fopen_check(path, "rb");
    std::vector<uint8_t> bytes((size_t)size);
    fread_check(bytes.data(), (size_t)size, f, path);
    fclose(f);

    const long header_bytes = 4 * ARC_TASKS_HEADER_INTS;
    if (size < header_bytes) {
        if (size >= 4 && arc_tasks_le32(bytes.data()) != ARC_TASKS_MAGIC)
            fatal("%s: not an arc.cu task file (magic %d, expected %d; %ld bytes); convert ARC JSON with python3 data/arc.py",
                  path, arc_tasks_le32(bytes.data()), ARC_TASKS_MAGIC, size);
        fatal("%s: truncated: %ld bytes, shorter than the %ld-byte header (%s)", path, size, header_bytes, REGEN);
    }
    int32_t h[ARC_TASKS_HEADER_INTS];
    for (int i = 0; i < ARC_TASKS_HEADER_INTS; i++) h[i] = arc_tasks_le32(bytes.data() + 4 * i);
    if (h[0] != ARC_TASKS_MAGIC)
        fatal("%s: not an arc.cu task file (magic %d, expected %d); convert ARC JSON with python3 data/arc.py OUT.bin ARC_JSON_DIR",
              path, h[0], ARC_TASKS_MAGIC);
    if (h[1] != ARC_TASKS_VERSION)
        fatal("%s: version %d, this build reads version %d (%s)", path, h[1], ARC_TASKS_VERSION, REGEN);
    const int n_tasks = h[2], n_pairs = h[3], n_cells = h[4], names_bytes = h[5], canvas = h[6], max_side = h[7];
    if (n_tasks < 0 || n_pairs < 0 || n_cells < 0 || names_bytes < 0)
        fatal("%s: corrupt header: negative count (n_tasks %d, n_pairs %d, n_cells %d, names_bytes %d) (%s)",
              path, n_tasks, n_pairs, n_cells, names_bytes, REGEN);
    if (n_tasks == 0) fatal("%s: holds no tasks (%s with at least one task)", path, REGEN);
    if (max_side < 1 || max_side > ARC_MAX_SIDE)
        fatal("%s: corrupt header: max_side %d, expected 1..%d (%s)", path, max_side, ARC_MAX_SIDE, REGEN);
    if (canvas < max_side || canvas > ARC_MAX_CANVAS)
        fatal("%s: corrupt header: canvas %d, expected max_side %d..%d (%s)", path, canvas, max_side, ARC_MAX_CANVAS, REGEN);
    for (int i = 8; i < ARC_TASKS_HEADER_INTS; i++)
        if (h[i] != 0) fatal("%s: header int %d is %d, expected 0 (written by a newer or buggy writer? %s)", path, i, h[i], REGEN);
    const long long expected = (long long)header_bytes + 16LL * n_tasks + 24LL * n_pairs + n_cells + names_bytes;
    if ((long long)size < expected)
        fatal("%s: truncated: header says %lld bytes, file has %ld (%s)", path, expected, size, REGEN);
    if ((long long)size > expected)
        fatal("%s: %ld bytes, but the header says %lld (trailing bytes: corrupt or not this format; %s)", path, size, expected, REGEN);

    const uint8_t* task_ints = bytes.data() + header_bytes;
    const uint8_t* pair_ints = task_ints + 16LL * n_tasks;
    const uint8_t* cells_at = pair_ints + 24LL * n_pairs;
    const char* names = (const char*)(cells_at + n_cells);

    ArcTaskFile file;
    file.path = path;
    file.canvas = canvas;
    file.max_side = max_side;
    auto cells = std::make_shared<std::vector<uint8_t>>(cells_at, cells_at + n_cells);
    file.cells = cells;
    const uint8_t* base = cells->data();
    file.tasks.resize((size_t)n_tasks);
    int largest = 0;
    for (int t = 0; t < n_tasks; t++) {
        ArcTask& task = file.tasks[(size_t)t];
        const int first = arc_tasks_le32(task_ints + 16LL * t), n_train = arc_tasks_le32(task_ints + 16LL * t + 4);
        const int n_test = arc_tasks_le32(task_ints + 16LL * t + 8), name_offset = arc_tasks_le32(task_ints + 16LL * t + 12);
        if (name_offset < 0 || name_offset >= names_bytes)
            fatal("%s: task %d: name offset %d outside the %d-byte names block (%s)", path, t, name_offset, names_bytes, REGEN);
        const char* name = names + name_offset;
        const char* nul = (const char*)memchr(name, 0, (size_t)(names_bytes - name_offset));
        if (!nul) fatal("%s: task %d: name at offset %d is not NUL-terminated inside the names block (%s)", path, t, name_offset, REGEN);
        if (nul == name) fatal("%s: task %d: empty name (%s)", path, t, REGEN);
        task.name.assign(name, nul);
        const char* tn = task.name.c_str();
        if (n_train < 1 || n_test < 1)
            fatal("%s: task %d (%s): %d train and %d test pairs, each must be >= 1 (%s)", path, t, tn, n_train, n_test, REGEN);
        if (first < 0 || (long long)first + n_train + n_test > n_pairs)
            fatal("%s: task %d (%s): pairs %d..%lld outside the file's %d pairs (%s)", path, t, tn, first,
                  (long long)first + n_train + n_test - 1, n_pairs, REGEN);
        task.n_train = n_train;
        task.n_test = n_test;
        task.storage = cells;
        task.pairs.resize((size_t)(n_train + n_test));
        for (int i = 0; i < n_train + n_test; i++) {
            const uint8_t* p = pair_ints + 24LL * (first + i);
            int v[6];
            for (int k = 0; k < 6; k++) v[k] = arc_tasks_le32(p + 4 * k);
            for (int io = 0; io < 2; io++) {
                const int rows = v[2 * io], cols = v[2 * io + 1], offset = v[4 + io];
                const char* what = io ? "output" : "input";
                GridView& g = io ? task.pairs[(size_t)i].output : task.pairs[(size_t)i].input;
                if (io == 1 && rows == 0 && cols == 0 && offset == -1) {
                    if (i < n_train)
                        fatal("%s: task %d (%s): train pair %d has an unknown output (only test outputs may be unknown; %s)",
                              path, t, tn, i, REGEN);
                    g.rows = g.cols = 0;
                    g.cells = nullptr;
                    continue;
                }
                if (rows < 1 || rows > ARC_MAX_SIDE || cols < 1 || cols > ARC_MAX_SIDE)
                    fatal("%s: task %d (%s) pair %d %s is %dx%d, sides must be 1..%d (0x0 with offset -1 only for an "
                          "unknown test output) (%s)", path, t, tn, i, what, rows, cols, ARC_MAX_SIDE, REGEN);
                if (offset < 0 || (long long)offset + (long long)rows * cols > n_cells)
                    fatal("%s: task %d (%s) pair %d %s: %dx%d grid at cell offset %d runs outside the %d-byte cells block (%s)",
                          path, t, tn, i, what, rows, cols, offset, n_cells, REGEN);
                if (rows > max_side || cols > max_side)
                    fatal("%s: task %d (%s) pair %d %s is %dx%d, larger than the header's max_side %d (%s)",
                          path, t, tn, i, what, rows, cols, max_side, REGEN);
                largest = rows > largest ? rows : largest;
                largest = cols > largest ? cols : largest;
                for (int c = 0; c < rows * cols; c++)
                    if (base[offset + c] > 9)
                        fatal("%s: task %d (%s) pair %d %s: row %d column %d has colour %d, colours must be 0..9 (%s)",
                              path, t, tn, i, what, c / cols, c % cols, base[offset + c], REGEN);
                g.rows = rows;
                g.cols = cols;
                g.cells = base + offset;
            }
        }
    }
    for (int c = 0; c < n_cells; c++)
        if (base[c] > 9) fatal("%s: cells block byte %d holds colour %d, colours must be 0..9 (%s)", path, c, base[c], REGEN);
    if (largest != max_side)
        fatal("%s: header max_side is %d but the largest grid side is %d (%s)", path, max_side, largest, REGEN);
    return file;
}

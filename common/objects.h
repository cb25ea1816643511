// Object extraction and object features for ARC grids: the data side of the object-centric JEPA (train_jepa.cu).
// Follows ../shared/spec/jepa_reference.md section 2 (reference: arc-jepa-rl training/modules/object_tokenizer.py
// with its defaults: background 0, 4-connectivity, respect_colors, max_color_features 10, normalize).
//
// Objects. An object is a 4-connected component of non-background cells that all have the same colour (background is
// colour 0). So two touching cells of different colours are two objects, and two cells of one colour that touch only
// at a corner are two objects.
//
// Discovery order. Components are numbered 0, 1, 2, ... in the raster (row-major) order of their first cell: the order
// in which a scan of row 0 left to right, then row 1, ... first meets each of them. (The reference labels each colour
// separately with scipy, then renumbers the labels in one raster scan of the whole grid; the renumbering is exactly
// this order, so it does not depend on which colour is which.)
//
// Kept objects. The components are sorted by (-area, discovery order), i.e. a stable sort by decreasing area, and the
// first N = max_objects of them are kept in slots 0..n-1, n = min(components, N). Slots n..N-1 are padding: zero
// features, mask 0, no adjacency.
//
// Features (F = 23) of an object with cells (y_k, x_k), k = 1..A (y = row, x = column), in a grid of H rows and W cols:
//    0 area            A / (H*W)
//    1 perimeter       P / (H*W), P = sum over the object's cells of (4 - number of its 4-neighbours in the object).
//                      Edges on the grid border count, and so do the edges around holes and along other objects.
//    2 height          (max_y - min_y + 1) / H         bounding-box sides in cells (min and max are both inclusive)
//    3 width           (max_x - min_x + 1) / W
//    4 aspect          (max_x - min_x + 1) / (max_y - min_y + 1): width / height in cells, not normalised
//    5 color_count     number of distinct colours in the object, not normalised: always 1 here
//    6 dominant_color  most frequent colour (ties to the colour met first in raster order), raw 0..9: here the
//                      object's colour
//    7 centroid_y      mean(y_k) / H
//    8 centroid_x      mean(x_k) / W
//    9 bbox_min_y      min_y / H
//   10 bbox_min_x      min_x / W
//   11 bbox_max_y      max_y / H                       the index of the last row (a full grid gives (H-1)/H)
//   12 bbox_max_x      max_x / W
//   13..22 colour slots: count / (H*W) of each colour present, colours in increasing id, placed in slots 13, 14, ...
//                      (slot index != colour id). Objects have one colour, so slot 13 = A / (H*W) and 14..22 are 0.
// Every value is computed in double and rounded once to float, as the reference does (float64, then torch.float32).
//
// Adjacency (N, N): adjacency[i][j] = 1 for kept objects i != j whose bounding boxes overlap or touch:
//   not (max_y_i + 1 < min_y_j  or  max_y_j + 1 < min_y_i  or  max_x_i + 1 < min_x_j  or  max_x_j + 1 < min_x_i)
// "Touch" means that some row of box i is at most 1 away from some row of box j, and the same for columns: boxes
// in neighbouring rows or columns (sharing an edge or only a corner) are adjacent, boxes with one or more empty rows
// (or columns) between them are not. Only bounding boxes count: a cell inside a ring is adjacent to the ring. The
// matrix is symmetric with a zero diagonal, and padded rows and columns are 0.
//
// Cost: O(H*W) for the labelling (one breadth-first fill per component) plus O(C log C + N^2) for C components.
#pragma once
#include <stdint.h>
#include <algorithm>
#include <numeric>
#include <vector>
#include "arc_tasks.h"
#include "utils.h"

#define OBJ_MAX_OBJECTS 16     // N of the reference configs
#define OBJ_COLOR_SLOTS 10     // max_color_features of the reference
#define OBJ_FEATURES 23        // F = 13 base features + 10 colour slots

// Column of each feature in a feature row (see the table above).
enum ObjectFeature {
    OBJ_AREA, OBJ_PERIMETER, OBJ_HEIGHT, OBJ_WIDTH, OBJ_ASPECT, OBJ_COLOR_COUNT, OBJ_DOMINANT_COLOR,
    OBJ_CENTROID_Y, OBJ_CENTROID_X, OBJ_BBOX_MIN_Y, OBJ_BBOX_MIN_X, OBJ_BBOX_MAX_Y, OBJ_BBOX_MAX_X,
    OBJ_COLOR_SLOT0                                           // first of the OBJ_COLOR_SLOTS colour slots
};
static_assert(OBJ_COLOR_SLOT0 + OBJ_COLOR_SLOTS == OBJ_FEATURES, "feature table and OBJ_FEATURES disagree");

// The object tokens of one grid: one slot per kept object, then padding, as in the batch tensors of the reference.
struct ObjectSet {
    int max_objects = 0;              // N: slots in features, mask and adjacency
    int n = 0;                        // objects kept: min(n_found, N), in slots 0..n-1
    int n_found = 0;                  // components in the grid, before keeping the N largest
    std::vector<float> features;      // (N, F) row-major; padded rows are 0
    std::vector<uint8_t> mask;        // (N): 1 for slots 0..n-1, 0 for padding
    std::vector<uint8_t> adjacency;   // (N, N) row-major

    float feature(int slot, int f) const { return features[(size_t)slot * OBJ_FEATURES + (size_t)f]; }
    uint8_t adjacent(int i, int j) const { return adjacency[(size_t)i * (size_t)max_objects + (size_t)j]; }
};

// One connected component, in cell units.
struct GridComponent {
    int color, area, perimeter;
    int sum_y, sum_x;                 // sums of the cells' row and column indices (for the centroid)
    int min_y, min_x, max_y, max_x;   // inclusive bounding box
};

// Extracts the objects of a rows x cols grid (cells row-major, colours 0..9, sides 1..ARC_MAX_SIDE) into *out,
// which is resized to max_objects (>= 1) slots. Invalid input is fatal.
inline void grid_objects(const uint8_t* cells, int rows, int cols, int max_objects, ObjectSet* out) {
    if (rows < 1 || rows > ARC_MAX_SIDE || cols < 1 || cols > ARC_MAX_SIDE)
        fatal("grid_objects: grid is %dx%d, expected sides 1..%d", rows, cols, ARC_MAX_SIDE);
    if (max_objects < 1) fatal("grid_objects: max_objects is %d, expected at least 1", max_objects);
    for (int k = 0; k < rows * cols; k++)
        if (cells[k] > 9)
            fatal("grid_objects: row %d column %d of the %dx%d grid has colour %d, expected 0..9",
                  k / cols, k % cols, rows, cols, cells[k]);

    // Label the components: a breadth-first fill from each not yet labelled non-background cell, met in raster
    // order, so component ids are the discovery order. The perimeter term of a cell counts its same-colour
    // 4-neighbours, which are exactly its neighbours in the same component.
    const int H = rows, W = cols;
    int label[ARC_MAX_SIDE * ARC_MAX_SIDE];   // (H, W): component id, -1 for background or not yet reached
    int queue[ARC_MAX_SIDE * ARC_MAX_SIDE];   // flat cell indices waiting to be visited
    std::fill(label, label + H * W, -1);
    std::vector<GridComponent> components;
    const int dy[4] = {-1, 1, 0, 0}, dx[4] = {0, 0, -1, 1};
    for (int start = 0; start < H * W; start++) {
        if (cells[start] == 0 || label[start] >= 0) continue;
        const int id = (int)components.size(), color = cells[start];
        GridComponent c = {color, 0, 0, 0, 0, H, W, -1, -1};
        int head = 0, tail = 0;
        label[start] = id;
        queue[tail++] = start;
        while (head < tail) {
            const int cell = queue[head++], y = cell / W, x = cell % W;
            c.area++;
            c.sum_y += y;
            c.sum_x += x;
            c.min_y = std::min(c.min_y, y);
            c.min_x = std::min(c.min_x, x);
            c.max_y = std::max(c.max_y, y);
            c.max_x = std::max(c.max_x, x);
            int same = 0;
            for (int d = 0; d < 4; d++) {
                const int ny = y + dy[d], nx = x + dx[d], next = ny * W + nx;
                if (ny < 0 || ny >= H || nx < 0 || nx >= W || cells[next] != color) continue;
                same++;
                if (label[next] < 0) { label[next] = id; queue[tail++] = next; }
            }
            c.perimeter += 4 - same;
        }
        components.push_back(c);
    }

    // Keep the N largest; the stable sort keeps equal areas in discovery order.
    std::vector<int> order(components.size());   // component ids, sorted by (-area, discovery order)
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return components[(size_t)a].area > components[(size_t)b].area; });
    const int N = max_objects;
    out->max_objects = N;
    out->n_found = (int)components.size();
    out->n = std::min(out->n_found, N);
    out->features.assign((size_t)N * OBJ_FEATURES, 0.0f);
    out->mask.assign((size_t)N, 0);
    out->adjacency.assign((size_t)N * N, 0);

    const double grid_area = (double)H * W;
    for (int slot = 0; slot < out->n; slot++) {
        const GridComponent& c = components[(size_t)order[(size_t)slot]];
        const int height = c.max_y - c.min_y + 1, width = c.max_x - c.min_x + 1;
        float* f = &out->features[(size_t)slot * OBJ_FEATURES];   // (F)
        f[OBJ_AREA] = (float)(c.area / grid_area);
        f[OBJ_PERIMETER] = (float)(c.perimeter / grid_area);
        f[OBJ_HEIGHT] = (float)((double)height / H);
        f[OBJ_WIDTH] = (float)((double)width / W);
        f[OBJ_ASPECT] = (float)((double)width / height);
        f[OBJ_COLOR_COUNT] = 1.0f;
        f[OBJ_DOMINANT_COLOR] = (float)c.color;
        f[OBJ_CENTROID_Y] = (float)((double)c.sum_y / c.area / H);
        f[OBJ_CENTROID_X] = (float)((double)c.sum_x / c.area / W);
        f[OBJ_BBOX_MIN_Y] = (float)((double)c.min_y / H);
        f[OBJ_BBOX_MIN_X] = (float)((double)c.min_x / W);
        f[OBJ_BBOX_MAX_Y] = (float)((double)c.max_y / H);
        f[OBJ_BBOX_MAX_X] = (float)((double)c.max_x / W);
        f[OBJ_COLOR_SLOT0] = (float)(c.area / grid_area);        // the one colour present, in the first slot
        out->mask[(size_t)slot] = 1;
    }

    for (int i = 0; i < out->n; i++)
        for (int j = 0; j < out->n; j++) {
            const GridComponent& a = components[(size_t)order[(size_t)i]];
            const GridComponent& b = components[(size_t)order[(size_t)j]];
            const bool apart = a.max_y + 1 < b.min_y || b.max_y + 1 < a.min_y || a.max_x + 1 < b.min_x || b.max_x + 1 < a.min_x;
            out->adjacency[(size_t)i * N + j] = (uint8_t)(i != j && !apart);
        }
}

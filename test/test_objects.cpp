// Tests of common/objects.h: object extraction and the 23 object features of the JEPA (jepa_reference.md section 2).
//
//   make build/test_objects && ./build/test_objects
//
// Run from the repository root. Hand-made grids (written as rows of digits) check every rule with values worked out by
// hand; random grids check colour-permutation invariance and agreement with a slow reference written here; the ARC-AGI-1
// training grids (converted into build/ with python3 data/arc.py; SKIP when ../shared/data is absent) check the
// invariants and the slow reference on real data.
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>
#include <math.h>
#include <algorithm>
#include <functional>
#include <string>
#include <vector>
#include "../common/arc_tasks.h"
#include "../common/objects.h"
#include "../common/rand.h"
#include "test.h"

// ------------------------------------------------------------------------------------------------ helpers

static const char* FEATURE_NAMES[OBJ_FEATURES] = {
    "area", "perimeter", "height", "width", "aspect", "color_count", "dominant_color", "centroid_y", "centroid_x",
    "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "slot0", "slot1", "slot2", "slot3", "slot4", "slot5",
    "slot6", "slot7", "slot8", "slot9"};


static ObjectSet objects_of(const TestGrid& g, int max_objects = OBJ_MAX_OBJECTS) {
    ObjectSet s;
    grid_objects(g.cells.data(), g.rows, g.cols, max_objects, &s);
    return s;
}

// An object in cell units, as worked out by hand.
struct Expected {
    int area, perimeter, min_y, min_x, max_y, max_x, color;
    double centroid_y, centroid_x;   // mean row and column index of the cells
};

// The feature row the spec gives for an object of an H x W grid, each value rounded once to float.
static std::vector<float> expected_row(const Expected& e, int H, int W) {
    const int height = e.max_y - e.min_y + 1, width = e.max_x - e.min_x + 1;
    std::vector<float> row(OBJ_FEATURES, 0.0f);
    row[OBJ_AREA] = (float)(e.area / ((double)H * W));
    row[OBJ_PERIMETER] = (float)(e.perimeter / ((double)H * W));
    row[OBJ_HEIGHT] = (float)((double)height / H);
    row[OBJ_WIDTH] = (float)((double)width / W);
    row[OBJ_ASPECT] = (float)((double)width / height);
    row[OBJ_COLOR_COUNT] = 1.0f;
    row[OBJ_DOMINANT_COLOR] = (float)e.color;
    row[OBJ_CENTROID_Y] = (float)(e.centroid_y / H);
    row[OBJ_CENTROID_X] = (float)(e.centroid_x / W);
    row[OBJ_BBOX_MIN_Y] = (float)((double)e.min_y / H);
    row[OBJ_BBOX_MIN_X] = (float)((double)e.min_x / W);
    row[OBJ_BBOX_MAX_Y] = (float)((double)e.max_y / H);
    row[OBJ_BBOX_MAX_X] = (float)((double)e.max_x / W);
    row[OBJ_COLOR_SLOT0] = row[OBJ_AREA];
    return row;
}

// Exact comparison of one slot's features with a row; *why names the first difference.
static bool slot_is(const ObjectSet& s, int slot, const std::vector<float>& row, std::string* why) {
    for (int f = 0; f < OBJ_FEATURES; f++)
        if (s.feature(slot, f) != row[(size_t)f]) {
            *why = fmt("slot %d feature %d (%s) is %.9g, expected %.9g", slot, f, FEATURE_NAMES[f], s.feature(slot, f), row[(size_t)f]);
            return false;
        }
    return true;
}

static void check_slot(const char* name, const ObjectSet& s, int slot, const Expected& e, int H, int W) {
    std::string why;
    bool ok = slot < s.n && slot_is(s, slot, expected_row(e, H, W), &why);
    check(ok, name, "%s", slot < s.n ? why.c_str() : fmt("slot %d not kept (n = %d)", slot, s.n).c_str());
}

// n, n_found, the mask, zero padded rows and a symmetric zero-diagonal adjacency with zero padding.
static bool well_formed(const ObjectSet& s, std::string* why) {
    const int N = s.max_objects;
    if ((int)s.features.size() != N * OBJ_FEATURES || (int)s.mask.size() != N || (int)s.adjacency.size() != N * N) {
        *why = "buffer sizes are not (N, F), (N), (N, N)"; return false;
    }
    if (s.n != std::min(s.n_found, N)) { *why = fmt("n %d, n_found %d, N %d", s.n, s.n_found, N); return false; }
    for (int i = 0; i < N; i++) {
        if (s.mask[(size_t)i] != (i < s.n)) { *why = fmt("mask[%d] is %d with n = %d", i, s.mask[(size_t)i], s.n); return false; }
        for (int f = 0; f < OBJ_FEATURES; f++) {
            const float v = s.feature(i, f);
            if (!std::isfinite(v) || (i >= s.n && v != 0.0f)) { *why = fmt("slot %d feature %s is %g", i, FEATURE_NAMES[f], v); return false; }
        }
        for (int j = 0; j < N; j++) {
            const int a = s.adjacent(i, j);
            if (a > 1 || a != s.adjacent(j, i) || (i == j && a) || ((i >= s.n || j >= s.n) && a)) {
                *why = fmt("adjacency[%d][%d] = %d, [%d][%d] = %d, n = %d", i, j, a, j, i, s.adjacent(j, i), s.n); return false;
            }
        }
    }
    return true;
}

static void check_well_formed(const char* name, const ObjectSet& s) {
    std::string why;
    check(well_formed(s, &why), name, "%s", why.c_str());
}

// ------------------------------------------------------------------------------------------------ slow reference
// An independent, deliberately different implementation of the spec: labels by repeated min-propagation (each cell
// ends with the smallest flat index of its component, i.e. the component's first cell in raster order), counts the
// perimeter as exposed cell edges, orders by an explicit (-area, first cell) key and tests boxes by their gaps.

struct RefObject { int first, area, perimeter, min_y, min_x, max_y, max_x, color; long sum_y, sum_x; };

static std::vector<RefObject> reference_objects(const TestGrid& g) {
    const int H = g.rows, W = g.cols;
    auto same = [&](int y, int x, int ny, int nx) {
        return ny >= 0 && ny < H && nx >= 0 && nx < W && g.cells[(size_t)(ny * W + nx)] == g.cells[(size_t)(y * W + x)];
    };
    std::vector<int> lab((size_t)(H * W));
    for (int k = 0; k < H * W; k++) lab[(size_t)k] = g.cells[(size_t)k] ? k : -1;
    const int dy[4] = {-1, 1, 0, 0}, dx[4] = {0, 0, -1, 1};
    for (bool changed = true; changed;) {
        changed = false;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int d = 0; d < 4; d++) {
                    int& here = lab[(size_t)(y * W + x)];
                    if (here < 0 || !same(y, x, y + dy[d], x + dx[d])) continue;
                    const int there = lab[(size_t)((y + dy[d]) * W + x + dx[d])];
                    if (there < here) { here = there; changed = true; }
                }
    }
    std::vector<RefObject> objects;
    for (int k = 0; k < H * W; k++) {
        if (lab[(size_t)k] != k) continue;   // not the first cell of a component
        RefObject o = {k, 0, 0, H, W, -1, -1, g.cells[(size_t)k], 0, 0};
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                if (lab[(size_t)(y * W + x)] != k) continue;
                o.area++; o.sum_y += y; o.sum_x += x;
                o.min_y = std::min(o.min_y, y); o.max_y = std::max(o.max_y, y);
                o.min_x = std::min(o.min_x, x); o.max_x = std::max(o.max_x, x);
                for (int d = 0; d < 4; d++) o.perimeter += !same(y, x, y + dy[d], x + dx[d]);
            }
        objects.push_back(o);
    }
    std::sort(objects.begin(), objects.end(), [](const RefObject& a, const RefObject& b) {
        return std::make_pair(-a.area, a.first) < std::make_pair(-b.area, b.first);
    });
    return objects;
}

// Compares grid_objects with the slow reference: every feature exactly, the adjacency, the counts.
static bool matches_reference(const TestGrid& g, const ObjectSet& s, std::string* why) {
    std::vector<RefObject> ref = reference_objects(g);
    if (s.n_found != (int)ref.size()) { *why = fmt("%d components, reference %zu", s.n_found, ref.size()); return false; }
    for (int i = 0; i < s.n; i++) {
        const RefObject& o = ref[(size_t)i];
        Expected e = {o.area, o.perimeter, o.min_y, o.min_x, o.max_y, o.max_x, o.color,
                      (double)o.sum_y / o.area, (double)o.sum_x / o.area};
        if (!slot_is(s, i, expected_row(e, g.rows, g.cols), why)) return false;
        for (int j = 0; j < s.n; j++) {
            const RefObject& p = ref[(size_t)j];
            const int gap_y = std::max(p.min_y - o.max_y, o.min_y - p.max_y);   // <= 0: the row ranges overlap
            const int gap_x = std::max(p.min_x - o.max_x, o.min_x - p.max_x);
            const int want = i != j && gap_y <= 1 && gap_x <= 1;
            if (s.adjacent(i, j) != want) { *why = fmt("adjacency[%d][%d] is %d, reference %d", i, j, s.adjacent(i, j), want); return false; }
        }
    }
    return well_formed(s, why);
}

static TestGrid random_grid(int rows, int cols, int n_colors, int percent_background, uint64_t seed) {
    TestGrid g;
    g.rows = rows; g.cols = cols;
    for (int k = 0; k < rows * cols; k++) {
        const bool background = (int)hash_below(100, seed, (uint64_t)k, 0) < percent_background;
        g.cells.push_back(background ? 0 : (uint8_t)(1 + hash_below((uint32_t)n_colors, seed, (uint64_t)k, 1)));
    }
    return g;
}

// ------------------------------------------------------------------------------------------------ tests

static void test_single_cell() {
    // 3 rows x 4 cols, one cell of colour 7 at row 1, column 2. H*W = 12.
    TestGrid g = grid_from({"0000",
                            "0070",
                            "0000"});
    ObjectSet s = objects_of(g);
    check(s.n == 1 && s.n_found == 1 && s.max_objects == 16, "single_cell_count", "n %d, n_found %d, N %d", s.n, s.n_found, s.max_objects);
    // area 1, perimeter 4, height 1 of 3, width 1 of 4, aspect 1, one colour (7), centroid = bbox = (1, 2), slot0 = area.
    const std::vector<float> row = {1.0f / 12, 4.0f / 12, 1.0f / 3, 1.0f / 4, 1, 1, 7, 1.0f / 3, 2.0f / 4,
                                    1.0f / 3, 2.0f / 4, 1.0f / 3, 2.0f / 4, 1.0f / 12, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::string why;
    check(slot_is(s, 0, row, &why), "single_cell_features", "%s", why.c_str());
    check_well_formed("single_cell_padding_mask_adjacency", s);
}

static void test_feature_layout() {
    // An L of colour 5 in a 4 x 5 grid (H*W = 20): cells (0,1) (1,1) (2,1) (2,2) (2,3) (2,4).
    TestGrid g = grid_from({"05000",
                            "05000",
                            "05555",
                            "00000"});
    ObjectSet s = objects_of(g);
    // area 6; perimeter: the two ends have 1 neighbour in the object (3 each), the other four have 2 (2 each) -> 14;
    // bbox rows 0..2, cols 1..4: height 3, width 4, aspect 4/3; centroid (9/6, 12/6) = (1.5, 2).
    const std::vector<float> row = {6.0f / 20, 14.0f / 20, 3.0f / 4, 4.0f / 5, 4.0f / 3, 1, 5, 1.5f / 4, 2.0f / 5,
                                    0.0f, 1.0f / 5, 2.0f / 4, 4.0f / 5, 6.0f / 20, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::string why;
    bool ok = s.n == 1 && slot_is(s, 0, row, &why);
    check(ok, "feature_layout_all_23_values_l_shape", "n %d; %s", s.n, why.c_str());
    check_well_formed("feature_layout_padded_rows_zero", s);
    check((float)(4.0 / 3) == s.feature(0, OBJ_ASPECT) && s.feature(0, OBJ_DOMINANT_COLOR) == 5.0f,
          "l_shape_aspect_and_dominant_color", "aspect %g, colour %g", s.feature(0, OBJ_ASPECT), s.feature(0, OBJ_DOMINANT_COLOR));
}

static void test_connectivity() {
    // Touching cells of different colours are two objects; their boxes touch, so they are adjacent.
    ObjectSet s = objects_of(grid_from({"12"}));
    check(s.n == 2 && s.feature(0, OBJ_DOMINANT_COLOR) == 1 && s.feature(1, OBJ_DOMINANT_COLOR) == 2 &&
          s.adjacent(0, 1) == 1 && s.adjacent(1, 0) == 1,
          "touching_different_colours_two_adjacent_objects", "n %d, adjacency %d %d", s.n, s.adjacent(0, 1), s.adjacent(1, 0));
    check_slot("touching_different_colours_first", s, 0, {1, 4, 0, 0, 0, 0, 1, 0, 0}, 1, 2);
    check_slot("touching_different_colours_second", s, 1, {1, 4, 0, 1, 0, 1, 2, 0, 1}, 1, 2);

    s = objects_of(grid_from({"11"}));
    check(s.n == 1, "touching_same_colour_one_object", "n %d", s.n);
    check_slot("touching_same_colour_features", s, 0, {2, 6, 0, 0, 0, 1, 1, 0, 0.5}, 1, 2);

    // Same colour, touching only at a corner: 4-connectivity gives two objects; the boxes share a corner: adjacent.
    s = objects_of(grid_from({"30",
                              "03"}));
    check(s.n == 2 && s.n_found == 2 && s.adjacent(0, 1) == 1, "diagonal_same_colour_two_adjacent_objects",
          "n %d, adjacency %d", s.n, s.adjacent(0, 1));
    check_slot("diagonal_same_colour_second", s, 1, {1, 4, 1, 1, 1, 1, 3, 1, 1}, 2, 2);
}

static void test_adjacency_gaps() {
    // The rule: apart when max_i + 1 < min_j along rows or columns. One empty column between boxes: 0 + 1 < 2, apart.
    ObjectSet s = objects_of(grid_from({"101"}));
    check(s.n == 2 && s.adjacent(0, 1) == 0 && s.adjacent(1, 0) == 0, "one_empty_column_between_not_adjacent",
          "n %d, adjacency %d %d", s.n, s.adjacent(0, 1), s.adjacent(1, 0));
    s = objects_of(grid_from({"1001"}));
    check(s.n == 2 && s.adjacent(0, 1) == 0, "two_empty_columns_between_not_adjacent", "n %d, adjacency %d", s.n, s.adjacent(0, 1));
    s = objects_of(grid_from({"2", "0", "2"}));
    check(s.n == 2 && s.adjacent(0, 1) == 0, "one_empty_row_between_not_adjacent", "n %d, adjacency %d", s.n, s.adjacent(0, 1));
    // Neighbouring columns, rows far apart: still apart (both axes must be close).
    s = objects_of(grid_from({"10", "00", "02"}));
    check(s.n == 2 && s.adjacent(0, 1) == 0, "close_columns_far_rows_not_adjacent", "n %d, adjacency %d", s.n, s.adjacent(0, 1));
    // Boxes, not cells: the 2 is two cells from the nearest 1, but inside the L's box (rows 0..2, cols 0..2).
    s = objects_of(grid_from({"111",
                              "100",
                              "102"}));
    check(s.n == 2 && s.adjacent(0, 1) == 1 && s.adjacent(1, 0) == 1, "adjacency_uses_bounding_boxes",
          "n %d, adjacency %d %d", s.n, s.adjacent(0, 1), s.adjacent(1, 0));
    // Three in a row, 1 and 3 separated by 2: 1-2 and 2-3 adjacent, 1-3 not; diagonal zero.
    s = objects_of(grid_from({"123"}));
    const uint8_t want[3][3] = {{0, 1, 0}, {1, 0, 1}, {0, 1, 0}};
    bool ok = s.n == 3;
    for (int i = 0; i < 3; i++) for (int j = 0; j < 3; j++) ok = ok && s.adjacent(i, j) == want[i][j];
    check(ok, "adjacency_matrix_three_in_a_row", "n %d", s.n);
    check_well_formed("adjacency_matrix_three_in_a_row_well_formed", s);
}

static void test_ring_and_aspect() {
    // A 3x3 ring of colour 2 in a 5x5 grid: 8 cells, each with 2 neighbours in the ring -> perimeter 8 * 2 = 16 =
    // 12 outer edges + 4 edges around the hole. Centroid (2, 2), bbox rows and cols 1..3.
    ObjectSet s = objects_of(grid_from({"00000",
                                        "02220",
                                        "02020",
                                        "02220",
                                        "00000"}));
    check(s.n == 1, "ring_one_object", "n %d", s.n);
    check_slot("ring_perimeter_counts_hole_edges", s, 0, {8, 16, 1, 1, 3, 3, 2, 2, 2}, 5, 5);

    // The same ring around a cell of colour 6: the different colour does not reduce either perimeter; the ring
    // (larger) comes first; the boxes overlap, so they are adjacent.
    s = objects_of(grid_from({"00000",
                              "02220",
                              "02620",
                              "02220",
                              "00000"}));
    check(s.n == 2 && s.adjacent(0, 1) == 1, "ring_with_inner_object_adjacent", "n %d, adjacency %d", s.n, s.adjacent(0, 1));
    check_slot("ring_with_inner_object_ring", s, 0, {8, 16, 1, 1, 3, 3, 2, 2, 2}, 5, 5);
    check_slot("ring_with_inner_object_inner", s, 1, {1, 4, 2, 2, 2, 2, 6, 2, 2}, 5, 5);

    // aspect = width / height in cells: a vertical bar of 3 gives 1/3, a horizontal bar of 3 gives 3.
    s = objects_of(grid_from({"40",
                              "40",
                              "49",
                              "00"}));
    check(s.n == 2 && s.feature(0, OBJ_ASPECT) == (float)(1.0 / 3) && s.feature(1, OBJ_ASPECT) == 1.0f,
          "aspect_vertical_bar_one_third", "n %d, aspect %g", s.n, s.feature(0, OBJ_ASPECT));
    check_slot("vertical_bar_features", s, 0, {3, 8, 0, 0, 2, 0, 4, 1, 0}, 4, 2);
    s = objects_of(grid_from({"888"}));
    check(s.n == 1 && s.feature(0, OBJ_ASPECT) == 3.0f, "aspect_horizontal_bar_three", "aspect %g", s.feature(0, OBJ_ASPECT));
}

static void test_full_and_empty() {
    // Every cell of a 3x4 grid is colour 8: one object, area 1, perimeter 2 * (3 + 4) = 14 -> 14/12, aspect 4/3,
    // centroid (1, 1.5), bbox (0, 0)..(2, 3), so bbox_max = (2/3, 3/4).
    ObjectSet s = objects_of(grid_from({"8888", "8888", "8888"}));
    check(s.n == 1 && s.n_found == 1, "full_grid_one_object", "n %d", s.n);
    check_slot("full_grid_features", s, 0, {12, 14, 0, 0, 2, 3, 8, 1, 1.5}, 3, 4);
    check(s.feature(0, OBJ_AREA) == 1.0f && s.feature(0, OBJ_HEIGHT) == 1.0f && s.feature(0, OBJ_WIDTH) == 1.0f,
          "full_grid_area_height_width_one");
    s = objects_of(grid_from({"5"}));
    check_slot("one_by_one_grid", s, 0, {1, 4, 0, 0, 0, 0, 5, 0, 0}, 1, 1);

    s = objects_of(grid_from({"000", "000", "000"}));
    bool all_zero = std::all_of(s.features.begin(), s.features.end(), [](float v) { return v == 0.0f; }) &&
                    std::all_of(s.mask.begin(), s.mask.end(), [](uint8_t m) { return m == 0; }) &&
                    std::all_of(s.adjacency.begin(), s.adjacency.end(), [](uint8_t a) { return a == 0; });
    check(s.n == 0 && s.n_found == 0 && all_zero && (int)s.features.size() == 16 * OBJ_FEATURES,
          "all_background_no_objects", "n %d, n_found %d", s.n, s.n_found);
}

static void test_truncation() {
    // 20 components in discovery order with these areas (horizontal bars on even rows, one empty column apart):
    //   index: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
    //   area:  1 3 2 1 3 2 1 1 2 3  1  2  1  1  2  1  1  3  1  2
    // Sorted by (-area, discovery): areas 3 = {1, 4, 9, 17}, areas 2 = {2, 5, 8, 11, 14, 19}, areas 1 = {0, 3, 6, 7,
    // 10, 12, | 13, 15, 16, 18}: the first 16 are kept, the last four areas of 1 are dropped.
    const int areas[20] = {1, 3, 2, 1, 3, 2, 1, 1, 2, 3, 1, 2, 1, 1, 2, 1, 1, 3, 1, 2};
    const int H = 9, W = 12;
    TestGrid g;
    g.rows = H; g.cols = W;
    g.cells.assign((size_t)(H * W), 0);
    int first_y[20], first_x[20], y = 0, x = 0;
    for (int i = 0; i < 20; i++) {
        if (x + areas[i] > W) { y += 2; x = 0; }
        first_y[i] = y; first_x[i] = x;
        for (int k = 0; k < areas[i]; k++) g.cells[(size_t)(y * W + x + k)] = (uint8_t)(1 + i % 9);
        x += areas[i] + 1;
    }
    const int kept[16] = {1, 4, 9, 17, 2, 5, 8, 11, 14, 19, 0, 3, 6, 7, 10, 12};
    ObjectSet s = objects_of(g);
    check(s.n_found == 20 && s.n == 16, "more_than_16_reports_total_keeps_16", "n_found %d, n %d", s.n_found, s.n);
    bool ok = true;
    std::string why;
    for (int slot = 0; slot < 16 && ok; slot++) {
        const int i = kept[slot], a = areas[i];
        Expected e = {a, 2 * a + 2, first_y[i], first_x[i], first_y[i], first_x[i] + a - 1, 1 + i % 9,
                      (double)first_y[i], first_x[i] + (a - 1) / 2.0};
        ok = slot_is(s, slot, expected_row(e, H, W), &why);
    }
    check(ok, "more_than_16_keeps_largest_ties_in_discovery_order", "%s", why.c_str());
    check_well_formed("more_than_16_well_formed", s);

    s = objects_of(g, 4);
    ok = s.n == 4 && s.n_found == 20 && (int)s.features.size() == 4 * OBJ_FEATURES;
    for (int slot = 0; slot < 4 && ok; slot++) ok = s.feature(slot, OBJ_BBOX_MIN_X) == (float)((double)first_x[kept[slot]] / W) &&
                                                    s.feature(slot, OBJ_BBOX_MIN_Y) == (float)((double)first_y[kept[slot]] / H);
    check(ok, "max_objects_4_keeps_the_four_largest", "n %d, n_found %d", s.n, s.n_found);
    s = objects_of(g, 32);
    check(s.n == 20 && s.n_found == 20 && s.mask[19] == 1 && s.mask[20] == 0, "max_objects_32_keeps_all_20_pads_12",
          "n %d", s.n);
    check_well_formed("max_objects_32_well_formed", s);

    // A 6x6 checkerboard of colour 5: 18 isolated cells of area 1, so the first 16 in raster order are kept:
    // (0,0) (0,2) (0,4) (1,1) (1,3) (1,5) ... (4,4) (5,1); (5,3) and (5,5) are dropped. Boxes of diagonal
    // neighbours touch at a corner: adjacent; cells two apart in a row are not.
    g = grid_from({"505050", "050505", "505050", "050505", "505050", "050505"});
    s = objects_of(g);
    ok = s.n_found == 18 && s.n == 16;
    for (int i = 0; i < 16 && ok; i++) {
        const int yi = i / 3, xi = 2 * (i % 3) + yi % 2;
        ok = s.feature(i, OBJ_BBOX_MIN_Y) == (float)(yi / 6.0) && s.feature(i, OBJ_BBOX_MIN_X) == (float)(xi / 6.0);
        for (int j = 0; j < 16 && ok; j++) {
            const int yj = j / 3, xj = 2 * (j % 3) + yj % 2;
            ok = s.adjacent(i, j) == (i != j && abs(yi - yj) <= 1 && abs(xi - xj) <= 1);
        }
    }
    check(ok, "checkerboard_18_cells_keeps_first_16_diagonal_adjacency", "n_found %d, n %d", s.n_found, s.n);
}

static void test_colour_permutation() {
    // Permuting the non-zero colours keeps every component (equal neighbours stay equal) and the raster order, so
    // only dominant_color changes, to the permuted colour.
    bool ok = true;
    std::string why;
    for (int t = 0; t < 200 && ok; t++) {
        const uint64_t seed = 1000 + (uint64_t)t;
        TestGrid g = random_grid(1 + (int)hash_below(30, seed, 7), 1 + (int)hash_below(30, seed, 8), 2 + t % 8, 40, seed);
        uint8_t perm[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
        for (int i = 9; i >= 2; i--) std::swap(perm[i], perm[1 + hash_below((uint32_t)i, seed, 9, (uint64_t)i)]);
        TestGrid p = g;
        for (uint8_t& c : p.cells) c = perm[c];
        ObjectSet a = objects_of(g), b = objects_of(p);
        ok = a.n == b.n && a.n_found == b.n_found && a.mask == b.mask && a.adjacency == b.adjacency;
        for (int i = 0; i < a.n && ok; i++)
            for (int f = 0; f < OBJ_FEATURES && ok; f++) {
                const float want = f == OBJ_DOMINANT_COLOR ? (float)perm[(int)a.feature(i, f)] : a.feature(i, f);
                ok = b.feature(i, f) == want;
                if (!ok) why = fmt("grid %d slot %d feature %s: %g, expected %g", t, i, FEATURE_NAMES[f], b.feature(i, f), want);
            }
    }
    check(ok, "colour_permutation_changes_only_dominant_color_200_grids", "%s", why.c_str());
}

static void test_random_against_reference() {
    bool ok = true;
    std::string why;
    int grids = 0, objects = 0, truncated = 0;
    for (int t = 0; t < 500 && ok; t++) {
        const uint64_t seed = 5000 + (uint64_t)t;
        const int rows = 1 + (int)hash_below(30, seed, 7), cols = 1 + (int)hash_below(30, seed, 8);
        TestGrid g = random_grid(rows, cols, 1 + t % 9, (int)hash_below(101, seed, 9), seed);
        ObjectSet s = objects_of(g);
        ok = matches_reference(g, s, &why);
        if (!ok) why = fmt("grid %d (%dx%d): ", t, rows, cols) + why;
        grids++; objects += s.n_found; truncated += s.n_found > 16;
    }
    check(ok, "random_grids_match_slow_reference", "%s", why.c_str());
    printf("     %d random grids, %d components, %d grids with more than 16\n", grids, objects, truncated);
}

static void test_invalid_input() {
    expect_fatal("rejects_zero_rows", [] { uint8_t c[1] = {0}; ObjectSet s; grid_objects(c, 0, 3, 16, &s); }, {"0x3", "1..30"});
    expect_fatal("rejects_31_cols", [] { uint8_t c[31] = {0}; ObjectSet s; grid_objects(c, 1, 31, 16, &s); }, {"1x31", "1..30"});
    expect_fatal("rejects_max_objects_0", [] { uint8_t c[1] = {1}; ObjectSet s; grid_objects(c, 1, 1, 0, &s); },
                 {"max_objects is 0", "at least 1"});
    expect_fatal("rejects_colour_10", [] { uint8_t c[4] = {0, 1, 10, 2}; ObjectSet s; grid_objects(c, 2, 2, 16, &s); },
                 {"row 1 column 0", "colour 10", "0..9"});
}

// Every grid of ARC-AGI-1 training: well formed, sorted by area, areas add up, and equal to the slow reference.
static void test_arc_training() {
    const std::string dir = "../shared/data/arc-agi-1/data/training", bin = "build/test_objects_arc1_training.bin";
    DIR* d = opendir(dir.c_str());
    if (!d) { skip("arc1_training_invariants", (dir + " not found").c_str()); return; }
    closedir(d);
    const std::string cmd = "python3 data/arc.py " + bin + " " + dir + " > /dev/null";
    const int rc = system(cmd.c_str());
    if (!check(rc == 0, "arc1_training_convert_with_data_arc_py", "'%s' exited with %d", cmd.c_str(), rc)) return;
    ArcTaskFile file = arc_tasks_load(bin.c_str());
    remove(bin.c_str());

    int grids = 0, truncated = 0, most = 0;
    long components = 0;
    bool ok_form = true, ok_sorted = true, ok_sum = true, ok_ref = true;
    std::string why_form, why_sorted, why_sum, why_ref;
    for (const ArcTask& task : file.tasks)
        for (const ArcPair& pair : task.pairs)
            for (const GridView* v : {&pair.input, &pair.output}) {
                if (!grid_known(*v)) continue;
                TestGrid g;
                g.rows = v->rows; g.cols = v->cols;
                g.cells.assign(v->cells, v->cells + v->rows * v->cols);
                const std::string where = fmt("%s %dx%d grid %d: ", task.name.c_str(), g.rows, g.cols, grids);
                ObjectSet s = objects_of(g);
                std::string why;
                if (ok_form && !(ok_form = well_formed(s, &why))) why_form = where + why;
                for (int i = 1; i < s.n && ok_sorted; i++)
                    if (!(ok_sorted = s.feature(i, OBJ_AREA) <= s.feature(i - 1, OBJ_AREA))) why_sorted = where + fmt("slot %d", i);
                // With a slot for every component, the areas add up to the non-background cells exactly, and the
                // first 16 slots are the 16 kept ones.
                ObjectSet all = objects_of(g, g.rows * g.cols);
                long area_sum = 0, kept_sum = 0, foreground = 0;
                for (int i = 0; i < all.n; i++) area_sum += lround(all.feature(i, OBJ_AREA) * g.rows * g.cols);
                for (int i = 0; i < s.n; i++) kept_sum += lround(s.feature(i, OBJ_AREA) * g.rows * g.cols);
                for (uint8_t c : g.cells) foreground += c != 0;
                bool prefix = all.n == s.n_found &&
                              std::equal(s.features.begin(), s.features.begin() + (long)s.n * OBJ_FEATURES, all.features.begin());
                if (ok_sum && !(ok_sum = prefix && area_sum == foreground && kept_sum <= g.rows * g.cols))
                    why_sum = where + fmt("areas add to %ld (kept %ld), %ld non-background cells, prefix %d", area_sum, kept_sum, foreground, prefix);
                if (ok_ref && !(ok_ref = matches_reference(g, s, &why))) why_ref = where + why;
                grids++; components += s.n_found; truncated += s.n_found > 16; most = std::max(most, s.n_found);
            }
    printf("     arc1 training: %zu tasks, %d grids, %ld components, %d grids with more than 16 (most %d)\n",
           file.tasks.size(), grids, components, truncated, most);
    check(ok_form, "arc1_training_masks_adjacency_finite_padding", "%s", why_form.c_str());
    check(ok_sorted, "arc1_training_sorted_by_area_descending", "%s", why_sorted.c_str());
    check(ok_sum, "arc1_training_areas_add_up", "%s", why_sum.c_str());
    check(ok_ref, "arc1_training_matches_slow_reference", "%s", why_ref.c_str());
}

int main() {
    if (system("mkdir -p build") != 0) fatal("cannot create build/");
    test_single_cell();
    test_feature_layout();
    test_connectivity();
    test_adjacency_gaps();
    test_ring_and_aspect();
    test_full_and_empty();
    test_truncation();
    test_colour_permutation();
    test_random_against_reference();
    test_invalid_input();
    test_arc_training();
    return test_summary();
}

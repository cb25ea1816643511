// Tests of common/safetensors.h, test/read_safetensors.py and (without torch) dev/convert_trm_checkpoint.py.
//
//   g++ -O2 -std=c++17 test/test_safetensors.cpp -o build/test_safetensors && build/test_safetensors
//
// Run from the repository root (the Python scripts are found by relative path). Temporary files go to a fresh
// /tmp/test_safetensors.XXXXXX directory, removed at the end. Every error case runs in a forked child, whose exit
// status (must be 1, from fatal()) and stderr (must name the file and the problem) are checked.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string>
#include <vector>
#include "../common/safetensors.h"
#include "test.h"

static std::string g_dir;

static std::string tmp_path(const std::string& name) { return g_dir + "/" + name; }

static std::string u64_le(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; i++) s[i] = (char)(n >> (8 * i));
    return s;
}

// A safetensors file by hand: length prefix (the header's length unless given), header text, data bytes.
static std::string make_file(const std::string& name, const std::string& header, const std::string& data,
                             int64_t length = -1) {
    std::string path = tmp_path(name);
    write_file_bytes(path, u64_le(length < 0 ? header.size() : (uint64_t)length) + header + data);
    return path;
}

static bool exists(const std::string& path) { return file_exists(path.c_str()); }

static bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// fn() must fatal(): exit status 1, stderr one line "error: ..." naming `path` (unless empty) and containing `what`
// (and `what2`, if given).
template <typename F>
static void expect_fatal_naming(const char* name, const std::string& path, const std::string& what, F fn,
                                const std::string& what2 = "") {
    int status = 0;
    std::string err = run_in_child(fn, &status);
    bool exited1 = WIFEXITED(status) && WEXITSTATUS(status) == 1;
    bool one_line = err.find('\n') == std::string::npos;   // (run_in_child drops the final newline)
    bool ok = exited1 && one_line && err.rfind("error: ", 0) == 0 && (path.empty() || contains(err, path)) &&
              contains(err, what) && contains(err, what2);
    std::string how = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                        : WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status)) : "?";
    if (check(ok, name, "%s, expected exit status 1 with a one-line error naming '%s' and saying '%s' '%s'; stderr: %s",
              how.c_str(), path.c_str(), what.c_str(), what2.c_str(), err.c_str()))
        printf("      %s\n", first_line(err).c_str());
}

// Runs a shell command; returns stdout+stderr and sets *rc to its exit status.
static std::string shell(const std::string& cmd, int* rc) {
    fflush(stdout);
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) fatal("cannot run %s", cmd.c_str());
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 255;
    return out;
}

static bool same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }
static bool same_value(double a, double b) { return (isnan(a) && isnan(b)) || (a == b && signbit(a) == signbit(b)); }

static uint64_t header_length(const std::string& path) {
    std::string s = read_file_bytes(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0 && s.size() >= 8; i--) n = (n << 8) | (uint8_t)s[i];
    return n;
}

static std::string le16(const std::vector<uint16_t>& v) {
    std::string s;
    for (uint16_t x : v) { s += (char)(x & 0xFF); s += (char)(x >> 8); }
    return s;
}

// ----------------------------------------------------------------------------------------------------------------

static const char* ODD_NAME = "layer.0/\"odd\" name \xc3\xa9";
static const char* NOTE = "he said \"hi\"\\back\nline2\ttab \xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80";

static std::string test_round_trip() {
    std::string path = tmp_path("round_trip.safetensors");
    float weights[6] = {1.5f, -2.25f, 0.0f, 3.0f, 1024.0f, -0.125f};
    double from_double[3] = {0.1, -1.0, 1e10};
    int32_t ids[5] = {0, -1, 7, INT32_MAX, INT32_MIN};
    uint8_t mask[4] = {0, 1, 7, 0};
    float scalar = 42.0f, neg_zero = -0.0f, unused = 0;
    int32_t ctl = 5;

    SafetensorsWriter w;
    safetensors_add_f32(&w, "weights", {2, 3}, weights);       // added out of order: written sorted by name
    safetensors_add_f32(&w, "from_double", {3}, from_double);
    safetensors_add_i32(&w, "ids", {5}, ids);
    safetensors_add_bool(&w, "mask", {2, 2}, mask);
    safetensors_add_f32(&w, "scalar", {}, &scalar);
    safetensors_add_f32(&w, "empty", {0, 4}, &unused);
    safetensors_add_f32(&w, ODD_NAME, {1}, &neg_zero);
    safetensors_add_i32(&w, "z\tctl", {1}, &ctl);
    safetensors_add_meta(&w, "note", "old value, replaced below");
    safetensors_add_meta(&w, "note", NOTE);
    safetensors_add_meta(&w, "empty", "");
    safetensors_add_meta(&w, "key with \"quote\"", "v");
    safetensors_write(w, path);
    check(!exists(path + ".tmp"), "write_leaves_no_tmp_file");
    uint64_t hlen = header_length(path);
    check(hlen % 8 == 0, "write_header_padded_to_8", "header length %llu", (unsigned long long)hlen);

    Safetensors st = safetensors_read(path.c_str());
    const char* order[] = {"empty", "from_double", "ids", ODD_NAME, "mask", "scalar", "weights", "z\tctl"};
    bool sorted = st.entries.size() == 8, packed = true;
    size_t offset = 0;
    for (size_t i = 0; i < st.entries.size() && sorted; i++) {
        sorted &= st.entries[i].name == order[i];
        packed &= st.entries[i].begin == offset;
        offset = st.entries[i].end;
    }
    packed &= offset == st.data.size();
    check(sorted, "write_tensors_sorted_by_name", "%zu entries", st.entries.size());
    check(packed, "write_tensors_packed_from_0", "tensors end at %zu of %zu data bytes", offset, st.data.size());

    float w_back[6] = {0};
    double w_back_d[6] = {0};
    safetensors_get(st, "weights", {2, 3}, w_back);
    safetensors_get(st, "weights", {2, 3}, w_back_d);
    bool ok = safetensors_find(st, "weights")->dtype == "F32";
    for (int i = 0; i < 6; i++) ok &= same_bits(w_back[i], weights[i]) && w_back_d[i] == (double)weights[i];
    check(ok, "round_trip_f32");

    float fd[3];
    safetensors_get(st, "from_double", {3}, fd);
    ok = safetensors_find(st, "from_double")->dtype == "F32";
    for (int i = 0; i < 3; i++) ok &= same_bits(fd[i], (float)from_double[i]);
    check(ok, "round_trip_double_stored_as_f32");

    const SafetensorsEntry* e = safetensors_find(st, "ids");
    int32_t ids_back[5] = {0};
    ok = e && e->dtype == "I32" && e->shape == std::vector<int64_t>{5} && e->end - e->begin == sizeof ids;
    if (ok) memcpy(ids_back, st.data.data() + e->begin, sizeof ids);
    check(ok && memcmp(ids_back, ids, sizeof ids) == 0, "round_trip_i32");

    e = safetensors_find(st, "mask");
    ok = e && e->dtype == "BOOL" && e->shape == (std::vector<int64_t>{2, 2}) && e->end - e->begin == 4;
    ok = ok && st.data[e->begin] == 0 && st.data[e->begin + 1] == 1 && st.data[e->begin + 2] == 1 && st.data[e->begin + 3] == 0;
    check(ok, "round_trip_bool_nonzero_stored_as_1");

    float s_back = 0;
    e = safetensors_find(st, "scalar");
    safetensors_get(st, "scalar", {}, &s_back);
    check(e && e->shape.empty() && safetensors_numel(*e) == 1 && s_back == 42.0f, "round_trip_0d_scalar");

    e = safetensors_find(st, "empty");
    float sentinel = 7.0f;
    safetensors_get(st, "empty", {0, 4}, &sentinel);
    check(e && e->shape == (std::vector<int64_t>{0, 4}) && e->begin == e->end && safetensors_numel(*e) == 0 &&
              sentinel == 7.0f, "round_trip_empty_tensor");

    float nz = 1;
    safetensors_get(st, ODD_NAME, {1}, &nz);
    check(nz == 0 && signbit(nz), "round_trip_escaped_name_and_negative_zero");
    check(safetensors_find(st, "z\tctl") != nullptr && safetensors_find(st, "nope") == nullptr, "find_present_and_absent");

    check(st.metadata.size() == 3 && safetensors_meta(st, "note") == NOTE && safetensors_meta(st, "empty", "x") == "" &&
              safetensors_meta(st, "key with \"quote\"") == "v",
          "round_trip_metadata_special_characters", "%zu entries, note = '%s'", st.metadata.size(),
          safetensors_meta(st, "note").c_str());
    check(safetensors_meta(st, "missing") == "" && safetensors_meta(st, "missing", "fb") == "fb", "meta_fallback");

    // an empty writer still makes a valid file
    std::string empty_path = tmp_path("empty.safetensors");
    SafetensorsWriter none;
    safetensors_write(none, empty_path);
    Safetensors st0 = safetensors_read(empty_path.c_str());
    check(st0.entries.empty() && st0.metadata.empty() && st0.data.empty() && header_length(empty_path) == 8,
          "write_empty_file");
    return path;
}

static void test_python_reader(const std::string& path) {
    int rc = 0;
    if (!exists("test/read_safetensors.py")) {
        check(false, "python_reader_reads_written_file", "test/read_safetensors.py not found: run from the repo root");
        return;
    }
    std::string out = shell("python3 test/read_safetensors.py " + path + " --values", &rc);
    const char* expected =
        "empty F32 [0, 4]\n"
        "  = \n"
        "from_double F32 [3]\n"
        "  = 0.10000000149011612 -1.0 10000000000.0\n"
        "ids I32 [5]\n"
        "  = 0 -1 7 2147483647 -2147483648\n"
        R"("layer.0/\"odd\" name \u00e9" F32 [1])" "\n"
        "  = -0.0\n"
        "mask BOOL [2, 2]\n"
        "  = 0 1 1 0\n"
        "scalar F32 []\n"
        "  = 42.0\n"
        "weights F32 [2, 3]\n"
        "  = 1.5 -2.25 0.0 3.0 1024.0 -0.125\n"
        R"("z\tctl" I32 [1])" "\n"
        "  = 5\n"
        R"(__metadata__ "empty" "")" "\n"
        R"(__metadata__ "key with \"quote\"" "v")" "\n"
        R"(__metadata__ "note" "he said \"hi\"\\back\nline2\ttab \u00e9 \u2713 \ud83d\ude00")" "\n";
    check(rc == 0 && out == expected, "python_reader_reads_written_file", "exit %d, output:\n%s\nexpected:\n%s", rc,
          out.c_str(), expected);

    std::string bad = make_file("py_bad.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                                std::string(4, '\0'));
    out = shell("python3 test/read_safetensors.py " + bad, &rc);
    check(rc == 1 && out.rfind("error: " + bad, 0) == 0, "python_reader_rejects_bad_file", "exit %d: %s", rc, out.c_str());
}

static void test_hand_built() {
    // Unpadded header, odd whitespace, fields in another order, tensors not in offset order, every string escape.
    std::string header =
        "{\n"
        "  \"__metadata__\": {\"src\": \"hand \\u00e9 \\ud83d\\ude00 \\/ \\\"q\\\" \\\\ \\b\\f\\n\\r\\t\"},\n"
        "  \"f16\": {\"dtype\": \"F16\", \"shape\": [11], \"data_offsets\": [14, 36]},\n"
        "  \"bf16\" : { \"shape\" : [ 7 ] , \"dtype\":\"BF16\", \"data_offsets\":[0,14] },\n"
        "  \"f64\": {\"dtype\": \"F64\", \"shape\": [2, 2], \"data_offsets\": [36, 68]},\r\n"
        "\t\"i32\": {\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[68,72]}\n"
        "}  ";
    std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x4049};
    std::vector<float> bf16_want = {1.0f, -3.0f, INFINITY, -INFINITY, NAN, ldexpf(1.0f, -133), 3.140625f};
    std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555};
    std::vector<float> f16_want = {1.0f, -2.0f, 65504.0f, ldexpf(1.0f, -24), ldexpf(1023.0f, -24), ldexpf(1.0f, -14),
                                   INFINITY, -INFINITY, NAN, -0.0f, 0.333251953125f};
    double f64[4] = {0.1, -2.5, 1e10, 1e-310};
    int32_t i32 = 9;
    std::string data = le16(bf16) + le16(f16) +
                       std::string((const char*)f64, 32) + std::string((const char*)&i32, 4);
    std::string path = make_file("hand.safetensors", header, data);
    Safetensors st = safetensors_read(path.c_str());

    check(st.entries.size() == 4 && st.entries[0].name == "f16" && st.entries[1].name == "bf16",
          "hand_built_header_parsed", "%zu entries", st.entries.size());
    check(safetensors_meta(st, "src") == "hand \xc3\xa9 \xf0\x9f\x98\x80 / \"q\" \\ \b\f\n\r\t", "hand_built_json_escapes",
          "got '%s'", safetensors_printable(safetensors_meta(st, "src")).c_str());

    float fb[7], ff[11], f4[4];
    double db[7], df[11], d4[4];
    safetensors_get(st, "bf16", {7}, fb);
    safetensors_get(st, "bf16", {7}, db);
    bool ok = true;
    for (int i = 0; i < 7; i++) ok &= same_value(fb[i], bf16_want[i]) && same_value(db[i], bf16_want[i]);
    check(ok, "read_bf16_exact", "");
    safetensors_get(st, "f16", {11}, ff);
    safetensors_get(st, "f16", {11}, df);
    ok = true;
    for (int i = 0; i < 11; i++) {
        bool good = same_value(ff[i], f16_want[i]) && same_value(df[i], f16_want[i]);
        if (!good) printf("      f16 0x%04x -> %g, expected %g\n", f16[i], ff[i], f16_want[i]);
        ok &= good;
    }
    check(ok, "read_f16_exact_subnormal_inf_nan");
    safetensors_get(st, "f64", {2, 2}, f4);
    safetensors_get(st, "f64", {2, 2}, d4);
    ok = true;
    for (int i = 0; i < 4; i++) ok &= same_bits(f4[i], (float)f64[i]) && d4[i] == f64[i];
    check(ok, "read_f64_as_float_and_double");
}

static void test_errors(const std::string& good) {
    // reading
    expect_fatal_naming("error_missing_file", tmp_path("nope.safetensors"), "cannot open",
                 [&] { safetensors_read(tmp_path("nope.safetensors").c_str()); });
    expect_fatal_naming("error_directory", g_dir, "not a regular file", [&] { safetensors_read(g_dir.c_str()); });
    std::string p = tmp_path("short.safetensors");
    write_file_bytes(p, "abcde");
    expect_fatal_naming("error_shorter_than_8_bytes", p, "fewer than the 8-byte", [&] { safetensors_read(p.c_str()); });
    std::string p_len = make_file("len.safetensors", "{}", std::string(18, ' '), 1000);
    expect_fatal_naming("error_header_length_beyond_file", p_len, "runs past the end", [&] { safetensors_read(p_len.c_str()); });
    std::string whole = read_file_bytes(good);
    std::string p_trunc = tmp_path("truncated.safetensors");
    write_file_bytes(p_trunc, whole.substr(0, whole.size() - 4));
    expect_fatal_naming("error_truncated_data", p_trunc, "outside the", [&] { safetensors_read(p_trunc.c_str()); });
    std::string p_trunc_h = tmp_path("truncated_header.safetensors");
    write_file_bytes(p_trunc_h, whole.substr(0, 20));
    expect_fatal_naming("error_truncated_header", p_trunc_h, "runs past the end", [&] { safetensors_read(p_trunc_h.c_str()); });
    std::string p_empty = make_file("empty_header.safetensors", "", "");
    expect_fatal_naming("error_empty_header", p_empty, "header is empty", [&] { safetensors_read(p_empty.c_str()); });
    // a million and more values in the header (a few MB of "1,"): refused before the JSON tree is built
    std::string many = "{\"a\":{\"dtype\":\"F32\",\"shape\":[";
    for (int i = 0; i < 1100000; i++) many += "1,";
    many += "1],\"data_offsets\":[0,4]}}";
    std::string p_many = make_file("many_values.safetensors", many, std::string(4, '\0'));
    expect_fatal_naming("error_too_many_header_values", p_many, "more than the 1000000 allowed",
                        [&] { safetensors_read(p_many.c_str()); });

    const std::string T = "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
    struct { const char* name; std::string header; const char* what; } bad_json[] = {
        {"json_not_an_object", "[1, 2]", "(top level): expected an object (tensor names and \"__metadata__\"), found an array"},
        {"json_only_spaces", "        ", "at byte 8 (line 1, column 9): expected a value (found end of file)"},
        {"json_missing_close", "{\"a\":" + T, "expected ',' or '}' after an object member (found end of file)"},
        {"json_unterminated_string", "{\"a", "unterminated string"},
        {"json_bad_escape", "{\"a\\x\":" + T + "}", "expected an escape character after '\\'"},
        {"json_bad_hex", "{\"a\\u12g4\":" + T + "}", "4 hex digits"},
        {"json_lone_high_surrogate", "{\"\\ud800x\":" + T + "}", "high surrogate without"},
        {"json_lone_low_surrogate", "{\"\\udc00\":" + T + "}", "lone low surrogate"},
        {"json_control_char", "{\"a\nb\":" + T + "}", "control character 0x0a inside a string (it must be escaped)"},
        {"json_invalid_utf8", "{\"\xff\":" + T + "}", "invalid UTF-8"},
        {"json_trailing_comma", "{\"a\":" + T + ",}", "expected a string key (found '}')"},
        {"json_missing_colon", "{\"a\" " + T + "}", "expected ':'"},
        {"json_trailing_garbage", "{\"a\":" + T + "} x", "expected the end of the file after the top-level value (found 'x')"},
        {"json_tensor_not_object", "{\"a\":5}", "a: expected an object (a tensor's dtype, shape and data_offsets), found a number"},
        {"json_dtype_not_string", "{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", "a.dtype: expected a string, found a number"},
        {"json_shape_not_array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", "a.shape: expected an array of non-negative integers (the shape), found a number"},
        {"json_negative_dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "a.shape[0]: negative number -1 (a dimension must be >= 0)"},
        {"json_fractional_dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "a.shape[0]: expected an integer, found 1.5"},
        {"json_leading_zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", "leading zero"},
        {"json_huge_integer", "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", "a.shape[0]: integer too large"},
        {"json_unclosed_array", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1", "expected ',' or ']' after an array element (found end of file)"},
        {"json_three_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "a.data_offsets: must be [begin, end], found 3 numbers"},
        {"json_missing_field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", "a: missing key \"data_offsets\""},
        {"json_unknown_field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":[]}}", "a: unknown key \"x\" (expected only: dtype, shape, data_offsets)"},
        {"json_field_twice", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "duplicate key \"dtype\" in an object"},
        {"json_tensor_twice", "{\"a\":" + T + ",\"a\":" + T + "}", "duplicate key \"a\" in an object"},
        {"json_metadata_twice", "{\"__metadata__\":{},\"__metadata__\":{}}", "duplicate key \"__metadata__\" in an object"},
        {"json_metadata_key_twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", "duplicate key \"k\" in an object"},
        {"json_metadata_not_string", "{\"__metadata__\":{\"k\":1}}", "__metadata__.k: metadata values must be strings, found a number"},
        {"json_metadata_not_object", "{\"__metadata__\":\"x\"}", "__metadata__: expected an object of string values, found a string"},
        {"json_offsets_not_array", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":4}}", "a.data_offsets: must be [begin, end], found a number"},
        {"json_negative_offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
         "a.data_offsets[0]: negative number -4 (an offset must be >= 0)"},
        {"json_dim_not_number", "{\"layer.0\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
         "[\"layer.0\"].shape[0]: expected a non-negative integer (a dimension), found a string"},
        {"json_nested_metadata", "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", "__metadata__.k: metadata values must be strings, found an object"},
    };
    for (const auto& c : bad_json) {
        std::string path = make_file(std::string(c.name) + ".safetensors", c.header, std::string(4, '\0'));
        std::string name = std::string("error_") + c.name;
        expect_fatal_naming(name.c_str(), path, c.what, [&] { safetensors_read(path.c_str()); },
                     "malformed safetensors header: ");
    }

    struct { const char* name; std::string header; size_t data_bytes; const char* what; } bad_tensor[] = {
        {"offsets_out_of_range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         "data_offsets [0, 8] outside the 4-byte data block"},
        {"offsets_begin_after_end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin > end"},
        {"wrong_byte_count", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "(dtype F32, shape [3]) needs 12 bytes, but its data_offsets [0, 8] span 8"},
        {"unknown_dtype", "{\"a\":{\"dtype\":\"F4X\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'F4X'"},
        {"shape_overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
         "overflows"},
        {"offsets_overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlapping tensor 'a'"},
        {"offsets_same_bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "overlapping tensor"},
        {"offsets_gap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "data bytes [0, 4) belong to no tensor"},
        {"offsets_beyond_2p53", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740993],\"data_offsets\":[0,9007199254740993]}}", 4,
         "data_offsets [0, 9007199254740993] outside the 4-byte data block"},
        {"offsets_trailing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "4 data bytes after the last tensor"},
    };
    for (const auto& c : bad_tensor) {
        std::string path = make_file(std::string(c.name) + ".safetensors", c.header, std::string(c.data_bytes, '\0'));
        std::string name = std::string("error_") + c.name;
        expect_fatal_naming(name.c_str(), path, c.what, [&] { safetensors_read(path.c_str()); });
    }

    // getting tensors
    Safetensors st = safetensors_read(good.c_str());
    float buf[16];
    expect_fatal_naming("error_get_shape_mismatch", good, "tensor 'weights' has shape [2, 3], expected [3, 2]",
                 [&] { safetensors_get(st, "weights", {3, 2}, buf); });
    expect_fatal_naming("error_get_scalar_vs_1d", good, "has shape [], expected [1]", [&] { safetensors_get(st, "scalar", {1}, buf); });
    expect_fatal_naming("error_get_missing_tensor", good, "no tensor named 'nope' (the file has 8 tensors: empty, from_double",
                 [&] { safetensors_get(st, "nope", {1}, buf); });
    expect_fatal_naming("error_get_integer_as_float", good, "tensor 'ids' has dtype I32, which cannot be read as floating point",
                 [&] { safetensors_get(st, "ids", {5}, buf); });

    // writing
    float x[2] = {1, 2};
    expect_fatal_naming("error_write_duplicate_name", "", "tensor 'a' added twice", [&] {
        SafetensorsWriter w;
        safetensors_add_f32(&w, "a", {2}, x);
        safetensors_add_f32(&w, "a", {2}, x);
    });
    expect_fatal_naming("error_write_reserved_name", "", "cannot be named \"__metadata__\"", [&] {
        SafetensorsWriter w;
        safetensors_add_f32(&w, "__metadata__", {2}, x);
    });
    expect_fatal_naming("error_write_wrong_byte_count", "", "needs 8 bytes, got 4", [&] {
        SafetensorsWriter w;
        safetensors_add_raw(&w, "a", "BF16", {4}, x, 4);
    });
    expect_fatal_naming("error_write_negative_dim", "", "invalid shape [-1]", [&] {
        SafetensorsWriter w;
        safetensors_add_f32(&w, "a", {-1}, x);
    });
    expect_fatal_naming("error_write_invalid_utf8_meta", "", "not valid UTF-8", [&] {
        SafetensorsWriter w;
        safetensors_add_meta(&w, "k", "\xc3(");
    });
    std::string unwritable = g_dir + "/no_such_dir/out.safetensors";
    expect_fatal_naming("error_write_unwritable_path", unwritable, "cannot open", [&] {
        SafetensorsWriter w;
        safetensors_write(w, unwritable);
    });
}

// Every truncation of a valid file and many random corruptions of its header: the reader must either accept the
// file or fatal() with status 1, never crash (checked in forked children; build with -fsanitize=address,undefined
// to also catch out-of-bounds reads).
static void test_fuzz(const std::string& good) {
    std::string whole = read_file_bytes(good);
    std::string path = tmp_path("fuzz.safetensors");
    uint64_t hlen = header_length(good);
    int crashes = 0, accepted = 0, rejected = 0;
    std::string first_crash;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    auto next = [&rng]() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; };
    static const char interesting[] = "{}[]\",:\\u0123456789- \x00\xff";
    for (int trial = 0; trial <= (int)whole.size() + 300; trial++) {
        std::string bytes;
        if (trial <= (int)whole.size()) {
            bytes = whole.substr(0, (size_t)trial);                       // every truncation, and the whole file
        } else {
            bytes = whole;                                                // 1-3 random bytes of the header changed
            int flips = 1 + (int)(next() % 3);
            for (int k = 0; k < flips; k++) {
                size_t at = 8 + (size_t)(next() % hlen);
                bytes[at] = (next() & 1) ? interesting[next() % (sizeof interesting - 1)] : (char)(next() & 0xFF);
            }
        }
        write_file_bytes(path, bytes);
        int status = 0;
        run_in_child([&] { safetensors_read(path.c_str()); }, &status);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) accepted++;
        else if (WIFEXITED(status) && WEXITSTATUS(status) == 1) rejected++;
        else if (crashes++ == 0) first_crash = "trial " + std::to_string(trial);
    }
    check(crashes == 0 && accepted >= 1 && rejected > (int)whole.size(), "fuzz_reader_never_crashes",
          "%d crashes (first: %s), %d accepted, %d rejected", crashes, first_crash.c_str(), accepted, rejected);
}

// dev/convert_trm_checkpoint.py on a safetensors input (its torch-free path): names, dropping, dtypes kept.
static void test_converter() {
    const std::string script = "dev/convert_trm_checkpoint.py";
    if (!exists(script)) {
        check(false, "convert_clean_names", "%s not found: run from the repo root", script.c_str());
        return;
    }
    std::string in = tmp_path("upstream.safetensors");
    float emb[12], qkv[24], l_init[4] = {1, 2, 3, 4}, enc[4] = {-1, -2, -3, -4};
    for (int i = 0; i < 12; i++) emb[i] = 0.5f * (float)i;
    for (int i = 0; i < 24; i++) qkv[i] = (float)i - 11.75f;
    std::vector<uint16_t> h_init = {0x3F80, 0xC040, 0x0001, 0x7F80};
    std::string h_init_bytes = le16(h_init);
    SafetensorsWriter w;
    safetensors_add_f32(&w, "_orig_mod.model.inner.puzzle_emb.weights", {3, 4}, emb);
    safetensors_add_raw(&w, "_orig_mod.model.inner.H_init", "BF16", {4}, h_init_bytes.data(), h_init_bytes.size());
    safetensors_add_f32(&w, "_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight", {6, 4}, qkv);
    safetensors_add_f32(&w, "model.encoder.layers.0.norm.weight", {4}, enc);
    safetensors_add_f32(&w, "inner.L_init", {4}, l_init);
    safetensors_write(w, in);

    std::string out = tmp_path("converted.safetensors");
    int rc = 0;
    std::string log = shell("python3 " + script + " " + in + " " + out + " --drop-puzzle-emb", &rc);
    if (!check(rc == 0 && exists(out), "convert_runs_without_torch", "exit %d: %s", rc, log.c_str())) return;
    Safetensors st = safetensors_read(out.c_str());
    std::vector<std::string> names;
    for (const auto& e : st.entries) names.push_back(e.name);
    std::vector<std::string> want = {"encoder.layers.0.norm.weight", "inner.H_init",
                                     "inner.L_init", "inner.L_level.layers.0.self_attn.qkv_proj.weight"};
    check(names == want, "convert_clean_names_drop_puzzle_emb", "got %zu names, first '%s'", names.size(),
          names.empty() ? "" : names[0].c_str());
    const SafetensorsEntry* e = safetensors_find(st, "inner.H_init");
    check(e && e->dtype == "BF16" && e->shape == std::vector<int64_t>{4} &&
              std::string((const char*)st.data.data() + e->begin, e->end - e->begin) == h_init_bytes,
          "convert_keeps_bf16_bytes");
    float qkv_back[24];
    safetensors_get(st, "inner.L_level.layers.0.self_attn.qkv_proj.weight", {6, 4}, qkv_back);
    check(memcmp(qkv_back, qkv, sizeof qkv) == 0, "convert_keeps_f32_values");
    check(safetensors_meta(st, "dropped") == "inner.puzzle_emb.*" && contains(log, "stripped prefix '_orig_mod.' from 3 names") &&
              contains(log, "stripped prefix 'model.' from 4 names") && contains(log, "dropped inner.puzzle_emb.*: 1 tensor (1 F32), 12 parameters"),
          "convert_summary", "log:\n%s", log.c_str());
    std::string py = shell("python3 test/read_safetensors.py " + out, &rc);
    check(rc == 0 && contains(py, "inner.H_init BF16 [4]\n"), "convert_output_valid_for_python_reader", "exit %d: %s", rc, py.c_str());

    std::string out2 = tmp_path("converted_full.safetensors");
    log = shell("python3 " + script + " " + in + " " + out2, &rc);
    bool ok = rc == 0;
    if (ok) {
        Safetensors st2 = safetensors_read(out2.c_str());
        float emb_back[12];
        ok = st2.entries.size() == 5;
        if (ok) safetensors_get(st2, "inner.puzzle_emb.weights", {3, 4}, emb_back);
        ok = ok && memcmp(emb_back, emb, sizeof emb) == 0;
    }
    check(ok, "convert_keeps_puzzle_emb_by_default", "exit %d: %s", rc, log.c_str());

    std::string out3 = tmp_path("listed.safetensors");
    log = shell("python3 " + script + " " + in + " --list --drop-puzzle-emb", &rc);
    check(rc == 0 && contains(log, "inner.puzzle_emb.weights F32 [3, 4]  (dropped)\n") &&
              contains(log, "inner.L_level.layers.0.self_attn.qkv_proj.weight F32 [6, 4]\n") && !exists(out3),
          "convert_list", "exit %d: %s", rc, log.c_str());

    // errors: one line "error: ..." and exit status 1
    std::string missing = tmp_path("missing_checkpoint");
    log = shell("python3 " + script + " " + missing + " " + out3, &rc);
    check(rc == 1 && log.rfind("error: " + missing + ": no such file", 0) == 0 && log.find('\n') == log.size() - 1,
          "convert_error_missing_file", "exit %d: %s", rc, log.c_str());
    std::string junk = tmp_path("junk_checkpoint");
    write_file_bytes(junk, "this is not a checkpoint\n");
    log = shell("python3 " + script + " " + junk + " " + out3, &rc);
    check(rc == 1 && log.rfind("error: ", 0) == 0 && contains(log, junk) && log.find('\n') == log.size() - 1 && !exists(out3),
          "convert_error_not_a_checkpoint", "exit %d: %s", rc, log.c_str());
    SafetensorsWriter wc;
    safetensors_add_f32(&wc, "model.inner.x", {4}, l_init);
    safetensors_add_f32(&wc, "inner.x", {4}, l_init);
    std::string clash = tmp_path("clash.safetensors");
    safetensors_write(wc, clash);
    log = shell("python3 " + script + " " + clash + " " + out3, &rc);
    check(rc == 1 && contains(log, "both become 'inner.x'") && !exists(out3), "convert_error_name_clash", "exit %d: %s",
          rc, log.c_str());
}

int main() {
    char dir[] = "/tmp/test_safetensors.XXXXXX";
    if (!mkdtemp(dir)) fatal("mkdtemp failed: %s", strerror(errno));
    g_dir = dir;

    std::string good = test_round_trip();
    test_python_reader(good);
    test_hand_built();
    test_errors(good);
    test_fuzz(good);
    test_converter();

    std::string cmd = "rm -rf '" + g_dir + "'";
    if (system(cmd.c_str()) != 0) printf("note: could not remove %s\n", g_dir.c_str());
    return test_summary();
}

// Reader and writer of the safetensors format (header-only, host code; the header is read with common/json.h).
//
// File layout:
//   8 bytes    N, the header length, a little-endian u64
//   N bytes    a JSON object, UTF-8, possibly padded with spaces (this writer pads it to a multiple of 8):
//                {"<tensor name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//                 "__metadata__": {"<key>": "<string value>", ...}}
//              data_offsets are byte offsets into the data block that follows the header
//   the rest   the data block: every tensor's elements, row-major, little-endian
//
// Reading: safetensors_read() loads the whole file and validates it (regular file, header length inside the
// file, the JSON and its schema, known dtypes, every tensor's bytes inside the data block and exactly
// numel * dtype size of them). Any problem is a fatal() naming the file and what is wrong; a malformed file
// can never crash the reader or make it read out of bounds. The header is strict JSON (common/json.h: every
// escape, \uXXXX surrogate pairs included; no key twice in one object) in exactly this schema: tensors with a
// dtype string, a shape of non-negative integers and data_offsets [begin, end] (integers read exactly, up to
// 2^63 - 1), and an optional "__metadata__" object of string values; no other field. The tensors must tile the
// data block exactly (no overlap, no gap, nothing after the last), as the reference loader requires; the header
// may list them in any order.
//
// Writing: collect tensors and metadata in a SafetensorsWriter, then safetensors_write(): tensors sorted by
// name and packed back to back from offset 0 (as the reference loader requires), the header padded with
// spaces to a multiple of 8, "__metadata__" (if any) written first with string values, the file written
// atomically (write_file_atomic), so the real `safetensors` / torch loaders read it.
//
// Assumes a little-endian host (checked at compile time), like everything else in this project.
#pragma once
#include <math.h>
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include "json.h"
#include "utf8.h"
#include "utils.h"

#define SAFETENSORS_MAX_HEADER_VALUES 1000000

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.h assumes a little-endian host"
#endif

typedef struct {
    std::string name, dtype;      // dtype as in the file: "F32", "BF16", "I32", "BOOL", ...
    std::vector<int64_t> shape;   // empty for a 0-d scalar
    size_t begin, end;            // byte range inside Safetensors::data
} SafetensorsEntry;

typedef struct {
    std::string path;
    std::vector<SafetensorsEntry> entries;                          // in header order
    std::vector<std::pair<std::string, std::string>> metadata;      // "__metadata__", in header order
    std::vector<uint8_t> data;                                      // the data block (everything after the header)
} Safetensors;

// ----------------------------------------------------------------------------------------------------------------
// dtypes, shapes

// Bytes per element of a safetensors dtype; 0 if the dtype is unknown.
inline size_t safetensors_dtype_size(const std::string& dtype) {
    static const struct { const char* name; size_t size; } table[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
        {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (const auto& t : table)
        if (dtype == t.name) return t.size;
    return 0;
}
#define SAFETENSORS_KNOWN_DTYPES "F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2"

// Number of elements of `shape` (1 for a 0-d scalar); false if it overflows 64 bits.
inline bool safetensors_numel_checked(const std::vector<int64_t>& shape, uint64_t* numel) {
    uint64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) return false;
        if (d != 0 && n > UINT64_MAX / (uint64_t)d) return false;
        n *= (uint64_t)d;
    }
    *numel = n;
    return true;
}

inline size_t safetensors_numel(const SafetensorsEntry& e) {
    uint64_t n = 0;
    if (!safetensors_numel_checked(e.shape, &n)) fatal("tensor '%s': shape overflows", e.name.c_str());
    return (size_t)n;
}

// "[2, 3]"; "[]" for a 0-d scalar.
inline std::string safetensors_shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

// A string made safe to print in an error message (see json_printable), cut after `max` bytes.
inline std::string safetensors_printable(const std::string& s, size_t max = 80) { return json_printable(s, max); }

// ----------------------------------------------------------------------------------------------------------------
// Header parsing: the JSON is read by common/json.h (strict: any syntax error, invalid UTF-8 or escape, and any key
// twice in one object, i.e. a tensor, a field or a metadata key given twice, is one line with its byte, line and
// column), then the schema is checked here. Every message is "FILE: malformed safetensors header: ...", and a
// schema error names the key path of the value, e.g. "m.safetensors: malformed safetensors header:
// ["layer.0.weight"].shape[1]: negative number -3 (a dimension must be >= 0)".

// A dimension or an offset: a non-negative integer literal, exact (int64; never through a double).
inline int64_t safetensors_header_uint(const JsonValue& v, const char* what) {
    if (!v.is_number()) v.fail("expected a non-negative integer (%s), found %s", what, v.type_name());
    if (v.as_number() < 0) v.fail("negative number %.17g (%s must be >= 0)", v.as_number(), what);
    return v.as_int(0, INT64_MAX);
}

// A tensor's {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}: every field, no other.
inline SafetensorsEntry safetensors_header_tensor(const JsonValue& t) {
    if (!t.is_object())
        t.fail("expected an object (a tensor's dtype, shape and data_offsets), found %s", t.type_name());
    t.check_keys({"dtype", "shape", "data_offsets"});
    SafetensorsEntry e;
    e.name = std::string(t.key());
    e.dtype = t.get("dtype").as_string();
    JsonValue shape = t.get("shape");
    if (!shape.is_array()) shape.fail("expected an array of non-negative integers (the shape), found %s", shape.type_name());
    for (size_t i = 0; i < shape.size(); i++) e.shape.push_back(safetensors_header_uint(shape.at(i), "a dimension"));
    JsonValue offsets = t.get("data_offsets");
    if (!offsets.is_array()) offsets.fail("must be [begin, end], found %s", offsets.type_name());
    if (offsets.size() != 2) offsets.fail("must be [begin, end], found %zu numbers", offsets.size());
    e.begin = (size_t)safetensors_header_uint(offsets.at(0), "an offset");
    e.end = (size_t)safetensors_header_uint(offsets.at(1), "an offset");
    return e;
}

inline void safetensors_parse_header(const char* path, const std::string& header, Safetensors* st) {
    // (at most about 10 values per tensor: a million is 100,000 tensors)
    JsonDoc doc = json_parse(std::string(path) + ": malformed safetensors header", header.data(), header.size(),
                             JSON_DEFAULT_MAX_DEPTH, SAFETENSORS_MAX_HEADER_VALUES);
    JsonValue root = doc.root();
    if (!root.is_object())
        root.fail("expected an object (tensor names and \"__metadata__\"), found %s", root.type_name());
    for (size_t i = 0; i < root.size(); i++) {
        JsonValue v = root.at(i);
        if (v.key() != "__metadata__") {
            st->entries.push_back(safetensors_header_tensor(v));
            continue;
        }
        if (!v.is_object()) v.fail("expected an object of string values, found %s", v.type_name());
        for (size_t k = 0; k < v.size(); k++) {
            JsonValue m = v.at(k);
            if (!m.is_string()) m.fail("metadata values must be strings, found %s", m.type_name());
            st->metadata.emplace_back(std::string(m.key()), m.as_string());
        }
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Reading

inline Safetensors safetensors_read(const char* path) {
    Safetensors st;
    st.path = path;
    const uint64_t size = (uint64_t)regular_file_size(path, "safetensors file");
    FILE* f = fopen_check(path, "rb");
    if (size < 8)
        fatal("%s: not a safetensors file: it has %llu bytes, fewer than the 8-byte header length", path,
              (unsigned long long)size);
    uint8_t len_bytes[8];
    fread_check(len_bytes, 8, f, path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len_bytes[i];
    if (n > size - 8)
        fatal("%s: safetensors header length %llu runs past the end of the file (%llu bytes): truncated, or not a "
              "safetensors file", path, (unsigned long long)n, (unsigned long long)size);
    if (n == 0) fatal("%s: malformed safetensors header: the header is empty (length 0)", path);
    if (n > 100000000ull)
        fatal("%s: safetensors header length %llu is implausibly large (limit 100 MB): not a safetensors file?", path,
              (unsigned long long)n);
    std::string header((size_t)n, '\0');
    fread_check(&header[0], (size_t)n, f, path);
    st.data.resize((size_t)(size - 8 - n));
    if (!st.data.empty()) fread_check(st.data.data(), st.data.size(), f, path);
    fclose(f);

    safetensors_parse_header(path, header, &st);
    for (const auto& e : st.entries) {
        std::string name = safetensors_printable(e.name);
        size_t esize = safetensors_dtype_size(e.dtype);
        if (esize == 0)
            fatal("%s: tensor '%s' has unknown dtype '%s' (known: " SAFETENSORS_KNOWN_DTYPES ")", path, name.c_str(),
                  safetensors_printable(e.dtype).c_str());
        if (e.begin > e.end)
            fatal("%s: tensor '%s' has data_offsets [%zu, %zu] with begin > end", path, name.c_str(), e.begin, e.end);
        if (e.end > st.data.size())
            fatal("%s: tensor '%s' has data_offsets [%zu, %zu] outside the %zu-byte data block (truncated file?)",
                  path, name.c_str(), e.begin, e.end, st.data.size());
        uint64_t numel = 0;
        if (!safetensors_numel_checked(e.shape, &numel) || (numel != 0 && numel > UINT64_MAX / esize))
            fatal("%s: tensor '%s' has shape %s, whose size overflows", path, name.c_str(),
                  safetensors_shape_str(e.shape).c_str());
        if (numel * esize != (uint64_t)(e.end - e.begin))
            fatal("%s: tensor '%s' (dtype %s, shape %s) needs %llu bytes, but its data_offsets [%zu, %zu] span %zu",
                  path, name.c_str(), e.dtype.c_str(), safetensors_shape_str(e.shape).c_str(),
                  (unsigned long long)(numel * esize), e.begin, e.end, e.end - e.begin);
    }
    // the tensors tile the data block exactly, as the format requires: no overlap (two names for the same bytes),
    // no gap or trailing bytes (data that belongs to no tensor)
    std::vector<const SafetensorsEntry*> by_offset;
    for (const auto& e : st.entries) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    size_t covered = 0;
    const SafetensorsEntry* prev = nullptr;
    for (const SafetensorsEntry* e : by_offset) {
        if (e->begin < covered)
            fatal("%s: tensor '%s' has data_offsets [%zu, %zu], overlapping tensor '%s' [%zu, %zu]", path,
                  safetensors_printable(e->name).c_str(), e->begin, e->end, safetensors_printable(prev->name).c_str(),
                  prev->begin, prev->end);
        if (e->begin > covered)
            fatal("%s: data bytes [%zu, %zu) belong to no tensor (the next, '%s', starts at %zu): corrupt or not packed", path,
                  covered, e->begin, safetensors_printable(e->name).c_str(), e->begin);
        covered = e->end;
        prev = e;
    }
    if (covered != st.data.size())
        fatal("%s: %zu data bytes after the last tensor (ends at %zu of %zu): corrupt or not packed", path,
              st.data.size() - covered, covered, st.data.size());
    return st;
}

// nullptr if the file has no tensor of that name.
inline const SafetensorsEntry* safetensors_find(const Safetensors& st, const std::string& name) {
    for (const auto& e : st.entries)
        if (e.name == name) return &e;
    return nullptr;
}

// Like safetensors_find, but a missing tensor is fatal (the message lists a few of the names present).
inline const SafetensorsEntry* safetensors_require(const Safetensors& st, const std::string& name) {
    const SafetensorsEntry* e = safetensors_find(st, name);
    if (e) return e;
    std::string some;
    for (size_t i = 0; i < st.entries.size() && i < 8; i++) some += (i ? ", " : "") + safetensors_printable(st.entries[i].name);
    if (st.entries.size() > 8) some += ", ...";
    fatal("%s: no tensor named '%s' (the file has %zu tensors%s%s)", st.path.c_str(), safetensors_printable(name).c_str(),
          st.entries.size(), st.entries.empty() ? "" : ": ", some.c_str());
}

inline float safetensors_bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline float safetensors_f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {                      // zero or subnormal: mant * 2^-24, exact in float
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31) bits = sign | 0x7F800000u | (mant << 13);          // inf, or nan (payload kept)
    else bits = sign | ((exp + 112) << 23) | (mant << 13);             // normal: rebias 15 -> 127
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Copies tensor `name` into dst[0..numel), converting F64/F32/BF16/F16 to T (float or double), after checking
// that its shape is exactly `shape`.
template <typename T>
void safetensors_get(const Safetensors& st, const std::string& name, const std::vector<int64_t>& shape, T* dst) {
    static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "safetensors_get: T must be float or double");
    const SafetensorsEntry* e = safetensors_require(st, name);
    if (e->shape != shape)
        fatal("%s: tensor '%s' has shape %s, expected %s", st.path.c_str(), safetensors_printable(name).c_str(),
              safetensors_shape_str(e->shape).c_str(), safetensors_shape_str(shape).c_str());
    const uint8_t* src = st.data.data() + e->begin;
    size_t n = safetensors_numel(*e);
    if (e->dtype == "F32") {
        for (size_t i = 0; i < n; i++) { float v; memcpy(&v, src + 4 * i, 4); dst[i] = (T)v; }
    } else if (e->dtype == "F64") {
        for (size_t i = 0; i < n; i++) { double v; memcpy(&v, src + 8 * i, 8); dst[i] = (T)v; }
    } else if (e->dtype == "BF16") {
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, src + 2 * i, 2); dst[i] = (T)safetensors_bf16_to_float(v); }
    } else if (e->dtype == "F16") {
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, src + 2 * i, 2); dst[i] = (T)safetensors_f16_to_float(v); }
    } else {
        fatal("%s: tensor '%s' has dtype %s, which cannot be read as floating point (expected F64, F32, BF16 or F16)",
              st.path.c_str(), safetensors_printable(name).c_str(), e->dtype.c_str());
    }
}

inline std::string safetensors_meta(const Safetensors& st, const std::string& key, const std::string& fallback = "") {
    for (const auto& kv : st.metadata)
        if (kv.first == key) return kv.second;
    return fallback;
}

// ----------------------------------------------------------------------------------------------------------------
// Writing

typedef struct {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
} SafetensorsWriterTensor;

typedef struct {
    std::vector<SafetensorsWriterTensor> tensors;                    // in the order added (written sorted by name)
    std::vector<std::pair<std::string, std::string>> metadata;       // written sorted by key
} SafetensorsWriter;

// Adds a tensor given as raw little-endian bytes of any known dtype (e.g. "BF16"); nbytes must equal
// numel(shape) * dtype size. Names must be unique, valid UTF-8, and not "__metadata__".
inline void safetensors_add_raw(SafetensorsWriter* w, const std::string& name, const std::string& dtype,
                                const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
    std::string pname = safetensors_printable(name);
    if (name == "__metadata__") fatal("safetensors writer: a tensor cannot be named \"__metadata__\"");
    if (!utf8_valid(name)) fatal("safetensors writer: tensor name '%s' is not valid UTF-8", pname.c_str());
    for (const auto& t : w->tensors)
        if (t.name == name) fatal("safetensors writer: tensor '%s' added twice", pname.c_str());
    size_t esize = safetensors_dtype_size(dtype);
    if (esize == 0) fatal("safetensors writer: tensor '%s' has unknown dtype '%s'", pname.c_str(), dtype.c_str());
    uint64_t numel = 0;
    if (!safetensors_numel_checked(shape, &numel) || (numel != 0 && numel > UINT64_MAX / esize))
        fatal("safetensors writer: tensor '%s' has invalid shape %s", pname.c_str(), safetensors_shape_str(shape).c_str());
    if (numel * esize != nbytes)
        fatal("safetensors writer: tensor '%s' (dtype %s, shape %s) needs %llu bytes, got %zu", pname.c_str(),
              dtype.c_str(), safetensors_shape_str(shape).c_str(), (unsigned long long)(numel * esize), nbytes);
    SafetensorsWriterTensor t;
    t.name = name;
    t.dtype = dtype;
    t.shape = shape;
    t.bytes.assign((const uint8_t*)data, (const uint8_t*)data + nbytes);
    w->tensors.push_back(std::move(t));
}

inline size_t safetensors_shape_numel(const std::vector<int64_t>& shape, const std::string& name) {
    uint64_t n = 0;
    if (!safetensors_numel_checked(shape, &n))
        fatal("safetensors writer: tensor '%s' has invalid shape %s", safetensors_printable(name).c_str(),
              safetensors_shape_str(shape).c_str());
    return (size_t)n;
}

inline void safetensors_add_f32(SafetensorsWriter* w, const std::string& name, const std::vector<int64_t>& shape, const float* data) {
    size_t n = safetensors_shape_numel(shape, name);
    safetensors_add_raw(w, name, "F32", shape, data, n * sizeof(float));
}

// double values, stored as F32 (rounded to nearest).
inline void safetensors_add_f32(SafetensorsWriter* w, const std::string& name, const std::vector<int64_t>& shape, const double* data) {
    size_t n = safetensors_shape_numel(shape, name);
    std::vector<float> tmp(n);
    for (size_t i = 0; i < n; i++) tmp[i] = (float)data[i];
    safetensors_add_raw(w, name, "F32", shape, tmp.data(), n * sizeof(float));
}

inline void safetensors_add_i32(SafetensorsWriter* w, const std::string& name, const std::vector<int64_t>& shape, const int32_t* data) {
    size_t n = safetensors_shape_numel(shape, name);
    safetensors_add_raw(w, name, "I32", shape, data, n * sizeof(int32_t));
}

// One byte per element; any non-zero byte is stored as 1 (torch requires bool bytes to be 0 or 1).
inline void safetensors_add_bool(SafetensorsWriter* w, const std::string& name, const std::vector<int64_t>& shape, const uint8_t* data) {
    size_t n = safetensors_shape_numel(shape, name);
    std::vector<uint8_t> tmp(n);
    for (size_t i = 0; i < n; i++) tmp[i] = data[i] ? 1 : 0;
    safetensors_add_raw(w, name, "BOOL", shape, tmp.data(), n);
}

// Sets a metadata entry (a later call with the same key replaces the value). Key and value must be valid UTF-8.
inline void safetensors_add_meta(SafetensorsWriter* w, const std::string& key, const std::string& value) {
    if (!utf8_valid(key))
        fatal("safetensors writer: metadata key '%s' is not valid UTF-8", safetensors_printable(key).c_str());
    if (!utf8_valid(value))
        fatal("safetensors writer: the value of metadata key '%s' is not valid UTF-8", safetensors_printable(key).c_str());
    for (auto& kv : w->metadata)
        if (kv.first == key) { kv.second = value; return; }
    w->metadata.emplace_back(key, value);
}

// s as a JSON string literal, quotes included (see json_quote).
inline std::string safetensors_json_string(const std::string& s) { return json_quote(s); }

inline void safetensors_write(const SafetensorsWriter& w, const std::string& path) {
    std::vector<const SafetensorsWriterTensor*> order;
    for (const auto& t : w.tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const SafetensorsWriterTensor* a, const SafetensorsWriterTensor* b) { return a->name < b->name; });
    std::vector<const std::pair<std::string, std::string>*> meta;
    for (const auto& kv : w.metadata) meta.push_back(&kv);
    std::sort(meta.begin(), meta.end(), [](const std::pair<std::string, std::string>* a, const std::pair<std::string, std::string>* b) { return a->first < b->first; });

    std::string h = "{";
    if (!meta.empty()) {
        h += "\"__metadata__\":{";
        for (size_t i = 0; i < meta.size(); i++) {
            if (i) h += ",";
            h += safetensors_json_string(meta[i]->first) + ":" + safetensors_json_string(meta[i]->second);
        }
        h += "}";
    }
    size_t offset = 0;
    for (size_t i = 0; i < order.size(); i++) {
        const SafetensorsWriterTensor* t = order[i];
        if (i || !meta.empty()) h += ",";
        h += safetensors_json_string(t->name) + ":{\"dtype\":\"" + t->dtype + "\",\"shape\":[";
        for (size_t d = 0; d < t->shape.size(); d++) h += (d ? "," : "") + std::to_string(t->shape[d]);
        h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t->bytes.size()) + "]}";
        offset += t->bytes.size();
    }
    h += "}";
    while (h.size() % 8) h += ' ';

    write_file_atomic(path, [&](FILE* f, const char* tmp) {
        uint8_t len_bytes[8];
        uint64_t n = h.size();
        for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)(n >> (8 * i));
        fwrite_check(len_bytes, 8, f, tmp);
        fwrite_check(h.data(), h.size(), f, tmp);
        for (const SafetensorsWriterTensor* t : order)
            if (!t->bytes.empty()) fwrite_check(t->bytes.data(), t->bytes.size(), f, tmp);
    });
}

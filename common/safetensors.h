// Reader and writer of the safetensors format (header-only, host code, no dependencies beyond utils.h).
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
// can never crash the reader or make it read out of bounds. The JSON parser handles exactly this schema:
// objects, strings (with every JSON escape, \uXXXX surrogate pairs included), non-negative integers and arrays
// of them. The tensors must tile the data block exactly (no overlap, no gap, nothing after the last), as the
// reference loader requires; the header may list them in any order.
//
// Writing: collect tensors and metadata in a SafetensorsWriter, then safetensors_write(): tensors sorted by
// name and packed back to back from offset 0 (as the reference loader requires), the header padded with
// spaces to a multiple of 8, "__metadata__" (if any) written first with string values, the file written
// atomically (write_file_atomic), so the real `safetensors` / torch loaders read it.
//
// Assumes a little-endian host (checked at compile time), like everything else in this project.
#pragma once
#include <math.h>
#include <sys/stat.h>
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include "utils.h"

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
// dtypes, shapes, UTF-8

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

// Whether s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF);
// if not, *bad is the offset of the first bad byte.
inline bool safetensors_utf8_valid(const char* s, size_t n, size_t* bad = nullptr) {
    const unsigned char* p = (const unsigned char*)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else { if (bad) *bad = i; return false; }
        if (n - i < len) { if (bad) *bad = i; return false; }
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) { if (bad) *bad = i; return false; }
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) { if (bad) *bad = i; return false; }
        i += len;
    }
    return true;
}

// A string made safe to print in an error message: non-printable bytes as \xNN, cut after `max` bytes.
inline std::string safetensors_printable(const std::string& s, size_t max = 80) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F) out += (char)c;
        else { char b[8]; snprintf(b, sizeof b, "\\x%02x", c); out += b; }
    }
    if (s.size() > max) out += "...";
    return out;
}

// ----------------------------------------------------------------------------------------------------------------
// Header parsing

typedef struct {
    const char* path;
    const char* s;   // the header JSON (not NUL-terminated: always bounded by n)
    size_t n, pos;
} SafetensorsParser;

[[noreturn]] inline void safetensors_parse_error(const SafetensorsParser* p, const char* what) {
    std::string near = p->pos < p->n ? safetensors_printable(std::string(p->s + p->pos, std::min<size_t>(p->n - p->pos, 24)), 24)
                                     : std::string("<end of header>");
    fatal("%s: malformed safetensors header: %s at byte %zu of the %zu-byte JSON header (near \"%s\")",
          p->path, what, p->pos, p->n, near.c_str());
}

inline void safetensors_skip_ws(SafetensorsParser* p) {
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

// Skips whitespace, then consumes `c` or fails with "expected <c> <context>".
inline void safetensors_expect(SafetensorsParser* p, char c, const char* context) {
    safetensors_skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != c) {
        std::string what = std::string("expected '") + c + "' " + context;
        safetensors_parse_error(p, what.c_str());
    }
    p->pos++;
}

// After whitespace: true (and consumes it) if the next character is `c`.
inline bool safetensors_accept(SafetensorsParser* p, char c) {
    safetensors_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == c) { p->pos++; return true; }
    return false;
}

inline void safetensors_append_utf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) *out += (char)cp;
    else if (cp < 0x800) { *out += (char)(0xC0 | (cp >> 6)); *out += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *out += (char)(0xE0 | (cp >> 12)); *out += (char)(0x80 | ((cp >> 6) & 0x3F)); *out += (char)(0x80 | (cp & 0x3F));
    } else {
        *out += (char)(0xF0 | (cp >> 18)); *out += (char)(0x80 | ((cp >> 12) & 0x3F));
        *out += (char)(0x80 | ((cp >> 6) & 0x3F)); *out += (char)(0x80 | (cp & 0x3F));
    }
}

inline uint32_t safetensors_parse_hex4(SafetensorsParser* p) {
    if (p->n - p->pos < 4) safetensors_parse_error(p, "\\u escape needs 4 hex digits");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->pos];
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
        else safetensors_parse_error(p, "\\u escape needs 4 hex digits");
        v = v * 16 + d;
        p->pos++;
    }
    return v;
}

// A JSON string; `context` says what it is for error messages ("a tensor name", "the dtype", ...).
inline std::string safetensors_parse_string(SafetensorsParser* p, const char* context) {
    safetensors_skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != '"') {
        std::string what = std::string("expected a string (") + context + ")";
        safetensors_parse_error(p, what.c_str());
    }
    p->pos++;
    std::string out;
    for (;;) {
        if (p->pos >= p->n) safetensors_parse_error(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; return out; }
        if (c < 0x20) safetensors_parse_error(p, "unescaped control character inside a string");
        if (c != '\\') { out += (char)c; p->pos++; continue; }
        p->pos++;
        if (p->pos >= p->n) safetensors_parse_error(p, "unterminated escape in a string");
        char e = p->s[p->pos++];
        switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                uint32_t cp = safetensors_parse_hex4(p);
                if (cp >= 0xDC00 && cp <= 0xDFFF) safetensors_parse_error(p, "\\u escape is a lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {   // high surrogate: a \uDC00-\uDFFF must follow
                    if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                        safetensors_parse_error(p, "\\u escape is a high surrogate without its low surrogate");
                    p->pos += 2;
                    uint32_t lo = safetensors_parse_hex4(p);
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        safetensors_parse_error(p, "\\u escape is a high surrogate without its low surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                safetensors_append_utf8(&out, cp);
                break;
            }
            default: p->pos--; safetensors_parse_error(p, "invalid escape in a string");
        }
    }
}

// A non-negative JSON integer that fits in int64.
inline uint64_t safetensors_parse_uint(SafetensorsParser* p, const char* context) {
    safetensors_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '-') {
        std::string what = std::string("negative number (") + context + " must be >= 0)";
        safetensors_parse_error(p, what.c_str());
    }
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
        std::string what = std::string("expected a non-negative integer (") + context + ")";
        safetensors_parse_error(p, what.c_str());
    }
    if (p->s[p->pos] == '0' && p->pos + 1 < p->n && p->s[p->pos + 1] >= '0' && p->s[p->pos + 1] <= '9')
        safetensors_parse_error(p, "number with a leading zero");
    uint64_t v = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        uint64_t d = (uint64_t)(p->s[p->pos] - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10) safetensors_parse_error(p, "integer too large");
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        std::string what = std::string("expected an integer, found a fraction or exponent (") + context + ")";
        safetensors_parse_error(p, what.c_str());
    }
    return v;
}

inline std::vector<uint64_t> safetensors_parse_uint_array(SafetensorsParser* p, const char* context) {
    std::string ctx = std::string("at the start of ") + context;
    safetensors_expect(p, '[', ctx.c_str());
    std::vector<uint64_t> out;
    if (safetensors_accept(p, ']')) return out;
    for (;;) {
        out.push_back(safetensors_parse_uint(p, context));
        if (safetensors_accept(p, ']')) return out;
        std::string what = std::string("or ']' after a number in ") + context;
        safetensors_expect(p, ',', what.c_str());
    }
}

// {"dtype": ..., "shape": [...], "data_offsets": [b, e]}; every field exactly once, no other field.
inline SafetensorsEntry safetensors_parse_tensor_info(SafetensorsParser* p, const std::string& name) {
    SafetensorsEntry e;
    e.name = name;
    e.begin = e.end = 0;
    bool has_dtype = false, has_shape = false, has_offsets = false;
    std::string pname = safetensors_printable(name);
    std::string ctx = "to open tensor '" + pname + "' (a tensor's value is an object)";
    safetensors_expect(p, '{', ctx.c_str());
    if (!safetensors_accept(p, '}')) {
        for (;;) {
            std::string field = safetensors_parse_string(p, "a field name of a tensor");
            safetensors_expect(p, ':', "after a field name");
            bool* seen = nullptr;
            if (field == "dtype") {
                seen = &has_dtype;
                e.dtype = safetensors_parse_string(p, "the dtype");
            } else if (field == "shape") {
                seen = &has_shape;
                std::vector<uint64_t> dims = safetensors_parse_uint_array(p, "the shape");
                e.shape.assign(dims.begin(), dims.end());
            } else if (field == "data_offsets") {
                seen = &has_offsets;
                std::vector<uint64_t> o = safetensors_parse_uint_array(p, "data_offsets");
                if (o.size() != 2) {
                    std::string what = "tensor '" + pname + "': data_offsets must be [begin, end], found " +
                                       std::to_string(o.size()) + " numbers";
                    safetensors_parse_error(p, what.c_str());
                }
                e.begin = (size_t)o[0];
                e.end = (size_t)o[1];
            } else {
                std::string what = "tensor '" + pname + "' has an unknown field '" + safetensors_printable(field) +
                                   "' (expected dtype, shape, data_offsets)";
                safetensors_parse_error(p, what.c_str());
            }
            if (*seen) {
                std::string what = "tensor '" + pname + "' has field '" + field + "' twice";
                safetensors_parse_error(p, what.c_str());
            }
            *seen = true;
            if (safetensors_accept(p, '}')) break;
            safetensors_expect(p, ',', "or '}' after a tensor field");
        }
    }
    if (!has_dtype || !has_shape || !has_offsets) {
        std::string what = "tensor '" + pname + "' lacks its " +
                           (!has_dtype ? "dtype" : !has_shape ? "shape" : "data_offsets");
        safetensors_parse_error(p, what.c_str());
    }
    return e;
}

inline void safetensors_parse_metadata(SafetensorsParser* p, Safetensors* st) {
    safetensors_expect(p, '{', "to open __metadata__ (an object of string values)");
    if (safetensors_accept(p, '}')) return;
    for (;;) {
        std::string key = safetensors_parse_string(p, "a metadata key");
        for (const auto& kv : st->metadata)
            if (kv.first == key) {
                std::string what = "metadata key '" + safetensors_printable(key) + "' appears twice";
                safetensors_parse_error(p, what.c_str());
            }
        safetensors_expect(p, ':', "after a metadata key");
        std::string value = safetensors_parse_string(p, "metadata values must be strings");
        st->metadata.emplace_back(key, value);
        if (safetensors_accept(p, '}')) return;
        safetensors_expect(p, ',', "or '}' after a metadata value");
    }
}

inline void safetensors_parse_header(const char* path, const std::string& header, Safetensors* st) {
    size_t bad = 0;
    if (!safetensors_utf8_valid(header.data(), header.size(), &bad))
        fatal("%s: malformed safetensors header: invalid UTF-8 at byte %zu of the %zu-byte JSON header", path, bad,
              header.size());
    SafetensorsParser p = {path, header.data(), header.size(), 0};
    safetensors_expect(&p, '{', "at the start of the header (it must be a JSON object)");
    bool has_metadata = false;
    if (!safetensors_accept(&p, '}')) {
        for (;;) {
            std::string name = safetensors_parse_string(&p, "a tensor name or \"__metadata__\"");
            safetensors_expect(&p, ':', "after a tensor name");
            if (name == "__metadata__") {
                if (has_metadata) safetensors_parse_error(&p, "\"__metadata__\" appears twice");
                has_metadata = true;
                safetensors_parse_metadata(&p, st);
            } else {
                st->entries.push_back(safetensors_parse_tensor_info(&p, name));
            }
            if (safetensors_accept(&p, '}')) break;
            safetensors_expect(&p, ',', "or '}' after a tensor");
        }
    }
    safetensors_skip_ws(&p);
    if (p.pos != p.n) safetensors_parse_error(&p, "unexpected characters after the JSON object");

    // duplicate tensor names (sorted copy of the names)
    std::vector<const std::string*> names;
    for (const auto& e : st->entries) names.push_back(&e.name);
    std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
    for (size_t i = 1; i < names.size(); i++)
        if (*names[i] == *names[i - 1])
            fatal("%s: malformed safetensors header: tensor '%s' appears twice", path,
                  safetensors_printable(*names[i]).c_str());
}

// ----------------------------------------------------------------------------------------------------------------
// Reading

inline Safetensors safetensors_read(const char* path) {
    Safetensors st;
    st.path = path;
    struct stat sb;
    if (stat(path, &sb) != 0) fatal("cannot open %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) fatal("%s is not a regular file (expected a .safetensors file)", path);
    FILE* f = fopen_check(path, "rb");
    uint64_t size = (uint64_t)sb.st_size;
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
    if (!safetensors_utf8_valid(name.data(), name.size())) fatal("safetensors writer: tensor name '%s' is not valid UTF-8", pname.c_str());
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
    if (!safetensors_utf8_valid(key.data(), key.size()))
        fatal("safetensors writer: metadata key '%s' is not valid UTF-8", safetensors_printable(key).c_str());
    if (!safetensors_utf8_valid(value.data(), value.size()))
        fatal("safetensors writer: the value of metadata key '%s' is not valid UTF-8", safetensors_printable(key).c_str());
    for (auto& kv : w->metadata)
        if (kv.first == key) { kv.second = value; return; }
    w->metadata.emplace_back(key, value);
}

// s as a JSON string literal, quotes included (UTF-8 kept as is; control characters escaped).
inline std::string safetensors_json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
                else out += (char)c;
        }
    }
    return out + "\"";
}

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

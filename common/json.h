// A strict JSON reader for untrusted files (RFC 8259), header-only, no dependencies beyond utils.h and utf8.h.
//
//   JsonDoc doc = json_read_file("tokenizer.json");        // or json_parse(name, text, n)
//   JsonValue model = doc.root().get("model");             // a missing key is a fatal() naming it
//   for (size_t i = 0; i < merges.size(); i++) merges.at(i).as_string();
//
// Accepted: exactly one value (object, array, string, number, true, false, null) with optional whitespace (space,
// tab, CR, LF) around it. Refused with a one-line fatal() "FILE: invalid JSON at byte B (line L, column C):
// expected ... (found ...)": anything else after the value, trailing commas, comments, single quotes, NaN and
// Infinity, leading zeros, numbers that overflow a double, control characters inside strings, invalid escapes,
// lone or swapped \u surrogates, invalid UTF-8 (overlong forms, surrogates, above U+10FFFF, truncated sequences),
// a UTF-8 byte order mark, duplicate keys in one object, nesting deeper than max_depth (default 128) and files
// larger than 1 GiB. Strings are stored decoded (UTF-8; \u0000 is kept: lengths, not NUL terminators).
// Numbers are doubles, and an integer literal (no fraction or exponent) that fits int64 is also kept exactly:
// as_int() never goes through a double (file offsets and sizes above 2^53 stay exact); beyond int64 it fails with
// "integer too large".
//
// The tree is a flat array of nodes (each container's children are contiguous, so at(i) is O(1)) plus one string
// arena; a JsonValue is a cheap view (document + node index). Typed accessors fail with one line naming the
// file and the key path of the value, e.g.
//   error: tokenizer.json: model.merges[12]: expected a string, found a number
//   error: config.json: (top level): missing key "hidden_size"
// Object members keep their file order; get(key) scans the members (fine for the small objects of config
// files; iterate with size()/at(i)/key() over large ones, e.g. a 150,000-entry vocabulary).
#pragma once
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include "utf8.h"
#include "utils.h"

#define JSON_DEFAULT_MAX_DEPTH 128
#define JSON_MAX_FILE_BYTES (1u << 30)

enum JsonType : uint8_t { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

inline const char* json_type_name(JsonType t) {
    switch (t) {
        case JSON_NULL: return "null";
        case JSON_BOOL: return "a boolean";
        case JSON_NUMBER: return "a number";
        case JSON_STRING: return "a string";
        case JSON_ARRAY: return "an array";
        case JSON_OBJECT: return "an object";
    }
    return "?";
}

static const uint32_t JSON_NO_PARENT = UINT32_MAX;

struct JsonNode {
    uint32_t a = 0;          // string: offset of its bytes in JsonDoc::strings; array/object: index of the first child
    uint32_t n = 0;          // string: length in bytes; array/object: number of children
    uint32_t key = 0;        // an object member: offset of its key in strings
    uint32_t key_len = 0;
    uint32_t offset = 0;     // byte offset of the value in the text
    uint32_t parent = JSON_NO_PARENT;
    union {
        double num;          // a number: its value
        int64_t inum;        // a number written as an integer that fits int64 (is_int): its exact value
    };
    JsonType type = JSON_NULL;
    bool is_member = false;  // a value inside an object (has a key)
    bool is_int = false;
    bool int_too_large = false;   // a number written as an integer outside int64 (num holds it, rounded)
    bool boolean = false;    // a bool: its value
    JsonNode() : num(0) {}
};

struct JsonValue;

// The parsed document: owns the nodes and the strings. Views (JsonValue) point into it, so keep it alive and
// do not move it while they are in use.
struct JsonDoc {
    std::string name;                // the file name (or what the text is) used in every message
    std::vector<JsonNode> nodes;     // children before parents; the root is the last node
    std::string strings;             // every decoded string and key, back to back
    JsonDoc() = default;
    JsonDoc(const JsonDoc&) = delete;
    JsonDoc& operator=(const JsonDoc&) = delete;
    JsonDoc(JsonDoc&&) = default;
    JsonDoc& operator=(JsonDoc&&) = default;
    inline JsonValue root() const;
};

// A string made safe to print in a message: printable ASCII as is, other bytes as \xNN, cut after `max` bytes.
inline std::string json_printable(std::string_view s, size_t max = 60) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') out += (char)c;
        else if (c == '"' || c == '\\') { out += '\\'; out += (char)c; }
        else { char b[8]; snprintf(b, sizeof b, "\\x%02x", c); out += b; }
    }
    if (s.size() > max) out += "...";
    return out;
}

// A view of one value of a JsonDoc.
struct JsonValue {
    const JsonDoc* doc = nullptr;
    uint32_t index = 0;

    const JsonNode& node() const { return doc->nodes[index]; }
    JsonType type() const { return node().type; }
    const char* type_name() const { return json_type_name(type()); }
    bool is_null() const { return type() == JSON_NULL; }
    bool is_bool() const { return type() == JSON_BOOL; }
    bool is_number() const { return type() == JSON_NUMBER; }
    bool is_string() const { return type() == JSON_STRING; }
    bool is_array() const { return type() == JSON_ARRAY; }
    bool is_object() const { return type() == JSON_OBJECT; }
    size_t offset() const { return (size_t)node().offset; }   // byte offset in the file

    // The key path of this value, e.g. model.merges[12] or added_tokens[3].content; "(top level)" for the root.
    std::string path() const {
        std::vector<uint32_t> chain;
        for (uint32_t i = index; doc->nodes[i].parent != JSON_NO_PARENT; i = doc->nodes[i].parent) chain.push_back(i);
        if (chain.empty()) return "(top level)";
        std::string out;
        for (size_t k = chain.size(); k-- > 0;) {
            const JsonNode& nd = doc->nodes[chain[k]];
            if (nd.is_member) {
                std::string_view key(doc->strings.data() + nd.key, nd.key_len);
                bool ident = !key.empty() && !(key[0] >= '0' && key[0] <= '9');
                for (char c : key) ident = ident && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
                if (ident) {
                    if (!out.empty()) out += '.';
                    out += key;
                } else {
                    out += "[\"" + json_printable(key) + "\"]";
                }
            } else {
                out += "[" + std::to_string(chain[k] - doc->nodes[nd.parent].a) + "]";
            }
        }
        return out;
    }

    // fatal("FILE: PATH: <message>")
    [[noreturn]] void fail(const char* fmt, ...) const __attribute__((format(printf, 2, 3))) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fatal("%s: %s: %s", doc->name.c_str(), path().c_str(), msg);
    }
    void expect_type(JsonType t) const {
        if (type() != t) fail("expected %s, found %s", json_type_name(t), type_name());
    }

    // --- arrays and objects
    size_t size() const {
        if (type() != JSON_ARRAY && type() != JSON_OBJECT) fail("expected an array or an object, found %s", type_name());
        return node().n;
    }
    // The i-th element of an array, or the i-th member of an object (in file order; key() names it).
    JsonValue at(size_t i) const {
        size_t n = size();
        if (i >= n) fail("index %zu is out of range (%zu elements)", i, n);
        return JsonValue{doc, (uint32_t)(node().a + i)};
    }
    // The key of an object member.
    std::string_view key() const {
        if (!node().is_member) fail("is not an object member (it has no key)");
        return std::string_view(doc->strings.data() + node().key, node().key_len);
    }
    // Finds a member of an object; false if absent.
    bool find(std::string_view key_name, JsonValue* out) const {
        expect_type(JSON_OBJECT);
        const JsonNode& nd = node();
        for (uint32_t k = 0; k < nd.n; k++) {
            const JsonNode& m = doc->nodes[nd.a + k];
            if (std::string_view(doc->strings.data() + m.key, m.key_len) == key_name) {
                if (out) *out = JsonValue{doc, (uint32_t)(nd.a + k)};
                return true;
            }
        }
        return false;
    }
    bool has(std::string_view key_name) const { return find(key_name, nullptr); }
    // A required member.
    JsonValue get(std::string_view key_name) const {
        JsonValue v;
        if (!find(key_name, &v)) fail("missing key \"%s\"", json_printable(key_name).c_str());
        return v;
    }
    // Fails on a key not in `allowed` (a misspelt option must not be silently ignored).
    void check_keys(std::initializer_list<const char*> allowed) const {
        expect_type(JSON_OBJECT);
        for (size_t k = 0; k < node().n; k++) {
            std::string_view key_name = at(k).key();
            bool ok = false;
            for (const char* a : allowed) ok = ok || key_name == a;
            if (!ok) {
                std::string list;
                for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
                fail("unknown key \"%s\" (expected only: %s)", json_printable(key_name).c_str(), list.c_str());
            }
        }
    }

    // --- scalars
    std::string_view as_string_view() const {
        expect_type(JSON_STRING);
        return std::string_view(doc->strings.data() + node().a, node().n);
    }
    std::string as_string() const { return std::string(as_string_view()); }
    bool as_bool() const {
        expect_type(JSON_BOOL);
        return node().boolean;
    }
    double as_number() const {
        expect_type(JSON_NUMBER);
        return node().is_int ? (double)node().inum : node().num;
    }
    // An integer literal (no fraction or exponent) within [lo, hi]: exact (int64, never through a double).
    int64_t as_int(int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const {
        expect_type(JSON_NUMBER);
        if (!node().is_int) {
            double v = node().num;
            if (node().int_too_large)
                fail("integer too large: %.17g does not fit in 64 bits (expected %lld..%lld)", v, (long long)lo, (long long)hi);
            if (v == floor(v) && fabs(v) < 1e15) fail("expected an integer, found %.1f (an integer has no fraction or exponent)", v);
            fail("expected an integer, found %.17g", v);
        }
        if (node().inum < lo || node().inum > hi)
            fail("%lld is out of range (expected %lld..%lld)", (long long)node().inum, (long long)lo, (long long)hi);
        return node().inum;
    }

    // --- optional members: the default when the key is absent or its value is null
    std::string get_string_or(std::string_view k, const std::string& def) const {
        JsonValue v;
        return find(k, &v) && !v.is_null() ? v.as_string() : def;
    }
    bool get_bool_or(std::string_view k, bool def) const {
        JsonValue v;
        return find(k, &v) && !v.is_null() ? v.as_bool() : def;
    }
    double get_number_or(std::string_view k, double def) const {
        JsonValue v;
        return find(k, &v) && !v.is_null() ? v.as_number() : def;
    }
    int64_t get_int_or(std::string_view k, int64_t def, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const {
        JsonValue v;
        return find(k, &v) && !v.is_null() ? v.as_int(lo, hi) : def;
    }
};

inline JsonValue JsonDoc::root() const {
    if (nodes.empty()) fatal("%s: empty JSON document", name.c_str());
    return JsonValue{this, (uint32_t)(nodes.size() - 1)};
}

// ----------------------------------------------------------------------------------------------------------------
// Parsing

struct JsonParser {
    JsonDoc* doc;
    const char* s;
    size_t n, pos;
    int max_depth;
    std::vector<JsonNode> stack;   // values whose container is still open

    // What is at `pos`, for messages: "'x'", "end of file" or "byte 0xNN".
    std::string found() const {
        if (pos >= n) return "end of file";
        unsigned char c = (unsigned char)s[pos];
        char b[32];
        if (c == '\'') snprintf(b, sizeof b, "\"'\"");
        else if (c >= 0x20 && c < 0x7F) snprintf(b, sizeof b, "'%c'", c);
        else snprintf(b, sizeof b, "byte 0x%02x", c);
        return b;
    }
    [[noreturn]] void error_at(size_t at, const char* fmt, ...) const __attribute__((format(printf, 3, 4))) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        size_t line = 1, col = 1;
        for (size_t i = 0; i < at && i < n; i++) {
            if (s[i] == '\n') { line++; col = 1; }
            else if (((unsigned char)s[i] & 0xC0) != 0x80) col++;   // columns count characters
        }
        fatal("%s: invalid JSON at byte %zu (line %zu, column %zu): %s", doc->name.c_str(), at, line, col, msg);
    }
    // "expected X (found Y)" at the current position.
    [[noreturn]] void expected(const char* what) const { error_at(pos, "expected %s (found %s)", what, found().c_str()); }

    void skip_ws() {
        while (pos < n && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) pos++;
    }

    uint32_t hex4() {
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            char c = pos < n ? s[pos] : 0;
            uint32_t d;
            if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
            else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
            else expected("4 hex digits after \\u");
            v = v * 16 + d;
            pos++;
        }
        return v;
    }
    // A string starting at the opening quote; its decoded bytes are appended to the arena. Returns (offset, length).
    std::pair<uint32_t, uint32_t> parse_string() {
        size_t start = pos;
        pos++;   // the opening quote
        uint32_t off = (uint32_t)doc->strings.size();
        for (;;) {
            size_t run = pos;   // a run of plain printable ASCII, copied at once
            while (pos < n) {
                unsigned char c = (unsigned char)s[pos];
                if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
                pos++;
            }
            doc->strings.append(s + run, pos - run);
            if (pos >= n) error_at(start, "unterminated string (no closing quote before the end of file)");
            unsigned char c = (unsigned char)s[pos];
            if (c == '"') { pos++; break; }
            if (c < 0x20) error_at(pos, "control character 0x%02x inside a string (it must be escaped)", c);
            if (c >= 0x80) {
                uint32_t cp;
                bool ok;
                size_t len = utf8_decode(s, n, pos, &cp, &ok);
                if (!ok) error_at(pos, "invalid UTF-8 (byte 0x%02x) inside a string", c);
                doc->strings.append(s + pos, len);
                pos += len;
                continue;
            }
            // an escape
            pos++;
            if (pos >= n) error_at(pos, "unterminated escape at the end of file");
            char e = s[pos++];
            switch (e) {
                case '"': doc->strings += '"'; break;
                case '\\': doc->strings += '\\'; break;
                case '/': doc->strings += '/'; break;
                case 'b': doc->strings += '\b'; break;
                case 'f': doc->strings += '\f'; break;
                case 'n': doc->strings += '\n'; break;
                case 'r': doc->strings += '\r'; break;
                case 't': doc->strings += '\t'; break;
                case 'u': {
                    size_t at = pos - 2;
                    uint32_t cp = hex4();
                    if (cp >= 0xDC00 && cp <= 0xDFFF) error_at(at, "\\u%04X is a lone low surrogate", cp);
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (n - pos < 2 || s[pos] != '\\' || s[pos + 1] != 'u')
                            error_at(at, "\\u%04X is a high surrogate without a \\uDC00-\\uDFFF after it", cp);
                        pos += 2;
                        uint32_t lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF)
                            error_at(at, "\\u%04X is a high surrogate followed by \\u%04X instead of \\uDC00-\\uDFFF", cp, lo);
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    utf8_append(&doc->strings, cp);
                    break;
                }
                default: pos--; expected("an escape character after '\\' (one of \" \\ / b f n r t u)");
            }
        }
        return {off, (uint32_t)(doc->strings.size() - off)};
    }

    void parse_number(JsonNode* nd) {
        size_t start = pos;
        bool integer = true;
        if (s[pos] == '-') pos++;
        if (pos >= n || s[pos] < '0' || s[pos] > '9') expected("a digit after '-'");
        if (s[pos] == '0') {
            pos++;
            if (pos < n && s[pos] >= '0' && s[pos] <= '9') error_at(pos - 1, "number with a leading zero");
        } else {
            while (pos < n && s[pos] >= '0' && s[pos] <= '9') pos++;
        }
        if (pos < n && s[pos] == '.') {
            integer = false;
            pos++;
            if (pos >= n || s[pos] < '0' || s[pos] > '9') expected("a digit after the decimal point");
            while (pos < n && s[pos] >= '0' && s[pos] <= '9') pos++;
        }
        if (pos < n && (s[pos] == 'e' || s[pos] == 'E')) {
            integer = false;
            pos++;
            if (pos < n && (s[pos] == '+' || s[pos] == '-')) pos++;
            if (pos >= n || s[pos] < '0' || s[pos] > '9') expected("a digit in the exponent");
            while (pos < n && s[pos] >= '0' && s[pos] <= '9') pos++;
        }
        std::string text(s + start, pos - start);
        nd->type = JSON_NUMBER;
        errno = 0;
        double v = strtod(text.c_str(), nullptr);
        if (!isfinite(v)) error_at(start, "number %s is out of the range of a double", json_printable(text, 40).c_str());
        nd->num = v;
        if (integer) {
            errno = 0;
            long long iv = strtoll(text.c_str(), nullptr, 10);
            if (errno != ERANGE) { nd->is_int = true; nd->inum = iv; }
            else nd->int_too_large = true;
        }
    }

    void literal(const char* word) {
        size_t len = strlen(word);
        if (n - pos < len || memcmp(s + pos, word, len) != 0) expected("a value (object, array, string, number, true, false or null)");
        pos += len;
    }

    // Places the finished node `nd` (popped from the stack) into doc->nodes; returns its index.
    uint32_t place(const JsonNode& nd) {
        uint32_t k = (uint32_t)doc->nodes.size();
        doc->nodes.push_back(nd);
        if (nd.type == JSON_ARRAY || nd.type == JSON_OBJECT)
            for (uint32_t c = nd.a; c < nd.a + nd.n; c++) doc->nodes[c].parent = k;
        return k;
    }
    // Moves the children stack[s0..] of a closing container into doc->nodes (contiguous); returns the first index.
    uint32_t close_container(size_t s0) {
        uint32_t first = (uint32_t)doc->nodes.size();
        for (size_t k = s0; k < stack.size(); k++) place(stack[k]);
        stack.resize(s0);
        return first;
    }

    void check_duplicate_keys(size_t s0) {
        size_t count = stack.size() - s0;
        if (count < 2) return;
        std::vector<std::pair<std::string_view, size_t>> keys;
        keys.reserve(count);
        for (size_t k = s0; k < stack.size(); k++)
            keys.emplace_back(std::string_view(doc->strings.data() + stack[k].key, stack[k].key_len), k);
        std::sort(keys.begin(), keys.end());
        for (size_t k = 1; k < keys.size(); k++)
            if (keys[k].first == keys[k - 1].first) {
                size_t a = std::min(keys[k].second, keys[k - 1].second), b = std::max(keys[k].second, keys[k - 1].second);
                error_at(stack[b].offset, "duplicate key \"%s\" in an object (its first value is at byte %zu)",
                         json_printable(keys[k].first).c_str(), (size_t)stack[a].offset);
            }
    }

    // Parses one value and pushes it on the stack.
    void parse_value(int depth) {
        skip_ws();
        if (pos >= n) expected("a value");
        JsonNode nd;
        nd.offset = (uint32_t)pos;
        char c = s[pos];
        if (c == '{' || c == '[') {
            if (depth >= max_depth) error_at(pos, "nesting deeper than %d levels", max_depth);
            const bool obj = c == '{';
            const char close = obj ? '}' : ']';
            pos++;
            size_t s0 = stack.size();
            skip_ws();
            if (pos < n && s[pos] == close) {
                pos++;
            } else {
                for (;;) {
                    if (obj) {
                        skip_ws();
                        if (pos >= n || s[pos] != '"') expected(stack.size() == s0 ? "a string key or '}'" : "a string key");
                        std::pair<uint32_t, uint32_t> key = parse_string();
                        skip_ws();
                        if (pos >= n || s[pos] != ':') expected("':' after an object key");
                        pos++;
                        parse_value(depth + 1);
                        stack.back().key = key.first;
                        stack.back().key_len = key.second;
                        stack.back().is_member = true;
                    } else {
                        parse_value(depth + 1);
                    }
                    skip_ws();
                    if (pos < n && s[pos] == ',') { pos++; continue; }
                    if (pos < n && s[pos] == close) { pos++; break; }
                    expected(obj ? "',' or '}' after an object member" : "',' or ']' after an array element");
                }
            }
            if (obj) check_duplicate_keys(s0);
            nd.type = obj ? JSON_OBJECT : JSON_ARRAY;
            nd.n = (uint32_t)(stack.size() - s0);
            nd.a = close_container(s0);
        } else if (c == '"') {
            std::pair<uint32_t, uint32_t> str = parse_string();
            nd.type = JSON_STRING;
            nd.a = str.first;
            nd.n = str.second;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            parse_number(&nd);
        } else if (c == 't') {
            literal("true");
            nd.type = JSON_BOOL;
            nd.boolean = true;
        } else if (c == 'f') {
            literal("false");
            nd.type = JSON_BOOL;
        } else if (c == 'n') {
            literal("null");
        } else {
            expected("a value (object, array, string, number, true, false or null)");
        }
        stack.push_back(nd);
    }
};

// Parses `text` (n bytes); `name` names it in every message (a file name, "<stdin> line 3", ...). A text that could
// hold more than max_values values is refused before anything is allocated for them (a hostile file of a
// hundred million one-byte numbers would otherwise cost gigabytes).
inline JsonDoc json_parse(const std::string& name, const char* text, size_t n, int max_depth = JSON_DEFAULT_MAX_DEPTH,
                          size_t max_values = SIZE_MAX) {
    if (n > JSON_MAX_FILE_BYTES) fatal("%s: %zu bytes of JSON is more than the 1 GiB allowed", name.c_str(), n);
    JsonDoc doc;
    doc.name = name;
    JsonParser p{&doc, text, n, 0, max_depth, {}};
    // every value but the first follows a ',', '[' or '{' (outside strings): an upper bound for the reservations
    size_t bound = 1;
    for (size_t i = 0; i < n; i++) bound += text[i] == ',' || text[i] == '[' || text[i] == '{';
    if (bound > max_values)
        fatal("%s: up to %zu JSON values (counting ',', '[' and '{'), more than the %zu allowed here", name.c_str(), bound, max_values);
    doc.nodes.reserve(bound);
    p.stack.reserve(std::min<size_t>(bound, 1 << 16));
    doc.strings.reserve(n);
    if (n >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF)
        p.error_at(0, "the text starts with a UTF-8 byte order mark (expected a JSON value)");
    p.parse_value(0);
    p.skip_ws();
    if (p.pos != n) p.expected("the end of the file after the top-level value");
    p.place(p.stack.back());
    return doc;
}

inline JsonDoc json_read_file(const char* path, int max_depth = JSON_DEFAULT_MAX_DEPTH) {
    long size = regular_file_size(path, "JSON file");
    if ((unsigned long)size > JSON_MAX_FILE_BYTES) fatal("%s: %ld bytes is larger than the 1 GiB a JSON file may have", path, size);
    std::string text((size_t)size, '\0');
    FILE* f = fopen_check(path, "rb");
    fread_check(&text[0], (size_t)size, f, path);
    fclose(f);
    return json_parse(path, text.data(), text.size(), max_depth);
}

// `s` as a JSON string literal (quotes included): ASCII control characters, '"' and '\\' escaped, other bytes kept
// as UTF-8; an invalid UTF-8 byte becomes \ufffd (so the output is always valid JSON).
inline std::string json_quote(std::string_view s) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size();) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { out += '\\'; out += (char)c; i++; }
        else if (c == '\n') { out += "\\n"; i++; }
        else if (c == '\r') { out += "\\r"; i++; }
        else if (c == '\t') { out += "\\t"; i++; }
        else if (c < 0x20 || c == 0x7F) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; i++; }
        else if (c < 0x80) { out += (char)c; i++; }
        else {
            uint32_t cp;
            bool ok;
            size_t len = utf8_decode(s.data(), s.size(), i, &cp, &ok);
            if (ok) { out.append(s.data() + i, len); i += len; }
            else { out += "\\ufffd"; i++; }
        }
    }
    return out + "\"";
}

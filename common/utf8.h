// UTF-8 (header-only, no dependencies): the one decoder, validator and encoder that common/json.h,
// common/tokenizer.h and common/safetensors.h share.
//
//   utf8_decode(s, n, i, &cp, &ok)   the code point at s[i] and its length; an ill-formed sequence is U+FFFD
//   utf8_valid(s, n, &bad)           whether s[0..n) is well-formed (bad: the offset of the first bad sequence)
//   utf8_append(&out, cp)            appends cp as UTF-8
//   utf8_sanitize(s)                 s with every ill-formed subpart replaced by U+FFFD
//
// Well-formed means RFC 3629 / Unicode Table 3-7: no overlong forms, no surrogates (U+D800..U+DFFF), nothing above
// U+10FFFF, no truncated sequence or stray continuation byte.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string>
#include <string_view>

// Decodes the code point at s[i] (i < n) into *cp and returns the number of bytes it used. An ill-formed sequence
// gives U+FFFD and consumes its maximal subpart: a lead byte and the continuation bytes that could still have
// completed it (at least 1 byte), as the Unicode standard recommends and WHATWG's decoder does (so does Python's
// bytes.decode("utf-8", "replace")). *well_formed (if given) says which case it was: a well-formed U+FFFD (EF BF BD)
// is told apart from a replacement.
inline size_t utf8_decode(const char* s, size_t n, size_t i, uint32_t* cp, bool* well_formed = nullptr) {
    const unsigned char* p = (const unsigned char*)s;
    unsigned c = p[i];
    if (well_formed) *well_formed = false;
    if (c < 0x80) {
        *cp = c;
        if (well_formed) *well_formed = true;
        return 1;
    }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;   // the allowed range of the next byte (narrower after E0, ED, F0, F4)
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; v = c & 0x0F; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; v = c & 0x07; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *cp = 0xFFFD; return 1; }
    size_t k = 1;
    for (; k <= need; k++) {
        if (i + k >= n) { *cp = 0xFFFD; return k; }
        unsigned b = p[i + k];
        if (b < lo || b > hi) { *cp = 0xFFFD; return k; }
        lo = 0x80;
        hi = 0xBF;
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    if (well_formed) *well_formed = true;
    return k;
}

// Whether s[0..n) is well-formed UTF-8; if not, *bad (if given) is the offset of the first ill-formed sequence.
inline bool utf8_valid(const char* s, size_t n, size_t* bad = nullptr) {
    for (size_t i = 0; i < n;) {
        if ((unsigned char)s[i] < 0x80) { i++; continue; }
        uint32_t cp;
        bool ok;
        size_t len = utf8_decode(s, n, i, &cp, &ok);
        if (!ok) {
            if (bad) *bad = i;
            return false;
        }
        i += len;
    }
    return true;
}
inline bool utf8_valid(std::string_view s) { return utf8_valid(s.data(), s.size()); }

// Appends code point cp (at most U+10FFFF, not a surrogate) to *out as UTF-8.
inline void utf8_append(std::string* out, uint32_t cp) {
    if (cp < 0x80) *out += (char)cp;
    else if (cp < 0x800) { *out += (char)(0xC0 | (cp >> 6)); *out += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *out += (char)(0xE0 | (cp >> 12)); *out += (char)(0x80 | ((cp >> 6) & 0x3F)); *out += (char)(0x80 | (cp & 0x3F));
    } else {
        *out += (char)(0xF0 | (cp >> 18)); *out += (char)(0x80 | ((cp >> 12) & 0x3F));
        *out += (char)(0x80 | ((cp >> 6) & 0x3F)); *out += (char)(0x80 | (cp & 0x3F));
    }
}

// s with every ill-formed subpart replaced by U+FFFD (see utf8_decode).
inline std::string utf8_sanitize(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        bool ok;
        size_t len = utf8_decode(s.data(), s.size(), i, &cp, &ok);
        if (ok) out.append(s.data() + i, len);
        else utf8_append(&out, 0xFFFD);
        i += len;
    }
    return out;
}

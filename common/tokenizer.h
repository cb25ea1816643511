// Tokenizers (header-only, host code): the byte-level BPE of Qwen2 / Qwen2.5 / Qwen3, read from a Hugging Face
// tokenizer.json, and a character-level tokenizer for models trained from scratch.
//
//   Tokenizer tok = tokenizer_load("tokenizer.json");    // or a character tokenizer file, or "char" (built in)
//   std::vector<int32_t> ids = tok.encode("<|im_start|>user\n12+34=");
//   std::string bytes = tok.decode(ids.data(), ids.size());
//
// Byte-level BPE (tokenizer.json exactly as Qwen2/2.5/3 write it; anything else is refused, see below). encode():
//   1. Invalid UTF-8 in the input is replaced by U+FFFD, one per maximal ill-formed subpart (the Unicode / WHATWG
//      practice: what Python's bytes.decode("utf-8", "replace") and JavaScript's TextDecoder do), so encode()
//      never fails and the text is then exactly the string a Python or JavaScript caller would have passed.
//   2. Added tokens (<|endoftext|> = 151643, <|im_start|>, <think>, ...; "special" or not) are cut out of the raw
//      text first, leftmost match first and the longest one at a position, and become their own ids.
//   3. Each stretch of text between them is put in Unicode NFC, then split into pieces by Qwen's pre-tokenizer
//      regex, matched by hand over code points (unicode_tables.h, Unicode 14 from Python's unicodedata):
//        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      with the semantics of the Hugging Face tokenizers crate (Oniguruma): \s is White_Space (U+0009..U+000D,
//      U+0085, Zs, Zl, Zp) and (?i:) folds case the Unicode way (so 's also matches 'S and U+017F LONG S).
//   4. Each piece's UTF-8 bytes are the initial symbols (one per byte: GPT-2's byte-to-unicode map is only the
//      file's spelling of bytes) and are merged by rank, lowest rank first and leftmost first among equal ranks,
//      in O(n log n) per piece (a heap of candidate pairs), with a cache of recent pieces.
//   decode() concatenates the tokens' bytes (an added token's bytes are its content) and returns them as they are:
//   a slice of the ids can end inside a UTF-8 character (Hugging Face would show U+FFFD there).
//
// Validation (tokenizer_load): the file is read with common/json.h (strict JSON) and every field is checked;
// anything unexpected is one fatal() line naming the file and the field, e.g.
//   error: tokenizer.json: model.type: expected "BPE" (a byte-level BPE tokenizer), found "WordPiece"
//   error: tokenizer.json: model.merges[12]: "Ġt" + "hex": the merged token "Ġthex" is not in model.vocab
// Refused, because the encoder would not reproduce Hugging Face for them: a model other than BPE; dropout,
// unk_token, byte_fallback, fuse_unk, continuing_subword_prefix or end_of_word_suffix set; a normalizer other
// than NFC or none; a pre-tokenizer other than Qwen's (Split with the regex above, Isolated, then ByteLevel without
// prefix space or regex); a post-processor other than ByteLevel (which adds no tokens) or none; a decoder other
// than ByteLevel; added tokens with lstrip, rstrip, single_word or normalized set; truncation or padding.
// ignore_merges (a piece that is a whole vocabulary token is taken as is) is supported.
// Checked: vocab ids unique and in 0..2^24-1, tokens non-empty and spelled in the byte-level alphabet, all 256
// byte tokens present; merges in either form ("a b" strings or [a, b] arrays) naming known tokens whose
// concatenation is a token, no pair twice; added tokens with unique ids and contents, agreeing with the vocab
// where they share a content or an id.
//
// Character-level tokenizer: one id per code point of a fixed alphabet, after the special tokens. A JSON file
//   {"type": "char", "special_tokens": ["<pad>", "<bos>", ...], "alphabet": "\n 0123...", "unk_token": "<unk>"}
// gives special_tokens the ids 0..S-1 in order, then each code point of alphabet the next id. The special tokens
// are cut out of the text first (as the added tokens above); a character outside the alphabet becomes unk_token,
// or is a fatal() naming it when unk_token is null or absent. No normalization. The built-in "char" tokenizer
// (tokenizer_char_default()) has the specials <pad> <bos> <eos> <x> </x> <z> </z> <y> </y> <unk> (ids 0..9), then
// '\n' (10) and the printable ASCII characters ' '..'~' (11..105).
//
// Not thread-safe: encode() updates the piece cache. Use one Tokenizer per thread.
#pragma once
#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
#include "json.h"
#include "unicode_tables.h"
#include "utf8.h"
#include "utils.h"

// ----------------------------------------------------------------------------------------------------------------
// Unicode: classes, NFC (UTF-8 is common/utf8.h)

template <size_t N>
inline int unicode_range_lookup(const UnicodeRange (&table)[N], uint32_t cp) {
    size_t lo = 0, hi = N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (table[mid].hi < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < N && table[lo].lo <= cp ? table[lo].value : 0;
}

// UNICODE_CLASS_L (\p{L}), UNICODE_CLASS_N (\p{N}), UNICODE_CLASS_S (\s, White_Space) or 0.
inline int unicode_class(uint32_t cp) {
    return cp < 256 ? unicode_latin1_class[cp] : unicode_range_lookup(unicode_class_ranges, cp);
}
inline int unicode_ccc(uint32_t cp) { return cp < 0x300 ? 0 : unicode_range_lookup(unicode_ccc_ranges, cp); }
inline bool unicode_nfc_qc_yes(uint32_t cp) { return cp < 0x300 || !unicode_range_lookup(unicode_nfc_qc_ranges, cp); }

enum : uint32_t {
    HANGUL_S_BASE = 0xAC00, HANGUL_L_BASE = 0x1100, HANGUL_V_BASE = 0x1161, HANGUL_T_BASE = 0x11A7,
    HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28, HANGUL_N_COUNT = 21 * 28, HANGUL_S_COUNT = 19 * 21 * 28
};

// Appends the full canonical decomposition of cp.
inline void unicode_decompose(uint32_t cp, std::vector<uint32_t>* out) {
    if (cp >= HANGUL_S_BASE && cp < HANGUL_S_BASE + HANGUL_S_COUNT) {
        uint32_t s = cp - HANGUL_S_BASE;
        out->push_back(HANGUL_L_BASE + s / HANGUL_N_COUNT);
        out->push_back(HANGUL_V_BASE + (s % HANGUL_N_COUNT) / HANGUL_T_COUNT);
        if (s % HANGUL_T_COUNT) out->push_back(HANGUL_T_BASE + s % HANGUL_T_COUNT);
        return;
    }
    if (cp >= 0xC0) {
        const UnicodeDecomposition* end = unicode_decompositions + sizeof(unicode_decompositions) / sizeof(unicode_decompositions[0]);
        const UnicodeDecomposition* d = std::lower_bound(unicode_decompositions, end, cp,
                                                         [](const UnicodeDecomposition& e, uint32_t c) { return e.cp < c; });
        if (d != end && d->cp == cp) {
            unicode_decompose(d->first, out);
            if (d->second) unicode_decompose(d->second, out);
            return;
        }
    }
    out->push_back(cp);
}

// The primary composite of (a, b), or 0.
inline uint32_t unicode_compose(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L_BASE && a < HANGUL_L_BASE + HANGUL_L_COUNT && b >= HANGUL_V_BASE && b < HANGUL_V_BASE + HANGUL_V_COUNT)
        return HANGUL_S_BASE + ((a - HANGUL_L_BASE) * HANGUL_V_COUNT + (b - HANGUL_V_BASE)) * HANGUL_T_COUNT;
    if (a >= HANGUL_S_BASE && a < HANGUL_S_BASE + HANGUL_S_COUNT && (a - HANGUL_S_BASE) % HANGUL_T_COUNT == 0 &&
        b > HANGUL_T_BASE && b < HANGUL_T_BASE + HANGUL_T_COUNT)
        return a + (b - HANGUL_T_BASE);
    const UnicodeComposition* end = unicode_compositions + sizeof(unicode_compositions) / sizeof(unicode_compositions[0]);
    const UnicodeComposition* c = std::lower_bound(unicode_compositions, end, std::make_pair(a, b),
                                                   [](const UnicodeComposition& e, const std::pair<uint32_t, uint32_t>& k) {
                                                       return e.first != k.first ? e.first < k.first : e.second < k.second;
                                                   });
    return c != end && c->first == a && c->second == b ? c->composite : 0;
}

// Whether the code points are already in NFC by the quick check (no "No" or "Maybe" character, combining marks in
// canonical order). False means "maybe not": run unicode_nfc().
inline bool unicode_nfc_quick_yes(const uint32_t* cps, size_t n) {
    int last = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        if (cp < 0x300) { last = 0; continue; }
        int ccc = unicode_ccc(cp);
        if ((ccc != 0 && last > ccc) || !unicode_nfc_qc_yes(cp)) return false;
        last = ccc;
    }
    return true;
}

// NFC (Unicode Standard Annex #15): full canonical decomposition, canonical ordering of combining marks, then
// canonical composition. *out is replaced.
inline void unicode_nfc(const uint32_t* cps, size_t n, std::vector<uint32_t>* out) {
    out->clear();
    for (size_t i = 0; i < n; i++) unicode_decompose(cps[i], out);
    std::vector<uint32_t>& s = *out;
    // canonical ordering: a stable sort of every run of non-starters by combining class
    for (size_t i = 0; i < s.size();) {
        if (unicode_ccc(s[i]) == 0) { i++; continue; }
        size_t j = i;
        while (j < s.size() && unicode_ccc(s[j]) != 0) j++;
        std::stable_sort(s.begin() + i, s.begin() + j, [](uint32_t a, uint32_t b) { return unicode_ccc(a) < unicode_ccc(b); });
        i = j;
    }
    if (s.empty()) return;
    // composition: a character combines with the last starter unless a character between them blocks it (one of
    // class 0, or of a class >= its own)
    size_t starter = 0, w = 1;
    bool have_starter = unicode_ccc(s[0]) == 0;
    int last_ccc = 0;   // the class of the last character kept (0: it is the starter itself)
    for (size_t i = 1; i < s.size(); i++) {
        uint32_t ch = s[i];
        int ccc = unicode_ccc(ch);
        if (have_starter && (last_ccc == 0 || last_ccc < ccc)) {
            uint32_t composite = unicode_compose(s[starter], ch);
            if (composite) {
                s[starter] = composite;
                continue;
            }
        }
        if (ccc == 0) {
            starter = w;
            have_starter = true;
        }
        last_ccc = ccc;
        s[w++] = ch;
    }
    s.resize(w);
}

// NFC of UTF-8 text (ill-formed sequences become U+FFFD first).
inline std::string unicode_nfc_utf8(std::string_view text) {
    std::vector<uint32_t> cps, out;
    for (size_t i = 0; i < text.size();) {
        uint32_t cp;
        i += utf8_decode(text.data(), text.size(), i, &cp);
        cps.push_back(cp);
    }
    std::string r;
    if (unicode_nfc_quick_yes(cps.data(), cps.size())) out = cps;
    else unicode_nfc(cps.data(), cps.size(), &out);
    for (uint32_t cp : out) utf8_append(&r, cp);
    return r;
}

// ----------------------------------------------------------------------------------------------------------------
// Qwen's pre-tokenizer regex, by hand

#define QWEN_PRETOKENIZER_REGEX \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

// The length (in code points, >= 1) of the regex's match at position i of cps[0..n) (cls[k] = unicode_class of
// cps[k]). Every position starts a match, so the pieces tile the text. The alternatives in order:
inline size_t qwen_match(const uint32_t* cps, const uint8_t* cls, size_t n, size_t i) {
    auto is_l = [&](size_t k) { return k < n && (cls[k] & UNICODE_CLASS_L); };
    auto is_n = [&](size_t k) { return k < n && (cls[k] & UNICODE_CLASS_N); };
    auto is_s = [&](size_t k) { return k < n && (cls[k] & UNICODE_CLASS_S); };
    auto is_other = [&](size_t k) { return k < n && cls[k] == 0; };   // [^\s\p{L}\p{N}]
    auto is_crlf = [&](size_t k) { return k < n && (cps[k] == '\r' || cps[k] == '\n'); };
    // Unicode simple case folding of the letters the contractions use: only S has a non-ASCII member (U+017F)
    auto fold = [&](size_t k) -> uint32_t {
        if (k >= n) return 0;
        uint32_t c = cps[k];
        if (c >= 'A' && c <= 'Z') return c + 32;
        if (c == 0x17F) return 's';
        return c;
    };
    const uint32_t c = cps[i];
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (c == '\'') {
        uint32_t a = fold(i + 1), b = fold(i + 2);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' || a == 'v') && b == 'e') return 3;
        if (a == 'l' && b == 'l') return 3;
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+ : letters, or one character that is no letter, digit, CR or LF, then letters
    if (is_l(i) || (!is_crlf(i) && !is_n(i) && is_l(i + 1))) {
        size_t j = i + 1;
        while (is_l(j)) j++;
        return j - i;
    }
    // 3. \p{N}: one number character
    if (is_n(i)) return 1;
    // 4.  ?[^\s\p{L}\p{N}]+[\r\n]* : an optional space, a run of other characters, then any CR and LF
    {
        size_t j = c == ' ' && is_other(i + 1) ? i + 1 : i;
        if (is_other(j)) {
            while (is_other(j)) j++;
            while (is_crlf(j)) j++;
            return j - i;
        }
    }
    // here c is whitespace; j = the end of the whitespace run
    size_t j = i;
    while (is_s(j)) j++;
    // 5. \s*[\r\n]+ : the whitespace up to and including the last CR or LF of the run
    for (size_t k = j; k > i; k--)
        if (is_crlf(k - 1)) return k - i;
    // 6. \s+(?!\S) : the run, except its last character when a non-space follows (and the run is longer than one)
    if (j == n) return j - i;
    if (j - i >= 2) return j - 1 - i;
    // 7. \s+
    return j - i;
}

// ----------------------------------------------------------------------------------------------------------------
// The tokenizer

// GPT-2's byte-to-unicode map: printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
// themselves, the other 68 bytes for U+0100.. in byte order. tokenizer.json spells every byte this way.
inline uint32_t byte_level_char(uint8_t b) {
    auto printable = [](unsigned x) { return (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF); };
    if (printable(b)) return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++) k += !printable(x);
    return 0x100 + k;
}

// An open-addressing hash map from a token pair (two ids) to its merge (rank and merged id).
struct BpeMergeTable {
    struct Slot { uint64_t key; int32_t rank, id; };
    std::vector<Slot> slots;   // key == EMPTY: free
    static constexpr uint64_t EMPTY = ~0ull;
    size_t mask = 0, count = 0;

    static uint64_t hash(uint64_t k) {
        k ^= k >> 33; k *= 0xff51afd7ed558ccdull; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ull; k ^= k >> 33;
        return k;
    }
    void reserve(size_t n) {
        size_t cap = 16;
        while (cap < 2 * n) cap *= 2;
        slots.assign(cap, Slot{EMPTY, 0, 0});
        mask = cap - 1;
        count = 0;
    }
    // false if the pair is present already
    bool insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        for (size_t h = hash(key) & mask;; h = (h + 1) & mask) {
            if (slots[h].key == key) return false;
            if (slots[h].key == EMPTY) { slots[h] = Slot{key, rank, id}; count++; return true; }
        }
    }
    const Slot* find(int32_t a, int32_t b) const {
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        for (size_t h = hash(key) & mask;; h = (h + 1) & mask) {
            if (slots[h].key == key) return &slots[h];
            if (slots[h].key == EMPTY) return nullptr;
        }
    }
};

// An open-addressing hash set of token ids keyed by their bytes (kept elsewhere, in a vector indexed by id).
struct TokenIndex {
    std::vector<int32_t> slots;   // -1: free
    size_t mask = 0;

    static uint64_t hash(std::string_view s) {   // FNV-1a
        uint64_t h = 0xcbf29ce484222325ull;
        for (char c : s) h = (h ^ (uint8_t)c) * 0x100000001b3ull;
        return h ^ (h >> 29);
    }
    void reserve(size_t n) {
        size_t cap = 16;
        while (cap < 2 * n) cap *= 2;
        slots.assign(cap, -1);
        mask = cap - 1;
    }
    int32_t find(std::string_view s, const std::vector<std::string>& bytes) const {
        if (slots.empty()) return -1;
        for (size_t h = hash(s) & mask;; h = (h + 1) & mask) {
            int32_t id = slots[h];
            if (id < 0) return -1;
            if (bytes[id] == s) return id;
        }
    }
    // Adds `id` (whose bytes are bytes[id]); false if those bytes are present already.
    bool insert(int32_t id, const std::vector<std::string>& bytes) {
        for (size_t h = hash(bytes[id]) & mask;; h = (h + 1) & mask) {
            if (slots[h] < 0) { slots[h] = id; return true; }
            if (bytes[slots[h]] == bytes[id]) return false;
        }
    }
};

enum TokenizerKind { TOKENIZER_BPE, TOKENIZER_CHAR };

struct Tokenizer {
    TokenizerKind kind = TOKENIZER_BPE;
    std::string path;                          // where it was read from ("char" for the built-in one)
    // every id: its bytes and what it is (0: no token has this id, 1: a model token, 2: an added token,
    // 3: an added special token)
    std::vector<std::string> id_bytes;
    std::vector<uint8_t> id_type;
    // added tokens / special tokens, matched before anything else: a byte trie (node 0 is the root)
    struct TrieNode { std::vector<std::pair<uint8_t, int32_t>> next; int32_t id = -1; };
    std::vector<TrieNode> trie;
    int32_t trie_root_next[256];
    // byte-level BPE
    bool nfc = true;
    bool ignore_merges = false;
    int32_t byte_id[256];                               // the token of each single byte
    TokenIndex vocab;                                   // the model tokens, by their bytes
    BpeMergeTable merges;
    size_t num_merges = 0;
    // character-level
    std::unordered_map<uint32_t, int32_t> char_ids;
    int32_t unk_id = -1;
    // encode's scratch buffers and piece cache
    std::unordered_map<std::string, std::vector<int32_t>> cache;
    size_t cache_limit = 1 << 16;
    std::vector<uint32_t> cps_, nfc_cps_;
    std::vector<uint8_t> cls_;
    std::vector<size_t> offs_;
    std::string buf_;
    struct Sym { int32_t id, prev, next; };
    struct Cand { int32_t rank, pos, left, right, merged; };
    std::vector<Sym> syms_;
    std::vector<Cand> heap_;

    Tokenizer() {
        for (int k = 0; k < 256; k++) trie_root_next[k] = byte_id[k] = -1;
        trie.emplace_back();   // the root: no added tokens yet
    }

    int32_t vocab_size() const { return (int32_t)id_bytes.size(); }   // the largest id + 1
    bool is_special(int32_t id) const { return id >= 0 && id < vocab_size() && id_type[id] == 3; }
    bool is_added(int32_t id) const { return id >= 0 && id < vocab_size() && id_type[id] >= 2; }

    // The id of an added/special token by its text ("<|endoftext|>"), or of a model token by its bytes; -1 if none.
    int32_t token_id(std::string_view text) const {
        int32_t node = 0;
        for (char ch : text) {
            int32_t nx = -1;
            for (const auto& e : trie[node].next)
                if (e.first == (uint8_t)ch) nx = e.second;
            if (nx < 0) { node = -1; break; }
            node = nx;
        }
        if (node > 0 && trie[node].id >= 0) return trie[node].id;
        if (kind == TOKENIZER_BPE) return vocab.find(text, id_bytes);
        if (!text.empty()) {
            uint32_t cp;
            size_t len = utf8_decode(text.data(), text.size(), 0, &cp);
            auto it = char_ids.find(cp);
            if (len == text.size() && it != char_ids.end()) return it->second;
        }
        return -1;
    }

    // Appends the ids of `text` (UTF-8; ill-formed sequences are read as U+FFFD) to *out.
    void encode(std::string_view text, std::vector<int32_t>* out) {
        std::string clean;
        if (!utf8_valid(text)) {
            clean = utf8_sanitize(text);
            text = clean;
        }
        split_added(text, [&](std::string_view plain, int32_t added) {
            if (added >= 0) out->push_back(added);
            else encode_plain(plain, out);
        });
    }
    std::vector<int32_t> encode(std::string_view text) {
        std::vector<int32_t> ids;
        encode(text, &ids);
        return ids;
    }

    // The bytes of the ids (an added token's content for an added token); skip_special leaves the special tokens
    // out. An id that names no token is a fatal().
    std::string decode(const int32_t* ids, size_t n, bool skip_special = false) const {
        std::string out;
        for (size_t k = 0; k < n; k++) {
            int32_t id = ids[k];
            if (id < 0 || id >= vocab_size() || id_type[id] == 0)
                fatal("%s: token id %d is not in the vocabulary (ids 0..%d)", path.c_str(), id, vocab_size() - 1);
            if (skip_special && id_type[id] == 3) continue;
            out += id_bytes[id];
        }
        return out;
    }
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const {
        return decode(ids.data(), ids.size(), skip_special);
    }

    // The pieces encode() cuts a text into before BPE: each added token whole, and the pre-tokenizer's pieces of
    // the NFC of the text between them (for tests and tools; a character tokenizer's pieces are its characters).
    std::vector<std::string> pretokenize(std::string_view text) {
        std::vector<std::string> pieces;
        std::string clean = utf8_sanitize(text);
        split_added(clean, [&](std::string_view plain, int32_t added) {
            if (added >= 0) { pieces.push_back(id_bytes[added]); return; }
            prepare(plain);
            for (size_t i = 0; i < cps_.size();) {
                size_t len = kind == TOKENIZER_BPE ? qwen_match(cps_.data(), cls_.data(), cps_.size(), i) : 1;
                pieces.push_back(buf_.substr(offs_[i], offs_[i + len] - offs_[i]));
                i += len;
            }
        });
        return pieces;
    }

    // --- internals

    // Calls fn(text, -1) for each stretch of text between added tokens and fn("", id) for each added token, in order.
    // An added token is matched where it starts first, and the longest one there.
    template <typename Fn>
    void split_added(std::string_view text, Fn&& fn) const {
        size_t start = 0, i = 0;
        while (i < text.size()) {
            int32_t node = trie_root_next[(uint8_t)text[i]];
            if (node < 0) { i++; continue; }
            int32_t best_id = -1;
            size_t best_end = 0;
            for (size_t j = i + 1;; j++) {
                if (trie[node].id >= 0) { best_id = trie[node].id; best_end = j; }
                if (j >= text.size()) break;
                int32_t nx = -1;
                for (const auto& e : trie[node].next)
                    if (e.first == (uint8_t)text[j]) { nx = e.second; break; }
                if (nx < 0) break;
                node = nx;
            }
            if (best_id < 0) { i++; continue; }
            if (i > start) fn(text.substr(start, i - start), -1);
            fn(std::string_view(), best_id);
            i = start = best_end;
        }
        if (start < text.size()) fn(text.substr(start), -1);
    }

    // Decodes valid UTF-8 into cps_ and offs_ (byte offset of each code point, then the end), applies NFC (BPE
    // only), fills buf_ with the resulting UTF-8 and cls_ with each code point's class.
    void prepare(std::string_view text) {
        cps_.clear();
        offs_.clear();
        for (size_t i = 0; i < text.size();) {
            uint32_t cp;
            offs_.push_back(i);
            i += utf8_decode(text.data(), text.size(), i, &cp);
            cps_.push_back(cp);
        }
        offs_.push_back(text.size());
        if (kind == TOKENIZER_BPE && nfc && !unicode_nfc_quick_yes(cps_.data(), cps_.size())) {
            unicode_nfc(cps_.data(), cps_.size(), &nfc_cps_);
            cps_.swap(nfc_cps_);
            buf_.clear();
            offs_.clear();
            for (uint32_t cp : cps_) {
                offs_.push_back(buf_.size());
                utf8_append(&buf_, cp);
            }
            offs_.push_back(buf_.size());
        } else {
            buf_.assign(text.data(), text.size());
        }
        cls_.resize(cps_.size());
        for (size_t k = 0; k < cps_.size(); k++) cls_[k] = (uint8_t)unicode_class(cps_[k]);
    }

    // Text without added tokens (valid UTF-8).
    void encode_plain(std::string_view text, std::vector<int32_t>* out) {
        if (kind == TOKENIZER_CHAR) {
            for (size_t i = 0; i < text.size();) {
                uint32_t cp;
                size_t len = utf8_decode(text.data(), text.size(), i, &cp);
                auto it = char_ids.find(cp);
                if (it != char_ids.end()) out->push_back(it->second);
                else if (unk_id >= 0) out->push_back(unk_id);
                else fatal("%s: the character U+%04X is not in the alphabet of this character tokenizer, which has no "
                           "unk_token", path.c_str(), cp);
                i += len;
            }
            return;
        }
        prepare(text);
        for (size_t i = 0; i < cps_.size();) {
            size_t len = qwen_match(cps_.data(), cls_.data(), cps_.size(), i);
            bpe_piece(std::string_view(buf_.data() + offs_[i], offs_[i + len] - offs_[i]), out);
            i += len;
        }
    }

    // One piece through the merges.
    void bpe_piece(std::string_view piece, std::vector<int32_t>* out) {
        if (piece.size() == 1) { out->push_back(byte_id[(uint8_t)piece[0]]); return; }
        if (ignore_merges) {
            int32_t id = vocab.find(piece, id_bytes);
            if (id >= 0) { out->push_back(id); return; }
        }
        std::string key(piece);
        auto hit = cache.find(key);
        if (hit != cache.end()) {
            out->insert(out->end(), hit->second.begin(), hit->second.end());
            return;
        }
        const int32_t n = (int32_t)piece.size();
        syms_.resize((size_t)n);
        for (int32_t k = 0; k < n; k++) syms_[k] = Sym{byte_id[(uint8_t)piece[k]], k - 1, k + 1 < n ? k + 1 : -1};
        // candidates ordered by (rank, position): the heap's top is the smallest
        auto later = [](const Cand& x, const Cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
        heap_.clear();
        auto push = [&](int32_t pos) {
            int32_t nx = syms_[pos].next;
            if (nx < 0) return;
            const BpeMergeTable::Slot* m = merges.find(syms_[pos].id, syms_[nx].id);
            if (!m) return;
            heap_.push_back(Cand{m->rank, pos, syms_[pos].id, syms_[nx].id, m->id});
            std::push_heap(heap_.begin(), heap_.end(), later);
        };
        for (int32_t k = 0; k + 1 < n; k++) push(k);
        while (!heap_.empty()) {
            std::pop_heap(heap_.begin(), heap_.end(), later);
            Cand c = heap_.back();
            heap_.pop_back();
            Sym& left = syms_[c.pos];
            // stale: the left symbol was merged away or into something else, or its right neighbour changed
            if (left.id != c.left || left.next < 0 || syms_[left.next].id != c.right) continue;
            Sym& right = syms_[left.next];
            left.id = c.merged;
            right.id = -1;   // merged away
            left.next = right.next;
            if (left.next >= 0) syms_[left.next].prev = c.pos;
            if (left.prev >= 0) push(left.prev);
            push(c.pos);
        }
        std::vector<int32_t> ids;
        for (int32_t k = 0; k >= 0; k = syms_[k].next) ids.push_back(syms_[k].id);
        out->insert(out->end(), ids.begin(), ids.end());
        if (cache.size() >= cache_limit) cache.clear();
        cache.emplace(std::move(key), std::move(ids));
    }

    // Registers an added token (or a character tokenizer's special token) in the trie.
    void trie_add(const std::string& text, int32_t id) {
        int32_t node = 0;
        for (char ch : text) {
            int32_t nx = -1;
            for (const auto& e : trie[node].next)
                if (e.first == (uint8_t)ch) nx = e.second;
            if (nx < 0) {
                nx = (int32_t)trie.size();
                trie[node].next.emplace_back((uint8_t)ch, nx);
                trie.emplace_back();
                if (node == 0) trie_root_next[(uint8_t)ch] = nx;
            }
            node = nx;
        }
        trie[node].id = id;
    }
    void set_id(int32_t id, const std::string& bytes, uint8_t type) {
        if ((size_t)id >= id_bytes.size()) {
            id_bytes.resize((size_t)id + 1);
            id_type.resize((size_t)id + 1, 0);
        }
        id_bytes[id] = bytes;
        id_type[id] = type;
    }
};

// ----------------------------------------------------------------------------------------------------------------
// Loading

#define TOKENIZER_MAX_ID ((1 << 24) - 1)

// The value at `key` must satisfy ok() (or be absent, when ok_when_absent): the options the encoder does not
// implement must keep their neutral values. Fails naming the key, what was expected and what was found.
inline void tokenizer_require(JsonValue obj, const char* key, bool ok_when_absent, bool (*ok)(JsonValue), const char* expected) {
    JsonValue v;
    if (!obj.find(key, &v)) {
        if (!ok_when_absent) obj.fail("missing key \"%s\" (expected %s)", key, expected);
        return;
    }
    if (!ok(v)) {
        std::string found = v.is_string() ? "\"" + json_printable(v.as_string_view()) + "\"" : std::string(v.type_name());
        if (v.is_bool()) found = v.as_bool() ? "true" : "false";
        v.fail("expected %s, found %s (not supported)", expected, found.c_str());
    }
}
inline bool tokenizer_is_null(JsonValue v) { return v.is_null(); }
inline bool tokenizer_is_false_or_null(JsonValue v) { return v.is_null() || (v.is_bool() && !v.as_bool()); }
inline bool tokenizer_is_false(JsonValue v) { return v.is_bool() && !v.as_bool(); }
inline bool tokenizer_is_empty_or_null(JsonValue v) { return v.is_null() || (v.is_string() && v.as_string_view().empty()); }
inline bool tokenizer_is_bool(JsonValue v) { return v.is_bool(); }

// `{"type": NAME, ...}` with the given type, or a fatal() naming what was found.
inline void tokenizer_expect_type(JsonValue v, const char* type, const char* what) {
    if (!v.is_object()) v.fail("expected %s ({\"type\": \"%s\", ...}), found %s", what, type, v.type_name());
    JsonValue t = v.get("type");
    if (!t.is_string() || t.as_string_view() != type)
        t.fail("expected \"%s\" (%s), found %s", type, what,
               t.is_string() ? ("\"" + json_printable(t.as_string_view()) + "\"").c_str() : t.type_name());
}

// A ByteLevel post-processor or decoder: {"type": "ByteLevel", "add_prefix_space": b, "trim_offsets": b, "use_regex": b}
// (for ids and bytes these flags change nothing).
inline void tokenizer_check_byte_level(JsonValue v, const char* what) {
    tokenizer_expect_type(v, "ByteLevel", what);
    v.check_keys({"type", "add_prefix_space", "trim_offsets", "use_regex"});
    tokenizer_require(v, "add_prefix_space", true, tokenizer_is_bool, "a boolean");
    tokenizer_require(v, "trim_offsets", true, tokenizer_is_bool, "a boolean");
    tokenizer_require(v, "use_regex", true, tokenizer_is_bool, "a boolean");
}

// A token of tokenizer.json's model (spelled in the byte-level alphabet) as raw bytes; fails naming v.
inline std::string tokenizer_byte_level_bytes(JsonValue v, std::string_view s, const int16_t* char_to_byte) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        i += utf8_decode(s.data(), s.size(), i, &cp);
        int b = cp < 0x144 ? char_to_byte[cp] : -1;
        if (b < 0) v.fail("the token \"%s\" has the character U+%04X, which is not in the byte-level alphabet", json_printable(s).c_str(), cp);
        out += (char)b;
    }
    return out;
}

inline void tokenizer_load_bpe(Tokenizer* tok, JsonValue root) {
    tok->kind = TOKENIZER_BPE;
    root.check_keys({"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"});
    tokenizer_require(root, "truncation", true, tokenizer_is_null, "null");
    tokenizer_require(root, "padding", true, tokenizer_is_null, "null");

    // normalizer: NFC or none
    JsonValue norm;
    tok->nfc = false;
    if (root.find("normalizer", &norm) && !norm.is_null()) {
        tokenizer_expect_type(norm, "NFC", "the NFC normalizer or null");
        norm.check_keys({"type"});
        tok->nfc = true;
    }

    // pre-tokenizer: Qwen's Split then ByteLevel
    JsonValue pre = root.get("pre_tokenizer");
    tokenizer_expect_type(pre, "Sequence", "Qwen's pre-tokenizer: a Sequence of Split and ByteLevel");
    pre.check_keys({"type", "pretokenizers"});
    JsonValue seq = pre.get("pretokenizers");
    seq.expect_type(JSON_ARRAY);
    if (seq.size() != 2) seq.fail("expected 2 pre-tokenizers (Split, ByteLevel), found %zu", seq.size());
    JsonValue split = seq.at(0);
    tokenizer_expect_type(split, "Split", "Qwen's Split pre-tokenizer");
    split.check_keys({"type", "pattern", "behavior", "invert"});
    JsonValue pat = split.get("pattern");
    pat.expect_type(JSON_OBJECT);
    pat.check_keys({"Regex"});
    JsonValue rx = pat.get("Regex");
    if (!rx.is_string() || rx.as_string_view() != QWEN_PRETOKENIZER_REGEX)
        rx.fail("expected Qwen's pre-tokenizer regex (the only one implemented, see common/tokenizer.h), found %s",
                rx.is_string() ? ("\"" + json_printable(rx.as_string_view(), 120) + "\"").c_str() : rx.type_name());
    JsonValue behavior = split.get("behavior");
    if (!behavior.is_string() || behavior.as_string_view() != "Isolated") behavior.fail("expected \"Isolated\" (not supported otherwise)");
    tokenizer_require(split, "invert", false, tokenizer_is_false, "false");
    JsonValue bl = seq.at(1);
    tokenizer_expect_type(bl, "ByteLevel", "the ByteLevel pre-tokenizer");
    bl.check_keys({"type", "add_prefix_space", "trim_offsets", "use_regex"});
    tokenizer_require(bl, "add_prefix_space", false, tokenizer_is_false, "false");
    tokenizer_require(bl, "use_regex", false, tokenizer_is_false, "false");
    tokenizer_require(bl, "trim_offsets", true, tokenizer_is_bool, "a boolean");

    JsonValue post;
    if (root.find("post_processor", &post) && !post.is_null()) tokenizer_check_byte_level(post, "the ByteLevel post-processor or null");
    tokenizer_check_byte_level(root.get("decoder"), "the ByteLevel decoder");

    // the model
    JsonValue model = root.get("model");
    tokenizer_expect_type(model, "BPE", "a byte-level BPE tokenizer");
    model.check_keys({"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                      "byte_fallback", "ignore_merges", "vocab", "merges"});
    tokenizer_require(model, "dropout", true, tokenizer_is_null, "null");
    tokenizer_require(model, "unk_token", true, tokenizer_is_null, "null");
    tokenizer_require(model, "continuing_subword_prefix", true, tokenizer_is_empty_or_null, "\"\" or null");
    tokenizer_require(model, "end_of_word_suffix", true, tokenizer_is_empty_or_null, "\"\" or null");
    tokenizer_require(model, "fuse_unk", true, tokenizer_is_false_or_null, "false");
    tokenizer_require(model, "byte_fallback", true, tokenizer_is_false_or_null, "false");
    tok->ignore_merges = model.get_bool_or("ignore_merges", false);

    int16_t char_to_byte[0x144];
    for (int k = 0; k < 0x144; k++) char_to_byte[k] = -1;
    for (int b = 0; b < 256; b++) char_to_byte[byte_level_char((uint8_t)b)] = (int16_t)b;

    JsonValue vocab = model.get("vocab");
    vocab.expect_type(JSON_OBJECT);
    if (vocab.size() == 0) vocab.fail("the vocabulary is empty");
    int64_t max_id = 0;
    for (size_t k = 0; k < vocab.size(); k++) max_id = std::max(max_id, vocab.at(k).as_int(0, TOKENIZER_MAX_ID));
    tok->id_bytes.resize((size_t)max_id + 1);
    tok->id_type.resize((size_t)max_id + 1, 0);
    tok->vocab.reserve(vocab.size());
    for (size_t k = 0; k < vocab.size(); k++) {
        JsonValue e = vocab.at(k);
        std::string_view spelled = e.key();
        if (spelled.empty()) e.fail("an empty token");
        int32_t id = (int32_t)e.as_int();
        if (tok->id_type[id]) {
            size_t other = 0;
            while (vocab.at(other).as_int() != id) other++;
            e.fail("id %d is also the id of \"%s\"", id, json_printable(vocab.at(other).key()).c_str());
        }
        tok->set_id(id, tokenizer_byte_level_bytes(e, spelled, char_to_byte), 1);
        if (!tok->vocab.insert(id, tok->id_bytes)) e.fail("two tokens spell the same bytes");   // unreachable: JSON keys are unique
    }
    for (int b = 0; b < 256; b++) {
        int32_t id = tok->vocab.find(std::string(1, (char)b), tok->id_bytes);
        if (id < 0) {
            std::string spelled;
            utf8_append(&spelled, byte_level_char((uint8_t)b));
            vocab.fail("lacks the token of the byte 0x%02X (\"%s\"): a byte-level vocabulary has all 256", b, json_printable(spelled).c_str());
        }
        tok->byte_id[b] = id;
    }

    JsonValue merges = model.get("merges");
    merges.expect_type(JSON_ARRAY);
    tok->merges.reserve(merges.size());
    tok->num_merges = merges.size();
    std::string ba, bb;
    for (size_t r = 0; r < merges.size(); r++) {
        JsonValue m = merges.at(r);
        std::string_view a, b;
        if (m.is_string()) {
            std::string_view s = m.as_string_view();
            size_t sp = s.find(' ');
            if (sp == std::string_view::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string_view::npos)
                m.fail("expected \"A B\" (two tokens separated by one space), found \"%s\"", json_printable(s).c_str());
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (m.is_array()) {
            if (m.size() != 2) m.fail("expected a pair [\"A\", \"B\"], found %zu elements", m.size());
            a = m.at(0).as_string_view();
            b = m.at(1).as_string_view();
        } else {
            m.fail("expected a merge (\"A B\" or [\"A\", \"B\"]), found %s", m.type_name());
        }
        ba = tokenizer_byte_level_bytes(m, a, char_to_byte);
        bb = tokenizer_byte_level_bytes(m, b, char_to_byte);
        int32_t ia = tok->vocab.find(ba, tok->id_bytes), ib = tok->vocab.find(bb, tok->id_bytes);
        if (ia < 0 || ib < 0)
            m.fail("\"%s\" + \"%s\": \"%s\" is not in model.vocab", json_printable(a).c_str(), json_printable(b).c_str(),
                   json_printable(ia < 0 ? a : b).c_str());
        int32_t im = tok->vocab.find(ba + bb, tok->id_bytes);
        if (im < 0)
            m.fail("\"%s\" + \"%s\": the merged token \"%s%s\" is not in model.vocab", json_printable(a).c_str(),
                   json_printable(b).c_str(), json_printable(a).c_str(), json_printable(b).c_str());
        if (!tok->merges.insert(ia, ib, (int32_t)r, im))
            m.fail("the pair \"%s\" + \"%s\" is also model.merges[%d]", json_printable(a).c_str(), json_printable(b).c_str(),
                   tok->merges.find(ia, ib)->rank);
    }

    // added tokens
    JsonValue added;
    if (root.find("added_tokens", &added) && !added.is_null()) {
        added.expect_type(JSON_ARRAY);
        for (size_t k = 0; k < added.size(); k++) {
            JsonValue t = added.at(k);
            t.expect_type(JSON_OBJECT);
            t.check_keys({"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
            int32_t id = (int32_t)t.get("id").as_int(0, TOKENIZER_MAX_ID);
            JsonValue cv = t.get("content");
            std::string content = cv.as_string();
            if (content.empty()) cv.fail("an empty added token");
            for (const char* flag : {"single_word", "lstrip", "rstrip", "normalized"})
                tokenizer_require(t, flag, true, tokenizer_is_false, "false");
            bool special = t.get_bool_or("special", false);
            if (tok->token_id(content) >= 0 && tok->is_added(tok->token_id(content)))
                cv.fail("\"%s\" is an added token twice", json_printable(content).c_str());
            int32_t in_vocab = tok->vocab.find(content, tok->id_bytes);
            if (in_vocab >= 0 && in_vocab != id)
                t.fail("\"%s\" has id %d, but model.vocab gives it id %d", json_printable(content).c_str(), id, in_vocab);
            if (id < tok->vocab_size() && tok->id_type[id] >= 2)
                t.get("id").fail("id %d is also the id of the added token \"%s\"", id, json_printable(tok->id_bytes[id]).c_str());
            if (id < tok->vocab_size() && tok->id_type[id] == 1 && tok->id_bytes[id] != content)
                t.get("id").fail("id %d is the id of the model token \"%s\"", id, json_printable(tok->id_bytes[id]).c_str());
            tok->set_id(id, content, special ? 3 : 2);
            tok->trie_add(content, id);
        }
    }
}

inline void tokenizer_load_char(Tokenizer* tok, JsonValue root) {
    tok->kind = TOKENIZER_CHAR;
    root.check_keys({"type", "special_tokens", "alphabet", "unk_token"});
    JsonValue specials = root.get("special_tokens");
    specials.expect_type(JSON_ARRAY);
    for (size_t k = 0; k < specials.size(); k++) {
        std::string s = specials.at(k).as_string();
        if (s.empty()) specials.at(k).fail("an empty special token");
        if (tok->token_id(s) >= 0) specials.at(k).fail("\"%s\" appears twice", json_printable(s).c_str());
        tok->set_id((int32_t)k, s, 3);
        tok->trie_add(s, (int32_t)k);
    }
    JsonValue alpha = root.get("alphabet");
    std::string_view a = alpha.as_string_view();
    if (a.empty()) alpha.fail("an empty alphabet");
    int32_t id = (int32_t)specials.size();
    for (size_t i = 0; i < a.size();) {
        uint32_t cp;
        size_t len = utf8_decode(a.data(), a.size(), i, &cp);
        if (tok->char_ids.count(cp)) alpha.fail("the character U+%04X appears twice", cp);
        tok->char_ids[cp] = id;
        tok->set_id(id, std::string(a.substr(i, len)), 1);
        id++;
        i += len;
    }
    for (size_t k = 0; k < specials.size(); k++) {
        std::string_view s = specials.at(k).as_string_view();
        uint32_t cp;
        if (utf8_decode(s.data(), s.size(), 0, &cp) == s.size() && tok->char_ids.count(cp))
            specials.at(k).fail("\"%s\" is also a character of the alphabet", json_printable(s).c_str());
    }
    JsonValue unk;
    if (root.find("unk_token", &unk) && !unk.is_null()) {
        std::string u = unk.as_string();
        int32_t uid = tok->token_id(u);
        if (uid < 0 || !tok->is_special(uid)) unk.fail("\"%s\" is not one of special_tokens", json_printable(u).c_str());
        tok->unk_id = uid;
    }
}

// Parses a tokenizer from a JSON document: a Hugging Face tokenizer.json (it has "model") or a character tokenizer
// ({"type": "char", ...}).
inline Tokenizer tokenizer_from_json(const JsonDoc& doc) {
    Tokenizer tok;
    tok.path = doc.name;
    JsonValue root = doc.root();
    root.expect_type(JSON_OBJECT);
    JsonValue type;
    if (root.has("model")) tokenizer_load_bpe(&tok, root);
    else if (root.find("type", &type) && type.is_string() && type.as_string_view() == "char") tokenizer_load_char(&tok, root);
    else root.fail("expected a Hugging Face tokenizer.json (with a \"model\") or a character tokenizer ({\"type\": \"char\", ...})");
    return tok;
}

// The built-in character tokenizer (see the top of this file).
inline Tokenizer tokenizer_char_default() {
    std::string alphabet = "\\n";
    for (char c = ' '; c <= '~'; c++) {
        if (c == '"' || c == '\\') alphabet += '\\';
        alphabet += c;
    }
    std::string json = "{\"type\": \"char\", \"special_tokens\": [\"<pad>\", \"<bos>\", \"<eos>\", \"<x>\", \"</x>\", \"<z>\", "
                       "\"</z>\", \"<y>\", \"</y>\", \"<unk>\"], \"alphabet\": \"" + alphabet + "\", \"unk_token\": \"<unk>\"}";
    JsonDoc doc = json_parse("char", json.data(), json.size());
    return tokenizer_from_json(doc);
}

// A tokenizer from a file (tokenizer.json or a character tokenizer), or the built-in character tokenizer for the
// word "char".
inline Tokenizer tokenizer_load(const char* path) {
    if (strcmp(path, "char") == 0) return tokenizer_char_default();
    JsonDoc doc = json_read_file(path);
    return tokenizer_from_json(doc);
}

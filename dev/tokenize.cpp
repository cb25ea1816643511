// build/tokenize: text lines to token ids (and back) with common/tokenizer.h, the encoder the trainers use.
//
//   build/tokenize TOKENIZER [--json] [--decode] [--nfc] [--pieces] [--stats] < lines > ids
//
// TOKENIZER is a Hugging Face tokenizer.json (Qwen2/2.5/3), a character tokenizer file ({"type": "char", ...}) or
// the word "char" (the built-in character tokenizer). Reads standard input line by line (lines end at '\n' only:
// a '\r' before it is part of the text) and writes one output line per input line:
//   (default)  the line's token ids, separated by spaces (an empty line gives an empty line)
//   --json     each input line is a JSON string literal ("a\r\nb"), so a text may hold any character
//   --decode   each input line is token ids separated by spaces; writes their bytes (with --json: as a JSON
//              string literal, an invalid UTF-8 byte written as \ufffd)
//   --nfc      writes the NFC of each text as a JSON string literal
//   --pieces   writes the pre-tokenizer's pieces of each text (after NFC) as a JSON array of strings
//   --stats    at the end, on stderr: lines, bytes, tokens and the encoder's throughput (MB/s, I/O excluded)
// Invalid UTF-8 in a text line is read as U+FFFD, one per maximal ill-formed subpart (what Python's
// bytes.decode("utf-8", "replace") and JavaScript's TextDecoder give, so the ids are those of the text a Python or
// JavaScript caller would see); each such line gets a warning on stderr (the first 10, then a count).
//
//   g++ -std=c++17 -O2 dev/tokenize.cpp -o build/tokenize
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <string>
#include <vector>
#include "../common/json.h"
#include "../common/tokenizer.h"
#include "../common/utils.h"

static double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage() {
    fprintf(stderr, "usage: tokenize TOKENIZER [--json] [--decode] [--nfc] [--pieces] [--stats] < lines\n"
                    "  TOKENIZER: a tokenizer.json, a character tokenizer file, or \"char\" (built in)\n");
    exit(2);
}

static int tokenize_main(int argc, char** argv) {
    const char* path = nullptr;
    bool json = false, decode = false, nfc = false, pieces = false, stats = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = true;
        else if (strcmp(argv[i], "--decode") == 0) decode = true;
        else if (strcmp(argv[i], "--nfc") == 0) nfc = true;
        else if (strcmp(argv[i], "--pieces") == 0) pieces = true;
        else if (strcmp(argv[i], "--stats") == 0) stats = true;
        else if (argv[i][0] == '-') { fprintf(stderr, "tokenize: unknown option %s\n", argv[i]); usage(); }
        else if (!path) path = argv[i];
        else usage();
    }
    if (!path || (decode + nfc + pieces) > 1) usage();

    double t0 = now_seconds();
    Tokenizer tok = tokenizer_load(path);
    double load_s = now_seconds() - t0;

    char* line = nullptr;
    size_t cap = 0;
    ssize_t got;
    size_t lineno = 0, bytes = 0, tokens = 0, invalid_lines = 0;
    double encode_s = 0;
    std::string out, text;
    std::vector<int32_t> ids;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n') len--;
        out.clear();
        if (decode) {
            ids.clear();
            const char* p = line;
            const char* end = line + len;
            while (p < end) {
                if (*p == ' ') { p++; continue; }
                char* stop = nullptr;
                long v = strtol(p, &stop, 10);
                if (stop == p || (stop < end && *stop != ' ') || v < 0 || v > INT32_MAX)
                    fatal("<stdin> line %zu: expected token ids separated by spaces, found \"%s\"", lineno,
                          json_printable(std::string_view(p, (size_t)(end - p)), 40).c_str());
                ids.push_back((int32_t)v);
                p = stop;
            }
            std::string b = tok.decode(ids);
            out = json ? json_quote(b) : b;
        } else {
            if (json) {
                std::string name = "<stdin> line " + std::to_string(lineno);
                JsonDoc doc = json_parse(name, line, len);
                text = doc.root().as_string();
            } else {
                text.assign(line, len);
                if (!utf8_valid(text)) {
                    invalid_lines++;
                    if (invalid_lines <= 10)
                        fprintf(stderr, "tokenize: warning: line %zu is not valid UTF-8; its ill-formed bytes are read as U+FFFD\n", lineno);
                }
            }
            if (nfc) {
                out = json_quote(unicode_nfc_utf8(text));
            } else if (pieces) {
                out = "[";
                for (const std::string& piece : tok.pretokenize(text)) out += (out.size() > 1 ? ", " : "") + json_quote(piece);
                out += "]";
            } else {
                ids.clear();
                double t = now_seconds();
                tok.encode(text, &ids);
                encode_s += now_seconds() - t;
                bytes += text.size();
                tokens += ids.size();
                char buf[16];
                for (size_t k = 0; k < ids.size(); k++) {
                    int n = snprintf(buf, sizeof buf, k ? " %d" : "%d", ids[k]);
                    out.append(buf, (size_t)n);
                }
            }
        }
        out += '\n';
        fwrite_check(out.data(), out.size(), stdout, "<stdout>");
    }
    free(line);
    if (ferror(stdin)) fatal("reading <stdin> failed: %s", strerror(errno));
    if (fflush(stdout) != 0) fatal("writing <stdout> failed: %s", strerror(errno));
    if (invalid_lines > 10) fprintf(stderr, "tokenize: warning: %zu lines in all were not valid UTF-8\n", invalid_lines);
    if (stats)
        fprintf(stderr, "tokenize: %s: loaded in %.3f s; %zu lines, %zu bytes, %zu tokens (%.2f bytes/token), encode %.3f s = %.2f MB/s\n",
                path, load_s, lineno, bytes, tokens, tokens ? (double)bytes / (double)tokens : 0.0, encode_s,
                encode_s > 0 ? (double)bytes / encode_s / 1e6 : 0.0);
    return 0;
}

int main(int argc, char** argv) { return run_main(tokenize_main, argc, argv); }

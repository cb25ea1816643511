// key=value command-line configuration, with the upstream config names.
//
// A program describes its configuration as a table of ArgSpec rows (key, kind, pointer to the field holding
// the default, help text, allowed values). args_parse() then
//   - accepts `key=value` arguments, also with upstream's `arch.` / `arch.loss.` prefixes (so a line copied
//     from an upstream command works), and `+key=value` (hydra's "add a key" syntax);
//   - rejects unknown keys (suggesting the closest known one), malformed numbers, out-of-range booleans and
//     values outside a key's list of choices, each with a one-line message naming the key and the value;
//   - prints every key with its default and help for --help / -h.
// args_dump() writes the effective configuration as `key=value` lines (logs, checkpoints, safetensors).
#pragma once
#include <errno.h>
#include <math.h>
#include <algorithm>
#include <map>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>
#include "utils.h"

typedef enum { ARG_INT, ARG_FLOAT, ARG_BOOL, ARG_STRING } ArgKind;

typedef struct {
    const char* key;
    ArgKind kind;
    void* ptr;            // int*, float*, int* (0/1) or std::string*
    const char* help;
    const char* choices;  // "a|b|c" for strings restricted to a set, else nullptr
} ArgSpec;

inline std::string arg_value_string(const ArgSpec& a) {
    char buf[64];
    switch (a.kind) {
        case ARG_INT: snprintf(buf, sizeof buf, "%d", *(int*)a.ptr); return buf;
        case ARG_BOOL: return *(int*)a.ptr ? "1" : "0";
        case ARG_FLOAT: snprintf(buf, sizeof buf, "%g", *(float*)a.ptr); return buf;
        default: return *(std::string*)a.ptr;
    }
}

inline int edit_distance(const std::string& a, const std::string& b) {
    std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); j++) prev[j] = (int)j;
    for (size_t i = 1; i <= a.size(); i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= b.size(); j++)
            cur[j] = std::min(std::min(prev[j] + 1, cur[j - 1] + 1), prev[j - 1] + (a[i - 1] != b[j - 1]));
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

inline void args_print_help(const char* program, const char* usage, const std::vector<ArgSpec>& specs) {
    printf("usage: %s %s\n\n", program, usage);
    for (const ArgSpec& a : specs) {
        std::string def = arg_value_string(a);
        printf("  %-26s %s (default: %s)", a.key, a.help, def.empty() ? "\"\"" : def.c_str());
        if (a.choices) printf(" [%s]", a.choices);
        printf("\n");
    }
}

inline bool choice_allowed(const char* choices, const std::string& v) {
    std::string all = std::string("|") + choices + "|";
    return all.find("|" + v + "|") != std::string::npos;
}

inline void arg_set(const ArgSpec& a, const std::string& value) {
    const char* s = value.c_str();
    char* end = nullptr;
    errno = 0;
    switch (a.kind) {
        case ARG_INT: {
            long v = strtol(s, &end, 10);
            if (value.empty() || *end || errno || v < -2147483647L || v > 2147483647L)
                fatal("%s=%s: expected an integer", a.key, s);
            *(int*)a.ptr = (int)v;
            break;
        }
        case ARG_FLOAT: {
            double v = strtod(s, &end);
            if (value.empty() || *end || errno || !isfinite(v) || !isfinite((float)v))
                fatal("%s=%s: expected a finite number (of float range)", a.key, s);
            *(float*)a.ptr = (float)v;
            break;
        }
        case ARG_BOOL: {
            if (value == "1" || value == "true" || value == "True") *(int*)a.ptr = 1;
            else if (value == "0" || value == "false" || value == "False") *(int*)a.ptr = 0;
            else fatal("%s=%s: expected 0 or 1 (or true/false)", a.key, s);
            break;
        }
        case ARG_STRING: {
            for (char ch : value)        // one line per key in logs, checkpoints and the ranks' comparison
                if ((unsigned char)ch < 32 || ch == 127) fatal("%s: the value holds a control character (e.g. a newline)", a.key);
            if (a.choices && !choice_allowed(a.choices, value))
                fatal("%s=%s: expected one of %s", a.key, s, a.choices);
            *(std::string*)a.ptr = value;
            break;
        }
    }
}

// Parses argv[1..]; returns false if help was printed (the caller exits 0).
inline bool args_parse(int argc, char** argv, const std::vector<ArgSpec>& specs, const char* usage) {
    std::map<const void*, std::string> given;       // the argument that set each field (aliases share one)
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h" || arg == "help") {
            args_print_help(argv[0], usage, specs);
            return false;
        }
        size_t eq = arg.find('=');
        if (eq == std::string::npos || eq == 0)
            fatal("argument '%s' is not of the form key=value (run %s --help for the keys)", arg.c_str(), argv[0]);
        std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
        if (key[0] == '+') key = key.substr(1);
        for (const char* prefix : {"arch.loss.", "arch."})
            if (key.rfind(prefix, 0) == 0) key = key.substr(strlen(prefix));
        const ArgSpec* found = nullptr;
        for (const ArgSpec& a : specs) if (key == a.key) found = &a;
        if (!found) {
            const ArgSpec* best = nullptr;
            int best_d = 1 << 30;
            for (const ArgSpec& a : specs) {
                int d = edit_distance(key, a.key);
                if (d < best_d) { best_d = d; best = &a; }
            }
            if (best && best_d <= 3) fatal("unknown key '%s' (did you mean '%s'? run %s --help for all keys)", key.c_str(), best->key, argv[0]);
            fatal("unknown key '%s' (run %s --help for all keys)", key.c_str(), argv[0]);
        }
        std::string& first = given[found->ptr];
        if (!first.empty()) fatal("%s is given twice (%s and %s): give each key once", found->key, first.c_str(), arg.c_str());
        first = arg;
        arg_set(*found, value);
    }
    return true;
}

inline std::string args_dump(const std::vector<ArgSpec>& specs) {
    std::string out;
    for (const ArgSpec& a : specs) out += std::string(a.key) + "=" + arg_value_string(a) + "\n";
    return out;
}

// The checkpoint file format shared by the trainers.
//
//   int32 header[256] = {magic 20261122, version 3, step, number of sections, config bytes, CRC-32 of the
//                        config, 0...}
//   the configuration as key=value lines (args_dump)
//   sections, each {char name[48] (NUL-terminated); int64 bytes; uint32 CRC-32 of the bytes; uint32 0; bytes}
//
// Each trainer decides its sections. The file is written to a temporary name and renamed (write_file_atomic),
// so a crash never leaves a half-written checkpoint under the final name. Reading trusts nothing: every count
// and length is checked against the file's size before anything is allocated, names must be terminated and
// unique, and each section's CRC-32 must match (a flipped bit anywhere is reported, not trained on). What a
// section holds is validated by the trainer that reads it. Version 2 files (the same without the CRCs) are read
// too.
#pragma once
#include <limits.h>
#include <math.h>
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <map>
#include <string>
#include <vector>
#include "utils.h"

#define CHECKPOINT_MAGIC 20261122
#define CHECKPOINT_VERSION 3
#define SECTION_NAME_BYTES 48
#define CHECKPOINT_MAX_CONFIG_BYTES (1 << 20)
#define CHECKPOINT_MAX_SECTIONS 4096

// The sections of a checkpoint being written, in order, each holding a copy of its bytes.
typedef struct { std::vector<std::string> names; std::vector<std::vector<uint8_t>> data; } SectionList;
typedef std::map<std::string, std::vector<uint8_t>> Sections;

inline void section_add(SectionList* list, const std::string& name, const void* src, size_t bytes) {
    if (name.empty() || name.size() >= SECTION_NAME_BYTES) fatal("internal: checkpoint section name '%s' is empty or too long", name.c_str());
    list->names.push_back(name);
    list->data.emplace_back((const uint8_t*)src, (const uint8_t*)src + bytes);
}

inline void checkpoint_write(const std::string& path, int step, const std::string& config, const SectionList& sections) {
    write_file_atomic(path, [&](FILE* f, const char* tmp) {
        int32_t header[256] = {0};
        header[0] = CHECKPOINT_MAGIC; header[1] = CHECKPOINT_VERSION; header[2] = step;
        header[3] = (int32_t)sections.names.size(); header[4] = (int32_t)config.size();
        header[5] = (int32_t)crc32(config.data(), config.size());
        fwrite_check(header, sizeof header, f, tmp);
        fwrite_check(config.data(), config.size(), f, tmp);
        for (size_t i = 0; i < sections.names.size(); i++) {
            char name[SECTION_NAME_BYTES] = {0};
            strncpy(name, sections.names[i].c_str(), SECTION_NAME_BYTES - 1);
            const int64_t bytes = (int64_t)sections.data[i].size();
            const uint32_t crc[2] = {crc32(sections.data[i].data(), sections.data[i].size()), 0};
            fwrite_check(name, sizeof name, f, tmp);
            fwrite_check(&bytes, sizeof bytes, f, tmp);
            fwrite_check(crc, sizeof crc, f, tmp);
            fwrite_check(sections.data[i].data(), sections.data[i].size(), f, tmp);
        }
    });
}

typedef struct {
    int step;
    std::string config;
    Sections sections;
} Checkpoint;

// Reads and verifies a checkpoint into *out. Returns "" on success, else what is wrong (one line, without the
// path), so that a caller can fall back to an older checkpoint.
inline std::string checkpoint_try_read(const char* path, Checkpoint* out) {
    char msg[256];
    struct stat sb;
    if (stat(path, &sb) != 0) return std::string("cannot open: ") + strerror(errno);
    if (!S_ISREG(sb.st_mode)) return "not a regular file";
    const int64_t size = (int64_t)sb.st_size;
    int32_t header[256];
    if (size < (int64_t)sizeof header) {
        snprintf(msg, sizeof msg, "%lld bytes, too short for an arc.cu checkpoint (truncated?)", (long long)size);
        return msg;
    }
    FILE* f = fopen(path, "rb");
    if (!f) return std::string("cannot open: ") + strerror(errno);
    std::vector<uint8_t> bytes((size_t)size);
    const size_t got = fread(bytes.data(), 1, bytes.size(), f);
    fclose(f);
    if (got != bytes.size()) return "ended early while reading (truncated or changing file?)";
    memcpy(header, bytes.data(), sizeof header);
    if (header[0] != CHECKPOINT_MAGIC) {
        snprintf(msg, sizeof msg, "not an arc.cu checkpoint (magic %d, expected %d)", header[0], CHECKPOINT_MAGIC);
        return msg;
    }
    const int version = header[1];
    if (version != 2 && version != CHECKPOINT_VERSION) {
        snprintf(msg, sizeof msg, "checkpoint version %d, this build reads versions 2 and %d (use the arc.cu version "
                 "that wrote it)", version, CHECKPOINT_VERSION);
        return msg;
    }
    const int step = header[2], n_sections = header[3], config_bytes = header[4];
    if (step < 0) { snprintf(msg, sizeof msg, "header step %d, expected >= 0", step); return msg; }
    if (n_sections < 0 || n_sections > CHECKPOINT_MAX_SECTIONS) {
        snprintf(msg, sizeof msg, "header holds %d sections, expected 0..%d", n_sections, CHECKPOINT_MAX_SECTIONS);
        return msg;
    }
    if (config_bytes < 0 || config_bytes > CHECKPOINT_MAX_CONFIG_BYTES || config_bytes > size - (int64_t)sizeof header) {
        snprintf(msg, sizeof msg, "header config length %d, expected 0..%lld (corrupt or truncated)", config_bytes,
                 (long long)std::min<int64_t>(CHECKPOINT_MAX_CONFIG_BYTES, size - (int64_t)sizeof header));
        return msg;
    }
    const int extra_ints = version >= 3 ? 6 : 5;
    for (int i = extra_ints; i < 256; i++)
        if (header[i] != 0) { snprintf(msg, sizeof msg, "header int %d is %d, expected 0 (corrupt)", i, header[i]); return msg; }
    int64_t pos = (int64_t)sizeof header;
    out->step = step;
    out->config.assign((const char*)bytes.data() + pos, (size_t)config_bytes);
    if (version >= 3 && crc32(out->config.data(), out->config.size()) != (uint32_t)header[5])
        return "the configuration's CRC-32 does not match (corrupt file)";
    pos += config_bytes;
    out->sections.clear();
    const int64_t record = SECTION_NAME_BYTES + 8 + (version >= 3 ? 8 : 0);
    for (int i = 0; i < n_sections; i++) {
        if (size - pos < record) { snprintf(msg, sizeof msg, "section %d of %d runs past the end of the file (truncated?)", i, n_sections); return msg; }
        const char* name = (const char*)bytes.data() + pos;
        const size_t name_len = strnlen(name, SECTION_NAME_BYTES);
        if (name_len == 0 || name_len == SECTION_NAME_BYTES) {
            snprintf(msg, sizeof msg, "section %d has an empty or unterminated name (corrupt)", i);
            return msg;
        }
        const std::string key(name, name_len);
        int64_t n;
        uint32_t crc[2] = {0, 0};
        memcpy(&n, bytes.data() + pos + SECTION_NAME_BYTES, sizeof n);
        if (version >= 3) memcpy(crc, bytes.data() + pos + SECTION_NAME_BYTES + 8, sizeof crc);
        pos += record;
        if (n < 0 || n > size - pos) {
            snprintf(msg, sizeof msg, "section '%.47s' of %lld bytes runs past the end of the file (truncated?)", key.c_str(), (long long)n);
            return msg;
        }
        if (out->sections.count(key)) { snprintf(msg, sizeof msg, "section '%.47s' appears twice (corrupt)", key.c_str()); return msg; }
        if (version >= 3 && (crc[1] != 0 || crc32(bytes.data() + pos, (size_t)n) != crc[0])) {
            snprintf(msg, sizeof msg, "section '%.47s' fails its CRC-32 check (corrupt file)", key.c_str());
            return msg;
        }
        out->sections[key].assign(bytes.data() + pos, bytes.data() + pos + n);
        pos += n;
    }
    if (pos != size) { snprintf(msg, sizeof msg, "%lld bytes after the last section (corrupt)", (long long)(size - pos)); return msg; }
    return "";
}

inline Sections checkpoint_read(const char* path, int* step, std::string* config) {
    Checkpoint c;
    const std::string err = checkpoint_try_read(path, &c);
    if (!err.empty()) fatal("checkpoint %s: %s", path, err.c_str());
    *step = c.step;
    *config = c.config;
    return std::move(c.sections);
}

// The first of `paths` (newest first) that reads whole and uncorrupted, into *out; each one skipped is reported
// through warn(path, why), so that a run resumes from the previous good checkpoint when the newest is damaged.
// Returns its path, or "" when none reads.
template <typename Warn>
std::string checkpoint_read_newest(const std::vector<std::string>& paths, Checkpoint* out, Warn warn) {
    for (const std::string& path : paths) {
        const std::string err = checkpoint_try_read(path.c_str(), out);
        if (err.empty()) return path;
        warn(path, err);
    }
    return "";
}

// Removes what interrupted writes (a kill during write_file_atomic) left in a checkpoint directory: its *.tmp files.
inline void checkpoint_dir_clean(const std::string& dir) {
    DIR* dp = opendir(dir.c_str());
    if (!dp) return;
    std::vector<std::string> stale;
    while (struct dirent* e = readdir(dp)) {
        const std::string name = e->d_name;
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) stale.push_back(dir + "/" + name);
    }
    closedir(dp);
    for (const std::string& path : stale) remove(path.c_str());
}

// "<dir>/<kind>_<step, 8 digits><ext>": a checkpoint (kind "ckpt", ext ".bin") or an export of the same step.
inline std::string checkpoint_name(const std::string& dir, const char* kind, int step, const char* ext) {
    char buf[64];
    snprintf(buf, sizeof buf, "/%s_%08d%s", kind, step, ext);
    return dir + buf;
}

// Steps of the checkpoints "<kind>_<8 digits>.bin" in a directory, ascending.
inline std::vector<int> checkpoint_list_steps(const std::string& dir, const std::string& kind) {
    std::vector<int> steps;
    DIR* dp = opendir(dir.c_str());
    if (!dp) return steps;
    while (struct dirent* e = readdir(dp)) {
        const std::string name = e->d_name;
        const size_t n = kind.size();
        if (name.size() != n + 13 || name.compare(0, n + 1, kind + "_") != 0 || name.compare(n + 9, 4, ".bin") != 0) continue;
        const std::string digits = name.substr(n + 1, 8);
        if (digits.find_first_not_of("0123456789") == std::string::npos) steps.push_back(atoi(digits.c_str()));
    }
    closedir(dp);
    std::sort(steps.begin(), steps.end());
    return steps;
}

// The checkpoints "<kind>_<8 digits>.bin" of a directory, newest first (the order a resume tries them in).
inline std::vector<std::string> checkpoint_paths_newest_first(const std::string& dir, const char* kind) {
    std::vector<std::string> paths;
    for (int step : checkpoint_list_steps(dir, kind)) paths.insert(paths.begin(), checkpoint_name(dir, kind, step, ".bin"));
    return paths;
}

// After a fallback: the damaged checkpoints are renamed <path>.damaged (kept for inspection, no longer counted as
// checkpoints), once every rank agrees on the one it continues from.
inline void checkpoint_set_aside(const std::vector<std::string>& damaged) {
    for (const std::string& path : damaged) rename(path.c_str(), (path + ".damaged").c_str());
}

template <typename T>
void section_get(const Sections& s, const char* path, const char* name, T* dst, size_t n) {
    auto it = s.find(name);
    if (it == s.end()) fatal("%s: no section '%s' (was it written by another configuration?)", path, name);
    if (it->second.size() != n * sizeof(T))
        fatal("%s: section '%s' has %zu bytes, this configuration needs %zu (the model sizes, batch or data differ "
              "from the run that wrote it)", path, name, it->second.size(), n * sizeof(T));
    if (n) memcpy(dst, it->second.data(), it->second.size());
}

// A value read from a checkpoint must lie in [lo, hi].
inline void section_check_range(const char* path, const char* what, long long v, long long lo, long long hi) {
    if (v < lo || v > hi) fatal("%s: %s is %lld, expected %lld..%lld (corrupt checkpoint, or another configuration)", path, what, v, lo, hi);
}

// Every value of a float section must be finite (and >= 0 where non_negative): a checkpoint never carries NaN/Inf.
template <typename T>
void section_check_finite(const char* path, const char* name, const T* v, size_t n, bool non_negative = false) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite((double)v[i]) || (non_negative && v[i] < 0))
            fatal("%s: section '%s' holds %g at element %zu, expected a finite%s number (corrupt checkpoint)", path, name,
                  (double)v[i], i, non_negative ? ", non-negative" : "");
}

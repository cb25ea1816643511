// The checkpoint file format shared by the trainers.
//
// int32 header[256] = {magic 20261122, version 2, step, number of sections, config bytes, 0...}, then the
// configuration as key=value lines, then named sections {char name[48]; int64 bytes; bytes}. Each trainer
// decides its sections; the file is written to a temporary name and renamed (write_file_atomic), so a crash
// never leaves a half-written checkpoint under the final name.
#pragma once
#include <stdint.h>
#include <string.h>
#include <map>
#include <string>
#include <vector>
#include "utils.h"

#define CHECKPOINT_MAGIC 20261122
#define CHECKPOINT_VERSION 2
#define SECTION_NAME_BYTES 48

// The sections of a checkpoint being written, in order, each holding a copy of its bytes.
typedef struct { std::vector<std::string> names; std::vector<std::vector<uint8_t>> data; } SectionList;
typedef std::map<std::string, std::vector<uint8_t>> Sections;

inline void section_add(SectionList* list, const std::string& name, const void* src, size_t bytes) {
    if (name.size() >= SECTION_NAME_BYTES) fatal("internal: checkpoint section name '%s' is too long", name.c_str());
    list->names.push_back(name);
    list->data.emplace_back((const uint8_t*)src, (const uint8_t*)src + bytes);
}

inline void checkpoint_write(const std::string& path, int step, const std::string& config, const SectionList& sections) {
    write_file_atomic(path, [&](FILE* f, const char* tmp) {
        int32_t header[256] = {0};
        header[0] = CHECKPOINT_MAGIC; header[1] = CHECKPOINT_VERSION; header[2] = step;
        header[3] = (int32_t)sections.names.size(); header[4] = (int32_t)config.size();
        fwrite_check(header, sizeof header, f, tmp);
        fwrite_check(config.data(), config.size(), f, tmp);
        for (size_t i = 0; i < sections.names.size(); i++) {
            char name[SECTION_NAME_BYTES] = {0};
            strncpy(name, sections.names[i].c_str(), SECTION_NAME_BYTES - 1);
            int64_t bytes = (int64_t)sections.data[i].size();
            fwrite_check(name, sizeof name, f, tmp);
            fwrite_check(&bytes, sizeof bytes, f, tmp);
            fwrite_check(sections.data[i].data(), sections.data[i].size(), f, tmp);
        }
    });
}

inline Sections checkpoint_read(const char* path, int* step, std::string* config) {
    const long size = file_size(path);
    FILE* f = fopen_check(path, "rb");
    int32_t header[256];
    if (size < (long)sizeof header) fatal("%s: %ld bytes, too short for an arc.cu checkpoint", path, size);
    fread_check(header, sizeof header, f, path);
    if (header[0] != CHECKPOINT_MAGIC) fatal("%s: not an arc.cu checkpoint (magic %d, expected %d)", path, header[0], CHECKPOINT_MAGIC);
    if (header[1] != CHECKPOINT_VERSION)
        fatal("%s: checkpoint version %d, this build reads version %d (retrain, or use the arc.cu version that wrote it)", path, header[1], CHECKPOINT_VERSION);
    *step = header[2];
    config->resize(header[4]);
    fread_check(&(*config)[0], config->size(), f, path);
    Sections sections;
    long pos = (long)sizeof header + header[4];
    for (int i = 0; i < header[3]; i++) {
        char name[SECTION_NAME_BYTES];
        int64_t bytes;
        fread_check(name, sizeof name, f, path);
        fread_check(&bytes, sizeof bytes, f, path);
        pos += (long)(sizeof name + sizeof bytes);
        name[SECTION_NAME_BYTES - 1] = 0;
        if (bytes < 0 || pos + bytes > size) fatal("%s: section '%s' runs past the end of the file (truncated checkpoint?)", path, name);
        std::vector<uint8_t>& data = sections[name];
        data.resize((size_t)bytes);
        fread_check(data.data(), data.size(), f, path);
        pos += (long)bytes;
    }
    if (pos != size) fatal("%s: %ld bytes after the last section (corrupt checkpoint?)", path, size - pos);
    fclose(f);
    return sections;
}

template <typename T>
void section_get(const Sections& s, const char* path, const char* name, T* dst, size_t n) {
    auto it = s.find(name);
    if (it == s.end()) fatal("%s: no section '%s' (was it written by another configuration?)", path, name);
    if (it->second.size() != n * sizeof(T))
        fatal("%s: section '%s' has %zu bytes, this configuration needs %zu (the model sizes, batch or data differ "
              "from the run that wrote it)", path, name, it->second.size(), n * sizeof(T));
    memcpy(dst, it->second.data(), it->second.size());
}

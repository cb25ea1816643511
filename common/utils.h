// Host utilities shared by every program: fatal errors with a hint, checked file I/O, atomic writes, main's
// exception boundary.
//
// Every error names what is wrong (the file, the flag, the value) and what was expected, then exits with
// status 1. Nothing here ever leaves a half-written file behind: write_file_atomic() writes to a
// temporary name and renames it over the target only when everything was written; a failed write (a full
// disk) removes its temporary file, so the space is free for the next attempt.
#pragma once
#include <dirent.h>
#include <errno.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <array>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Called by fatal() instead of exit(1) when set: a multi-process run aborts every process (common/distributed.h).
inline void (*&fatal_hook())() { static void (*hook)() = nullptr; return hook; }
// The temporary file write_file_atomic() is writing, removed by fatal() (empty: none).
inline std::string& pending_tmp_file() { static std::string path; return path; }

// Print "error: <message>" (printf-style) and exit(1).
[[noreturn]] inline void fatal(const char* fmt, ...) {
    fflush(stdout);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    if (!pending_tmp_file().empty()) remove(pending_tmp_file().c_str());
    if (fatal_hook()) fatal_hook()();
    exit(1);
}

inline void* malloc_check(size_t bytes, const char* what) {
    void* p = malloc(bytes ? bytes : 1);
    if (!p) fatal("out of host memory allocating %zu bytes for %s", bytes, what);
    return p;
}

inline FILE* fopen_check(const char* path, const char* mode) {
    FILE* f = fopen(path, mode);
    if (!f) fatal("cannot open %s (mode %s): %s", path, mode, strerror(errno));
    return f;
}

// Fails unless `path` is a regular file: a directory or a FIFO given as an input file must not be opened
// (a directory has no size, reading a FIFO can block forever). Returns its size in bytes. `hint` follows the
// message of a missing file (how to make it).
inline long regular_file_size(const char* path, const char* what, const char* hint = "") {
    struct stat sb;
    if (stat(path, &sb) != 0) fatal("cannot open %s %s: %s%s", what, path, strerror(errno), hint);
    if (!S_ISREG(sb.st_mode))
        fatal("%s %s is not a regular file (it is a %s)", what, path, S_ISDIR(sb.st_mode) ? "directory" : "FIFO, socket or device");
    return (long)sb.st_size;
}

// Read exactly `bytes` or fail with a message that says whether the file ended early.
inline void fread_check(void* dst, size_t bytes, FILE* f, const char* path) {
    if (bytes == 0) return;
    size_t got = fread(dst, 1, bytes, f);
    if (got != bytes) {
        if (feof(f)) fatal("%s ended early: wanted %zu more bytes, got %zu (truncated file?)", path, bytes, got);
        fatal("reading %s failed: %s", path, strerror(errno));
    }
}

inline void fwrite_check(const void* src, size_t bytes, FILE* f, const char* path) {
    if (bytes == 0) return;
    if (fwrite(src, 1, bytes, f) != bytes) fatal("writing %s failed: %s (disk full?)", path, strerror(errno));
}

inline bool file_exists(const char* path) {       // (without opening it: a FIFO would block)
    struct stat sb;
    return stat(path, &sb) == 0;
}
inline bool is_directory(const std::string& path) {
    struct stat sb;
    return stat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode);
}

// Removes a directory the run wrote (an export) with its files and subdirectories; links are removed, not followed.
// Nothing happens if it does not exist.
inline void remove_dir_files(const std::string& dir) {
    DIR* dp = opendir(dir.c_str());
    if (!dp) return;
    std::vector<std::string> entries;
    while (struct dirent* e = readdir(dp))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) entries.push_back(dir + "/" + e->d_name);
    closedir(dp);
    for (const std::string& path : entries) {
        struct stat sb;
        if (lstat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) remove_dir_files(path);
        else remove(path.c_str());
    }
    rmdir(dir.c_str());
}

// Writes a file through a callback on "<path>.tmp", flushes it to the disk, then renames it to <path>: a crash
// or a full disk never leaves a truncated file under the final name, and a failed write removes the .tmp.
template <typename WriteFn>
void write_file_atomic(const std::string& path, WriteFn&& write_body) {
    const std::string tmp = path + ".tmp";
    FILE* f = fopen_check(tmp.c_str(), "wb");
    pending_tmp_file() = tmp;
    write_body(f, tmp.c_str());
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
        fatal("writing %s failed: %s (disk full?)", tmp.c_str(), strerror(errno));
    if (rename(tmp.c_str(), path.c_str()) != 0)
        fatal("cannot rename %s to %s: %s", tmp.c_str(), path.c_str(), strerror(errno));
    pending_tmp_file().clear();
}

// CRC-32 (IEEE 802.3, the polynomial of zlib and PNG) of `bytes`, continuing from `crc` (0 to start).
inline uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0) {
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t;
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    const uint8_t* p = (const uint8_t*)data;
    crc = ~crc;
    for (size_t i = 0; i < bytes; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

// Split "a,b,c" into its non-empty parts.
inline std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        size_t end = s.find(',', start);
        if (end == std::string::npos) end = s.size();
        if (end > start) out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

// The lines of a text, without their newlines (a last line without one included).
inline std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start < s.size()) {
        size_t end = s.find('\n', start);
        if (end == std::string::npos) end = s.size();
        out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

// mkdir -p
inline void make_dirs(const std::string& dir) {
    for (size_t i = 1; i <= dir.size(); i++)
        if (i == dir.size() || dir[i] == '/') {
            std::string part = dir.substr(0, i);
            if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) fatal("cannot create directory %s: %s", part.c_str(), strerror(errno));
        }
}

// "1h02m" or "3m05s"
inline std::string format_duration(double seconds) {
    char buf[32];
    const long s = (long)seconds;
    if (s >= 3600) snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    return buf;
}

// The process boundary of a program (every trainer and tool): an exception escaping main() (host memory
// exhausted, a library's error) becomes one error line and exit status 1, never an abort with a core dump.
template <typename Main>
int run_main(Main body, int argc, char** argv) {
    try {
        return body(argc, argv);
    } catch (const std::bad_alloc&) {
        fatal("out of host memory");
    } catch (const std::exception& e) {
        fatal("internal error: %s", e.what());
    }
}

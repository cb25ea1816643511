// Run log: every line goes to stdout and, when a log file is open, to the file (appended, so a resumed run
// keeps the history of the run it continues). Lines are `kind key=value key=value ...`, e.g.
//   train step=120 loss=2.31 lm_loss=2.10 ...
//   eval step=500 set=eval.bin exact_acc=0.12 pass@1=0.08 ...
// which dev/plot.py parses. Only the process that owns the log (rank 0) writes.
#pragma once
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <string>
#include "utils.h"

typedef struct {
    std::string path;
    FILE* file;
    bool active;     // false on ranks other than 0: nothing is printed or written
} Logger;

inline void logger_open(Logger* log, const std::string& path, bool active) {
    log->active = active;
    log->path = path;
    log->file = nullptr;
    if (active && !path.empty()) log->file = fopen_check(path.c_str(), "a");
}

inline void log_printf(Logger* log, const char* fmt, ...) {
    if (!log->active) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (log->file) {   // a log line that cannot be written (a full disk) stops the run: it must not go missing
        va_start(ap, fmt);
        const bool ok = vfprintf(log->file, fmt, ap) >= 0 && fflush(log->file) == 0;
        va_end(ap);
        if (!ok) {
            log->file = nullptr;
            fatal("writing %s failed: %s (disk full?)", log->path.c_str(), strerror(errno));
        }
    }
}

inline void logger_close(Logger* log) {
    if (log->file) fclose(log->file);
    log->file = nullptr;
}

// Seconds on a monotonic clock.
inline double wall_time() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Minimal test harness shared by the C++ tests.
//
// A test program registers checks with check(ok, name, fmt, ...): each prints one line,
//   PASS <name>            or      FAIL <name>: <why>
// and test_summary() prints "<N> passed, <M> failed" and returns the exit status (1 if anything failed).
// test/run.sh collects these lines over all test programs into the suite's final line.
#pragma once
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string>
#include <vector>

static int g_passed = 0, g_failed = 0;

inline bool check(bool ok, const char* name, const char* fmt = "", ...) {
    if (ok) {
        printf("PASS %s\n", name);
        g_passed++;
    } else {
        printf("FAIL %s: ", name);
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        g_failed++;
    }
    fflush(stdout);
    return ok;
}

// printf-style formatting into a std::string (check names built from shapes).
inline std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

inline void skip(const char* name, const char* why) { printf("SKIP %s: %s\n", name, why); fflush(stdout); }

inline int test_summary() {
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}

// Largest elementwise relative error |a - b| / (atol + |b|) over two arrays; also reports where.
template <typename A, typename B>
double max_rel_error(const A* a, const B* b, size_t n, double atol, size_t* where = nullptr) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)a[i] - (double)b[i]) / (atol + fabs((double)b[i]));
        if (!(err <= worst)) {           // also catches NaN
            worst = isnan(err) ? INFINITY : err;
            if (where) *where = i;
        }
    }
    return worst;
}

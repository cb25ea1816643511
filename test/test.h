// Minimal test harness shared by the C++ tests.
//
// A test program registers checks with check(ok, name, fmt, ...): each prints one line,
//   PASS <name>            or      FAIL <name>: <why>
// and test_summary() prints "<N> passed, <M> failed" and returns the exit status (1 if anything failed).
// test/run.sh collects these lines over all test programs into the suite's final line.
#pragma once
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <functional>
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

// A grid from rows of digits, e.g. {"120", "003"} (the object-extraction and JEPA data tests).
struct TestGrid {
    int rows = 0, cols = 0;
    std::vector<uint8_t> cells;   // (rows, cols)
};
inline TestGrid grid_from(const std::vector<std::string>& lines) {
    TestGrid g;
    g.rows = (int)lines.size();
    g.cols = (int)lines[0].size();
    for (const std::string& line : lines) {
        if ((int)line.size() != g.cols) { fprintf(stderr, "grid_from: rows of different lengths\n"); exit(2); }
        for (char ch : line) g.cells.push_back((uint8_t)(ch - '0'));
    }
    return g;
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

// Runs fn() in a forked child with its stderr captured (stdout discarded); returns the stderr text, and the
// child's wait status in *status. Used to check that bad input ends in fatal() with a clear message.
inline std::string run_in_child(const std::function<void()>& fn, int* status) {
    fflush(stdout);
    fflush(stderr);
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(2); }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        if (!freopen("/dev/null", "w", stdout)) _exit(3);
        fn();
        fflush(stderr);
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, (size_t)n);
    close(fds[0]);
    waitpid(pid, status, 0);
    while (!err.empty() && err.back() == '\n') err.pop_back();
    return err;
}

// fn() must end in fatal(): exit status 1 and one "error: ..." on stderr containing every string of must_contain.
inline void expect_fatal(const char* name, const std::function<void()>& fn, const std::vector<std::string>& must_contain) {
    int status = 0;
    const std::string err = run_in_child(fn, &status);
    const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    bool ok = rc == 1 && err.rfind("error: ", 0) == 0;
    for (const std::string& s : must_contain) ok = ok && err.find(s) != std::string::npos;
    if (check(ok, name, "exit status %d, stderr \"%s\"", rc, err.c_str())) printf("     message: %s\n", err.c_str());
}

// A whole file as bytes, and back (the file-format tests write hostile files and read outputs back); a test that
// cannot write or read its own temporary file stops.
inline void write_file_bytes(const std::string& path, const std::string& bytes) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || fclose(f) != 0) {
        fprintf(stderr, "test: cannot write %s\n", path.c_str());
        exit(2);
    }
}
inline std::string read_file_bytes(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) { fprintf(stderr, "test: cannot read %s\n", path.c_str()); exit(2); }
    std::string s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
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

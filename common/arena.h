// An arena: every activation of a model laid out once in a single device allocation. The trainer's layout
// function takes its tensors from an Arena in a fixed order; run once on a measuring arena (no memory) it gives
// the size, run again on the allocation it carves it.
#pragma once
#include "device.h"
#include "utils.h"

typedef struct {
    char* base;       // null while measuring
    size_t used;
} Arena;

// n elements of T, 256-byte aligned (null while measuring).
template <typename T> T* arena_take(Arena* a, size_t n) {
    T* p = a->base ? (T*)(a->base + a->used) : nullptr;
    a->used += CEIL_DIV(n * sizeof(T), (size_t)256) * 256;
    return p;
}

// Measures `layout` (a callable taking Arena*), allocates and zeroes what it needs and lays it out there.
// Returns the allocation; *bytes receives its size.
template <typename Layout> void* arena_alloc(Layout layout, size_t* bytes, const char* what) {
    Arena a = {nullptr, 0};
    layout(&a);
    *bytes = a.used;
    a.base = (char*)device_malloc(a.used, what);
    device_memset(a.base, 0, a.used);
    a.used = 0;
    layout(&a);
    return a.base;
}

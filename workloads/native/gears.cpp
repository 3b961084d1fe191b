// Two functions that share a bare name in two namespaces, both hot, for the frame-name tests:
// `alpha::Gear::poll` and `beta::Gear::poll` are always inlined into `alpha::drive` and
// `beta::drive`; `alpha::Gear::step` and `beta::Gear::step` are never inlined. One thread spins
// in each of the four. A sampler that names frames by their bare name merges each pair.
//
// Two more threads spin in a lambda inlined into `alpha::turn` and `beta::turn`. GCC records
// such a lambda's call operator by its bare name (`operator()`, no linkage name): its scope is
// only in the DIE tree (a nameless class inside the function inside the namespace). Each of
// the two threads is started with a lambda of `main` itself, so `std::thread`'s own inlined
// `_M_invoke<0>` and `main`'s two `operator()`s are on those stacks too.
//
// Prints `ready` once every thread runs; exits when stdin reaches end-of-file.
#include <cstdio>
#include <thread>

namespace alpha {
struct Gear {
    __attribute__((always_inline)) static inline void poll(volatile unsigned long *x) {
        for (unsigned long i = 0; i < 1000000; i++) *x = *x * 31 + i;
    }
    __attribute__((noinline)) static void step(volatile unsigned long *x) {
        for (unsigned long i = 0; i < 1000000; i++) *x = *x * 37 + i;
    }
};
__attribute__((noinline)) void drive() {
    volatile unsigned long x = 1;
    for (;;) Gear::poll(&x);
}
__attribute__((noinline)) void drive_step() {
    volatile unsigned long x = 1;
    for (;;) Gear::step(&x);
}
__attribute__((noinline)) void turn() {
    volatile unsigned long x = 1;
    auto spin = [&x]() __attribute__((always_inline)) {
        for (unsigned long i = 0; i < 1000000; i++) x = x * 47 + i;
    };
    for (;;) spin();
}
}  // namespace alpha

namespace beta {
struct Gear {
    __attribute__((always_inline)) static inline void poll(volatile unsigned long *x) {
        for (unsigned long i = 0; i < 1000000; i++) *x = *x * 41 + i;
    }
    __attribute__((noinline)) static void step(volatile unsigned long *x) {
        for (unsigned long i = 0; i < 1000000; i++) *x = *x * 43 + i;
    }
};
__attribute__((noinline)) void drive() {
    volatile unsigned long x = 1;
    for (;;) Gear::poll(&x);
}
__attribute__((noinline)) void drive_step() {
    volatile unsigned long x = 1;
    for (;;) Gear::step(&x);
}
__attribute__((noinline)) void turn() {
    volatile unsigned long x = 1;
    auto spin = [&x]() __attribute__((always_inline)) {
        for (unsigned long i = 0; i < 1000000; i++) x = x * 53 + i;
    };
    for (;;) spin();
}
}  // namespace beta

int main() {
    std::thread(alpha::drive).detach();
    std::thread(beta::drive).detach();
    std::thread(alpha::drive_step).detach();
    std::thread(beta::drive_step).detach();
    std::thread([] { alpha::turn(); }).detach();
    std::thread([] { beta::turn(); }).detach();
    std::printf("ready\n");
    std::fflush(stdout);
    while (std::getchar() != EOF) {
    }
    return 0;
}

// Two functions that share a bare name in two namespaces, both hot, for the frame-name tests:
// `alpha::Gear::poll` and `beta::Gear::poll` are always inlined into `alpha::drive` and
// `beta::drive`; `alpha::Gear::step` and `beta::Gear::step` are never inlined. One thread spins
// in each of the four. A sampler that names frames by their bare name merges each pair.
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
}  // namespace beta

int main() {
    std::thread(alpha::drive).detach();
    std::thread(beta::drive).detach();
    std::thread(alpha::drive_step).detach();
    std::thread(beta::drive_step).detach();
    std::printf("ready\n");
    std::fflush(stdout);
    while (std::getchar() != EOF) {
    }
    return 0;
}

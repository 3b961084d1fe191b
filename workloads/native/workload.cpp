// workload.cpp — the C++ flavour of the test workload: namespaces, a class template and an
// inlined function, so the sampler's demangling and inline-frame handling can be checked.
//
// Command line and thread roles are those of workload.c (PROG SPIN SLEEP WAIT LOCK CHURN
// [--rate]; threads spin-<i>, sleep-<i>, wait-<i>, lock-<i>, churn-<i>; `ready`, `rate N`;
// exits on stdin EOF). The chains, outermost first, as flamegrid names frames:
//
//   spin:  demo::spin_thread -> demo::Spinner::run -> demo::Worker<unsigned long>::recurse (x3)
//          -> demo::Worker<unsigned long>::churn_numbers -> demo::mix_step (inlined)
//   sleep: demo::sleep_thread -> demo::sleep_outer -> demo::sleep_inner
//   wait:  demo::wait_thread -> demo::wait_outer -> demo::wait_inner   (std::condition_variable)
//   lock:  demo::lock_thread -> demo::lock_outer -> demo::lock_inner   (std::mutex held by main)
//
// `demo::mix_step` is `always_inline`; the build compiles this file with `-g` so DWARF
// records where it was inlined and a good symbolizer reports it as its own frame.
#include <pthread.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#if defined(__clang__)
#define KEEP __attribute__((noinline))
#else
#define KEEP __attribute__((noinline, noipa))
#endif
#define BARRIER() __asm__ volatile("" ::: "memory")

namespace demo {

constexpr unsigned long kSpinChunk = 1UL << 16;

volatile unsigned long sink;
std::atomic<unsigned long> spin_iterations{0};

std::mutex held_forever;
std::mutex never_signalled_lock;
std::condition_variable never_signalled;
volatile bool never_true = false;

// The hot loop body; inlined into its caller on purpose.
__attribute__((always_inline)) inline unsigned long mix_step(volatile unsigned long &x) {
    for (unsigned long i = 0; i < kSpinChunk; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    }
    return x;
}

template <typename T>
class Worker {
  public:
    explicit Worker(T seed) : seed_(seed) {}

    KEEP T recurse(T value, int depth) {
        if (depth > 0) {
            T r = recurse(value + 1, depth - 1);
            sink = r;
            BARRIER();
            return r + 1;
        }
        T r = churn_numbers(value);
        BARRIER();
        return r;
    }

    KEEP T churn_numbers(T value) {
        volatile unsigned long x = value ^ seed_;
        T r = mix_step(x);
        spin_iterations.fetch_add(kSpinChunk, std::memory_order_relaxed);
        BARRIER();
        return r;
    }

  private:
    T seed_;
};

class Spinner {
  public:
    explicit Spinner(unsigned long seed) : worker_(seed) {}

    KEEP void run() {
        unsigned long v = 1;
        for (;;) {
            v = worker_.recurse(v, 2);
            BARRIER();
        }
    }

  private:
    Worker<unsigned long> worker_;
};

KEEP void *spin_thread(void *arg) {
    Spinner spinner(reinterpret_cast<unsigned long>(arg));
    spinner.run();
    BARRIER();
    return nullptr;
}

KEEP void sleep_inner() {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    BARRIER();
    sink = 2;
}

KEEP void sleep_outer() {
    for (;;) {
        sleep_inner();
        BARRIER();
    }
}

KEEP void *sleep_thread(void *) {
    sleep_outer();
    BARRIER();
    return nullptr;
}

KEEP void wait_inner() {
    std::unique_lock<std::mutex> guard(never_signalled_lock);
    while (!never_true) {
        never_signalled.wait(guard);
    }
    BARRIER();
    sink = 3;
}

KEEP void wait_outer() {
    for (;;) {
        wait_inner();
        BARRIER();
    }
}

KEEP void *wait_thread(void *) {
    wait_outer();
    BARRIER();
    return nullptr;
}

KEEP void lock_inner() {
    held_forever.lock();
    BARRIER();
    sink = 4;
    held_forever.unlock();
}

KEEP void lock_outer() {
    for (;;) {
        lock_inner();
        BARRIER();
    }
}

KEEP void *lock_thread(void *) {
    lock_outer();
    BARRIER();
    return nullptr;
}

KEEP void churn_work() {
    volatile unsigned long x = 0;
    for (int i = 0; i < 20000; i++) {
        x += static_cast<unsigned long>(i);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    BARRIER();
    sink = x;
}

KEEP void *churn_thread(void *arg) {
    std::string name = "churn-" + std::to_string(reinterpret_cast<unsigned long>(arg) - 1);
    pthread_setname_np(pthread_self(), name.c_str());
    churn_work();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t next;
    while (pthread_create(&next, &attr, churn_thread, arg) != 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pthread_attr_destroy(&attr);
    BARRIER();
    return nullptr;
}

}  // namespace demo

namespace {

unsigned parse_count(const char *text, const char *what) {
    char *end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v > 4096) {
        std::fprintf(stderr, "bad %s count '%s' (expected 0..4096)\n", what, text);
        std::exit(2);
    }
    return static_cast<unsigned>(v);
}

void start_role(unsigned count, const char *prefix, void *(*entry)(void *), bool detached) {
    for (unsigned i = 0; i < count; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (detached) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        }
        pthread_t t;
        int rc = pthread_create(&t, &attr, entry, reinterpret_cast<void *>(static_cast<unsigned long>(i + 1)));
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            std::fprintf(stderr, "pthread_create(%s-%u): %s\n", prefix, i, std::strerror(rc));
            std::exit(1);
        }
        std::string name = std::string(prefix) + "-" + std::to_string(i);
        pthread_setname_np(t, name.c_str());
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 6 || argc > 7 || (argc == 7 && std::strcmp(argv[6], "--rate") != 0)) {
        std::fprintf(stderr, "usage: %s SPIN SLEEP WAIT LOCK CHURN [--rate]\n", argv[0]);
        return 2;
    }
    unsigned spin = parse_count(argv[1], "spin");
    unsigned sleepers = parse_count(argv[2], "sleep");
    unsigned waiters = parse_count(argv[3], "wait");
    unsigned lockers = parse_count(argv[4], "lock");
    unsigned churn = parse_count(argv[5], "churn");
    bool report_rate = argc == 7;

    demo::held_forever.lock();
    start_role(spin, "spin", demo::spin_thread, false);
    start_role(sleepers, "sleep", demo::sleep_thread, false);
    start_role(waiters, "wait", demo::wait_thread, false);
    start_role(lockers, "lock", demo::lock_thread, false);
    start_role(churn, "churn", demo::churn_thread, true);

    std::printf("ready\n");
    std::fflush(stdout);

    using clock = std::chrono::steady_clock;
    auto last = clock::now();
    unsigned long last_count = demo::spin_iterations.load(std::memory_order_relaxed);
    auto next_report = last + std::chrono::seconds(1);
    for (;;) {
        pollfd pfd{0, POLLIN, 0};
        int timeout_ms = -1;
        if (report_rate) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_report - clock::now());
            timeout_ms = left.count() < 0 ? 0 : static_cast<int>(left.count()) + 1;
        }
        int n = poll(&pfd, 1, timeout_ms);
        if (n < 0 && errno != EINTR) {
            std::_Exit(1);
        }
        if (n > 0) {
            char buf[256];
            ssize_t got = read(0, buf, sizeof buf);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
                // stdin closed: our parent is gone. _Exit, not return: returning would run
                // the destructor of `never_signalled`, and glibc's pthread_cond_destroy waits
                // for the waiters that will never wake.
                std::fflush(stdout);
                std::_Exit(0);
            }
        }
        auto now = clock::now();
        if (report_rate && now >= next_report) {
            unsigned long count = demo::spin_iterations.load(std::memory_order_relaxed);
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
            unsigned long long per_second =
                static_cast<unsigned long long>(count - last_count) * 1000000000ULL / static_cast<unsigned long long>(ns);
            std::printf("rate %llu\n", per_second);
            std::fflush(stdout);
            last = now;
            last_count = count;
            next_report += std::chrono::seconds(1);
            if (next_report < now) {
                next_report = now + std::chrono::seconds(1);
            }
        }
    }
}

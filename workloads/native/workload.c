/*
 * workload.c — a multi-threaded C program with known call chains.
 *
 * flamegrid's tests and benchmarks sample this program from outside and check that the
 * stacks they get back contain exactly the chains below. It is compiled twice by the crate's
 * build script: once with `-fno-omit-frame-pointer` and once with `-fomit-frame-pointer`, so
 * the sampler has to prove it unwinds with DWARF CFI as well as with frame pointers.
 *
 * Command line: PROG SPIN SLEEP WAIT LOCK CHURN [--rate]
 *
 *   spin-<i>   burns CPU:            spin_thread -> spin_outer -> spin_middle -> spin_inner
 *   sleep-<i>  loops in nanosleep:   sleep_thread -> sleep_outer -> sleep_inner
 *   wait-<i>   pthread_cond_wait on a condition nobody signals:
 *                                    wait_thread -> wait_outer -> wait_inner
 *   lock-<i>   pthread_mutex_lock on a mutex main holds forever:
 *                                    lock_thread -> lock_outer -> lock_inner
 *   churn-<i>  a short-lived thread that does a little work, starts its successor (which
 *              inherits the name) and exits, so thread ids appear and vanish all the time.
 *
 * Once every thread is started and named, the program prints `ready` on stdout. With
 * `--rate` it then prints `rate N` every second, N being the spinners' loop iterations in
 * that second. It exits when stdin reaches end-of-file (the parent died or closed the pipe)
 * or on any terminating signal, so a crashed test never leaves it behind.
 *
 * Each `+` byte read from stdin starts one more spinner, `spin-extra-<k>` (k = 0, 1, ...),
 * on the same spin chain, and prints `spinning spin-extra-<k>` once it is named: a program
 * whose hot code changes while it runs, for differential flame graphs.
 *
 * Every named function is kept out of line (and out of GCC's interprocedural cloning, which
 * would rename it `foo.constprop.0`), and no call on a chain is in tail position, so each
 * function really has a frame at -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__clang__)
#define KEEP __attribute__((noinline))
#else
#define KEEP __attribute__((noinline, noipa))
#endif

/* A compiler barrier: code after a call stops the call from becoming a tail jump. */
#define BARRIER() __asm__ volatile("" ::: "memory")

enum { SPIN_CHUNK = 1 << 16 };

static volatile unsigned long sink;
static unsigned long spin_iterations; /* updated with __atomic builtins */

static pthread_mutex_t held_forever = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t never_signalled_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never_signalled = PTHREAD_COND_INITIALIZER;
static volatile int never_true;

/* ---- spinners ---------------------------------------------------------------------- */

KEEP unsigned long spin_inner(unsigned long seed) {
    volatile unsigned long x = seed;
    for (unsigned long i = 0; i < SPIN_CHUNK; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    }
    __atomic_fetch_add(&spin_iterations, SPIN_CHUNK, __ATOMIC_RELAXED);
    return x;
}

KEEP unsigned long spin_middle(unsigned long seed) {
    unsigned long r = spin_inner(seed);
    sink = r;
    BARRIER();
    return r + 1;
}

KEEP void spin_outer(unsigned long seed) {
    for (;;) {
        seed = spin_middle(seed);
        BARRIER();
    }
}

KEEP void *spin_thread(void *arg) {
    spin_outer((unsigned long)arg);
    BARRIER();
    return NULL;
}

/* ---- sleepers ---------------------------------------------------------------------- */

KEEP void sleep_inner(void) {
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    BARRIER();
    sink = 2;
}

KEEP void sleep_outer(void) {
    for (;;) {
        sleep_inner();
        BARRIER();
    }
}

KEEP void *sleep_thread(void *arg) {
    (void)arg;
    sleep_outer();
    BARRIER();
    return NULL;
}

/* ---- waiters (condition variable, no timeout) -------------------------------------- */

KEEP void wait_inner(void) {
    pthread_mutex_lock(&never_signalled_lock);
    while (!never_true) {
        pthread_cond_wait(&never_signalled, &never_signalled_lock);
    }
    pthread_mutex_unlock(&never_signalled_lock);
    BARRIER();
    sink = 3;
}

KEEP void wait_outer(void) {
    for (;;) {
        wait_inner();
        BARRIER();
    }
}

KEEP void *wait_thread(void *arg) {
    (void)arg;
    wait_outer();
    BARRIER();
    return NULL;
}

/* ---- lockers (a mutex main never releases) ------------------------------------------ */

KEEP void lock_inner(void) {
    pthread_mutex_lock(&held_forever);
    BARRIER();
    sink = 4;
    pthread_mutex_unlock(&held_forever);
}

KEEP void lock_outer(void) {
    for (;;) {
        lock_inner();
        BARRIER();
    }
}

KEEP void *lock_thread(void *arg) {
    (void)arg;
    lock_outer();
    BARRIER();
    return NULL;
}

/* ---- churn: each thread starts its successor and exits ----------------------------- */

KEEP void *churn_thread(void *arg);

KEEP void churn_work(void) {
    volatile unsigned long x = 0;
    for (int i = 0; i < 20000; i++) {
        x += (unsigned long)i;
    }
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
    BARRIER();
    sink = x;
}

KEEP void *churn_thread(void *arg) {
    /* The creator names the first thread of a slot; successors inherit the name, and setting
     * it here too closes the window before the creator's pthread_setname_np lands. */
    char name[32];
    snprintf(name, sizeof name, "churn-%lu", (unsigned long)arg - 1);
    pthread_setname_np(pthread_self(), name);
    churn_work();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t next;
    /* The successor inherits this thread's name (churn-<i>). */
    while (pthread_create(&next, &attr, churn_thread, arg) != 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_attr_destroy(&attr);
    BARRIER();
    return NULL;
}

/* ---- main -------------------------------------------------------------------------- */

static unsigned parse_count(const char *text, const char *what) {
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v > 4096) {
        fprintf(stderr, "bad %s count '%s' (expected 0..4096)\n", what, text);
        exit(2);
    }
    return (unsigned)v;
}

static void start_role(unsigned count, const char *prefix, void *(*entry)(void *), int detached) {
    for (unsigned i = 0; i < count; i++) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (detached) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        }
        int rc = pthread_create(&t, &attr, entry, (void *)(unsigned long)(i + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            fprintf(stderr, "pthread_create(%s-%u): %s\n", prefix, i, strerror(rc));
            exit(1);
        }
        char name[32];
        snprintf(name, sizeof name, "%s-%u", prefix, i);
        pthread_setname_np(t, name);
    }
}

static void start_extra_spinner(unsigned k) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&t, &attr, spin_thread, (void *)(unsigned long)(1000 + k));
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        fprintf(stderr, "pthread_create(spin-extra-%u): %s\n", k, strerror(rc));
        exit(1);
    }
    char name[32];
    snprintf(name, sizeof name, "spin-extra-%u", k);
    pthread_setname_np(t, name);
    printf("spinning %s\n", name);
    fflush(stdout);
}

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 7 || (argc == 7 && strcmp(argv[6], "--rate") != 0)) {
        fprintf(stderr, "usage: %s SPIN SLEEP WAIT LOCK CHURN [--rate]\n", argv[0]);
        return 2;
    }
    unsigned spin = parse_count(argv[1], "spin");
    unsigned sleepers = parse_count(argv[2], "sleep");
    unsigned waiters = parse_count(argv[3], "wait");
    unsigned lockers = parse_count(argv[4], "lock");
    unsigned churn = parse_count(argv[5], "churn");
    int report_rate = argc == 7;

    pthread_mutex_lock(&held_forever);
    start_role(spin, "spin", spin_thread, 0);
    start_role(sleepers, "sleep", sleep_thread, 0);
    start_role(waiters, "wait", wait_thread, 0);
    start_role(lockers, "lock", lock_thread, 0);
    /* Churn slot i starts as one thread named churn-<i>; each successor inherits the name. */
    start_role(churn, "churn", churn_thread, 1);

    printf("ready\n");
    fflush(stdout);

    /* Main keeps holding `held_forever` and waits for stdin to close. */
    unsigned long long last_ns = now_ns();
    unsigned long last_count = __atomic_load_n(&spin_iterations, __ATOMIC_RELAXED);
    unsigned long long next_report = last_ns + 1000000000ULL;
    unsigned extra_spinners = 0;
    for (;;) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int timeout_ms = -1;
        if (report_rate) {
            unsigned long long now = now_ns();
            timeout_ms = now >= next_report ? 0 : (int)((next_report - now) / 1000000ULL) + 1;
        }
        int n = poll(&pfd, 1, timeout_ms);
        if (n < 0 && errno != EINTR) {
            return 1;
        }
        if (n > 0) {
            char buf[256];
            ssize_t got = read(0, buf, sizeof buf);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
                return 0; /* stdin closed: our parent is gone */
            }
            for (ssize_t i = 0; i < got; i++) {
                if (buf[i] == '+') {
                    start_extra_spinner(extra_spinners++);
                }
            }
        }
        if (report_rate && now_ns() >= next_report) {
            unsigned long long now = now_ns();
            unsigned long count = __atomic_load_n(&spin_iterations, __ATOMIC_RELAXED);
            unsigned long long per_second =
                (unsigned long long)(count - last_count) * 1000000000ULL / (now - last_ns);
            printf("rate %llu\n", per_second);
            fflush(stdout);
            last_ns = now;
            last_count = count;
            next_report += 1000000000ULL;
            if (next_report < now) {
                next_report = now + 1000000000ULL;
            }
        }
    }
}

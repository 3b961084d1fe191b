/*
 * demo.c — flamegrid-demo, a pretend streaming pipeline for `flamegrid-coordinator --demo`.
 *
 * It gives the dashboard something worth looking at: named threads that look like the
 * subtasks of a small dataflow job, each with a recognisable mix of on-CPU and off-CPU time.
 *
 *   source-0, source-1  parse_records -> tokenize -> hash_field (CPU), then validate_record,
 *                       then a short timed wait for input in poll_input
 *   window-0            aggregate_window -> update_bucket / evict_expired (CPU), then a timed
 *                       wait in await_trigger
 *   sink-0              flush_batch: a timed sleep (TIMED_WAITING)
 *   sink-1              await_commit: blocked on a condition variable forever (WAITING)
 *
 * The CPU threads are duty-cycled (about a third busy) so the demo does not monopolise a
 * small machine. It takes no arguments, prints `ready` once all threads are named, and exits
 * when stdin reaches end-of-file or on a terminating signal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__clang__)
#define KEEP __attribute__((noinline))
#else
#define KEEP __attribute__((noinline, noipa))
#endif
#define BARRIER() __asm__ volatile("" ::: "memory")

static volatile unsigned long sink;
static pthread_mutex_t commit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t commit_done = PTHREAD_COND_INITIALIZER;
static volatile int committed;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* ---- sources ----------------------------------------------------------------------- */

KEEP unsigned long hash_field(unsigned long field) {
    volatile unsigned long h = 1469598103934665603UL;
    for (int i = 0; i < 64; i++) {
        h = (h ^ (field >> (i % 8))) * 1099511628211UL;
    }
    return h;
}

KEEP unsigned long tokenize(unsigned long record) {
    unsigned long acc = 0;
    for (int field = 0; field < 8; field++) {
        acc += hash_field(record * 31 + (unsigned long)field);
        BARRIER();
    }
    return acc;
}

KEEP int validate_record(unsigned long token) {
    volatile unsigned long v = token;
    for (int i = 0; i < 16; i++) {
        v = v * 2862933555777941757UL + 3037000493UL;
    }
    return (v & 1) == 0;
}

KEEP unsigned long parse_records(unsigned long batch) {
    unsigned long acc = 0;
    for (unsigned long r = 0; r < 800; r++) {
        unsigned long token = tokenize(batch * 1000 + r);
        acc += (unsigned long)validate_record(token) + token;
        BARRIER();
    }
    return acc;
}

KEEP void poll_input(void) {
    sleep_ms(2);
    BARRIER();
    sink = 1;
}

KEEP void *source_main(void *arg) {
    unsigned long batch = (unsigned long)arg;
    for (;;) {
        sink = parse_records(batch++);
        poll_input();
        BARRIER();
    }
    return NULL;
}

/* ---- window ------------------------------------------------------------------------ */

KEEP unsigned long update_bucket(unsigned long key) {
    volatile unsigned long b = key;
    for (int i = 0; i < 400; i++) {
        b = (b << 7) ^ (b >> 3) ^ (unsigned long)i;
    }
    return b;
}

KEEP unsigned long evict_expired(unsigned long watermark) {
    volatile unsigned long w = watermark;
    for (int i = 0; i < 200; i++) {
        w = w * 3 + 1;
    }
    return w;
}

KEEP unsigned long aggregate_window(unsigned long window) {
    unsigned long acc = 0;
    for (unsigned long k = 0; k < 1500; k++) {
        acc += update_bucket(window * 7919 + k);
        BARRIER();
    }
    acc += evict_expired(window);
    BARRIER();
    return acc;
}

KEEP void await_trigger(void) {
    sleep_ms(2);
    BARRIER();
    sink = 2;
}

KEEP void *window_main(void *arg) {
    unsigned long window = (unsigned long)arg;
    for (;;) {
        sink = aggregate_window(window++);
        await_trigger();
        BARRIER();
    }
    return NULL;
}

/* ---- sinks ------------------------------------------------------------------------- */

KEEP void flush_batch(void) {
    sleep_ms(100);
    BARRIER();
    sink = 3;
}

KEEP void *sink_flush_main(void *arg) {
    (void)arg;
    for (;;) {
        flush_batch();
        BARRIER();
    }
    return NULL;
}

KEEP void await_commit(void) {
    pthread_mutex_lock(&commit_lock);
    while (!committed) {
        pthread_cond_wait(&commit_done, &commit_lock);
    }
    pthread_mutex_unlock(&commit_lock);
    BARRIER();
    sink = 4;
}

KEEP void *sink_commit_main(void *arg) {
    (void)arg;
    for (;;) {
        await_commit();
        BARRIER();
    }
    return NULL;
}

/* ---- main -------------------------------------------------------------------------- */

static void start(const char *name, void *(*entry)(void *), unsigned long arg) {
    pthread_t t;
    int rc = pthread_create(&t, NULL, entry, (void *)arg);
    if (rc != 0) {
        fprintf(stderr, "pthread_create(%s): %s\n", name, strerror(rc));
        _exit(1);
    }
    pthread_setname_np(t, name);
}

int main(void) {
    start("source-0", source_main, 1);
    start("source-1", source_main, 1000001);
    start("window-0", window_main, 1);
    start("sink-0", sink_flush_main, 0);
    start("sink-1", sink_commit_main, 0);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int n = poll(&pfd, 1, -1);
        if (n < 0 && errno != EINTR) {
            return 1;
        }
        if (n > 0) {
            char buf[256];
            ssize_t got = read(0, buf, sizeof buf);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
                return 0;
            }
        }
    }
}

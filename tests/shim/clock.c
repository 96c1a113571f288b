/* An LD_PRELOAD clock for tests (tests/access.rs, the clock rules of DESIGN section 2).
 *
 * The wall clock (CLOCK_REALTIME) is shifted and the kernel's "synchronised" flag (adjtimex) is
 * set as the file named by ZENEDGE_TEST_CLOCK says: one line, "<offset seconds> <synced 0|1>".
 * The file is read on every call, so a test moves the clock by rewriting it (atomically, by
 * rename). Monotonic clocks are left alone: timers and timeouts are not what is under test.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

static int read_control(long long *offset, int *synced) {
    const char *path = getenv("ZENEDGE_TEST_CLOCK");
    if (!path) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *end;
    *offset = strtoll(buf, &end, 10);
    *synced = (int)strtol(end, NULL, 10);
    return 1;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    long long offset;
    int synced;
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE) &&
        read_control(&offset, &synced))
        ts->tv_sec += offset;
    return r;
}

int adjtimex(struct timex *t) {
    static int (*real)(struct timex *);
    if (!real) real = (int (*)(struct timex *))dlsym(RTLD_NEXT, "adjtimex");
    int r = real(t);
    long long offset;
    int synced;
    if (r < 0 || !read_control(&offset, &synced)) return r;
    if (synced) {
        t->status &= ~STA_UNSYNC;
        return TIME_OK;
    }
    t->status |= STA_UNSYNC;
    return TIME_ERROR;
}

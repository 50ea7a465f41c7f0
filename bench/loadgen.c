/*
 * loadgen: the one native Linux load generator every server in bench/ is measured with.
 *
 * Why native: the servers run under Wine, where every system call is slow; a client in the
 * same Wine (or in host Python) would compete for the same two cores with an interpreter and
 * blur the comparison. One single-threaded epoll loop, compiled with the host's gcc, costs a
 * few microseconds per message and is identical for every server.
 *
 *   loadgen pingpong HOST PORT CONNS SECONDS WARMUP MSGSIZE
 *       CONNS connections; each sends MSGSIZE bytes, waits for all of them to come back, and
 *       repeats. Messages completed during WARMUP seconds are not counted. Prints one JSON
 *       object: messages/s and round-trip percentiles (microseconds; the messages still
 *       unanswered at the end count at their wait so far), and how many connections had a
 *       message answered inside the measured window (a fair server answers them all).
 *   loadgen churn HOST PORT CONCURRENCY SECONDS MSGSIZE client|server
 *       Short connections: connect, one exchange, close. `client`: close right after the
 *       echo (the client closes first). `server`: wait for the server's FIN, then close
 *       (the server closes first; the server must close after one exchange).
 *   loadgen bulk HOST PORT BYTES
 *       One connection: send BYTES (blocking writes of 256 KiB) as fast as the server takes
 *       them, then shutdown(SHUT_WR) and read until the server closes; the server answers the
 *       EOF with the byte count it received (ASCII) before closing, which must equal BYTES.
 *       Prints MB/s (10^6 bytes) from the connect to the server's close.
 *   loadgen hold HOST PORT CONNS MSGSIZE
 *       Open CONNS connections, one exchange on each (so the server has accepted them and
 *       re-posted its receive), print `ready N`, then keep them idle until a line (or EOF)
 *       arrives on stdin; then close them all and exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_MSG 65536

typedef struct {
    int fd;
    int state;         /* churn: 0 connecting, 1 exchanging, 2 waiting for FIN */
    size_t sent;       /* bytes of the current message written */
    size_t received;   /* bytes of the current echo read */
    double started;    /* when the current message (or connection) started */
    long long counted; /* pingpong: messages completed inside the measured window */
} conn_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* A growable array of latencies (microseconds). */
typedef struct { double *v; size_t n, cap; } samples_t;

static void add_sample(samples_t *s, double value) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) die("realloc");
    }
    s->v[s->n++] = value;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(samples_t *s, double p) {
    if (s->n == 0) return 0.0;
    size_t index = (size_t)(p * (double)(s->n - 1) + 0.5);
    return s->v[index];
}

static struct sockaddr_in target(const char *host, int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad address %s\n", host);
        exit(2);
    }
    return sa;
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int new_socket(int nonblocking) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl");
}

/* Blocking connect with a few retries (a full backlog can refuse for a moment). */
static int connect_blocking(const struct sockaddr_in *sa) {
    for (int attempt = 0; attempt < 50; attempt++) {
        int fd = new_socket(0);
        if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0) return fd;
        int err = errno;
        close(fd);
        if (err != ECONNREFUSED && err != EAGAIN && err != ETIMEDOUT) {
            errno = err;
            die("connect");
        }
        usleep(20000);
    }
    die("connect (retries exhausted)");
    return -1;
}

/* Write what is left of the message; 0 on progress or EAGAIN, -1 on error. */
static int pump_send(conn_t *c, const char *msg, size_t size) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->sent += (size_t)n;
    }
    return 0;
}

/* Read echo bytes; returns 1 when the whole message is back, 0 if not yet, -1 on error/EOF. */
static int pump_recv(conn_t *c, char *scratch, size_t size) {
    for (;;) {
        ssize_t n = recv(c->fd, scratch, MAX_MSG, 0);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->received += (size_t)n;
        if (c->received >= size) return 1;
    }
}

static int pingpong(const char *host, int port, int conns, double seconds, double warmup,
                    size_t size) {
    struct sockaddr_in sa = target(host, port);
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    char *msg = malloc(size), *scratch = malloc(MAX_MSG);
    memset(msg, 'x', size);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_blocking(&sa);
        set_nonblocking(cs[i].fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0) die("epoll_ctl");
    }
    samples_t lat = {0};
    long long counted = 0, errors = 0;
    double start = now_s();
    double measure_from = start + warmup, end = measure_from + seconds;
    for (int i = 0; i < conns; i++) {
        cs[i].started = now_s();
        if (pump_send(&cs[i], msg, size) < 0) errors++;
    }
    struct epoll_event events[512];
    int live = conns;
    double t = start;
    while (t < end && live > 0) {
        int n = epoll_wait(ep, events, 512, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now_s();
        for (int k = 0; k < n; k++) {
            conn_t *c = &cs[events[k].data.u32];
            if (c->fd < 0) continue;
            if (events[k].events & EPOLLOUT) {
                if (pump_send(c, msg, size) < 0) goto broken;
                if (c->sent == size) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            int r = pump_recv(c, scratch, size);
            if (r < 0) goto broken;
            if (r == 0) continue;
            double done = now_s();
            if (c->started >= measure_from && done <= end) {
                add_sample(&lat, (done - c->started) * 1e6);
                counted++;
                c->counted++;
            }
            c->sent = c->received = 0;
            c->started = done;
            if (pump_send(c, msg, size) < 0) goto broken;
            if (c->sent < size) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
                                         .data.u32 = events[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            continue;
        broken:
            errors++;
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->fd = -1;
            live--;
        }
    }
    double stop = t < end ? t : end;
    double measured = stop - measure_from;
    /* Survivorship: a server that starves some connections answers the others quickly, so
     * percentiles of completed messages alone would reward unfairness. Every message still
     * unanswered at the end counts too, at its wait so far (a lower bound of its latency). */
    long long served = 0, unanswered = 0;
    double oldest_unanswered = 0.0;
    for (int i = 0; i < conns; i++) {
        if (cs[i].fd < 0) continue;
        if (cs[i].counted > 0) served++;
        double waited = stop - cs[i].started;
        if (waited > 0) {
            add_sample(&lat, waited * 1e6);
            unanswered++;
            if (waited > oldest_unanswered) oldest_unanswered = waited;
        }
        close(cs[i].fd);
    }
    qsort(lat.v, lat.n, sizeof(double), cmp_double);
    printf("{\"mode\": \"pingpong\", \"connections\": %d, \"message_size\": %zu, "
           "\"seconds\": %.3f, \"messages\": %lld, \"messages_per_s\": %.1f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"max_us\": %.1f, \"errors\": %lld, \"served_connections\": %lld, "
           "\"unanswered\": %lld, \"oldest_unanswered_us\": %.1f}\n",
           conns, size, measured, counted, measured > 0 ? (double)counted / measured : 0.0,
           percentile(&lat, 0.50), percentile(&lat, 0.90), percentile(&lat, 0.99),
           percentile(&lat, 0.999), lat.n ? lat.v[lat.n - 1] : 0.0, errors, served, unanswered,
           oldest_unanswered * 1e6);
    return 0;
}

static int churn(const char *host, int port, int concurrency, double seconds, size_t size,
                 int server_closes) {
    struct sockaddr_in sa = target(host, port);
    conn_t *cs = calloc((size_t)concurrency, sizeof *cs);
    char *msg = malloc(size), *scratch = malloc(MAX_MSG);
    memset(msg, 'x', size);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    samples_t lat = {0};
    long long done_count = 0, errors = 0, refused = 0, resets = 0;
    double start = now_s(), end = start + seconds;
    int active = 0;
    /* (Re)start slot i with a new non-blocking connect. */
#define START(i)                                                                      \
    do {                                                                              \
        conn_t *s_ = &cs[i];                                                          \
        s_->fd = new_socket(1);                                                       \
        s_->state = 0;                                                                \
        s_->sent = s_->received = 0;                                                  \
        s_->started = now_s();                                                        \
        if (connect(s_->fd, (struct sockaddr *)&sa, sizeof sa) < 0 &&                 \
            errno != EINPROGRESS)                                                     \
            die("connect");                                                           \
        struct epoll_event ev_ = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)(i)}; \
        if (epoll_ctl(ep, EPOLL_CTL_ADD, s_->fd, &ev_) < 0) die("epoll_ctl");         \
        active++;                                                                     \
    } while (0)
    for (int i = 0; i < concurrency; i++) START(i);
    struct epoll_event events[512];
    double t = start;
    while (active > 0) {
        int n = epoll_wait(ep, events, 512, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now_s();
        if (t > end + 5.0) break; /* stragglers: give up on them */
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            conn_t *c = &cs[i];
            if (c->fd < 0) continue;
            int finished = 0, failed = 0;
            if (c->state == 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    failed = 1;
                    if (err == ECONNREFUSED) refused++;
                } else if (events[k].events & EPOLLOUT) {
                    c->state = 1;
                    if (pump_send(c, msg, size) < 0) failed = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else if (c->state == 1) {
                int r = pump_recv(c, scratch, size);
                if (r < 0) {
                    failed = 1;
                    if (errno == ECONNRESET) resets++;
                } else if (r == 1) {
                    if (server_closes) c->state = 2; else finished = 1;
                }
            }
            if (c->state == 2 && !finished && !failed) {
                ssize_t r = recv(c->fd, scratch, MAX_MSG, 0);
                if (r == 0) finished = 1;
                else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                    if (errno == ECONNRESET) finished = 1; /* an RST after the echo is a close */
                    else failed = 1;
                }
            }
            if (!finished && !failed) continue;
            double now = now_s();
            if (finished) {
                done_count++;
                add_sample(&lat, (now - c->started) * 1e6);
            } else {
                errors++;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->fd = -1;
            active--;
            if (now < end) START(i);
        }
    }
    for (int i = 0; i < concurrency; i++)
        if (cs[i].fd >= 0) close(cs[i].fd);
    double measured = (t < end ? t : end) - start;
    qsort(lat.v, lat.n, sizeof(double), cmp_double);
    printf("{\"mode\": \"churn\", \"concurrency\": %d, \"closer\": \"%s\", \"seconds\": %.3f, "
           "\"connections\": %lld, \"connections_per_s\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"errors\": %lld, \"refused\": %lld, \"resets\": %lld}\n",
           concurrency, server_closes ? "server" : "client", measured, done_count,
           measured > 0 ? (double)done_count / measured : 0.0, percentile(&lat, 0.5),
           percentile(&lat, 0.99), errors, refused, resets);
    return 0;
}

static int bulk(const char *host, int port, long long total) {
    struct sockaddr_in sa = target(host, port);
    size_t chunk = 256 * 1024;
    char *data = malloc(chunk), reply[64];
    memset(data, 'x', chunk);
    double start = now_s();
    int fd = connect_blocking(&sa);
    /* Bounded: a stalled server fails the run instead of hanging it. */
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    long long sent = 0;
    while (sent < total) {
        size_t want = (size_t)(total - sent < (long long)chunk ? total - sent : (long long)chunk);
        ssize_t n = send(fd, data, want, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("send (bulk)");
        }
        sent += n;
    }
    double written = now_s();
    if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, reply + got, sizeof reply - 1 - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recv (bulk ack)");
        }
        if (n == 0) break;
        got += (size_t)n;
        if (got >= sizeof reply - 1) break;
    }
    double end = now_s();
    close(fd);
    reply[got] = 0;
    long long acked = got ? atoll(reply) : -1;
    double seconds = end - start;
    printf("{\"mode\": \"bulk\", \"bytes\": %lld, \"acked\": %lld, \"seconds\": %.4f, "
           "\"send_seconds\": %.4f, \"mb_per_s\": %.2f, \"errors\": %d}\n",
           total, acked, seconds, written - start,
           seconds > 0 ? (double)total / seconds / 1e6 : 0.0, acked == total ? 0 : 1);
    return acked == total ? 0 : 3;
}

static int hold(const char *host, int port, int conns, size_t size) {
    struct sockaddr_in sa = target(host, port);
    int *fds = calloc((size_t)conns, sizeof(int));
    char *msg = malloc(size), *scratch = malloc(MAX_MSG);
    memset(msg, 'x', size);
    int opened = 0;
    double start = now_s();
    for (int i = 0; i < conns; i++) {
        fds[i] = connect_blocking(&sa);
        opened++;
        /* One exchange, blocking: proves the server accepted it and posted its receive. */
        struct timeval tv = {.tv_sec = 30};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (send(fds[i], msg, size, MSG_NOSIGNAL) != (ssize_t)size) die("send");
        size_t got = 0;
        while (got < size) {
            ssize_t n = recv(fds[i], scratch, MAX_MSG, 0);
            if (n <= 0) die("recv (hold)");
            got += (size_t)n;
        }
    }
    printf("ready %d %.3f\n", opened, now_s() - start);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { /* EOF also ends the hold */ }
    for (int i = 0; i < opened; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv) {
    raise_fd_limit();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 8 && strcmp(argv[1], "pingpong") == 0) {
        size_t size = (size_t)atol(argv[7]);
        if (size == 0 || size > MAX_MSG) size = 64;
        return pingpong(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]), atof(argv[6]),
                        size);
    }
    if (argc >= 8 && strcmp(argv[1], "churn") == 0) {
        size_t size = (size_t)atol(argv[6]);
        if (size == 0 || size > MAX_MSG) size = 64;
        return churn(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]), size,
                     strcmp(argv[7], "server") == 0);
    }
    if (argc >= 5 && strcmp(argv[1], "bulk") == 0)
        return bulk(argv[2], atoi(argv[3]), atoll(argv[4]));
    if (argc >= 6 && strcmp(argv[1], "hold") == 0) {
        size_t size = (size_t)atol(argv[5]);
        if (size == 0 || size > MAX_MSG) size = 64;
        return hold(argv[2], atoi(argv[3]), atoi(argv[4]), size);
    }
    fprintf(stderr,
            "usage: loadgen pingpong HOST PORT CONNS SECONDS WARMUP MSGSIZE\n"
            "       loadgen churn HOST PORT CONCURRENCY SECONDS MSGSIZE client|server\n"
            "       loadgen bulk HOST PORT BYTES\n"
            "       loadgen hold HOST PORT CONNS MSGSIZE\n");
    return 2;
}

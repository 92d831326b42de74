/* A small C ping-pong load client: the yardstick for the Python load generator.
 *
 * Usage: pingpong HOST PORT CONNECTIONS SIZE SECONDS
 * Every connection sends SIZE bytes, waits for all of them to come back (and
 * compares them), and sends again: closed-loop ping-pong on one epoll thread.
 * Each round trip's latency (send to last byte back) is kept, and sorted at
 * the end for its percentiles.
 * Prints one line of JSON: {"round_trips": N, "seconds": S, "rps": R, "errors": E,
 * "p50_us": P, "p99_us": Q}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t got;
    unsigned char *msg;
    double sent_at;
};

/* Every round trip's latency in microseconds, grown as needed. */
static float *lat;
static size_t nlat, caplat;

static void keep_latency(double us) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) {
            perror("realloc");
            exit(4);
        }
    }
    lat[nlat++] = (float)us;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double percentile(double p) {
    if (!nlat) return 0.0;
    size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);
    return lat[i];
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: pingpong HOST PORT CONNECTIONS SIZE SECONDS\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    double seconds = atof(argv[5]);
    int ep = epoll_create1(0), one = 1;
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    unsigned char *buf = malloc(size > 65536 ? size : 65536);
    long errors = 0, trips = 0;
    for (int i = 0; i < nconn; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, host, &a.sin_addr);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("connect");
            return 3;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[i].fd = fd;
        conns[i].msg = malloc(size);
        for (size_t j = 0; j < size; j++) conns[i].msg[j] = (unsigned char)(i + j);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        conns[i].sent_at = now();
        if (send(fd, conns[i].msg, size, MSG_NOSIGNAL) != (ssize_t)size) errors++;
    }
    double start = now(), end = start + seconds;
    struct epoll_event events[512];
    while (now() < end) {
        int n = epoll_wait(ep, events, 512, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t r = recv(c->fd, buf, size - c->got, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            if (memcmp(buf, c->msg + c->got, (size_t)r) != 0) errors++;
            c->got += (size_t)r;
            if (c->got == size) {
                double t = now();
                keep_latency((t - c->sent_at) * 1e6);
                c->got = 0;
                trips++;
                c->sent_at = t;
                if (send(c->fd, c->msg, size, MSG_NOSIGNAL) != (ssize_t)size) errors++;
            }
        }
    }
    double took = now() - start;
    qsort(lat, nlat, sizeof *lat, by_value);
    printf("{\"round_trips\": %ld, \"seconds\": %.3f, \"rps\": %.1f, \"errors\": %ld, "
           "\"p50_us\": %.0f, \"p99_us\": %.0f}\n",
           trips, took, trips / took, errors, percentile(50), percentile(99));
    return errors ? 1 : 0;
}

/* A minimal epoll echo server: the near-limit baseline for tools/bench.py.
 *
 * Usage: echo_epoll PORT   (0 picks a free port; prints "listening on 127.0.0.1:PORT")
 * Level-triggered epoll, non-blocking sockets, a per-connection output buffer
 * for what send() did not take; a connection whose buffer holds HIGH bytes or
 * more is not read until it drains (a peer that never reads cannot make it
 * grow). Benchmark-only code: no half-close handling beyond closing on EOF
 * once everything owed is sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define HIGH (1 << 20) /* stop reading a connection with this much unsent */

struct conn {
    int fd;
    char *out;
    size_t out_len, out_cap;
    int eof;
    unsigned cur; /* the events registered now */
};

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static int flush_out(struct conn *c) {
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return 0;
}

static void set_events(int ep, struct conn *c) {
    unsigned want = (c->eof || c->out_len >= HIGH ? 0 : EPOLLIN) | (c->out_len ? EPOLLOUT : 0);
    if (want == c->cur) return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->cur = want;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0) {
        perror("listen");
        return 2;
    }
    socklen_t alen = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &alen);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    static char buf[BUF];
    struct epoll_event events[256];
    while (!stopping) {
        int n = epoll_wait(ep, events, 256, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->cur = EPOLLIN;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                if (flush_out(c) < 0) { drop(ep, c); continue; }
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = recv(c->fd, buf, BUF, 0);
                if (r == 0) c->eof = 1;
                else if (r < 0 && errno != EAGAIN && errno != EINTR) { drop(ep, c); continue; }
                else if (r > 0) {
                    size_t off = 0;
                    if (!c->out_len) {
                        ssize_t s = send(c->fd, buf, (size_t)r, MSG_NOSIGNAL);
                        if (s < 0 && errno != EAGAIN) { drop(ep, c); continue; }
                        off = s > 0 ? (size_t)s : 0;
                    }
                    size_t rest = (size_t)r - off;
                    if (rest) {
                        if (c->out_len + rest > c->out_cap) {
                            c->out_cap = (c->out_len + rest) * 2;
                            c->out = realloc(c->out, c->out_cap);
                        }
                        memcpy(c->out + c->out_len, buf + off, rest);
                        c->out_len += rest;
                    }
                }
            }
            if (c->eof && !c->out_len) { drop(ep, c); continue; }
            set_events(ep, c);
        }
    }
    return 0;
}

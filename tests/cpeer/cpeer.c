/*
 * cpeer: a redstone-ipc peer in C, driven by tests/test_cpeer.py.
 *
 * The Python side exports handles (Handle.export()) and starts this program
 * with their fds inherited (subprocess.Popen(pass_fds=...)). Progress is
 * reported as lines on stdout; where the test must act first, this program
 * waits for a line on stdin. Any failure prints "FAIL <why>" and exits 1.
 *
 *   cpeer port DOOR CAPACITY
 *       A SEND right to a Port (one fd: the door's sending end). Sends an
 *       inline message, one whose payload goes in a data segment, one that
 *       carries an SHM region and an eventfd; then, on "FILL", publishes
 *       without waiting until there is no credit ("FULL n"); then, on
 *       "MORE k", sends k more, waiting for room (TX_WAITING, DOOR_WANT,
 *       REC_WAKE) as the test receives ("WAITED w", "DONE").
 *
 *   cpeer channel PEER_DOOR DOOR LOCK CAPACITY
 *       A channel endpoint with SEND|RECEIVE (three fds: the peer's door,
 *       our door's receiving end, our owner lock). Takes the receive side,
 *       sends requests (txid 1..) and receives the Python side's replies on
 *       its own door: inline, in a data segment, with handles; then lets
 *       the Python side fill its queue ("GO n": read n messages slowly, so
 *       that the Python sender waits for room); then says "bye".
 *
 *   cpeer bad DOOR CAPACITY KIND
 *       Sends one good message, then, on "BREAK", breaks the protocol: KIND
 *       "head" publishes beyond its credits, "record" publishes a slot with
 *       handles and no handles record, "shm" sends an SHM handle whose size
 *       is not sealed. Waits until the receiver ends the connection
 *       ("CLOSED n hangup=yes", n = RX_CLOSED).
 */
#define _GNU_SOURCE
#include "rsipc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 20000

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static int arg_int(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < 0 || v > 1 << 30)
        fail("bad number %s", s);
    return (int)v;
}

/* The next line from the test, which must start with `word`. */
static void expect_line(const char *word, char *line, size_t len)
{
    if (!fgets(line, (int)len, stdin))
        fail("stdin closed while waiting for %s", word);
    if (strncmp(line, word, strlen(word)) != 0)
        fail("expected %s, got %s", word, line);
}

static void pattern(uint8_t *buf, size_t n, unsigned mul, unsigned add)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)((i * mul + add) & 0xff);
}

static int has_pattern(const uint8_t *buf, size_t n, unsigned mul, unsigned add)
{
    for (size_t i = 0; i < n; i++)
        if (buf[i] != (uint8_t)((i * mul + add) & 0xff))
            return 0;
    return 1;
}

static void send_or_fail(struct rs_sender *s, struct rs_msg *m, const char *what)
{
    uint32_t why = 0;
    int rc = rs_send(s, m, TIMEOUT_MS, &why);
    if (rc < 0)
        fail("sending %s: %s (RX_CLOSED %u)", what, strerror(-rc), why);
}

/* -- port ------------------------------------------------------------------------ */

static int port_main(int door, uint32_t capacity)
{
    struct rs_sender s;
    char line[128];
    int rc = rs_sender_connect(&s, door, capacity);
    if (rc < 0)
        fail("connect: %s", strerror(-rc));

    /* 1. inline */
    const char *hello = "hello from C";
    struct rs_msg m = {.msg_type = 1, .priority = 3, .payload = hello, .size = strlen(hello)};
    send_or_fail(&s, &m, "the inline message");

    /* 2. a payload in a data segment (announced by REC_SEGMENT) */
    size_t big_size = 100000;
    uint8_t *big = malloc(big_size);
    pattern(big, big_size, 7, 3);
    m = (struct rs_msg){.msg_type = 2, .payload = big, .size = big_size};
    send_or_fail(&s, &m, "the data-segment message");
    free(big);

    /* 3. handles: an SHM region (READ|WRITE|MAP|TRANSFER, size sealed) and an eventfd */
    int shm = rs_memfd("cpeer-shm", 8192);
    if (shm < 0)
        fail("memfd: %s", strerror(-shm));
    const char *text = "written by C";
    if (pwrite(shm, text, strlen(text), 0) != (ssize_t)strlen(text))
        fail("pwrite");
    int ev = eventfd(42, EFD_CLOEXEC);
    if (ev < 0)
        fail("eventfd");
    struct rs_handle handles[2] = {
        {.type = RS_TYPE_SHM, .rights = RS_READ | RS_WRITE | RS_MAP | RS_TRANSFER, .extra = 8192,
         .nfds = 1, .fds = {shm}},
        {.type = RS_TYPE_FD, .rights = RS_READ | RS_WRITE | RS_TRANSFER, .extra = 0, .nfds = 1, .fds = {ev}},
    };
    m = (struct rs_msg){.msg_type = 3, .payload = "handles", .size = 7, .handles = handles, .nhandles = 2};
    send_or_fail(&s, &m, "the message with handles");
    close(shm); /* moved: the receiver has them now */
    close(ev);
    printf("SENT 3\n");

    /* 4. fill the port without waiting: exactly the credits granted */
    expect_line("FILL", line, sizeof line);
    int sent = 0;
    for (;;) {
        char payload[32];
        int len = snprintf(payload, sizeof payload, "fill %d", sent);
        m = (struct rs_msg){.msg_type = 4, .payload = payload, .size = (size_t)len};
        rc = rs_try_send(&s, &m);
        if (rc == RS_NO_CREDIT)
            break;
        if (rc != RS_SENT)
            fail("filling: %d", rc);
        sent++;
    }
    printf("FULL %d\n", sent);

    /* 5. more, waiting for room each time it is short */
    expect_line("MORE", line, sizeof line);
    int more = arg_int(strtok(line + 5, "\n"));
    for (int i = 0; i < more; i++) {
        char payload[32];
        int len = snprintf(payload, sizeof payload, "more %d", i);
        m = (struct rs_msg){.msg_type = 5, .payload = payload, .size = (size_t)len};
        send_or_fail(&s, &m, "a message after waiting");
    }
    printf("WAITED %u\n", s.waits);
    rs_sender_close(&s);
    printf("DONE\n");
    return 0;
}

/* -- channel --------------------------------------------------------------------- */

static void recv_or_fail(struct rs_receiver *r, struct rs_received *out, const char *what)
{
    int rc = rs_recv(r, out, TIMEOUT_MS);
    if (rc < 0)
        fail("receiving %s: %s (%s)", what, strerror(-rc), r->error);
}

static void request(struct rs_sender *s, uint32_t txid, const char *text)
{
    struct rs_msg m = {.msg_type = 10, .txid = txid, .payload = text, .size = strlen(text)};
    send_or_fail(s, &m, text);
}

static int channel_main(int peer_door, int door, int lock, uint32_t capacity)
{
    struct rs_receiver r;
    struct rs_sender s;
    struct rs_received in;
    char line[128];
    int rc = rs_receiver_open(&r, door, lock, capacity);
    if (rc == -EBUSY) {
        printf("BUSY\n");
        return 3;
    }
    if (rc < 0)
        fail("taking the receive side: %s", strerror(-rc));
    rc = rs_sender_connect(&s, peer_door, capacity);
    if (rc < 0)
        fail("connect: %s", strerror(-rc));

    /* 1. an inline reply */
    request(&s, 1, "ping");
    recv_or_fail(&r, &in, "reply 1");
    if (in.txid != 1 || in.msg_type != 11 || in.nhandles)
        fail("reply 1: txid %u type %u handles %u", in.txid, in.msg_type, in.nhandles);
    printf("REPLY 1 %.*s pid=%d\n", (int)in.size, (const char *)in.payload, (int)in.pid);
    rs_received_free(&in);

    /* 2. a reply whose payload is in the Python sender's data segment */
    request(&s, 2, "big");
    recv_or_fail(&r, &in, "reply 2");
    if (in.txid != 2 || !(in.slot_flags & RS_SLOT_DATA))
        fail("reply 2: txid %u flags %#x", in.txid, in.slot_flags);
    printf("REPLY 2 %zu %s\n", in.size, has_pattern(in.payload, in.size, 13, 5) ? "ok" : "corrupt");
    rs_received_free(&in);

    /* 3. a reply with handles: a read-only SHM region and an eventfd */
    request(&s, 3, "handles");
    recv_or_fail(&r, &in, "reply 3");
    if (in.txid != 3 || in.nhandles != 2 || in.handles[0].type != RS_TYPE_SHM ||
        in.handles[1].type != RS_TYPE_FD)
        fail("reply 3: txid %u, %u handles", in.txid, in.nhandles);
    struct rs_handle *shm = &in.handles[0];
    char *view = mmap(NULL, shm->extra, PROT_READ, MAP_SHARED, shm->fds[0], 0);
    if (view == MAP_FAILED)
        fail("mapping the SHM region: %s", strerror(errno));
    void *w = mmap(NULL, shm->extra, PROT_READ | PROT_WRITE, MAP_SHARED, shm->fds[0], 0);
    int refused = w == MAP_FAILED; /* read-only fd, and F_SEAL_FUTURE_WRITE */
    if (!refused)
        munmap(w, shm->extra);
    uint64_t count = 0;
    if (read(in.handles[1].fds[0], &count, sizeof count) != (ssize_t)sizeof count)
        fail("reading the eventfd");
    printf("REPLY 3 shm=%.11s rights=%#x writable=%s eventfd=%llu\n", view, shm->rights,
           refused ? "no" : "yes", (unsigned long long)count);
    munmap(view, shm->extra);
    rs_received_free(&in);

    /* 4. the Python side fills our queue, then we read slowly: it must wait
     * for room, and we wake it */
    request(&s, 4, "flood");
    expect_line("GO", line, sizeof line);
    int n = arg_int(strtok(line + 3, "\n"));
    unsigned wakes_before = r.wakes_for_room;
    uint64_t most = 0;
    for (int i = 0; i < n; i++) {
        if (i < 3) {
            struct timespec pause = {0, 30 * 1000 * 1000};
            nanosleep(&pause, NULL); /* let the Python sender find the queue full */
        }
        uint64_t queued = rs_receiver_published(&r);
        if (queued > most)
            most = queued;
        recv_or_fail(&r, &in, "a flood message");
        char want[32];
        int len = snprintf(want, sizeof want, "flood %d", i);
        if (in.msg_type != 12 || in.size != (size_t)len || memcmp(in.payload, want, (size_t)len) != 0)
            fail("flood message %d is %.*s", i, (int)in.size, (const char *)in.payload);
        rs_received_free(&in);
    }
    printf("FLOOD %d most=%llu wakes=%u dropped=%u\n", n, (unsigned long long)most,
           r.wakes_for_room - wakes_before, r.dropped);

    /* 5. bye: then everything closes with the process */
    request(&s, 5, "bye");
    printf("BYE\n");
    rs_sender_close(&s);
    rs_receiver_close(&r);
    return 0;
}

/* -- bad ------------------------------------------------------------------------- */

static int bad_main(int door, uint32_t capacity, const char *kind)
{
    struct rs_sender s;
    int rc = rs_sender_connect(&s, door, capacity);
    if (rc < 0)
        fail("connect: %s", strerror(-rc));
    struct rs_msg m = {.msg_type = 1, .payload = "good", .size = 4};
    send_or_fail(&s, &m, "the good message");
    char line[64];
    expect_line("BREAK", line, sizeof line); /* the test has received it */
    _Atomic uint64_t *head = (_Atomic uint64_t *)(void *)(s.ring + RS_OFF_HEAD);
    uint8_t *slot = s.ring + RS_CONTROL_SIZE + (size_t)(s.head & (s.nslots - 1)) * RS_SLOT_SIZE;
    if (strcmp(kind, "head") == 0) {
        /* publish more than it was ever granted, without taking credits */
        memset(slot, 0, RS_SLOT_SIZE);
        atomic_store_explicit(head, s.head + capacity + 1, memory_order_release);
    } else if (strcmp(kind, "record") == 0) {
        /* a slot that says "handles" with no handles record before it */
        atomic_fetch_add_explicit((_Atomic int32_t *)(void *)(s.ring + RS_OFF_CREDITS), -1,
                                  memory_order_seq_cst);
        memset(slot, 0, RS_SLOT_SIZE);
        uint32_t one = 1;
        memcpy(slot + 4, &one, 4); /* handle_count */
        slot[24] = RS_SLOT_FDS;
        slot[25] = 1;
        atomic_store_explicit(head, s.head + 1, memory_order_release);
    } else if (strcmp(kind, "shm") == 0) {
        /* an SHM handle whose memfd can still grow or shrink */
        int fd = (int)syscall(SYS_memfd_create, "cpeer-unsealed", 1U);
        if (fd < 0 || ftruncate(fd, 4096) < 0)
            fail("memfd");
        struct rs_handle h = {.type = RS_TYPE_SHM, .rights = RS_READ | RS_WRITE | RS_MAP | RS_TRANSFER,
                              .extra = 4096, .nfds = 1, .fds = {fd}};
        m = (struct rs_msg){.msg_type = 2, .handles = &h, .nhandles = 1};
        send_or_fail(&s, &m, "the unsealed SHM handle");
        close(fd);
    } else {
        fail("unknown kind %s", kind);
    }
    uint64_t one = 1;
    if (write(s.doorbell, &one, sizeof one) < 0)
        fail("doorbell");
    printf("BROKE %s\n", kind);
    /* The receiver drops us: RX_CLOSED, a WAKE, and our socket's hang-up. */
    for (int waited = 0; waited < TIMEOUT_MS; waited += 10) {
        uint32_t why = rs_sender_closed_reason(&s);
        if (why) {
            struct pollfd p = {.fd = s.sock, .events = POLLRDHUP};
            int gone = poll(&p, 1, TIMEOUT_MS) == 1 && (p.revents & (POLLHUP | POLLRDHUP));
            printf("CLOSED %u hangup=%s\n", why, gone ? "yes" : "no");
            rs_sender_close(&s);
            return 0;
        }
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    fail("the receiver never ended the connection");
    return 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "port") == 0)
        return port_main(arg_int(argv[2]), (uint32_t)arg_int(argv[3]));
    if (argc == 6 && strcmp(argv[1], "channel") == 0)
        return channel_main(arg_int(argv[2]), arg_int(argv[3]), arg_int(argv[4]), (uint32_t)arg_int(argv[5]));
    if (argc == 5 && strcmp(argv[1], "bad") == 0)
        return bad_main(arg_int(argv[2]), (uint32_t)arg_int(argv[3]), argv[4]);
    fprintf(stderr, "usage: cpeer port DOOR CAPACITY | channel PEER_DOOR DOOR LOCK CAPACITY | "
                    "bad DOOR CAPACITY head|record|shm\n");
    return 2;
}

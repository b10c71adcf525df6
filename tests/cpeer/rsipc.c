/*
 * rsipc.c: the redstone-ipc ring protocol, version 1, in C (see rsipc.h and
 * docs/wire-format.md). Each rule of the document is marked where it is
 * followed, as "wire-format: ...".
 */
#define _GNU_SOURCE
#include "rsipc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the redstone-ipc wire format is little-endian; this peer reads it natively"
#endif

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

/* -- words of the control page --------------------------------------------------
 * Every word both sides touch is accessed atomically; the slots and payloads
 * are plain memory, ordered by HEAD (release/acquire) and the tags. */
#define U32AT(base, off) ((_Atomic uint32_t *)(void *)((base) + (off)))
#define U64AT(base, off) ((_Atomic uint64_t *)(void *)((base) + (off)))
#define CREDITS(base) ((_Atomic int32_t *)(void *)((base) + RS_OFF_CREDITS))
#define TAG(tags, g) ((_Atomic uint8_t *)(void *)((tags) + (g)))

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - now_ms();
    return left <= 0 ? 0 : (int)(left > 1000000 ? 1000000 : left);
}

uint32_t rs_slot_count(uint32_t capacity)
{
    uint32_t n = 1;
    while (n < capacity && n < RS_MAX_SLOTS)
        n <<= 1;
    return n;
}

static uint64_t tags_size(uint64_t data_size)
{
    uint64_t granules = data_size / RS_GRANULE;
    return (granules + RS_PAGE - 1) / RS_PAGE * RS_PAGE;
}

uint64_t rs_segment_size(uint64_t data_size)
{
    return RS_SEGMENT_HEADER + tags_size(data_size) + data_size;
}

int rs_memfd(const char *name, uint64_t size)
{
    int fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* One record on a SOCK_SEQPACKET socket, never waiting, never SIGPIPE. */
static int send_record(int sock, const void *data, size_t len, const int *fds, int nfds)
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * RS_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > RS_MAX_FDS)
        return -EMSGSIZE;
    if (nfds > 0) {
        memset(u.buf, 0, sizeof u.buf);
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0)
        return -errno;
    return n == (ssize_t)len ? 0 : -EMSGSIZE;
}

/* One record with its fds (close-on-exec) and the sender's credentials if
 * the kernel attached them. Returns the length, or a negative errno. */
static ssize_t recv_record(int sock, void *buf, size_t len, int *fds, int *nfds, struct ucred *cred,
                           int *have_cred, int *msg_flags)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * RS_MAX_FDS) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    *nfds = 0;
    if (have_cred)
        *have_cred = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + sizeof(int) * (size_t)i, sizeof fd);
                if (*nfds < RS_MAX_FDS)
                    fds[(*nfds)++] = fd;
                else
                    close(fd);
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS && cred && have_cred &&
                   c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            memcpy(cred, CMSG_DATA(c), sizeof *cred);
            *have_cred = 1;
        }
    }
    *msg_flags = msg.msg_flags;
    return n;
}

static int hung_up(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP));
}

static uint64_t random_token(void)
{
    uint64_t t = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &t, sizeof t) != (ssize_t)sizeof t)
            t = 0;
        close(fd);
    }
    if (!t)
        t = ((uint64_t)getpid() << 32) ^ (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)&t;
    return t;
}

void rs_received_free(struct rs_received *m)
{
    free(m->payload);
    m->payload = NULL;
    for (uint32_t i = 0; i < m->nhandles; i++)
        close_fds(m->handles[i].fds, m->handles[i].nfds);
    m->nhandles = 0;
}

/* ============================================================================
 * The sending side
 * ========================================================================== */

int rs_sender_connect(struct rs_sender *s, int door, uint32_t capacity)
{
    int ring_fd = -1, pair[2] = {-1, -1};
    memset(s, 0, sizeof *s);
    s->sock = s->doorbell = -1;
    s->door = door;
    if (capacity == 0)
        return -EINVAL;
    /* wire-format: nslots is a power of two, at most what the receiver
     * allows: slot_count(capacity), as the library computes it. */
    s->nslots = rs_slot_count(capacity);
    s->ring_size = RS_CONTROL_SIZE + (size_t)s->nslots * RS_SLOT_SIZE;
    int rc;
    ring_fd = rs_memfd("redstone-ring", s->ring_size); /* size sealed: receiver checks */
    if (ring_fd < 0)
        return ring_fd;
    s->ring = mmap(NULL, s->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
    if (s->ring == MAP_FAILED) {
        rc = -errno;
        s->ring = NULL;
        goto fail;
    }
    /* wire-format: the ring header is written before the CONNECT record. */
    put32(s->ring + RS_OFF_MAGIC, RS_RING_MAGIC);
    put16(s->ring + RS_OFF_VERSION, RS_VERSION);
    put16(s->ring + RS_OFF_FLAGS, 0);
    put32(s->ring + RS_OFF_NSLOTS, s->nslots);
    put32(s->ring + RS_OFF_SLOT_SIZE, RS_SLOT_SIZE);
    s->doorbell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->doorbell < 0) {
        rc = -errno;
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        rc = -errno;
        goto fail;
    }
    s->token = random_token();
    uint8_t rec[RS_DOOR_RECORD_SIZE];
    put32(rec, RS_DOOR_MAGIC);
    put16(rec + 4, RS_VERSION);
    put16(rec + 6, RS_DOOR_CONNECT);
    put32(rec + 8, s->nslots);
    put32(rec + 12, 0);
    put64(rec + 16, s->token);
    int fds[3] = {pair[1], ring_fd, s->doorbell}; /* wire-format: in this order */
    rc = send_record(door, rec, sizeof rec, fds, 3);
    if (rc < 0)
        goto fail; /* -EAGAIN: the door is full; -EPIPE: the port is gone */
    /* wire-format: drop what only the receiver needs, so that its hang-up
     * (and ours) is seen by the other side. */
    close(pair[1]);
    close(ring_fd);
    s->sock = pair[0];
    s->next_segment_id = 1;
    return 0;
fail:
    if (pair[0] >= 0) {
        close(pair[0]);
        close(pair[1]);
    }
    if (s->doorbell >= 0)
        close(s->doorbell);
    s->doorbell = -1;
    if (s->ring)
        munmap(s->ring, s->ring_size);
    s->ring = NULL;
    close(ring_fd);
    return rc;
}

uint32_t rs_sender_closed_reason(const struct rs_sender *s)
{
    return atomic_load_explicit(U32AT(s->ring, RS_OFF_RX_CLOSED), memory_order_acquire);
}

int32_t rs_sender_credits(const struct rs_sender *s)
{
    return atomic_load_explicit(CREDITS(s->ring), memory_order_acquire);
}

/* -- data segments (sender) ------------------------------------------------------ */

static void segw_unmap(struct rs_segw *g)
{
    if (g->map)
        munmap(g->map, g->map_size);
    memset(g, 0, sizeof *g);
}

static void segw_push(struct rs_segw *g, uint64_t start, uint64_t end)
{
    unsigned i = (g->pend_first + g->pend_count) % 64;
    g->pend_start[i] = start;
    g->pend_end[i] = end;
    g->pend_count++;
}

/* Whether `need` more bytes fit, after taking back what the receiver
 * released (oldest first: memory is reused only behind released payloads). */
static int segw_room(struct rs_segw *g, uint64_t need)
{
    if (g->head + need - g->tail <= g->size)
        return 1;
    while (g->pend_count) {
        unsigned i = g->pend_first;
        uint64_t gi = (g->pend_start[i] & (g->size - 1)) / RS_GRANULE;
        /* wire-format: the tag is read with acquire ordering (the receiver's
         * reads of the payload happen before its release store of the tag). */
        if (atomic_load_explicit(TAG(g->tags, gi), memory_order_acquire) != RS_TAG_RELEASED)
            break;
        g->tail = g->pend_end[i];
        g->pend_first = (i + 1) % 64;
        g->pend_count--;
    }
    if (!g->pend_count)
        g->tail = g->head;
    return g->head + need - g->tail <= g->size;
}

/* Whether segw_alloc(g, n) would succeed now. */
static int segw_fits(struct rs_segw *g, uint64_t n)
{
    uint64_t need = (n + RS_GRANULE - 1) & ~(uint64_t)(RS_GRANULE - 1);
    if (!need)
        need = RS_GRANULE;
    uint64_t pos = g->head & (g->size - 1);
    return segw_room(g, pos + need > g->size ? g->size - pos + need : need);
}

/* The offset of n bytes in the segment, or -1 (full of unreleased payloads). */
static int64_t segw_alloc(struct rs_segw *g, uint64_t n)
{
    uint64_t need = (n + RS_GRANULE - 1) & ~(uint64_t)(RS_GRANULE - 1);
    if (!need)
        need = RS_GRANULE;
    uint64_t pos = g->head & (g->size - 1);
    if (g->pend_count > 62)
        return -1;
    if (pos + need > g->size) { /* wire-format: an allocation never wraps: skip the end */
        if (!segw_room(g, g->size - pos + need))
            return -1;
        segw_push(g, g->head, g->head + g->size - pos);
        atomic_store_explicit(TAG(g->tags, pos / RS_GRANULE), RS_TAG_RELEASED, memory_order_relaxed);
        g->head += g->size - pos;
        pos = 0;
    } else if (!segw_room(g, need)) {
        return -1;
    }
    segw_push(g, g->head, g->head + need);
    /* wire-format: the first granule's tag is 0 before the slot that uses it
     * is published (HEAD's release store orders this store before it). */
    atomic_store_explicit(TAG(g->tags, pos / RS_GRANULE), 0, memory_order_relaxed);
    g->head += need;
    return (int64_t)pos;
}

/* A new data segment for payloads of `n` bytes, announced with REC_SEGMENT
 * (wire-format: before the first slot that uses it). */
static int segw_new(struct rs_sender *s, uint64_t n)
{
    uint64_t want = n * 4, size = 1;
    if (want < RS_MIN_SEGMENT)
        want = RS_MIN_SEGMENT;
    if (s->have_segment && want < 2 * s->seg.size)
        want = 2 * s->seg.size;
    while (size < want)
        size <<= 1;
    if (size > RS_MAX_SEGMENT)
        size = RS_MAX_SEGMENT;
    if (n > size)
        return -EMSGSIZE;
    uint64_t total = rs_segment_size(size);
    int fd = rs_memfd("redstone-segment", total);
    if (fd < 0)
        return fd;
    uint8_t *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        return -e;
    }
    uint32_t id = s->next_segment_id;
    put32(map, RS_SEGMENT_MAGIC);
    put16(map + 4, RS_VERSION);
    put16(map + 6, 0);
    put32(map + 8, id);
    put32(map + 12, 0);
    put64(map + 16, size);
    uint8_t rec[8];
    put32(rec, RS_REC_SEGMENT);
    put32(rec + 4, id);
    int rc = send_record(s->sock, rec, sizeof rec, &fd, 1);
    close(fd); /* the receiver has its own now; we keep the mapping */
    if (rc < 0) {
        munmap(map, total);
        return rc;
    }
    /* The old segment retires: the receiver keeps its mapping for as long as
     * it needs; we never allocate from it again. */
    if (s->have_segment)
        segw_unmap(&s->seg);
    memset(&s->seg, 0, sizeof s->seg);
    s->seg.id = id;
    s->seg.map = map;
    s->seg.map_size = total;
    s->seg.size = size;
    s->seg.tags = map + RS_SEGMENT_HEADER;
    s->seg.data = map + RS_SEGMENT_HEADER + tags_size(size);
    s->have_segment = 1;
    s->next_segment_id++;
    return 0;
}

/* 1 placed (*offset set), 0 no room until the receiver releases payloads,
 * or a negative errno. */
static int place(struct rs_sender *s, uint64_t n, uint64_t *offset)
{
    if (s->have_segment && n * 2 <= s->seg.size) {
        int64_t off = segw_alloc(&s->seg, n);
        if (off < 0)
            return 0;
        *offset = (uint64_t)off;
        return 1;
    }
    int rc = segw_new(s, n);
    if (rc < 0)
        return rc;
    int64_t off = segw_alloc(&s->seg, n);
    if (off < 0)
        return 0;
    *offset = (uint64_t)off;
    return 1;
}

/* -- publishing ------------------------------------------------------------------ */

int rs_try_send(struct rs_sender *s, const struct rs_msg *m)
{
    uint8_t *ring = s->ring;
    if (atomic_load_explicit(U32AT(ring, RS_OFF_RX_CLOSED), memory_order_acquire))
        return RS_CLOSED;
    /* Everything that can fail without touching shared state first. */
    int fd_total = 0;
    if (m->nhandles > RS_MAX_FDS)
        return -EMSGSIZE;
    for (uint32_t i = 0; i < m->nhandles; i++) {
        if (m->handles[i].nfds < 0 || m->handles[i].nfds > 3)
            return -EINVAL;
        fd_total += m->handles[i].nfds;
    }
    if (fd_total > RS_MAX_FDS)
        return -EMSGSIZE;

    /* wire-format: take a credit BEFORE writing the slot: atomic add -1; if
     * the old value was not positive there was none: add 1 back. */
    _Atomic int32_t *credits = CREDITS(ring);
    int32_t old = atomic_fetch_add_explicit(credits, -1, memory_order_seq_cst);
    if (old <= 0) {
        atomic_fetch_add_explicit(credits, 1, memory_order_seq_cst);
        return RS_NO_CREDIT;
    }
    /* From here on the credit is ours: publish, or give it back. */
    uint8_t *slot = ring + RS_CONTROL_SIZE + (size_t)(s->head & (s->nslots - 1)) * RS_SLOT_SIZE;
    uint8_t flags = 0;
    uint16_t segment = 0;
    uint32_t granule = 0;
    int rc;
    if (m->size <= RS_INLINE_MAX) {
        if (m->size)
            memcpy(slot + RS_SLOT_HEAD, m->payload, m->size);
    } else {
        uint64_t offset = 0;
        rc = place(s, m->size, &offset); /* may send REC_SEGMENT: before the slot */
        if (rc <= 0) {
            atomic_fetch_add_explicit(credits, 1, memory_order_seq_cst);
            if (rc == 0)
                return RS_NO_DATA_ROOM;
            return (rc == -EPIPE || rc == -ECONNRESET) ? RS_CLOSED : rc;
        }
        memcpy(s->seg.data + offset, m->payload, m->size);
        flags |= RS_SLOT_DATA;
        segment = (uint16_t)s->seg.id;
        granule = (uint32_t)(offset / RS_GRANULE);
    }
    if (m->nhandles) {
        /* wire-format: the handles' record goes out before the slot is
         * published (the receiver reads it when it reads the slot). */
        size_t len = 8 + 16 * (size_t)m->nhandles;
        uint8_t *rec = malloc(len);
        int fds[RS_MAX_FDS];
        int k = 0;
        if (!rec) {
            atomic_fetch_add_explicit(credits, 1, memory_order_seq_cst);
            return -ENOMEM;
        }
        put32(rec, RS_REC_HANDLES);
        put32(rec + 4, m->nhandles);
        for (uint32_t i = 0; i < m->nhandles; i++) {
            const struct rs_handle *h = &m->handles[i];
            uint8_t *d = rec + 8 + 16 * (size_t)i;
            put16(d, h->type);
            put16(d + 2, (uint16_t)h->nfds);
            put32(d + 4, h->rights);
            put64(d + 8, h->extra);
            for (int j = 0; j < h->nfds; j++)
                fds[k++] = h->fds[j];
        }
        rc = send_record(s->sock, rec, len, fds, k);
        free(rec);
        if (rc < 0) {
            atomic_fetch_add_explicit(credits, 1, memory_order_seq_cst);
            return (rc == -EPIPE || rc == -ECONNRESET) ? RS_CLOSED : rc;
        }
        flags |= RS_SLOT_FDS;
    }
    /* The slot: plain stores, made visible by HEAD's release store. */
    put32(slot + 0, (uint32_t)m->size);
    put32(slot + 4, m->nhandles);
    put32(slot + 8, m->msg_type);
    put32(slot + 12, 0);
    put32(slot + 16, (uint32_t)m->priority);
    put32(slot + 20, m->txid);
    slot[24] = flags;
    slot[25] = (uint8_t)fd_total;
    put16(slot + 26, segment);
    put32(slot + 28, granule);
    /* wire-format: publish with a release store of HEAD = n + 1 ... */
    s->head++;
    atomic_store_explicit(U64AT(ring, RS_OFF_HEAD), s->head, memory_order_release);
    /* ... then a full fence (StoreLoad: HEAD before RX_STATE), then ring the
     * doorbell if the receiver said it sleeps. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(U32AT(ring, RS_OFF_RX_STATE), memory_order_relaxed) & RS_RX_SLEEPING) {
        uint64_t one = 1;
        if (write(s->doorbell, &one, sizeof one) < 0) {
            /* EAGAIN: the counter is near its limit, the receiver will look anyway */
        }
    }
    return RS_SENT;
}

/* Read the receiver's WAKE records; 0 at hang-up (the receiver is gone). */
static int drain_wakes(struct rs_sender *s)
{
    uint8_t buf[16];
    for (;;) {
        ssize_t n = recv(s->sock, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        if (n == 0)
            return 0;
        /* Only REC_WAKE goes this way; anything else is ignored. */
    }
}

int rs_send(struct rs_sender *s, const struct rs_msg *m, int timeout_ms, uint32_t *closed_reason)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    uint8_t *ring = s->ring;
    if (closed_reason)
        *closed_reason = 0;
    for (;;) {
        int rc = rs_try_send(s, m);
        if (rc == RS_SENT)
            return 0;
        if (rc < 0)
            return rc;
        if (rc == RS_CLOSED) {
            if (closed_reason)
                *closed_reason = rs_sender_closed_reason(s);
            return -ECONNRESET;
        }
        int left = remaining_ms(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        /* wire-format, waiting for room:
         * 1. TX_WAITING = 1 (the receiver then sends REC_WAKE when it gives
         *    room or releases a payload);
         * 2. a full fence (StoreLoad: TX_WAITING before the next loads);
         * 3. look again at what was missing: credits, or released payloads;
         *    either may have come before step 1, when nobody would wake us;
         * 4. for credits: a DOOR_WANT record on the door (the receiver hears
         *    its door even while it is not receiving);
         * 5. sleep in poll on the connection socket (REC_WAKE, or hang-up)
         *    and the door (hang-up: every receiving end is gone). */
        atomic_store_explicit(U32AT(ring, RS_OFF_TX_STATE), RS_TX_WAITING, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
        int room = rc == RS_NO_CREDIT ? atomic_load_explicit(CREDITS(ring), memory_order_relaxed) > 0
                                      : segw_fits(&s->seg, m->size);
        int alive = 1;
        if (!room) {
            if (rc == RS_NO_CREDIT) {
                uint8_t want[RS_DOOR_RECORD_SIZE];
                put32(want, RS_DOOR_MAGIC);
                put16(want + 4, RS_VERSION);
                put16(want + 6, RS_DOOR_WANT);
                put32(want + 8, 0);
                put32(want + 12, 0);
                put64(want + 16, s->token);
                (void)send_record(s->door, want, sizeof want, NULL, 0); /* EAGAIN: the door
                    is full of records the receiver will read anyway; EPIPE: poll sees it */
            }
            struct pollfd p[2] = {{.fd = s->sock, .events = POLLIN}, {.fd = s->door, .events = 0}};
            s->waits++;
            int n = poll(p, 2, left);
            if (n < 0 && errno != EINTR) {
                atomic_store_explicit(U32AT(ring, RS_OFF_TX_STATE), 0, memory_order_relaxed);
                return -errno;
            }
            alive = drain_wakes(s);
            if (n > 0 && (p[1].revents & (POLLHUP | POLLERR)))
                alive = 0;
        }
        atomic_store_explicit(U32AT(ring, RS_OFF_TX_STATE), 0, memory_order_relaxed);
        if (!alive) {
            uint32_t why = rs_sender_closed_reason(s);
            if (closed_reason)
                *closed_reason = why;
            return why ? -ECONNRESET : -EPIPE;
        }
    }
}

void rs_sender_close(struct rs_sender *s)
{
    if (s->sock >= 0) {
        /* wire-format: read the receiver's unread WAKE records first: closing
         * a socket with unread records makes the peer's next read fail once
         * with ECONNRESET. */
        drain_wakes(s);
        close(s->sock);
    }
    if (s->doorbell >= 0)
        close(s->doorbell);
    if (s->have_segment)
        segw_unmap(&s->seg);
    if (s->ring)
        munmap(s->ring, s->ring_size);
    s->sock = s->doorbell = -1;
    s->ring = NULL;
    s->have_segment = 0;
}

/* ============================================================================
 * The receiving side
 * ========================================================================== */

int rs_receiver_open(struct rs_receiver *r, int door_rx, int lock_fd, uint32_t capacity)
{
    memset(r, 0, sizeof *r);
    r->door = door_rx;
    r->own_lock = -1;
    if (capacity == 0 || capacity > (1u << 20))
        return -EINVAL;
    /* wire-format: the owner lock. flock on our OWN open file description
     * (reopened through /proc: an inherited fd shares its description with
     * the process we got it from, whose lock would then be ours too). */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", lock_fd);
    int own = open(path, O_RDONLY | O_CLOEXEC);
    if (own < 0)
        return -errno;
    if (flock(own, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(own);
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    r->own_lock = own;
    int one = 1; /* the kernel attaches each sender's credentials to CONNECT */
    if (setsockopt(door_rx, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0) {
        int e = errno;
        close(own);
        r->own_lock = -1;
        return -e;
    }
    r->capacity = capacity;
    r->max_slots = rs_slot_count(capacity);
    r->pool = capacity;
    return 0;
}

static void wake(struct rs_conn *c)
{
    uint8_t rec[4];
    put32(rec, RS_REC_WAKE);
    (void)send_record(c->sock, rec, sizeof rec, NULL, 0); /* full of WAKEs, or gone: fine */
}

static int32_t credits_left(struct rs_conn *c)
{
    return atomic_load_explicit(CREDITS(c->ring), memory_order_relaxed);
}

static int tx_waiting(struct rs_conn *c)
{
    return atomic_load_explicit(U32AT(c->ring, RS_OFF_TX_STATE), memory_order_relaxed) & RS_TX_WAITING;
}

/* Give the sender n more credits; wake it if it said it waits. */
static void grant(struct rs_receiver *r, struct rs_conn *c, uint32_t n)
{
    if (!n)
        return;
    atomic_fetch_add_explicit(CREDITS(c->ring), (int32_t)n, memory_order_seq_cst);
    c->allowed += n;
    /* wire-format: grant, full fence, then read TX_WAITING (the mirror of
     * the sender's TX_WAITING, fence, read CREDITS: one of us sees the other). */
    atomic_thread_fence(memory_order_seq_cst);
    if (tx_waiting(c)) {
        wake(c);
        r->wakes_for_room++;
    }
}

static void segr_unmap(struct rs_segr *g)
{
    if (g->map)
        munmap(g->map, g->map_size);
    memset(g, 0, sizeof *g);
}

static void conn_close(struct rs_receiver *r, struct rs_conn *c, uint32_t reason)
{
    if (!c->used)
        return;
    /* What it held (unused credits, published messages not read) comes back. */
    r->pool += (int64_t)(c->allowed - c->tail);
    /* wire-format: tell the sender why, make it ring (harmlessly) and wake it. */
    atomic_store_explicit(U32AT(c->ring, RS_OFF_RX_CLOSED), reason, memory_order_release);
    /* wire-format: poison the credits, so no later take succeeds. */
    atomic_fetch_add_explicit(CREDITS(c->ring), -(1 << 30), memory_order_seq_cst);
    atomic_store_explicit(U32AT(c->ring, RS_OFF_RX_STATE), RS_RX_SLEEPING, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    wake(c);
    close(c->sock);
    close(c->doorbell);
    for (int i = 0; i < RS_MAX_SEGMENTS; i++)
        segr_unmap(&c->segs[i]);
    munmap(c->ring, c->ring_size);
    memset(c, 0, sizeof *c);
}

static void drop(struct rs_receiver *r, struct rs_conn *c, const char *why)
{
    r->dropped++;
    snprintf(r->error, sizeof r->error, "dropped pid %d: %s", (int)c->pid, why);
    conn_close(r, c, RS_CLOSED_PROTOCOL);
}

/* Take back the credits a sender holds unused (to give them to another);
 * -1 if it claims more than it was ever allowed. */
static int64_t reclaim(struct rs_conn *c)
{
    int32_t want = credits_left(c);
    if (want <= 0)
        return 0;
    int32_t old = atomic_fetch_add_explicit(CREDITS(c->ring), -want, memory_order_seq_cst);
    int32_t got = old < 0 ? 0 : (old < want ? old : want);
    if (got < want) /* it took some meanwhile: give back what was not there */
        atomic_fetch_add_explicit(CREDITS(c->ring), want - got, memory_order_seq_cst);
    uint64_t published = atomic_load_explicit(U64AT(c->ring, RS_OFF_HEAD), memory_order_acquire);
    if ((uint64_t)got + published > c->allowed)
        return -1;
    c->allowed -= (uint64_t)got;
    return got;
}

static void serve_wanters(struct rs_receiver *r)
{
    for (int i = 0; i < RS_MAX_CONNS; i++) {
        struct rs_conn *c = &r->conns[i];
        if (!c->used || !c->wants)
            continue;
        if (credits_left(c) > 0) { /* it has room after all */
            c->wants = 0;
            wake(c);
            continue;
        }
        for (int j = 0; j < RS_MAX_CONNS && r->pool <= 0; j++) {
            struct rs_conn *o = &r->conns[j];
            if (o == c || !o->used || credits_left(o) <= 0)
                continue;
            int64_t got = reclaim(o);
            if (got < 0)
                drop(r, o, "it held more credits than it was granted");
            else
                r->pool += got;
        }
        int64_t room = (int64_t)c->nslots - (int64_t)(c->allowed - c->tail);
        int64_t give = r->pool < room ? r->pool : room;
        if (give <= 0)
            continue; /* nothing free: it waits for the next message read */
        r->pool -= give;
        c->wants = 0;
        grant(r, c, (uint32_t)give);
        wake(c);
    }
}

static int eventfd_fd(int fd)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return 0;
    link[n] = 0;
    return strcmp(link, "anon_inode:[eventfd]") == 0;
}

/* A CONNECT record's fds and fields become a connection (checked). */
static const char *accept_conn(struct rs_receiver *r, uint32_t nslots, uint64_t token, int *fds, int nfds,
                               const struct ucred *cred)
{
    if (nfds != 3)
        return "a CONNECT record carries 3 fds";
    if (!cred)
        return "a CONNECT record came without the sender's credentials";
    if (nslots == 0 || (nslots & (nslots - 1)) || nslots > r->max_slots)
        return "a connection asked for a bad number of slots";
    for (int i = 0; i < RS_MAX_CONNS; i++)
        if (r->conns[i].used && r->conns[i].token == token)
            return "a CONNECT record reused a live connection's token";
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET)
        return "a connection's socket is not SOCK_SEQPACKET";
    len = sizeof domain;
    if (getsockopt(fds[0], SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
        return "a connection's socket is not AF_UNIX";
    int seals = fcntl(fds[1], F_GET_SEALS);
    struct stat st;
    if (seals < 0 || fstat(fds[1], &st) < 0)
        return "a connection's ring is not a memfd";
    if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
        return "a connection's ring does not have its size sealed";
    size_t size = RS_CONTROL_SIZE + (size_t)nslots * RS_SLOT_SIZE;
    if ((uint64_t)st.st_size != size)
        return "a connection's ring has the wrong size";
    if (!eventfd_fd(fds[2]))
        return "a connection's doorbell is not an eventfd";
    struct rs_conn *c = NULL;
    for (int i = 0; i < RS_MAX_CONNS && !c; i++)
        if (!r->conns[i].used)
            c = &r->conns[i];
    uint8_t *ring = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
    if (ring == MAP_FAILED)
        return "a connection's ring cannot be mapped";
    if (get32(ring) != RS_RING_MAGIC || get16(ring + 4) != RS_VERSION || get32(ring + 8) != nslots ||
        get32(ring + 12) != RS_SLOT_SIZE) {
        munmap(ring, size);
        return "a connection's ring header does not match its CONNECT record";
    }
    if (!c) { /* no room for it: refuse, so that it does not wait for ever */
        atomic_store_explicit(U32AT(ring, RS_OFF_RX_CLOSED), RS_CLOSED_REFUSED, memory_order_release);
        munmap(ring, size);
        return "too many connections";
    }
    close(fds[1]); /* the mapping is all we need of the ring */
    memset(c, 0, sizeof *c);
    c->used = 1;
    c->sock = fds[0];
    c->doorbell = fds[2];
    c->ring = ring;
    c->ring_size = size;
    c->nslots = nslots;
    c->token = token;
    c->pid = cred->pid;
    c->uid = cred->uid;
    c->gid = cred->gid;
    fds[0] = fds[1] = fds[2] = -1;
    /* Not being watched yet: its first message must ring. */
    atomic_store_explicit(U32AT(ring, RS_OFF_RX_STATE), RS_RX_SLEEPING, memory_order_relaxed);
    int64_t give = r->pool < nslots ? r->pool : nslots;
    if (give > 0) {
        r->pool -= give;
        grant(r, c, (uint32_t)give); /* wakes it if its first send already waits */
    } else {
        c->wants = 1;
    }
    return NULL;
}

/* Read the door: new connections and DOOR_WANT records, without waiting. */
static void serve_door(struct rs_receiver *r)
{
    for (;;) {
        uint8_t buf[64];
        int fds[RS_MAX_FDS], nfds = 0, have_cred = 0, flags = 0;
        struct ucred cred;
        ssize_t n = recv_record(r->door, buf, sizeof buf, fds, &nfds, &cred, &have_cred, &flags);
        if (n < 0)
            return; /* EAGAIN: nothing more */
        if (n == 0 && nfds == 0) {
            if (hung_up(r->door)) {
                r->door_eof = 1; /* every sending end of the door is gone */
                return;
            }
            continue;
        }
        const char *err = NULL;
        if (flags & (MSG_TRUNC | MSG_CTRUNC))
            err = "a door record was truncated";
        else if (n != RS_DOOR_RECORD_SIZE || get32(buf) != RS_DOOR_MAGIC || get16(buf + 4) != RS_VERSION ||
                 get32(buf + 12) != 0)
            err = "not a redstone-ipc v1 door record";
        else if (get16(buf + 6) == RS_DOOR_WANT) {
            if (nfds)
                err = "a WANT record carried fds";
            else {
                uint64_t token = get64(buf + 16);
                for (int i = 0; i < RS_MAX_CONNS; i++)
                    if (r->conns[i].used && r->conns[i].token == token)
                        r->conns[i].wants = 1;
                serve_wanters(r);
            }
        } else if (get16(buf + 6) == RS_DOOR_CONNECT) {
            err = accept_conn(r, get32(buf + 8), get64(buf + 16), fds, nfds, have_cred ? &cred : NULL);
        } else {
            err = "an unknown door record";
        }
        close_fds(fds, nfds); /* what accept_conn did not take */
        if (err) {
            r->dropped++;
            snprintf(r->error, sizeof r->error, "refused a connection: %s", err);
        }
    }
}

/* Messages published on c and not read yet; -1 if HEAD is impossible. */
static int64_t published(struct rs_conn *c)
{
    /* wire-format: HEAD with acquire ordering: the slots below it are complete. */
    uint64_t h = atomic_load_explicit(U64AT(c->ring, RS_OFF_HEAD), memory_order_acquire);
    uint64_t n = h - c->tail;
    if (h != c->tail && (h < c->tail || n > c->nslots || h > c->allowed))
        return -1;
    return (int64_t)n;
}

/* The next record on a connection's socket: it must be there already. */
static const char *next_record(struct rs_conn *c, uint8_t *buf, size_t len, ssize_t *got, int *fds,
                               int *nfds)
{
    int flags = 0;
    ssize_t n = -ECONNRESET;
    for (int tries = 0; tries < 2 && n == -ECONNRESET; tries++)
        n = recv_record(c->sock, buf, len, fds, nfds, NULL, NULL, &flags);
    if (n == -EAGAIN || n == -EWOULDBLOCK)
        return "a slot's record was not sent before the slot";
    if (n < 0)
        return "a slot's record cannot be read";
    if (flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_fds(fds, *nfds);
        *nfds = 0;
        return "a record lost bytes or fds on the way";
    }
    if (n == 0 && *nfds == 0)
        return "the sender hung up before sending a slot's record";
    *got = n;
    return NULL;
}

/* A REC_SEGMENT record (its fd taken or closed here). */
static const char *add_segment(struct rs_conn *c, const uint8_t *rec, ssize_t n, int *fds, int nfds)
{
    if (n != 8 || get32(rec) != RS_REC_SEGMENT || nfds != 1) {
        close_fds(fds, nfds);
        return "a data segment was used but never announced";
    }
    uint32_t id = get32(rec + 4);
    int fd = fds[0];
    for (int i = 0; i < RS_MAX_SEGMENTS; i++)
        if (c->segs[i].map && c->segs[i].id == id) {
            close(fd);
            return "a data segment was announced twice";
        }
    int seals = fcntl(fd, F_GET_SEALS);
    struct stat st;
    if (seals < 0 || fstat(fd, &st) < 0 ||
        (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) ||
        (uint64_t)st.st_size < RS_SEGMENT_HEADER + RS_PAGE) {
        close(fd);
        return "a data segment is not a size-sealed memfd";
    }
    uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return "a data segment cannot be mapped";
    uint64_t size = get64(map + 16);
    if (get32(map) != RS_SEGMENT_MAGIC || get16(map + 4) != RS_VERSION || get32(map + 8) != id ||
        size < RS_MIN_SEGMENT || size > RS_MAX_SEGMENT || (size & (size - 1)) ||
        rs_segment_size(size) != (uint64_t)st.st_size) {
        munmap(map, (size_t)st.st_size);
        return "a data segment's header does not match its record";
    }
    struct rs_segr *g = NULL;
    for (int i = 0; i < RS_MAX_SEGMENTS && !g; i++)
        if (!c->segs[i].map)
            g = &c->segs[i];
    if (!g) { /* we copy every payload out, so all are idle: forget them */
        for (int i = 0; i < RS_MAX_SEGMENTS; i++)
            segr_unmap(&c->segs[i]);
        g = &c->segs[0];
    }
    g->id = id;
    g->map = map;
    g->map_size = (size_t)st.st_size;
    g->size = size;
    g->tags = map + RS_SEGMENT_HEADER;
    g->data = map + RS_SEGMENT_HEADER + tags_size(size);
    return NULL;
}

static struct rs_segr *find_segment(struct rs_conn *c, uint32_t id)
{
    for (int i = 0; i < RS_MAX_SEGMENTS; i++)
        if (c->segs[i].map && c->segs[i].id == id)
            return &c->segs[i];
    return NULL;
}

/* The next record that is not a REC_SEGMENT: segments are registered as
 * they come (wire-format: a receiver accepts REC_SEGMENT before any record;
 * a sender whose message failed after announcing a segment leaves one). */
static const char *next_non_segment(struct rs_conn *c, uint8_t *buf, size_t len, ssize_t *n, int *fds,
                                    int *nfds)
{
    for (;;) {
        const char *err = next_record(c, buf, len, n, fds, nfds);
        if (err)
            return err;
        if (*n == 8 && get32(buf) == RS_REC_SEGMENT) {
            err = add_segment(c, buf, *n, fds, *nfds);
            *nfds = 0;
            if (err)
                return err;
            continue;
        }
        return NULL;
    }
}

static uint32_t allowed_rights(uint16_t type)
{
    switch (type) {
    case RS_TYPE_FD: return RS_READ | RS_WRITE | RS_DUPLICATE | RS_TRANSFER | RS_WAIT;
    case RS_TYPE_PORT: return RS_SEND | RS_RECEIVE | RS_DUPLICATE | RS_TRANSFER | RS_WAIT;
    case RS_TYPE_CHANNEL: return RS_SEND | RS_RECEIVE | RS_TRANSFER | RS_WAIT;
    case RS_TYPE_PIPE_READER: return RS_READ | RS_DUPLICATE | RS_TRANSFER | RS_WAIT;
    case RS_TYPE_PIPE_WRITER: return RS_WRITE | RS_DUPLICATE | RS_TRANSFER | RS_WAIT;
    case RS_TYPE_SHM: return RS_READ | RS_WRITE | RS_MAP | RS_DUPLICATE | RS_TRANSFER | RS_WAIT;
    default: return 0;
    }
}

/* Check one handle as the library's from_transfer does, for the types this
 * peer uses (FD, SHM) and the fd counts of the others. */
static const char *check_handle(const struct rs_handle *h)
{
    uint32_t allowed = allowed_rights(h->type);
    if (!allowed)
        return "an unknown handle type";
    if (h->rights & ~allowed)
        return "rights the handle's type never allows";
    int want = 1;
    if (h->type == RS_TYPE_PORT)
        want = (h->rights & RS_RECEIVE) ? 3 : 1;
    else if (h->type == RS_TYPE_CHANNEL)
        want = ((h->rights & RS_SEND) ? 1 : 0) + ((h->rights & RS_RECEIVE) ? 2 : 0);
    if (h->nfds != want)
        return "a handle with the wrong number of fds";
    if (h->type == RS_TYPE_SHM) {
        int seals = fcntl(h->fds[0], F_GET_SEALS);
        int fl = fcntl(h->fds[0], F_GETFL);
        struct stat st;
        if (seals < 0 || fl < 0 || fstat(h->fds[0], &st) < 0)
            return "a SHM handle whose fd is not a memfd";
        if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
            return "a SHM handle whose size is not sealed";
        if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != h->extra)
            return "a SHM handle whose extra is not its size";
        int writable = (fl & O_ACCMODE) == O_RDWR;
        if ((h->rights & RS_WRITE) && !writable)
            return "a SHM handle with WRITE and a read-only fd";
        if (!(h->rights & RS_WRITE) && (writable || !(seals & F_SEAL_FUTURE_WRITE)))
            return "a read-only SHM handle with a writable region";
    }
    return NULL;
}

static const char *read_handles(struct rs_conn *c, uint32_t count, uint32_t fd_count, struct rs_received *out)
{
    static uint8_t rec[RS_RECORD_MAX];
    int fds[RS_MAX_FDS], nfds = 0;
    ssize_t n = 0;
    const char *err = next_non_segment(c, rec, sizeof rec, &n, fds, &nfds);
    if (err)
        return err;
    if (n < 8 || get32(rec) != RS_REC_HANDLES || get32(rec + 4) != count)
        err = "a slot with handles found no handles record of its own";
    else if ((uint32_t)nfds != fd_count)
        err = "a handles record carries another number of fds than its slot says";
    else if ((size_t)n != 8 + 16 * (size_t)count)
        err = "a handles record of the wrong length";
    int used = 0;
    for (uint32_t i = 0; !err && i < count; i++) {
        struct rs_handle *h = &out->handles[i];
        const uint8_t *d = rec + 8 + 16 * (size_t)i;
        h->type = get16(d);
        h->nfds = get16(d + 2);
        h->rights = get32(d + 4);
        h->extra = get64(d + 8);
        if (h->nfds > 3 || used + h->nfds > nfds) {
            err = "descriptors name more fds than arrived";
            h->nfds = 0;
            break;
        }
        memcpy(h->fds, fds + used, sizeof(int) * (size_t)h->nfds);
        used += h->nfds;
        out->nhandles = i + 1;
        err = check_handle(h);
    }
    if (!err && used != nfds)
        err = "descriptors name fewer fds than arrived";
    if (err) {
        close_fds(fds + used, nfds - used);
        for (uint32_t i = 0; i < out->nhandles; i++)
            close_fds(out->handles[i].fds, out->handles[i].nfds);
        out->nhandles = 0;
    }
    return err;
}

/* Read slot `tail` of c into out (checked: every word once, into locals). */
static const char *read_slot(struct rs_receiver *r, struct rs_conn *c, struct rs_received *out)
{
    uint8_t head[RS_SLOT_HEAD];
    const uint8_t *slot = c->ring + RS_CONTROL_SIZE + (size_t)(c->tail & (c->nslots - 1)) * RS_SLOT_SIZE;
    memcpy(head, slot, sizeof head); /* the sender may still write: read once */
    uint32_t size = get32(head), count = get32(head + 4), reserved = get32(head + 12);
    uint8_t flags = head[24], fd_count = head[25];
    uint16_t seg_id = get16(head + 26);
    uint32_t granule = get32(head + 28);
    memset(out, 0, sizeof *out - sizeof out->handles);
    out->msg_type = get32(head + 8);
    out->priority = (int32_t)get32(head + 16);
    out->txid = get32(head + 20);
    out->pid = c->pid;
    out->uid = c->uid;
    out->gid = c->gid;
    out->slot_flags = flags;
    if (reserved)
        return "a slot's reserved field is not 0";
    if (flags & ~RS_SLOT_KNOWN)
        return "a slot has unknown flags";
    if (!!(flags & RS_SLOT_FDS) != !!count)
        return "a slot's handle count disagrees with its flags";
    if (count > RS_MAX_FDS || fd_count > RS_MAX_FDS) /* a handle may carry no fd */
        return "a slot names too many handles or fds";
    struct rs_segr *g = NULL;
    uint64_t offset = 0;
    if (flags & RS_SLOT_DATA) {
        g = find_segment(c, seg_id);
        if (!g) { /* not seen yet: its record must be on the socket now */
            static uint8_t rec[16];
            int fds[RS_MAX_FDS], nfds = 0;
            ssize_t n = 0;
            while (!g) {
                const char *err = next_record(c, rec, sizeof rec, &n, fds, &nfds);
                if (!err)
                    err = add_segment(c, rec, n, fds, nfds);
                if (err)
                    return err;
                g = find_segment(c, seg_id);
            }
        }
        offset = (uint64_t)granule * RS_GRANULE;
        if (offset + size > g->size)
            return "a payload overruns its data segment";
    } else if (size > RS_INLINE_MAX || (flags & RS_SLOT_LOAN)) {
        return "an inline payload larger than a slot holds";
    }
    if (count) {
        const char *err = read_handles(c, count, fd_count, out);
        if (err)
            return err;
    }
    out->size = size;
    out->payload = malloc(size ? size : 1);
    if (!out->payload)
        return "out of memory";
    if (g) {
        memcpy(out->payload, g->data + offset, size);
        /* wire-format: release the payload: tag of its first granule = 1,
         * a release store after the last read of the payload ... */
        atomic_store_explicit(TAG(g->tags, offset / RS_GRANULE), RS_TAG_RELEASED, memory_order_release);
        /* ... then, after a full fence, wake a sender waiting for data room. */
        atomic_thread_fence(memory_order_seq_cst);
        if (tx_waiting(c))
            wake(c);
    } else {
        memcpy(out->payload, slot + RS_SLOT_HEAD, size);
    }
    (void)r;
    return NULL;
}

/* A message of c was read: its credit is free. Give it back to c unless
 * another connection waits for room. */
static void freed(struct rs_receiver *r, struct rs_conn *c)
{
    int others = 0;
    for (int i = 0; i < RS_MAX_CONNS; i++)
        if (r->conns[i].used && &r->conns[i] != c && r->conns[i].wants)
            others = 1;
    if (others) {
        r->pool++;
        serve_wanters(r);
        return;
    }
    c->wants = 0;
    grant(r, c, 1);
}

static void set_sleeping(struct rs_receiver *r, uint32_t v)
{
    for (int i = 0; i < RS_MAX_CONNS; i++)
        if (r->conns[i].used)
            atomic_store_explicit(U32AT(r->conns[i].ring, RS_OFF_RX_STATE), v, memory_order_relaxed);
}

uint64_t rs_receiver_published(struct rs_receiver *r)
{
    uint64_t total = 0;
    for (int i = 0; i < RS_MAX_CONNS; i++)
        if (r->conns[i].used) {
            int64_t n = published(&r->conns[i]);
            total += n > 0 ? (uint64_t)n : 0;
        }
    return total;
}

/* One message from the connections if any is published: 1, else 0. */
static int take(struct rs_receiver *r, struct rs_received *out)
{
    for (unsigned k = 0; k < RS_MAX_CONNS; k++) {
        unsigned i = (r->next + k) % RS_MAX_CONNS;
        struct rs_conn *c = &r->conns[i];
        if (!c->used)
            continue;
        int64_t n = published(c);
        if (n < 0) {
            drop(r, c, "it published beyond its credits or its ring");
            continue;
        }
        if (n == 0) {
            if (c->hung) /* it hung up and everything it published was read */
                conn_close(r, c, RS_CLOSED_PORT);
            continue;
        }
        const char *err = read_slot(r, c, out);
        if (err) {
            rs_received_free(out);
            drop(r, c, err);
            continue;
        }
        c->tail++;
        freed(r, c);
        r->next = i + 1;
        return 1;
    }
    return 0;
}

static int any_conn(struct rs_receiver *r)
{
    for (int i = 0; i < RS_MAX_CONNS; i++)
        if (r->conns[i].used)
            return 1;
    return 0;
}

int rs_recv(struct rs_receiver *r, struct rs_received *out, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        if (take(r, out))
            return 0;
        serve_door(r);
        if (take(r, out))
            return 0;
        if (r->door_eof && !any_conn(r))
            return -EPIPE;
        int left = remaining_ms(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        /* wire-format, going to sleep: RX_SLEEPING on every connection, a
         * full fence, one more look at HEAD; then poll the door, each
         * doorbell and each connection socket's hang-up. */
        set_sleeping(r, RS_RX_SLEEPING);
        atomic_thread_fence(memory_order_seq_cst);
        if (rs_receiver_published(r)) {
            set_sleeping(r, 0);
            continue;
        }
        struct pollfd p[1 + 2 * RS_MAX_CONNS];
        int idx[1 + 2 * RS_MAX_CONNS];
        int np = 0;
        if (!r->door_eof) {
            p[np] = (struct pollfd){.fd = r->door, .events = POLLIN};
            idx[np++] = -1;
        }
        for (int i = 0; i < RS_MAX_CONNS; i++) {
            if (!r->conns[i].used)
                continue;
            p[np] = (struct pollfd){.fd = r->conns[i].doorbell, .events = POLLIN};
            idx[np++] = i;
            p[np] = (struct pollfd){.fd = r->conns[i].sock, .events = POLLRDHUP};
            idx[np++] = i;
        }
        int n = poll(p, (nfds_t)np, left);
        /* Awake: we look at HEAD ourselves until we sleep again. */
        set_sleeping(r, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int k = 0; k < np && n > 0; k++) {
            if (!p[k].revents || idx[k] < 0)
                continue;
            struct rs_conn *c = &r->conns[idx[k]];
            if (p[k].fd == c->doorbell) {
                uint64_t v;
                if (read(c->doorbell, &v, sizeof v) < 0) { /* EAGAIN: someone read it */
                }
            } else if (p[k].revents & (POLLHUP | POLLRDHUP | POLLERR)) {
                c->hung = 1;
            }
        }
    }
}

void rs_receiver_close(struct rs_receiver *r)
{
    for (int i = 0; i < RS_MAX_CONNS; i++)
        conn_close(r, &r->conns[i], RS_CLOSED_PORT);
    if (r->own_lock >= 0)
        close(r->own_lock);
    r->own_lock = -1;
}

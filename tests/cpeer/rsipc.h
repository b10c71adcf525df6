/*
 * rsipc.h: the redstone-ipc ring protocol, version 1, for a peer in C.
 *
 * A small, dependency-free implementation of docs/wire-format.md ("Ports
 * and channels: connections and rings"): both sides of a connection.
 *
 *   sending   rs_sender_connect / rs_try_send / rs_send / rs_sender_close:
 *             connect to a door (a port's, or a channel endpoint's peer's),
 *             publish messages in the ring (inline, in a data segment, with
 *             handles), wait for room with TX_WAITING + DOOR_WANT + REC_WAKE.
 *   receiving rs_receiver_open / rs_recv / rs_receiver_close: own a door
 *             (the owner lock), accept CONNECT records, check every word a
 *             sender writes, grant and take back credits, answer DOOR_WANT.
 *
 * C11 (C99 has no atomics: <stdatomic.h> is the only C11 used) and
 * POSIX/Linux only. Little-endian hosts only (x86_64, aarch64), like the
 * protocol itself.
 *
 * What it leaves out, on purpose (a test peer, not a library): one thread
 * per sender or receiver (the library takes a lock around publishing);
 * no fd-room probing before reading records (the library dup()s first, so
 * that EMFILE cannot lose fds); the receiver delivers in ring order, round
 * robin over connections (the library orders by priority); loans.
 *
 * Every function returns 0 (or a documented positive status) on success
 * and a negative errno on failure; nothing here prints or exits.
 */
#ifndef RSIPC_H
#define RSIPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* -- constants (redstone_ipc/transport/layout.py) --------------------------- */

#define RS_VERSION 1u
#define RS_RING_MAGIC 0x47525352u    /* "RSRG" */
#define RS_SEGMENT_MAGIC 0x47535352u /* "RSSG" */
#define RS_DOOR_MAGIC 0x52445352u    /* "RSDR" */

#define RS_PAGE 4096u
#define RS_CONTROL_SIZE 4096u
#define RS_SLOT_SIZE 256u
#define RS_SLOT_HEAD 32u
#define RS_INLINE_MAX (RS_SLOT_SIZE - RS_SLOT_HEAD) /* 224 */
#define RS_MAX_SLOTS 65536u

/* control page offsets */
#define RS_OFF_MAGIC 0
#define RS_OFF_VERSION 4
#define RS_OFF_FLAGS 6
#define RS_OFF_NSLOTS 8
#define RS_OFF_SLOT_SIZE 12
#define RS_OFF_HEAD 64       /* u64, sender, release store */
#define RS_OFF_TX_STATE 72   /* u32, sender */
#define RS_OFF_RX_STATE 128  /* u32, receiver */
#define RS_OFF_RX_CLOSED 132 /* u32, receiver */
#define RS_OFF_CREDITS 192   /* i32, both, atomic read-modify-writes only */

#define RS_TX_WAITING 1u
#define RS_RX_SLEEPING 1u

#define RS_CLOSED_PORT 1u
#define RS_CLOSED_MOVED 2u
#define RS_CLOSED_PROTOCOL 3u
#define RS_CLOSED_REFUSED 4u

/* slot flags */
#define RS_SLOT_DATA 0x1u
#define RS_SLOT_FDS 0x2u
#define RS_SLOT_LOAN 0x4u
#define RS_SLOT_KNOWN 0x7u

/* data segments */
#define RS_GRANULE 64u
#define RS_SEGMENT_HEADER 4096u
#define RS_MIN_SEGMENT (1ull << 16)
#define RS_MAX_SEGMENT (1ull << 34)
#define RS_MAX_SEGMENTS 8
#define RS_TAG_RELEASED 1u

/* socket records */
#define RS_REC_HANDLES 1u
#define RS_REC_SEGMENT 2u
#define RS_REC_WAKE 3u
#define RS_MAX_FDS 253 /* SCM_MAX_FD */
#define RS_RECORD_MAX (8 + 16 * RS_MAX_FDS)

/* door records */
#define RS_DOOR_RECORD_SIZE 24u
#define RS_DOOR_CONNECT 1u
#define RS_DOOR_WANT 2u

/* object types and rights (the handle descriptor) */
#define RS_TYPE_FD 1u
#define RS_TYPE_PORT 2u
#define RS_TYPE_CHANNEL 3u
#define RS_TYPE_PIPE_READER 4u
#define RS_TYPE_PIPE_WRITER 5u
#define RS_TYPE_SHM 6u

#define RS_READ 0x01u
#define RS_WRITE 0x02u
#define RS_MAP 0x04u
#define RS_SEND 0x08u
#define RS_RECEIVE 0x10u
#define RS_DUPLICATE 0x20u
#define RS_TRANSFER 0x40u
#define RS_WAIT 0x80u

/* rs_try_send results */
#define RS_SENT 0
#define RS_NO_CREDIT 1
#define RS_NO_DATA_ROOM 2
#define RS_CLOSED 3

/* -- messages ---------------------------------------------------------------- */

/* One handle: a descriptor (type, rights, extra) and its fds, in the type's
 * order (docs/wire-format.md, "Object types"). */
struct rs_handle {
    uint16_t type;
    uint32_t rights;
    uint64_t extra;
    int nfds;
    int fds[3];
};

struct rs_msg {
    uint32_t msg_type;
    int32_t priority;
    uint32_t txid;
    const void *payload;
    size_t size;
    const struct rs_handle *handles; /* sending: the fds are the caller's (a
                                        successful send copies them into the
                                        receiver: close yours to "move") */
    uint32_t nhandles;
};

/* A received message: owns payload (malloc) and every handle fd. */
struct rs_received {
    uint32_t msg_type;
    int32_t priority;
    uint32_t txid;
    pid_t pid; /* the sender, as the kernel said at CONNECT */
    uid_t uid;
    gid_t gid;
    uint8_t *payload;
    size_t size;
    uint8_t slot_flags;
    uint32_t nhandles;
    struct rs_handle handles[RS_MAX_FDS];
};

void rs_received_free(struct rs_received *m);

/* -- the sending side --------------------------------------------------------- */

struct rs_segw { /* a data segment, the sender's side */
    uint32_t id;
    uint8_t *map;
    size_t map_size;
    uint64_t size; /* data bytes, a power of two */
    uint8_t *tags;
    uint8_t *data;
    uint64_t head, tail; /* unwrapped byte counters */
    uint64_t pend_start[64], pend_end[64];
    unsigned pend_first, pend_count;
};

struct rs_sender {
    int door;     /* the door's sending end (the caller's; not closed here) */
    int sock;     /* our end of the connection socket */
    int doorbell; /* eventfd */
    uint8_t *ring;
    size_t ring_size;
    uint32_t nslots;
    uint64_t head; /* messages published (ours) */
    uint64_t token;
    int have_segment;
    struct rs_segw seg;
    uint32_t next_segment_id;
    unsigned waits; /* times rs_send slept for room */
};

/* Connect through `door` to a queue of `capacity` messages (the extra word
 * of the exported handle: nslots is derived from it as the library does). */
int rs_sender_connect(struct rs_sender *s, int door, uint32_t capacity);
/* Publish one message if there is room: RS_SENT, RS_NO_CREDIT,
 * RS_NO_DATA_ROOM, RS_CLOSED, or a negative errno (nothing published). */
int rs_try_send(struct rs_sender *s, const struct rs_msg *m);
/* Publish, waiting up to timeout_ms (-1: for ever) for room. 0, -ETIMEDOUT,
 * -EPIPE (the receiver hung up or the door is gone), -ECONNRESET
 * (RX_CLOSED: *closed_reason says why), or another negative errno. */
int rs_send(struct rs_sender *s, const struct rs_msg *m, int timeout_ms, uint32_t *closed_reason);
uint32_t rs_sender_closed_reason(const struct rs_sender *s);
int32_t rs_sender_credits(const struct rs_sender *s);
void rs_sender_close(struct rs_sender *s);

/* -- the receiving side ------------------------------------------------------ */

#define RS_MAX_CONNS 8

struct rs_segr { /* a data segment, the receiver's side */
    uint32_t id;
    uint8_t *map;
    size_t map_size;
    uint64_t size;
    uint8_t *tags;
    uint8_t *data;
};

struct rs_conn {
    int used;
    int sock, doorbell;
    uint8_t *ring;
    size_t ring_size;
    uint32_t nslots;
    uint64_t token;
    pid_t pid;
    uid_t uid;
    gid_t gid;
    uint64_t tail;    /* messages read: ours, never read back from the ring */
    uint64_t allowed; /* credits granted minus taken back */
    int wants;        /* asked for room, none given yet */
    int hung;         /* its socket hung up: read what is published, then close */
    struct rs_segr segs[RS_MAX_SEGMENTS];
};

struct rs_receiver {
    int door;    /* the door's receiving end (the caller's) */
    int own_lock; /* our own description of the owner lock, flock(LOCK_EX) */
    uint32_t capacity, max_slots;
    int64_t pool; /* credits nobody holds */
    int door_eof;
    unsigned next; /* round robin */
    struct rs_conn conns[RS_MAX_CONNS];
    unsigned wakes_for_room; /* REC_WAKEs sent to a sender that set TX_WAITING */
    unsigned dropped;        /* connections dropped for breaking the protocol */
    char error[160];         /* why the last one was dropped */
};

/* Take the receive side: the owner lock (`lock_fd`, the third fd of a
 * RECEIVE handle) and the door's receiving end. -EBUSY if another process
 * receives on it. */
int rs_receiver_open(struct rs_receiver *r, int door_rx, int lock_fd, uint32_t capacity);
/* The next message, waiting up to timeout_ms (-1: for ever). 0, -ETIMEDOUT,
 * -EPIPE when every sender is gone (door closed, nothing left to read). A
 * sender that breaks the protocol is dropped (r->dropped, r->error) and
 * receiving goes on. */
int rs_recv(struct rs_receiver *r, struct rs_received *out, int timeout_ms);
/* Unread messages published on every connection (for tests). */
uint64_t rs_receiver_published(struct rs_receiver *r);
void rs_receiver_close(struct rs_receiver *r);

/* -- helpers ------------------------------------------------------------------- */

uint32_t rs_slot_count(uint32_t capacity);
uint64_t rs_segment_size(uint64_t data_size);
/* A memfd of `size` bytes, size sealed (F_SEAL_SHRINK | F_SEAL_GROW). */
int rs_memfd(const char *name, uint64_t size);

#endif

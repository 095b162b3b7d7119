/*
 * The OTEP 4947 thread context (oteps/profiles/4947-thread-ctx.md): the TLS symbol readers look
 * up in .dynsym, and the one record per thread it points to.
 *
 * In C because stable Rust cannot define an exported TLS symbol (`#[thread_local]` is nightly,
 * rust-lang/rust#132480) nor choose the TLSDESC dialect the OTEP recommends; build.rs compiles
 * this file with -fPIC and, on x86-64, -mtls-dialect=gnu2.
 *
 * Ownership: the pointer is swapped, `valid` is not toggled. The OTEP lets a writer do either,
 * not both. Pointing the slot at NULL whenever no span is active means a reader that samples a
 * thread outside any span (most syscalls of most threads) stops after reading the slot, without
 * reading a record; and "never published" and "cleared" look the same to it. `valid` is written
 * as 1 while the record is detached and never changes after.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The Thread-Local Context Record's fixed part; attrs-data would follow it, this library has
 * none. Natural layout already matches the OTEP's packed one (checked below), and the u16 gives
 * the 2-byte alignment the OTEP requires, which `packed` would take away. */
struct otel_thread_ctx_record {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t valid;
    uint8_t trace_flags;
    uint16_t attrs_data_size;
};

_Static_assert(sizeof(struct otel_thread_ctx_record) == 28, "the OTEP's 28-byte header");
_Static_assert(offsetof(struct otel_thread_ctx_record, span_id) == 16, "span-id at 16");
_Static_assert(offsetof(struct otel_thread_ctx_record, valid) == 24, "valid at 24");
_Static_assert(offsetof(struct otel_thread_ctx_record, trace_flags) == 25, "trace-flags at 25");
_Static_assert(offsetof(struct otel_thread_ctx_record, attrs_data_size) == 26, "size at 26");
_Static_assert(_Alignof(struct otel_thread_ctx_record) >= 2, "records start 2-byte aligned");

/* Default visibility and no `static`: the OTEP requires it in .dynsym, and readers resolve it by
 * name. Zero-initialised, so a thread that never published has no record. */
__attribute__((visibility("default"))) __thread struct otel_thread_ctx_record *otel_thread_ctx_v1;

/* The thread's record: lives exactly as long as the thread's TLS block, the same block as the
 * pointer to it, so the pointer can never outlive it, and nothing needs freeing at thread exit. */
static __thread struct otel_thread_ctx_record record;

/* Readers inspect a thread only while it is stopped (signal-handler semantics, OTEP 4947
 * "Concurrency model"), so ordering against the compiler is all the protocol asks for; these
 * fences emit no instruction. */
#define COMPILER_FENCE() atomic_signal_fence(memory_order_seq_cst)

static inline void set_slot(struct otel_thread_ctx_record *to) {
    *(struct otel_thread_ctx_record *volatile *)&otel_thread_ctx_v1 = to;
}

/* The entry points below are for this library's Rust code only: hidden, so an application or
 * shared object linking the library never exports them, yet the static linker still resolves
 * them inside the final link. */
#define INTERNAL __attribute__((visibility("hidden")))

INTERNAL void otel_sendmmsg_thread_ctx_store(const uint8_t trace_id[16], const uint8_t span_id[8],
                                             uint8_t trace_flags) {
    /* The record is reused and may be the one published: detach it first so an interruption
     * mid-write shows no record rather than a torn one (OTEP "Context Attachment"). */
    set_slot(NULL);
    COMPILER_FENCE();
    memcpy(record.trace_id, trace_id, sizeof(record.trace_id));
    memcpy(record.span_id, span_id, sizeof(record.span_id));
    record.trace_flags = trace_flags;
    record.attrs_data_size = 0;
    record.valid = 1;
    COMPILER_FENCE();
    set_slot(&record);
}

INTERNAL void otel_sendmmsg_thread_ctx_clear(void) { set_slot(NULL); }

/* The slot's address, for reading what a reader reads: the pointer, then the record it points
 * to. Rust cannot name a foreign TLS variable on stable. */
INTERNAL struct otel_thread_ctx_record *const *otel_sendmmsg_thread_ctx_slot(void) {
    return &otel_thread_ctx_v1;
}

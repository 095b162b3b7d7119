/* A test program that publishes OTEP 4947 Thread-Local Context Records the OTEP's way and makes
 * sendmmsg calls on command, so a test can check the parent of each syscall's span.
 *
 * usage: writer PORT   (sendmmsg goes to a UDP socket connected to 127.0.0.1:PORT)
 *
 * At start it prints `pid N tid N`, then `ready`. Then it reads one command per line on stdin
 * and answers each with one line on stdout (flushed): `ok ...` or `error ...`. End of input
 * exits like `exit`.
 *
 *   publish TRACEHEX32 SPANHEX16 FLAGS [KEY=VALUE ...]
 *       builds a record on this (the main) thread: ids, trace-flags = FLAGS (decimal: 1
 *       sampled, 0 not), attrs (optional; KEY a decimal key index 0-255, VALUE up to 255 bytes
 *       without spaces; attrs-data-size 0 without them), then valid = 1, then points
 *       otel_thread_ctx_v1 at it, with a compiler fence between the steps. Two record buffers
 *       alternate, so a record is never rewritten while the pointer designates it.
 *   null       sets otel_thread_ctx_v1 to NULL (detach).
 *   invalid    keeps the pointer and sets the record's valid to 0.
 *   unmapped   points otel_thread_ctx_v1 at an address that is not mapped: it maps 3 pages,
 *              unmaps the middle one and uses its address (the mappings either side keep
 *              anything but a one-page mapping out of the hole).
 *   huge       a record with valid = 1, the last published ids (or fixed ones if none),
 *              trace-flags 1 and attrs-data-size 0xffff, placed in the last 28 bytes of a
 *              mapped page whose next page is unmapped: any read past the 28-byte header faults.
 *   send       one sendmmsg of 2 small UDP messages on the main thread: `ok sent N`. Run a UDP
 *              receiver on PORT: without one, the ICMP error from the first message makes
 *              the second fail and every call answers `ok sent 1`.
 *   tsend      starts a new thread that makes one sendmmsg and never touches
 *              otel_thread_ctx_v1 (so it has no record of its own: its spans must be roots),
 *              and joins it: `ok sent N tid T`.
 *   where      `ok tid T tp 0x.. slot 0x.. ptr 0x..`: this thread's thread pointer (x86-64 FS
 *              base), the address of its otel_thread_ctx_v1 and the pointer's value, to
 *              compare with what a reader computes from outside.
 *   dlopen PATH  (only built with -DTLS_DLOPEN) loads the writer_lib.c library now and uses its
 *              otel_thread_ctx_v1: `ok modid M`. Before it, publish/null/... answer an error.
 *   exit       answers `ok` and exits 0.
 *
 * Where otel_thread_ctx_v1 lives is chosen at compile time (x86-64, gcc 12, binutils 2.40; the
 * library variants are in writer_lib.c's header):
 *
 *   executable-defined (default): this file defines it; the linker resolves the accesses to
 *   local-exec (no relocation names it), and --export-dynamic-symbol puts it in .dynsym:
 *     gcc -O2 -Wall -pthread -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 -o writer writer.c
 *   The symbol is at offset 0 of a PT_TLS of 8 bytes aligned 8, so the slot is at TP - 8
 *   (`mov %fs:0xfffffffffffffff8`). The same as a non-PIE executable (ET_EXEC, load bias 0),
 *   also local-exec at TP - 8:
 *     gcc -O2 -Wall -pthread -no-pie -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 \
 *         -o writer_nopie writer.c
 *   Statically linked: with -static-pie the symbol stays in .dynsym (TLS, st_value 0x20 in a
 *   PT_TLS of 0x78 bytes it shares with libc's own TLS: slot at TP + 0x20 - 0x78). A plain
 *   -static (non-PIE) executable has no .dynsym at all with binutils 2.40, so
 *   --export-dynamic-symbol cannot export it there and a reader following the OTEP finds
 *   nothing:
 *     gcc -O2 -Wall -pthread -static-pie -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 \
 *         -o writer_static_pie writer.c
 *
 *   in a library linked at start (-DTLS_IN_LIBRARY): the library defines it and this file calls
 *   writer_set_ptr/writer_get_ptr; the records stay here. Build the library first, then
 *     gcc -O2 -Wall -pthread -DTLS_IN_LIBRARY -o writer_tlsdesc writer.c ./libwriter_tlsdesc.so \
 *         -Wl,-rpath,'$ORIGIN'
 *     gcc -O2 -Wall -pthread -DTLS_IN_LIBRARY -o writer_gd writer.c ./libwriter_gd.so \
 *         -Wl,-rpath,'$ORIGIN'
 *     gcc -O2 -Wall -pthread -DTLS_IN_LIBRARY -o writer_ie writer.c ./libwriter_ie.so \
 *         -Wl,-rpath,'$ORIGIN'
 *
 *   in a library dlopen()ed after start (-DTLS_DLOPEN; command `dlopen PATH`):
 *     gcc -O2 -Wall -pthread -DTLS_DLOPEN -o writer_dlopen writer.c -ldl
 *   What glibc 2.36 (x86-64) did with the module's TLS (seen with `where` and an outside
 *   reader of the relocated GOT and the DTV):
 *     - TLSDESC library: static TLS surplus. Its GOT pair is {_dl_tlsdesc_return, TP offset
 *       (-152 here)}, the same offset for every thread, those that existed at dlopen included.
 *       With GLIBC_TUNABLES=glibc.rtld.optional_static_tls=0 it is dynamic instead: the pair
 *       is {_dl_tlsdesc_dynamic, pointer to {module id 2, offset 0, generation}}.
 *     - legacy GD library: dynamic even by default: glibc's x86-64 relocation code tries the
 *       surplus (TRY_STATIC_TLS) only for TLSDESC and requires it for TPOFF64; DTPMOD64 just
 *       stores the module id. The GOT holds {module id 2, offset 0}.
 *     - initial-exec library: static surplus (it must be; dlopen fails without room), with or
 *       without the tunable.
 *     For a dynamic module a thread's block is allocated at its first access. Until then its
 *     DTV entry ({val, to_free}, 16 bytes at DTV + 16 * id, DTV pointer at TP + 8) reads
 *     val = 0 for a thread that existed at dlopen (its DTV had a spare, zeroed entry) and
 *     val = -1 (TLS_DTV_UNALLOCATED) for a thread created after it; both mean "no context".
 *     The main thread allocates its block at its first publish/null/where after dlopen;
 *     `tsend` threads never do.
 *
 *   not_tls.c includes this file with NOT_TLS defined: otel_thread_ctx_v1 is then a plain data
 *   object (not TLS) that points at a valid record from the start; a reader must refuse it.
 *     gcc -O2 -Wall -pthread -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 -o not_tls not_tls.c
 *
 * Check the symbols/relocations with `readelf -W -r --dyn-syms FILE`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef TLS_DLOPEN
#include <dlfcn.h>
#include <link.h>
#endif

#if defined(TLS_IN_LIBRARY) + defined(TLS_DLOPEN) + defined(NOT_TLS) > 1
#error "choose at most one of TLS_IN_LIBRARY, TLS_DLOPEN, NOT_TLS"
#endif

/* The Thread-Local Context Record (OTEP 4947): packed, host-endian, starts 2-byte aligned. */
struct otel_thread_ctx_record {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t valid; /* 1 = valid; anything else is invalid */
    uint8_t trace_flags; /* W3C trace-flags; bit 0 = sampled */
    uint16_t attrs_data_size;
    uint8_t attrs_data[]; /* {u8 key, u8 length, length bytes} ... */
} __attribute__((packed));
_Static_assert(sizeof(struct otel_thread_ctx_record) == 28, "the record header is 28 bytes");

#define RECORD_MAX 640 /* the OTEP's recommended upper bound for a whole record */

#define fence() __atomic_signal_fence(__ATOMIC_SEQ_CST)

/* ---- where otel_thread_ctx_v1 lives ---- */
#if defined(TLS_IN_LIBRARY)
void writer_set_ptr(void *record);
void *writer_get_ptr(void);
void **writer_tls_addr(void);
static int have_tls(void) { return 1; }
static void set_ptr(void *record) { writer_set_ptr(record); }
static void *get_ptr(void) { return writer_get_ptr(); }
static void **tls_addr(void) { return writer_tls_addr(); }
#elif defined(TLS_DLOPEN)
static void (*lib_set_ptr)(void *);
static void *(*lib_get_ptr)(void);
static void **(*lib_tls_addr)(void);
static int have_tls(void) { return lib_set_ptr != NULL; }
static void set_ptr(void *record) { lib_set_ptr(record); }
static void *get_ptr(void) { return lib_get_ptr(); }
static void **tls_addr(void) { return lib_tls_addr(); }
#else
#ifdef NOT_TLS
/* Not thread-local: a plain exported data object with the OTEP's name. */
__attribute__((visibility("default"), used)) void *otel_thread_ctx_v1;
#else
/* Defined by the executable: the linker turns accesses into local-exec. */
__attribute__((visibility("default"), used)) __thread void *otel_thread_ctx_v1;
#endif
static int have_tls(void) { return 1; }
static void set_ptr(void *record) {
    fence();
    *(void *volatile *)&otel_thread_ctx_v1 = record;
    fence();
}
static void *get_ptr(void) { return *(void *volatile *)&otel_thread_ctx_v1; }
static void **tls_addr(void) { return &otel_thread_ctx_v1; }
#endif

/* ---- records (used by the main thread only) ---- */
static _Alignas(16) unsigned char record_buffers[2][RECORD_MAX];
static int next_buffer;
static struct otel_thread_ctx_record *huge_record; /* last 28 bytes of a page; next page unmapped */
static void *unmapped_address; /* middle page of three, unmapped */

/* W3C's example ids, for `huge` before any `publish` and for not_tls. */
static uint8_t last_trace_id[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                    0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
static uint8_t last_span_id[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};

/* Publishes a record built in `record` (which no one points at): everything but valid, then
 * valid = 1, then the pointer. */
static void publish_record(struct otel_thread_ctx_record *record, const uint8_t trace_id[16],
                           const uint8_t span_id[8], uint8_t flags, const uint8_t *attrs,
                           uint16_t attrs_size, uint16_t declared_size) {
    *(volatile uint8_t *)&record->valid = 0;
    fence();
    memcpy(record->trace_id, trace_id, 16);
    memcpy(record->span_id, span_id, 8);
    record->trace_flags = flags;
    if (attrs_size) memcpy(record->attrs_data, attrs, attrs_size);
    record->attrs_data_size = declared_size;
    fence();
    *(volatile uint8_t *)&record->valid = 1;
    set_ptr(record); /* fences before and after the pointer write */
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Exactly 2 * bytes hex digits into out[bytes] (W3C byte order: as written). */
static int parse_hex(const char *text, uint8_t *out, size_t bytes) {
    if (strlen(text) != bytes * 2) return -1;
    for (size_t i = 0; i < bytes; i++) {
        int high = hex_digit(text[2 * i]), low = hex_digit(text[2 * i + 1]);
        if (high < 0 || low < 0) return -1;
        out[i] = (uint8_t)(high << 4 | low);
    }
    return 0;
}

static void answer(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void answer(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

/* ---- sendmmsg ---- */
static int udp_socket;
static unsigned send_count;

static int send_two(void) {
    char payload[2][32];
    struct iovec iov[2];
    struct mmsghdr messages[2];
    unsigned call = __atomic_add_fetch(&send_count, 1, __ATOMIC_SEQ_CST);
    memset(messages, 0, sizeof messages);
    for (int i = 0; i < 2; i++) {
        int length = snprintf(payload[i], sizeof payload[i], "writer call %u message %d", call, i);
        iov[i].iov_base = payload[i];
        iov[i].iov_len = (size_t)length;
        messages[i].msg_hdr.msg_iov = &iov[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(udp_socket, messages, 2, 0);
}

struct thread_send {
    int sent, error;
    pid_t tid;
};

/* A thread that never touches otel_thread_ctx_v1: whatever the reader finds for it (a NULL
 * slot in static TLS, or an unallocated dynamic block) must mean "no context". */
static void *thread_send(void *arg) {
    struct thread_send *result = arg;
    result->tid = gettid();
    result->sent = send_two();
    result->error = errno;
    return NULL;
}

static void *thread_pointer(void) {
#if defined(__x86_64__)
    void *tp;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(tp)); /* glibc/musl keep the TCB's self pointer at fs:0 */
    return tp;
#else
    return __builtin_thread_pointer();
#endif
}

/* ---- commands ---- */
static void command(char *line) {
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r\n", &save);
    if (!verb) { answer("error empty command"); return; }

    if (!strcmp(verb, "exit")) { answer("ok"); exit(0); }

    if (!strcmp(verb, "send")) {
        int sent = send_two();
        if (sent < 0) answer("error sendmmsg: %s", strerror(errno));
        else answer("ok sent %d", sent);
        return;
    }
    if (!strcmp(verb, "tsend")) {
        struct thread_send result = {0};
        pthread_t thread;
        int error = pthread_create(&thread, NULL, thread_send, &result);
        if (error) { answer("error pthread_create: %s", strerror(error)); return; }
        pthread_join(thread, NULL);
        if (result.sent < 0) answer("error sendmmsg: %s", strerror(result.error));
        else answer("ok sent %d tid %d", result.sent, (int)result.tid);
        return;
    }

#ifdef TLS_DLOPEN
    if (!strcmp(verb, "dlopen")) {
        char *path = strtok_r(NULL, " \t\r\n", &save);
        if (!path) { answer("error usage: dlopen PATH"); return; }
        if (have_tls()) { answer("error a library is already loaded"); return; }
        void *handle = dlopen(path, RTLD_NOW);
        if (!handle) { answer("error dlopen: %s", dlerror()); return; }
        void *set = dlsym(handle, "writer_set_ptr"), *get = dlsym(handle, "writer_get_ptr");
        void *addr = dlsym(handle, "writer_tls_addr");
        if (!set || !get || !addr) { answer("error dlsym: %s", dlerror()); return; }
        size_t modid = 0;
        dlinfo(handle, RTLD_DI_TLS_MODID, &modid);
        lib_get_ptr = (void *(*)(void))get;
        lib_tls_addr = (void **(*)(void))addr;
        lib_set_ptr = (void (*)(void *))set;
        answer("ok modid %zu", modid);
        return;
    }
#endif

    if (!have_tls()) { answer("error no library loaded (dlopen PATH first)"); return; }

    if (!strcmp(verb, "where")) {
        void **slot = tls_addr();
        answer("ok tid %d tp %p slot %p ptr %p", (int)gettid(), thread_pointer(), (void *)slot, *slot);
        return;
    }
    if (!strcmp(verb, "publish")) {
        uint8_t trace_id[16], span_id[8], attrs[RECORD_MAX - 28];
        size_t attrs_size = 0;
        char *trace = strtok_r(NULL, " \t\r\n", &save), *span = strtok_r(NULL, " \t\r\n", &save);
        char *flags_text = strtok_r(NULL, " \t\r\n", &save), *end;
        if (!trace || !span || !flags_text || parse_hex(trace, trace_id, 16) || parse_hex(span, span_id, 8)) {
            answer("error usage: publish TRACEHEX32 SPANHEX16 FLAGS [KEY=VALUE ...]");
            return;
        }
        unsigned long flags = strtoul(flags_text, &end, 10);
        if (*end || flags > 255) { answer("error FLAGS must be 0-255"); return; }
        for (char *attr; (attr = strtok_r(NULL, " \t\r\n", &save));) {
            char *equals = strchr(attr, '=');
            unsigned long key = strtoul(attr, &end, 10);
            size_t length = equals ? strlen(equals + 1) : 0;
            if (!equals || end != equals || end == attr || key > 255 || length > 255) {
                answer("error attribute must be KEY=VALUE (KEY 0-255, VALUE at most 255 bytes)");
                return;
            }
            if (attrs_size + 2 + length > sizeof attrs) { answer("error record over %d bytes", RECORD_MAX); return; }
            attrs[attrs_size++] = (uint8_t)key;
            attrs[attrs_size++] = (uint8_t)length;
            memcpy(attrs + attrs_size, equals + 1, length);
            attrs_size += length;
        }
        struct otel_thread_ctx_record *record = (void *)record_buffers[next_buffer];
        next_buffer ^= 1;
        publish_record(record, trace_id, span_id, (uint8_t)flags, attrs, (uint16_t)attrs_size, (uint16_t)attrs_size);
        memcpy(last_trace_id, trace_id, 16);
        memcpy(last_span_id, span_id, 8);
        answer("ok");
        return;
    }
    if (!strcmp(verb, "null")) {
        set_ptr(NULL);
        answer("ok");
        return;
    }
    if (!strcmp(verb, "invalid")) {
        struct otel_thread_ctx_record *record = get_ptr();
        if (!record) { answer("error no record"); return; }
        if ((void *)record == unmapped_address) { answer("error the pointer is unmapped"); return; }
        fence();
        *(volatile uint8_t *)&record->valid = 0;
        fence();
        answer("ok");
        return;
    }
    if (!strcmp(verb, "unmapped")) {
        if (!unmapped_address) {
            long page = sysconf(_SC_PAGESIZE);
            char *pages = mmap(NULL, 3 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (pages == MAP_FAILED) { answer("error mmap: %s", strerror(errno)); return; }
            if (munmap(pages + page, page)) { answer("error munmap: %s", strerror(errno)); return; }
            unmapped_address = pages + page;
        }
        set_ptr(unmapped_address);
        answer("ok %p", unmapped_address);
        return;
    }
    if (!strcmp(verb, "huge")) {
        if (!huge_record) {
            long page = sysconf(_SC_PAGESIZE);
            char *pages = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (pages == MAP_FAILED) { answer("error mmap: %s", strerror(errno)); return; }
            if (munmap(pages + page, page)) { answer("error munmap: %s", strerror(errno)); return; }
            huge_record = (void *)(pages + page - sizeof(struct otel_thread_ctx_record));
        }
        if (get_ptr() == huge_record) set_ptr(NULL); /* rebuilding it: detach first */
        publish_record(huge_record, last_trace_id, last_span_id, 1, NULL, 0, 0xffff);
        answer("ok %p", (void *)huge_record);
        return;
    }
    answer("error unknown command %s", verb);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    int port = atoi(argv[1]);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    udp_socket = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (udp_socket < 0 || connect(udp_socket, (struct sockaddr *)&to, sizeof to)) {
        fprintf(stderr, "udp socket to 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
#ifdef NOT_TLS
    /* A valid-looking record from the start: valid, sampled, real ids. */
    publish_record((void *)record_buffers[next_buffer], last_trace_id, last_span_id, 1, NULL, 0, 0);
    next_buffer ^= 1;
#endif
    answer("pid %d tid %d", (int)getpid(), (int)gettid());
    answer("ready");
    char line[4096];
    while (fgets(line, sizeof line, stdin)) command(line);
    return 0;
}

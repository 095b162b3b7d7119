/*
 * otel-sendmmsg context: publish the calling thread's active span as an OTEP 4947 thread context,
 * which out-of-process readers (the otel-sendmmsg sidecar, which makes this thread's sendmmsg(2)
 * calls children of the span; the OpenTelemetry eBPF profiler) read from the thread-local
 * variable otel_thread_ctx_v1. Publishing costs a call and a few thread-local stores.
 *
 * Readers find otel_thread_ctx_v1 in the dynamic symbol table (.dynsym):
 *  - linking libotel_sendmmsg_context.a into an executable, add
 *        -Wl,--export-dynamic-symbol=otel_thread_ctx_v1
 *    (executables export nothing by default; GNU ld 2.35+, lld and mold take this flag);
 *  - linking libotel_sendmmsg_context.so, nothing: the shared object exports it.
 */
#ifndef OTEL_SENDMMSG_CONTEXT_H
#define OTEL_SENDMMSG_CONTEXT_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* W3C trace flag: the span is sampled (exported); bit 0 of the trace-flags byte. */
#define OTEL_SENDMMSG_SAMPLED 1u

/*
 * Publishes a span as the calling thread's context. trace_id_high/low are the 16 trace-id bytes
 * as two big-endian integers (bytes 0-7, 8-15), span_id the 8 span-id bytes big-endian, flags
 * the W3C trace-flags byte (low 8 bits). Unsampled spans are published too, with
 * OTEL_SENDMMSG_SAMPLED clear: readers decide what to do with them. A zero trace id or span id
 * means "no span" from now on.
 */
void otel_sendmmsg_set_context(uint64_t trace_id_high, uint64_t trace_id_low, uint64_t span_id,
                               uint64_t flags);

static inline uint64_t otel_sendmmsg_be64_(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | b[i];
    return v;
}

/* The same from the ids' bytes, as a W3C traceparent carries them. */
static inline void otel_sendmmsg_publish(const uint8_t trace_id[16], const uint8_t span_id[8], int sampled) {
    otel_sendmmsg_set_context(otel_sendmmsg_be64_(trace_id), otel_sendmmsg_be64_(trace_id + 8),
                              otel_sendmmsg_be64_(span_id), sampled ? OTEL_SENDMMSG_SAMPLED : 0);
}

static inline void otel_sendmmsg_clear(void) { otel_sendmmsg_set_context(0, 0, 0, 0); }

#include <stddef.h>

/*
 * Publishes the process's resource as an OTEP 4719 process context (a mapping named OTEL_CTX),
 * which the sidecar puts this process's spans under: service_name and `count` string attributes
 * keys[i]=values[i] (e.g. service.version, service.instance.id, deployment.environment.name),
 * UTF-8. Called again, it updates the published resource in place. Returns 0, -EINVAL (NULL or
 * non-UTF-8 string), -E2BIG (over 64 KiB encoded) or -errno of the failed system call.
 * Readers look for thread contexts only in processes with a process context, so the first span
 * published publishes one without a resource if this has not been called yet; this replaces it.
 */
int otel_sendmmsg_publish_resource(const char *service_name, const char *const *keys,
                                   const char *const *values, size_t count);

/* The same call, named for updates. */
static inline int otel_sendmmsg_update_resource(const char *service_name, const char *const *keys,
                                                const char *const *values, size_t count) {
    return otel_sendmmsg_publish_resource(service_name, keys, values, count);
}

#ifdef __cplusplus
}
#endif
#endif

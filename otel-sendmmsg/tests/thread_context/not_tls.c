/* A test program that exports `otel_thread_ctx_v1` as a plain data object (STT_OBJECT, a
 * `void *` in .bss, not thread-local) and points it at a valid-looking Thread-Local Context
 * Record from the start (valid = 1, sampled, W3C's example ids). A reader of OTEP 4947 must
 * refuse it: the symbol is not STT_TLS. Otherwise it is writer.c (same commands: send, tsend,
 * exit, ...; publish etc. write the plain variable) with NOT_TLS defined.
 *
 * Build (writer.c must sit next to this file):
 *   gcc -O2 -Wall -pthread -Wl,--export-dynamic-symbol=otel_thread_ctx_v1 -o not_tls not_tls.c
 * `readelf -W --dyn-syms not_tls` shows it as `8 OBJECT GLOBAL DEFAULT ... otel_thread_ctx_v1`.
 *
 * usage: not_tls PORT */
#define NOT_TLS 1
#include "writer.c"

/* A shared library that owns the OTEP 4947 thread-local `otel_thread_ctx_v1` for writer.c
 * (built with -DTLS_IN_LIBRARY or -DTLS_DLOPEN). It only holds the TLS pointer; the records it
 * points to live in writer.c.
 *
 * `otel_thread_ctx_v1` is a `__thread void *` with default visibility: it is exported in
 * .dynsym as TLS, and since a default-visibility symbol in a -fPIC library can be preempted,
 * every access to it goes through a dynamic relocation that names it. Which relocation depends
 * on the TLS dialect/model the library is built with (x86-64, gcc 12, binutils 2.40):
 *
 *   TLSDESC (the OTEP's recommended model): R_X86_64_TLSDESC naming it, in .rela.plt
 *   (DT_JMPREL), not .rela.dyn: GNU ld 2.40 and gold both put it there, with -z now too, and
 *   add DT_TLSDESC_PLT/DT_TLSDESC_GOT. A reader must scan both relocation tables.
 *     gcc -shared -fPIC -O2 -Wall -mtls-dialect=gnu2 -Wl,-soname,libwriter_tlsdesc.so \
 *         -o libwriter_tlsdesc.so writer_lib.c
 *
 *   legacy global-dynamic (__tls_get_addr; the library gets DT_NEEDED ld-linux-x86-64.so.2):
 *   R_X86_64_DTPMOD64 + R_X86_64_DTPOFF64 naming it, in .rela.dyn
 *     gcc -shared -fPIC -O2 -Wall -mtls-dialect=gnu -Wl,-soname,libwriter_gd.so \
 *         -o libwriter_gd.so writer_lib.c
 *
 *   initial-exec (static TLS; the library gets DF_STATIC_TLS): R_X86_64_TPOFF64 naming it, in
 *   .rela.dyn
 *     gcc -shared -fPIC -O2 -Wall -ftls-model=initial-exec -Wl,-soname,libwriter_ie.so \
 *         -o libwriter_ie.so writer_lib.c
 *
 * Check with `readelf -W -r --dyn-syms libwriter_*.so`: .dynsym has
 *   0000000000000000     8 TLS     GLOBAL DEFAULT   NN otel_thread_ctx_v1
 * (NN = the .tbss section) and exactly one of the relocations above names it. -soname
 * matters: writer.c links the library by path, and without a soname DT_NEEDED would record
 * that path instead of the name the $ORIGIN runpath resolves.
 *
 * Linked at start (writer_tlsdesc, writer_gd, writer_ie in writer.c's header) the library is
 * TLS module 1 (the executable has no PT_TLS) and glibc puts it in the static TLS block, with
 * the slot at TP - 8 in all three: TLSDESC resolves to {_dl_tlsdesc_return, -8}, the
 * TPOFF64 GOT word is -8, and the legacy GD GOT pair is {module 1, offset 0} with DTV entry 1
 * pointing into the static block (TP - 8).
 * dlopen()ed after start (writer_dlopen), see the note in writer.c's header. */

/* The OTEP's thread-local: a pointer to this thread's active Thread-Local Context Record, or
 * NULL for none. */
__attribute__((visibility("default"))) __thread void *otel_thread_ctx_v1;

/* Points this thread's otel_thread_ctx_v1 at `record` (NULL detaches). The caller has already
 * built the record and set valid = 1; the fences keep the compiler from moving those writes
 * past this one (a call into another module is a barrier anyway, the fences say it). */
__attribute__((visibility("default"))) void writer_set_ptr(void *record) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *(void *volatile *)&otel_thread_ctx_v1 = record;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* This thread's otel_thread_ctx_v1. */
__attribute__((visibility("default"))) void *writer_get_ptr(void) {
    return *(void *volatile *)&otel_thread_ctx_v1;
}

/* The address of this thread's otel_thread_ctx_v1 (for the `where` command, so a test can
 * compare it with the slot a reader computes from outside). For a dlopen()ed module in dynamic
 * TLS, calling it (like calling the two above) allocates this thread's TLS block. */
__attribute__((visibility("default"))) void **writer_tls_addr(void) {
    return &otel_thread_ctx_v1;
}

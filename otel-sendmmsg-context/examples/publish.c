/*
 * A C sender publishing its active span to otel-sendmmsg: one batch inside a span, one outside.
 *
 *   cargo build -p otel-sendmmsg-context
 *   cc -O2 publish.c -I ../include ../../target/debug/libotel_sendmmsg_context.a -lpthread -ldl -lm \
 *      -Wl,--export-dynamic-symbol=otel_thread_ctx_v1
 *
 * The last flag puts the thread context's TLS variable in the executable's .dynsym, where
 * readers look it up (OTEP 4947).
 *
 * With an argument of "wait" it waits for a line on stdin first (for tests). It sends to the
 * UDP port given as its last argument on 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "otel_sendmmsg_context.h"

static int send_batch(int fd) {
    char payload[2][16] = {"demo.c:1|c", "demo.c:2|c"};
    struct iovec iov[2];
    struct mmsghdr msgs[2];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < 2; i++) {
        iov[i].iov_base = payload[i];
        iov[i].iov_len = strlen(payload[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(fd, msgs, 2, 0);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s [wait] PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[argc - 1]))};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
        perror("socket");
        return 1;
    }
    /* The resource the sidecar puts this process's spans under (OTEP 4719 process context). */
    const char *keys[] = {"service.version", "deployment.environment.name"};
    const char *values[] = {"1.0.0", "example"};
    if (otel_sendmmsg_publish_resource("publish-example", keys, values, 2) != 0)
        fprintf(stderr, "publishing the resource failed; the sidecar falls back to the environment\n");
    printf("pid %d\n", getpid());
    if (argc > 2 && strcmp(argv[1], "wait") == 0) {
        char line[16];
        printf("waiting\n");
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin)) return 1;
    }

    /* In a real app these come from the current span (e.g. a W3C traceparent). */
    const uint8_t trace_id[16] = {0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd,
                                  0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c};
    const uint8_t span_id[8] = {0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31};
    otel_sendmmsg_publish(trace_id, span_id, 1);
    int inside = send_batch(fd);
    otel_sendmmsg_clear();
    int outside = send_batch(fd);
    printf("sent %d %d\n", inside, outside);
    return inside == 2 && outside == 2 ? 0 : 1;
}

/* A hostile traced process: points its own environment (what /proc/PID/environ shows) at a
 * mapping of BYTES untouched anonymous memory (zero pages: they cost the host nothing), makes
 * CALLS sendmmsg calls of VLEN messages each to 127.0.0.1:PORT, and stays alive until its stdin
 * closes.
 *
 * With FILE (a FUSE file whose reads never return), it first makes every read of its memory by
 * another process wait forever. /proc/PID/environ refuses file-backed memory (the kernel reads
 * it with FOLL_ANON: a file mapped there reads as nothing), so the file is not the environment:
 * one thread reads the file's mapping through /proc/self/mem, which holds this process's mmap
 * lock for reading while the FUSE read never returns, and another then asks for the lock for
 * writing (mmap), so every later reader of its memory (environ, cmdline) queues behind it.
 *
 * usage: hostile BYTES PORT [FILE] */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/prctl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define CALLS 3
#define VLEN 2

static void die(const char *what) { fprintf(stderr, "%s: %s\n", what, strerror(errno)); exit(1); }

static void *stuck_file;
static int release_writer[2];

/* Reads its own FUSE mapping the way another process reads its memory: the kernel holds the
 * mmap lock for reading while it faults the page in, and the fault never ends. */
static void *hold_mmap_lock(void *unused) {
    (void)unused;
    int mem = open("/proc/self/mem", O_RDONLY);
    if (mem < 0) die("/proc/self/mem");
    char byte;
    pread(mem, &byte, 1, (off_t)(unsigned long)stuck_file);
    return NULL;
}

/* Queues for the mmap lock for writing behind that reader: readers that come later wait too. */
static void *queue_writer(void *unused) {
    (void)unused;
    char go;
    if (read(release_writer[0], &go, 1) != 1) die("waiting to queue the writer");
    mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s BYTES PORT [FILE]\n", argv[0]); return 2; }
    unsigned long size = strtoul(argv[1], NULL, 0);
    int port = atoi(argv[2]);
    void *env = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (env == MAP_FAILED) die("mmap");

    /* The current layout, from /proc/self/stat (fields 26-28 and 45-51), which the kernel
     * checks the new one against (kernel/sys.c: validate_prctl_map_addr). */
    char stat[4096];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f || !fgets(stat, sizeof stat, f)) die("/proc/self/stat");
    fclose(f);
    unsigned long field[64] = {0};
    char *p = strrchr(stat, ')');
    if (!p) die("parsing /proc/self/stat");
    p += 2; /* fields from 3 on */
    for (int i = 3; i < 64 && *p; i++) {
        field[i] = strtoul(p, &p, 10);
        if (i == 3) field[i] = 0; /* the state, a letter */
        while (*p == ' ' || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')) p++;
    }
    struct prctl_mm_map map = {
        .start_code = field[26], .end_code = field[27], .start_stack = field[28],
        .start_data = field[45], .end_data = field[46], .start_brk = field[47],
        .brk = (unsigned long)sbrk(0),
        .arg_start = field[48], .arg_end = field[49],
        .env_start = (unsigned long)env, .env_end = (unsigned long)env + size,
        .auxv = NULL, .auxv_size = 0, .exe_fd = (unsigned)-1,
    };
    if (prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof map, 0)) die("prctl(PR_SET_MM_MAP)");
    /* Its calls come from a thread named otherwise than its executable. */
    if (prctl(PR_SET_NAME, "hostile-thread", 0, 0, 0)) die("prctl(PR_SET_NAME)");

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) die("socket");
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char payload[VLEN][8] = { "first", "second" };
    struct iovec iov[VLEN];
    struct mmsghdr msgs[VLEN];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < VLEN; i++) {
        iov[i].iov_base = payload[i];
        iov[i].iov_len = strlen(payload[i]);
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("%d\n", getpid());
    fflush(stdout);
    if (argc > 3) {
        int fd = open(argv[3], O_RDONLY);
        if (fd < 0) die("open");
        stuck_file = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        if (stuck_file == MAP_FAILED) die("mmap");
        if (pipe(release_writer)) die("pipe");
        /* Both threads' stacks are mapped now, before the lock is taken. */
        pthread_t reader, writer;
        if (pthread_create(&reader, NULL, hold_mmap_lock, NULL)) die("pthread_create");
        if (pthread_create(&writer, NULL, queue_writer, NULL)) die("pthread_create");
        usleep(500 * 1000);
        if (write(release_writer[1], "w", 1) != 1) die("releasing the writer");
        usleep(200 * 1000);
    }
    for (int c = 0; c < CALLS; c++) {
        int sent = sendmmsg(s, msgs, VLEN, 0);
        if (sent != VLEN) die("sendmmsg");
    }
    printf("sent %d calls of %d\n", CALLS, VLEN);
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}

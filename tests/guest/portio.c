/* portio PORT COUNT: times COUNT one-byte reads of I/O port PORT (each one an exit to
 * the device model's ioreq server and back) and prints
 * "portio: COUNT reads of 0xPORT: median N ns, p99 N ns, total N ms, last value 0xVV".
 * The port should be one whose read has no side effect (IDE alternate status, 0x3f6). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: portio PORT COUNT\n");
        return 2;
    }
    unsigned long port = strtoul(argv[1], NULL, 0);
    long count = strtol(argv[2], NULL, 0);
    if (port > 0xffff || count < 1 || count > 10000000) {
        fprintf(stderr, "portio: bad port or count\n");
        return 2;
    }
    if (ioperm(port, 1, 1) != 0) {
        perror("ioperm");
        return 1;
    }
    uint64_t *took_ns = malloc((size_t)count * sizeof *took_ns);
    if (!took_ns) {
        perror("malloc");
        return 1;
    }
    unsigned char value = 0;
    uint64_t start = now_ns();
    for (long i = 0; i < count; i++) {
        uint64_t t0 = now_ns();
        value = inb((unsigned short)port);
        took_ns[i] = now_ns() - t0;
    }
    uint64_t total_ns = now_ns() - start;
    qsort(took_ns, (size_t)count, sizeof *took_ns, by_value);
    long p99 = (count * 99 + 99) / 100 - 1;
    printf("portio: %ld reads of 0x%lx: median %llu ns, p99 %llu ns, total %llu ms, last value 0x%02x\n", count,
           port, (unsigned long long)took_ns[(count + 1) / 2 - 1], (unsigned long long)took_ns[p99],
           (unsigned long long)(total_ns / 1000000u), value);
    free(took_ns);
    return 0;
}

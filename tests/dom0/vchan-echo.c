/*
 * The vchan benchmark's Linux peer: a libxenvchan server (Xen's own library) that
 * echoes whatever its one client sends until the client goes away, as the image's
 * `selftest=vchan` does. Built on the host and put into the Linux domU's initramfs.
 *
 * usage: vchan-echo XENSTORE-PATH   (relative to the domain's home, e.g. data/vchan)
 */
#include <stdio.h>
#include <stdlib.h>
#include <libxenvchan.h>

int main(int argc, char **argv)
{
    static char buf[65536];
    struct libxenvchan *ctrl;
    long long echoed = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s XENSTORE-PATH\n", argv[0]);
        return 2;
    }
    /* 0, 0: libxenvchan's default ring sizes, as vchan-socket-proxy uses. */
    ctrl = libxenvchan_server_init(NULL, 0, argv[1], 0, 0);
    if (!ctrl) {
        perror("libxenvchan_server_init");
        return 1;
    }
    ctrl->blocking = 1;
    printf("vchan-echo: listening at %s\n", argv[1]);
    fflush(stdout);
    /* is_open is 2 while no client has connected yet, 0 once it has left. */
    while (libxenvchan_is_open(ctrl)) {
        int n = libxenvchan_data_ready(ctrl);
        if (n == 0) {
            if (libxenvchan_wait(ctrl) < 0)
                break;
            continue;
        }
        if (n > (int)sizeof(buf))
            n = sizeof(buf);
        n = libxenvchan_read(ctrl, buf, n);
        if (n <= 0)
            break;
        if (libxenvchan_write(ctrl, buf, n) != n)
            break;
        echoed += n;
    }
    printf("vchan-echo: client gone after %lld bytes echoed\n", echoed);
    libxenvchan_close(ctrl);
    return 0;
}

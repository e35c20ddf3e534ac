/* cdeject DEVICE: the guest's own eject of its CD-ROM tray (CDROMEJECT, which Linux's
 * sr driver sends as START STOP UNIT with LoEj); busybox has no eject applet. */
#include <fcntl.h>
#include <linux/cdrom.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cdeject DEVICE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    if (ioctl(fd, CDROMEJECT, 0) < 0) {
        perror("CDROMEJECT");
        close(fd);
        return 1;
    }
    close(fd);
    return 0;
}

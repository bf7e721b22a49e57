/*
 * odirect-read: the O_DIRECT peer of scripts/bench-tools.
 *
 *     odirect-read DIR
 *
 * Walks DIR (one process, one thread; nftw, no symlinks followed) and reads every regular
 * file whole with O_DIRECT into one aligned 1 MiB buffer: what `pagetier prefetch -r` asks
 * of STORAGE (the device tier fills with O_DIRECT reads), without FUSE in between. A
 * per-file `dd iflag=direct` would measure process spawning instead; Python would measure
 * its interpreter (a 16 KiB O_DIRECT read takes tens of microseconds). Prints one JSON
 * object: files, bytes, elapsed nanoseconds (walk included), failures and the first one.
 * Built by scripts/bench-tools into target/peers/ (never committed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (1 << 20)

static void *buf;
static uint64_t files, bytes, failures;
static char first_failure[512];

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void failed(const char *path, const char *what)
{
	if (failures++ == 0)
		snprintf(first_failure, sizeof first_failure, "%s: %s: %s", path, what,
			 strerror(errno));
}

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DNR || type == FTW_NS) {
		errno = EACCES;
		failed(path, "walk");
		return 0;
	}
	if (type != FTW_F || !S_ISREG(st->st_mode))
		return 0;
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		failed(path, "open");
		return 0;
	}
	for (;;) {
		ssize_t n = read(fd, buf, BUF_SIZE);
		if (n < 0) {
			failed(path, "read");
			break;
		}
		if (n == 0) {
			files++;
			break;
		}
		bytes += (uint64_t)n;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: odirect-read DIR\n");
		return 2;
	}
	if (posix_memalign(&buf, 4096, BUF_SIZE) != 0) {
		fprintf(stderr, "odirect-read: out of memory\n");
		return 1;
	}
	uint64_t t0 = now_ns();
	if (nftw(argv[1], visit, 64, FTW_PHYS) != 0) {
		fprintf(stderr, "odirect-read: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	uint64_t ns = now_ns() - t0;
	printf("{\"files\": %llu, \"bytes\": %llu, \"ns\": %llu, \"failures\": %llu, "
	       "\"first_failure\": \"",
	       (unsigned long long)files, (unsigned long long)bytes, (unsigned long long)ns,
	       (unsigned long long)failures);
	for (const char *c = first_failure; *c; c++)
		printf(*c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
	printf("\"}\n");
	return failures ? 1 : 0;
}

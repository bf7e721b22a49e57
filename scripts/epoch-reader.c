/*
 * epoch-reader: one reader process of scripts/bench-files.
 *
 *     epoch-reader ROOT LIST
 *
 * Reads LIST (paths relative to ROOT, one per line), changes into ROOT, prints "ready" and
 * waits for one byte on stdin (the harness starts every reader of an epoch at once), then
 * opens, reads whole (1 MiB read()s until one returns 0, as a loader's f.read() does) and
 * closes each file in the list's order. It prints one JSON object: files read, bytes, the
 * elapsed nanoseconds, per-file open-to-close latency percentiles, and failures counted by
 * errno name with the first one spelled out. A failure skips that file and carries on, so
 * that an EMFILE part-way through an epoch is counted, not fatal.
 *
 * C, not Python: a warm page-cache read of a small file takes a few microseconds, about
 * what the Python interpreter spends per file on its own. Built by scripts/bench-files
 * into target/peers/ (never committed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (1 << 20)
#define MAX_ERRNO 4096

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 20, n = 0, got;
	char *buf = malloc(cap + 1);
	while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
		n += got;
		if (n == cap) {
			char *bigger = realloc(buf, 2 * cap + 1);
			if (!bigger) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = bigger;
			cap *= 2;
		}
	}
	fclose(f);
	if (buf)
		buf[n] = '\0';
	*len = n;
	return buf;
}

/* Prints s as a JSON string body (quotes and backslashes escaped, control bytes dropped). */
static void json_str(const char *s)
{
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		if ((unsigned char)*s >= 0x20)
			putchar(*s);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: epoch-reader ROOT LIST\n");
		return 2;
	}
	size_t len;
	char *list = slurp(argv[2], &len);
	if (!list) {
		perror(argv[2]);
		return 2;
	}
	size_t nfiles = 0;
	for (size_t i = 0; i < len; i++)
		nfiles += list[i] == '\n';
	char **paths = malloc((nfiles + 1) * sizeof *paths);
	uint64_t *lat = malloc((nfiles + 1) * sizeof *lat);
	char *buf = aligned_alloc(4096, BUF_SIZE);
	if (!paths || !lat || !buf) {
		fprintf(stderr, "epoch-reader: out of memory\n");
		return 2;
	}
	size_t n = 0;
	for (char *p = list, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
		*nl = '\0';
		if (*p)
			paths[n++] = p;
	}
	if (chdir(argv[1]) != 0) {
		perror(argv[1]);
		return 2;
	}
	static uint64_t errors[MAX_ERRNO];
	char first_error[512] = "";
	printf("ready\n");
	fflush(stdout);
	char go;
	if (read(0, &go, 1) != 1)
		return 2;

	uint64_t bytes = 0, ok = 0, start = now_ns();
	for (size_t i = 0; i < n; i++) {
		uint64_t t = now_ns();
		int err = 0;
		int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			err = errno;
		} else {
			ssize_t got;
			while ((got = read(fd, buf, BUF_SIZE)) > 0)
				bytes += (uint64_t)got;
			if (got < 0)
				err = errno;
			if (close(fd) != 0 && !err)
				err = errno;
		}
		if (err) {
			errors[err < MAX_ERRNO ? err : 0]++;
			if (!first_error[0])
				snprintf(first_error, sizeof first_error, "%s: %s", paths[i],
					 strerror(err));
			continue;
		}
		lat[ok++] = now_ns() - t;
	}
	uint64_t elapsed = now_ns() - start;

	qsort(lat, ok, sizeof *lat, cmp_u64);
	uint64_t p50 = ok ? lat[ok / 2] : 0, p99 = ok ? lat[ok * 99 / 100] : 0;
	uint64_t max = ok ? lat[ok - 1] : 0;
	printf("{\"files\": %llu, \"bytes\": %llu, \"ns\": %llu, \"p50_ns\": %llu, "
	       "\"p99_ns\": %llu, \"max_ns\": %llu, \"errors\": {",
	       (unsigned long long)ok, (unsigned long long)bytes, (unsigned long long)elapsed,
	       (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)max);
	const char *sep = "";
	for (int e = 0; e < MAX_ERRNO; e++) {
		if (!errors[e])
			continue;
		const char *name = e ? strerrorname_np(e) : NULL;
		char key[32];
		if (name)
			snprintf(key, sizeof key, "%s", name);
		else
			snprintf(key, sizeof key, "errno %d", e);
		printf("%s\"%s\": %llu", sep, key, (unsigned long long)errors[e]);
		sep = ", ";
	}
	printf("}, \"first_error\": \"");
	json_str(first_error);
	printf("\"}\n");
	return 0;
}

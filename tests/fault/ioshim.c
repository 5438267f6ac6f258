/*
 * ioshim.c — an LD_PRELOAD library that makes chosen I/O calls of a
 * process fail, for the storage-fault tests (tests/system/test_storage.py).
 *
 * IOSHIM_CTL names a control file.  While it is absent every call goes
 * straight through.  While it exists it holds one line of settings:
 *
 *   match=SUB[,SUB...]  paths (from /proc/self/fd) holding any SUB
 *   ops=OP[,OP...]      write pwrite fsync fdatasync ftruncate fallocate
 *                       (default: all of them)
 *   nth=N               the Nth matching call fails first (1-based, default 1)
 *   count=K             so many calls fail from there (0: all; default 1)
 *   errno=EIO|ENOSPC    the error they fail with (default EIO)
 *   trace=PATH          append "N OP PATH" (and " FAIL" when failed) per
 *                       matching call, so a test can count the calls
 *
 * The file is read again, and the count restarts, whenever it changes
 * (inode, size or mtime).  A failed write or fsync changes nothing in the
 * file: what it models is the kernel reporting an error, and the tests
 * check that the daemon then trusts nothing it cannot prove.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_MATCH	8

enum { OP_WRITE, OP_PWRITE, OP_FSYNC, OP_FDATASYNC, OP_FTRUNCATE,
    OP_FALLOCATE, OP_N };
static const char *op_names[OP_N] = { "write", "pwrite", "fsync",
    "fdatasync", "ftruncate", "fallocate" };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int inside;		/* our own calls go straight through */

static struct {
	int		 loaded;
	struct stat	 seen;
	char		 match[MAX_MATCH][256];
	int		 nmatch;
	int		 ops[OP_N];
	unsigned long	 nth, count, calls;
	int		 err;
	char		 trace[512];
} cfg;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off64_t, off64_t);

static void
resolve(void)
{
	real_write = dlsym(RTLD_NEXT, "write");
	real_pwrite = dlsym(RTLD_NEXT, "pwrite");
	real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
	real_fsync = dlsym(RTLD_NEXT, "fsync");
	real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
	real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
	real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
	real_fallocate = dlsym(RTLD_NEXT, "fallocate");
	real_fallocate64 = dlsym(RTLD_NEXT, "fallocate64");
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void
parse(const char *text)
{
	char buf[4096], *save = NULL;

	memset(cfg.match, 0, sizeof(cfg.match));
	cfg.nmatch = 0;
	for (int i = 0; i < OP_N; i++)
		cfg.ops[i] = 1;
	cfg.nth = 1;
	cfg.count = 1;
	cfg.calls = 0;
	cfg.err = EIO;
	cfg.trace[0] = '\0';
	snprintf(buf, sizeof(buf), "%s", text);
	for (char *tok = strtok_r(buf, " \t\n", &save); tok;
	    tok = strtok_r(NULL, " \t\n", &save)) {
		char *v = strchr(tok, '=');
		if (v == NULL)
			continue;
		*v++ = '\0';
		if (strcmp(tok, "match") == 0) {
			char *s2 = NULL;
			for (char *m = strtok_r(v, ",", &s2); m &&
			    cfg.nmatch < MAX_MATCH; m = strtok_r(NULL, ",", &s2))
				snprintf(cfg.match[cfg.nmatch++],
				    sizeof(cfg.match[0]), "%s", m);
		} else if (strcmp(tok, "ops") == 0) {
			char *s2 = NULL;
			memset(cfg.ops, 0, sizeof(cfg.ops));
			for (char *o = strtok_r(v, ",", &s2); o;
			    o = strtok_r(NULL, ",", &s2))
				for (int i = 0; i < OP_N; i++)
					if (strcmp(o, op_names[i]) == 0)
						cfg.ops[i] = 1;
		} else if (strcmp(tok, "nth") == 0) {
			cfg.nth = strtoul(v, NULL, 10);
		} else if (strcmp(tok, "count") == 0) {
			cfg.count = strtoul(v, NULL, 10);
		} else if (strcmp(tok, "errno") == 0) {
			cfg.err = strcmp(v, "ENOSPC") == 0 ? ENOSPC : EIO;
		} else if (strcmp(tok, "trace") == 0) {
			snprintf(cfg.trace, sizeof(cfg.trace), "%s", v);
		}
	}
}

/* Reload the control file if it changed; 0 if it is absent. */
static int
load(void)
{
	const char *ctl = getenv("IOSHIM_CTL");
	struct stat sb;

	if (ctl == NULL || stat(ctl, &sb) != 0) {
		cfg.loaded = 0;
		return 0;
	}
	if (cfg.loaded && sb.st_ino == cfg.seen.st_ino &&
	    sb.st_size == cfg.seen.st_size &&
	    sb.st_mtim.tv_sec == cfg.seen.st_mtim.tv_sec &&
	    sb.st_mtim.tv_nsec == cfg.seen.st_mtim.tv_nsec)
		return 1;
	char text[4096] = "";
	int fd = open(ctl, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	text[n > 0 ? n : 0] = '\0';
	parse(text);
	cfg.seen = sb;
	cfg.loaded = 1;
	return 1;
}

/* Whether this call on fd fails; errno is set if so. */
static int
inject(int op, int fd)
{
	char link[64], path[4096];
	int fail = 0, saved = errno;

	pthread_once(&once, resolve);
	if (inside)
		return 0;
	inside = 1;
	pthread_mutex_lock(&mu);
	if (!load() || !cfg.ops[op])
		goto out;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0)
		goto out;
	path[n] = '\0';
	int hit = 0;
	for (int i = 0; i < cfg.nmatch && !hit; i++)
		hit = strstr(path, cfg.match[i]) != NULL;
	if (!hit)
		goto out;
	cfg.calls++;
	fail = cfg.nth > 0 && cfg.calls >= cfg.nth &&
	    (cfg.count == 0 || cfg.calls < cfg.nth + cfg.count);
	if (cfg.trace[0]) {
		char line[4200];
		int len = snprintf(line, sizeof(line), "%lu %s %s%s\n",
		    cfg.calls, op_names[op], path, fail ? " FAIL" : "");
		int t = open(cfg.trace, O_WRONLY | O_CREAT | O_APPEND |
		    O_CLOEXEC, 0600);
		if (t >= 0) {
			if (len > 0)
				real_write(t, line, (size_t)len);
			close(t);
		}
	}
out:
	pthread_mutex_unlock(&mu);
	inside = 0;
	errno = fail ? cfg.err : saved;
	return fail;
}

ssize_t
write(int fd, const void *buf, size_t len)
{
	if (inject(OP_WRITE, fd))
		return -1;
	return real_write(fd, buf, len);
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
	if (inject(OP_PWRITE, fd))
		return -1;
	return real_pwrite(fd, buf, len, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
	if (inject(OP_PWRITE, fd))
		return -1;
	return real_pwrite64(fd, buf, len, off);
}

int
fsync(int fd)
{
	if (inject(OP_FSYNC, fd))
		return -1;
	return real_fsync(fd);
}

int
fdatasync(int fd)
{
	if (inject(OP_FDATASYNC, fd))
		return -1;
	return real_fdatasync(fd);
}

int
ftruncate(int fd, off_t len)
{
	if (inject(OP_FTRUNCATE, fd))
		return -1;
	return real_ftruncate(fd, len);
}

int
ftruncate64(int fd, off64_t len)
{
	if (inject(OP_FTRUNCATE, fd))
		return -1;
	return real_ftruncate64(fd, len);
}

int
fallocate(int fd, int mode, off_t off, off_t len)
{
	if (inject(OP_FALLOCATE, fd))
		return -1;
	return real_fallocate(fd, mode, off, len);
}

int
fallocate64(int fd, int mode, off64_t off, off64_t len)
{
	if (inject(OP_FALLOCATE, fd))
		return -1;
	return real_fallocate64(fd, mode, off, len);
}

/*
 * trk_scan.c — the scan backend: works on any file or block device.  The
 * view is the live disk, so every block may have changed: each cycle
 * reads the whole disk once (holes are not read: scan_hole) and
 * tracker.c ships the blocks whose digest changed.  Not point-in-time
 * unless the guest is paused (pre_snapshot) until the read ends.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "trk_backend.h"
#include "trk_files.h"
#include "util.h"
#include "xmalloc.h"

struct scan {
	size_t	 ndisks;
	char	**paths;
	int	*fds;
};

int
trk_file_size(int fd, const char *path, uint64_t *size, char *err,
    size_t errsz)
{
	struct stat st;

	if (fstat(fd, &st) != 0) {
		snprintf(err, errsz, "disk %s: %s", path, strerror(errno));
		return RD_ERR_SYSTEM;
	}
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);
		if (end < 0) {
			snprintf(err, errsz, "disk %s: %s", path,
			    strerror(errno));
			return RD_ERR_SYSTEM;
		}
		*size = (uint64_t)end;
	} else if (S_ISREG(st.st_mode)) {
		*size = (uint64_t)st.st_size;
	} else {
		snprintf(err, errsz, "disk %s: not a regular file or block "
		    "device", path);
		return RD_ERR_INVALID;
	}
	return 0;
}

int
trk_file_open(const char *path, int *fd, char *err, size_t errsz)
{
	/* O_NONBLOCK: a FIFO in a disk's place must not hang us. */
	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (*fd < 0) {
		int e = errno;
		snprintf(err, errsz, "disk %s: %s", path, strerror(e));
		errno = e;
		return e == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	}
	return 0;
}

int
trk_file_sizes(char *const *paths, size_t n, uint64_t *sizes, char *err,
    size_t errsz)
{
	for (size_t i = 0; i < n; i++) {
		int fd, r;
		if ((r = trk_file_open(paths[i], &fd, err, errsz)) != 0)
			return r;
		r = trk_file_size(fd, paths[i], &sizes[i], err, errsz);
		close(fd);
		if (r != 0)
			return r;
	}
	return 0;
}

static int
scan_open(const struct cfg_vm *vm, const char *state_dir, void **state,
    char *err, size_t errsz)
{
	struct scan *s = xcalloc(1, sizeof(*s));
	s->ndisks = vm->ndisks;
	s->paths = xcalloc(vm->ndisks, sizeof(*s->paths));
	s->fds = xcalloc(vm->ndisks, sizeof(*s->fds));
	for (size_t i = 0; i < vm->ndisks; i++) {
		s->paths[i] = xstrdup(vm->disks[i]);
		s->fds[i] = -1;
	}
	*state = s;
	return 0;
}

static void
scan_abort(void *state)
{
	struct scan *s = state;
	for (size_t i = 0; i < s->ndisks; i++) {
		if (s->fds[i] >= 0)
			close(s->fds[i]);
		s->fds[i] = -1;
	}
}

static void
scan_close(void *state)
{
	struct scan *s = state;
	scan_abort(s);
	for (size_t i = 0; i < s->ndisks; i++)
		free(s->paths[i]);
	free(s->paths);
	free(s->fds);
	free(s);
}

static int
scan_sizes(void *state, uint64_t *sizes, char *err, size_t errsz)
{
	struct scan *s = state;
	return trk_file_sizes(s->paths, s->ndisks, sizes, err, errsz);
}

static int
scan_cut(void *state, uint64_t cycle, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	struct scan *s = state;
	int r;

	for (size_t i = 0; i < s->ndisks; i++) {
		if ((r = trk_file_open(s->paths[i], &s->fds[i], err,
		    errsz)) != 0 ||
		    (r = trk_file_size(s->fds[i], s->paths[i], &sizes[i], err,
		    errsz)) != 0) {
			scan_abort(s);
			return r;
		}
		posix_fadvise(s->fds[i], 0, 0, POSIX_FADV_SEQUENTIAL);
		dirty[i].all = 1;
	}
	return 0;
}

static int
scan_read(void *state, size_t disk, uint8_t *buf, size_t len, uint64_t off,
    char *err, size_t errsz)
{
	struct scan *s = state;
	return util_pread_holes(s->fds[disk], buf, len, (off_t)off);
}

uint64_t
trk_file_hole(int fd, uint64_t off, uint64_t end)
{
	struct stat sb;
	off_t data = lseek(fd, (off_t)off, SEEK_DATA);

	if (data < 0 && errno == ENXIO) {
		/* No data past off: a hole to the end of the file, if the file
		 * still reaches end (else the read reports the shrink). */
		if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size < end)
			return off;
		return end;
	}
	if (data < 0 || (uint64_t)data <= off)
		return off;
	return (uint64_t)data < end ? (uint64_t)data : end;
}

/* A sparse image's holes: the tracker skips reading them (a 256 GiB image
 * with 1 GiB of data costs what the data costs, not a scan of zeros). */
static uint64_t
scan_hole(void *state, size_t disk, uint64_t off, uint64_t end)
{
	struct scan *s = state;
	return trk_file_hole(s->fds[disk], off, end);
}

static int
scan_commit(void *state, uint64_t cycle, char *err, size_t errsz)
{
	scan_abort(state);
	return 0;
}

/* Each disk can be opened for reading, and is a file or a block device. */
static int
scan_check(const struct cfg_vm *vm, const char *state_dir, char *err,
    size_t errsz)
{
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct stat sb;
		int fd = open(vm->disks[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &sb) != 0) {
			int e = errno;
			snprintf(err, errsz, "disk %s: %s", vm->disks[i],
			    strerror(e));
			if (fd >= 0)
				close(fd);
			return e == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
		}
		close(fd);
		if (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode)) {
			snprintf(err, errsz, "disk %s: neither a file nor a "
			    "block device", vm->disks[i]);
			return RD_ERR_INVALID;
		}
	}
	return 0;
}

const struct trk_backend trk_backend_scan = {
	.name = "scan",
	.frozen = 0,
	.concurrent_reads = 1,
	.open = scan_open,
	.close = scan_close,
	.sizes = scan_sizes,
	.cut = scan_cut,
	.read = scan_read,
	.hole = scan_hole,
	.commit = scan_commit,
	.abort = scan_abort,
	.check = scan_check,
};

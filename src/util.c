/*
 * util.c — parsing and file helpers shared by replicad and replctl.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "util.h"
#include "xmalloc.h"

/* Parse a decimal number with an optional suffix from units[]. */
static int
parse_scaled(const char *s, const char *const *sfx, const uint64_t *mult,
    size_t nsfx, uint64_t dflt_mult, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return RD_ERR_INVALID;
	while (isdigit((unsigned char)*p)) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return RD_ERR_RANGE;
		v = v * 10 + d;
		p++;
	}
	uint64_t m = dflt_mult;
	if (*p != '\0') {
		size_t i;
		for (i = 0; i < nsfx; i++)
			if (strcmp(p, sfx[i]) == 0)
				break;
		if (i == nsfx)
			return RD_ERR_INVALID;
		m = mult[i];
	}
	if (m != 0 && v > UINT64_MAX / m)
		return RD_ERR_RANGE;
	*out = v * m;
	return 0;
}

int
util_parse_size(const char *s, uint64_t *out)
{
	static const char *const sfx[] = { "K", "M", "G", "T", "k", "KiB",
	    "MiB", "GiB", "TiB", "B" };
	static const uint64_t mult[] = { 1ULL << 10, 1ULL << 20, 1ULL << 30,
	    1ULL << 40, 1ULL << 10, 1ULL << 10, 1ULL << 20, 1ULL << 30,
	    1ULL << 40, 1 };
	return parse_scaled(s, sfx, mult, sizeof(mult) / sizeof(mult[0]), 1,
	    out);
}

int
util_parse_duration_ms(const char *s, uint64_t *out)
{
	static const char *const sfx[] = { "ms", "s", "m", "h", "d" };
	static const uint64_t mult[] = { 1, 1000, 60000, 3600000, 86400000 };
	return parse_scaled(s, sfx, mult, sizeof(mult) / sizeof(mult[0]), 1000,
	    out);
}

int
util_parse_hostport(const char *s, char *host, size_t hostsz, uint16_t *port)
{
	const char *colon, *h = s;
	size_t hlen;

	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL || end[1] != ':')
			return RD_ERR_INVALID;
		h = s + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return RD_ERR_INVALID;
		hlen = (size_t)(colon - s);
		if (memchr(s, ':', hlen) != NULL)	/* bare IPv6 */
			return RD_ERR_INVALID;
	}
	if (hlen == 0 || hlen >= hostsz || hlen > HOST_MAX_LEN)
		return RD_ERR_INVALID;
	uint64_t p;
	if (parse_scaled(colon + 1, NULL, NULL, 0, 1, &p) != 0 || p == 0 ||
	    p > 65535)
		return RD_ERR_INVALID;
	for (size_t i = 0; i < hlen; i++)
		if (!isalnum((unsigned char)h[i]) && strchr(".-_:", h[i]) == NULL)
			return RD_ERR_INVALID;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (uint16_t)p;
	return 0;
}

int
util_name_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > NAME_MAX_LEN || s[0] == '.' || s[0] == '-')
		return RD_ERR_NAME;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && strchr("_.+-", s[i]) == NULL)
			return RD_ERR_NAME;
	return 0;
}

int
util_identity_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > HOST_MAX_LEN)
		return RD_ERR_NAME;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) &&
		    strchr(".-_", s[i]) == NULL)
			return RD_ERR_NAME;
	return 0;
}

int
util_disk_name_valid(const char *s)
{
	if (util_name_valid(s) != 0 || strcmp(s, "test") == 0)
		return RD_ERR_NAME;
	return 0;
}

int
util_pread_full(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return RD_ERR_SYSTEM;
		}
		if (n == 0)
			return RD_ERR_TRUNCATED;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

int
util_pread_holes(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	off_t end = off + (off_t)len;

	while (off < end) {
		off_t data = lseek(fd, off, SEEK_DATA);
		if (data < 0 && errno == ENXIO) {
			/* Past the last data: a hole to the end of the file,
			 * unless the range runs past the end itself. */
			struct stat sb;
			if (fstat(fd, &sb) != 0)
				return RD_ERR_SYSTEM;
			if (sb.st_size < end)
				return RD_ERR_TRUNCATED;
			memset(p, 0, (size_t)(end - off));
			return 0;
		}
		if (data < 0)		/* no SEEK_DATA here: read it all */
			return util_pread_full(fd, p, (size_t)(end - off), off);
		if (data > off) {
			off_t h = data < end ? data : end;
			memset(p, 0, (size_t)(h - off));
			p += h - off;
			off = h;
			continue;
		}
		off_t hole = lseek(fd, off, SEEK_HOLE);
		if (hole < 0 || hole <= off)
			hole = end;
		off_t n = (hole < end ? hole : end) - off;
		int r = util_pread_full(fd, p, (size_t)n, off);
		if (r != 0)
			return r;
		p += n;
		off += n;
	}
	return 0;
}

int
util_pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return RD_ERR_SYSTEM;
		}
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

int
util_write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return RD_ERR_SYSTEM;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int
util_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return RD_ERR_SYSTEM;
	int r = fsync(fd) == 0 ? 0 : RD_ERR_SYSTEM;
	int saved = errno;
	close(fd);
	errno = saved;
	return r;
}

int
util_fsync_parent(const char *path)
{
	char *copy = xstrdup(path);
	int r = util_fsync_dir(dirname(copy));
	free(copy);
	return r;
}

int
util_mkdir_p(const char *path, mode_t mode)
{
	char *copy = xstrdup(path);
	int r = 0;

	for (char *p = copy + 1; ; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(copy, mode) != 0 && errno != EEXIST) {
				r = RD_ERR_SYSTEM;
				break;
			}
			*p = c;
			if (c == '\0')
				break;
		}
	}
	if (r == 0) {
		struct stat st;
		if (stat(path, &st) != 0)
			r = RD_ERR_SYSTEM;
		else if (!S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			r = RD_ERR_SYSTEM;
		}
	}
	free(copy);
	return r;
}

int
util_rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : RD_ERR_SYSTEM;
	if (!S_ISDIR(st.st_mode))
		return unlink(path) == 0 ? 0 : RD_ERR_SYSTEM;
	DIR *d = opendir(path);
	if (d == NULL)
		return RD_ERR_SYSTEM;
	struct dirent *de;
	int r = 0;
	while (r == 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		char *sub = xasprintf("%s/%s", path, de->d_name);
		r = util_rm_rf(sub);
		free(sub);
	}
	closedir(d);
	if (r == 0 && rmdir(path) != 0)
		r = RD_ERR_SYSTEM;
	return r;
}

int
util_write_atomic(const char *path, const void *data, size_t len)
{
	char *tmp = xasprintf("%s.tmp", path);
	int fd = -1, r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
	    0600);
	if (fd < 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	if ((r = util_write_full(fd, data, len)) != 0)
		goto out;
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		r = RD_ERR_SYSTEM;
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	r = util_fsync_parent(path);
out:
	if (fd >= 0)
		close(fd);
	if (r != 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
	}
	free(tmp);
	return r;
}

int
util_read_file(const char *path, size_t maxlen, uint8_t **data, size_t *len)
{
	struct stat st;
	int fd, r;
	uint8_t *p = NULL;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	if (fstat(fd, &st) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	if ((uint64_t)st.st_size > maxlen) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	p = xmalloc((size_t)st.st_size);
	if ((r = util_pread_full(fd, p, (size_t)st.st_size, 0)) != 0)
		goto out;
	*data = p;
	*len = (size_t)st.st_size;
	p = NULL;
	r = 0;
out:
	free(p);
	close(fd);
	return r;
}

int
util_is_zero(const void *p, size_t len)
{
	const uint8_t *b = p;
	/* Check the first 16 bytes, then compare the buffer with itself
	 * shifted by 16: equal iff every byte equals its neighbour's. */
	size_t head = len < 16 ? len : 16;
	for (size_t i = 0; i < head; i++)
		if (b[i] != 0)
			return 0;
	return len <= 16 || memcmp(b, b + 16, len - 16) == 0;
}

uint64_t
util_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t
util_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void
util_format_time(int64_t t, char *buf, size_t bufsz)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(buf, bufsz, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void
util_format_bytes(uint64_t b, char *buf, size_t bufsz)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)b;
	unsigned u = 0;
	/* 1023.95 and up would print as "1024.0": use the next unit. */
	while (v >= 1023.95 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, bufsz, "%" PRIu64 " B", b);
	else
		snprintf(buf, bufsz, "%.1f %s", v, units[u]);
}

int
util_lock_file(const char *path, int *fd_out)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	int r = 0;

	if (fd < 0)
		return RD_ERR_SYSTEM;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		r = errno == EWOULDBLOCK ? RD_ERR_BUSY : RD_ERR_SYSTEM;
		int saved = errno;
		close(fd);
		errno = saved;
		return r;
	}
	*fd_out = fd;
	return 0;
}

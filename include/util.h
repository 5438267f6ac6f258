/*
 * util.h — parsing of sizes, durations, addresses and names; small file
 * helpers that retry short reads and writes and report errors as err.h codes.
 */
#ifndef REPLICAD_UTIL_H
#define REPLICAD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NAME_MAX_LEN	64	/* VM and disk names */
#define HOST_MAX_LEN	255

/* "4096", "4K", "64K", "1M", "4G", "1T" (binary units). */
int	util_parse_size(const char *s, uint64_t *out);
/* "0", "30s", "5m", "1h", "2d", "250ms" -> milliseconds; a bare number is seconds. */
int	util_parse_duration_ms(const char *s, uint64_t *out);
/* "HOST:PORT", "[V6ADDR]:PORT"; host copied into host (hostsz bytes). */
int	util_parse_hostport(const char *s, char *host, size_t hostsz,
	    uint16_t *port);
/* VM and disk names: 1..64 of [A-Za-z0-9_.+-], not starting with '.' or
 * '-'.  Rules out "/", "..", and hidden names.  0 or RD_ERR_NAME. */
int	util_name_valid(const char *s);
/* A disk name must also not be "test" (STORAGE/VM/test/ holds test copies). */
int	util_disk_name_valid(const char *s);
/* A host identity as a certificate names it: 1..HOST_MAX_LEN of
 * [A-Za-z0-9._-].  0 or RD_ERR_NAME. */
int	util_identity_valid(const char *s);

/* pread/pwrite the whole range, retrying short transfers and EINTR.
 * Returns 0, RD_ERR_SYSTEM (errno set) or RD_ERR_TRUNCATED (EOF). */
int	util_pread_full(int fd, void *buf, size_t len, off_t off);
/* The same, but the file's holes (SEEK_HOLE) are zero-filled without a
 * read: a sparse image's holes cost neither the kernel's zeroing of page
 * cache pages nor a copy. */
int	util_pread_holes(int fd, void *buf, size_t len, off_t off);
int	util_pwrite_full(int fd, const void *buf, size_t len, off_t off);
int	util_write_full(int fd, const void *buf, size_t len);
/* fsync the directory that holds path (for renames and creates). */
int	util_fsync_parent(const char *path);
int	util_fsync_dir(const char *dir);
/* mkdir -p with mode for each created level. */
int	util_mkdir_p(const char *path, mode_t mode);
/* Remove a directory tree (no symlinks followed). */
int	util_rm_rf(const char *path);
/*
 * These three are for files replicad makes itself: a symbolic link in
 * their place is refused (ELOOP), never followed.
 *
 * Write data to path atomically: tmp file, fsync, rename, fsync dir.
 */
int	util_write_atomic(const char *path, const void *data, size_t len);
/* Read a whole file (at most maxlen bytes) into a new buffer. */
int	util_read_file(const char *path, size_t maxlen, uint8_t **data,
	    size_t *len);

/*
 * Take an exclusive lock on the file path (created 0600 if missing), held
 * while *fd_out stays open:
 * RD_ERR_BUSY if another process holds it.
 */
int	util_lock_file(const char *path, int *fd_out);

/* 1 if all len bytes are zero. */
int	util_is_zero(const void *p, size_t len);

/* Wall clock and monotonic clock in milliseconds. */
uint64_t util_now_ms(void);
uint64_t util_mono_ms(void);
/* "2026-11-27T20:31:00Z" into buf (at least 21 bytes). */
void	util_format_time(int64_t unix_seconds, char *buf, size_t bufsz);
/* "1.5 GiB" into buf. */
void	util_format_bytes(uint64_t bytes, char *buf, size_t bufsz);

#endif

/*
 * trk_files.h — helpers the file-based backends (scan, reflink) share.
 */
#ifndef REPLICAD_TRK_FILES_H
#define REPLICAD_TRK_FILES_H

#include <stddef.h>
#include <stdint.h>

/* Open a disk read-only (O_NONBLOCK: a FIFO must not hang us);
 * RD_ERR_NOT_FOUND or RD_ERR_SYSTEM with the path in err. */
int	trk_file_open(const char *path, int *fd, char *err, size_t errsz);
/* The size of a regular file or block device; RD_ERR_INVALID for
 * anything else. */
int	trk_file_size(int fd, const char *path, uint64_t *size, char *err,
	    size_t errsz);
/* The sizes of n disks. */
int	trk_file_sizes(char *const *paths, size_t n, uint64_t *sizes,
	    char *err, size_t errsz);
/* The end of the hole of fd at off, at most end; off if none (or no
 * SEEK_DATA, or the file no longer reaches end).  trk_backend.h hole. */
uint64_t trk_file_hole(int fd, uint64_t off, uint64_t end);

#endif

/*
 * xmalloc.h — allocation that aborts on out-of-memory, with overflow-checked
 * array sizes.  The caller owns what these return and frees it with free().
 */
#ifndef REPLICAD_XMALLOC_H
#define REPLICAD_XMALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xreallocarray(void *ptr, size_t nmemb, size_t size);
char *xstrdup(const char *s);
/* printf into a new string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

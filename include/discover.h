/*
 * discover.h — `replctl discover`: a ready-to-edit [vm] section for every
 * libvirt domain of a host, with what cannot be replicated and why
 * (virt.h reads the domains; nothing here talks to replicad).
 */
#ifndef REPLICAD_DISCOVER_H
#define REPLICAD_DISCOVER_H

#include <stdio.h>

/* Print the sections for the domains at uri on out: 0, or RD_ERR_PEER
 * with err (libvirt unreachable, the domains cannot be listed). */
int	discover_print(FILE *out, const char *uri, char *err, size_t errsz);

#endif

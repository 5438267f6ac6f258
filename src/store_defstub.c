/*
 * store_defstub.c — STUB of store_point_definition() (store.h) for branch
 * domfo, until the wire/store/catalog change that records a point's
 * domain XML lands on main.  Delete this file and "store_defstub" in the
 * Makefile's REPLICAD_OBJS when merging that change.
 */
#include <stdint.h>

#include "err.h"
#include "store.h"

int
store_point_definition(struct store *st, uint64_t id, char **xml)
{
	*xml = NULL;
	return RD_ERR_NOT_FOUND;
}

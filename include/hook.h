/*
 * hook.h — running an operator's hook command (pre_snapshot,
 * post_snapshot) with a timeout, from a worker thread.
 */
#ifndef REPLICAD_HOOK_H
#define REPLICAD_HOOK_H

#include <stddef.h>

#define HOOK_TIMEOUT_S	60

/*
 * Run `/bin/sh -c cmd` with the daemon's environment plus env (NULL-
 * terminated "NAME=value" strings).  Waits at most timeout_s seconds,
 * then kills the hook's process group.  Returns 0 if the hook exited 0;
 * otherwise RD_ERR_PEER with what happened ("exit 3", "killed after 60 s",
 * ...) and the start of its output in why.  The output (at most a few KiB)
 * is logged either way.
 */
int	hook_run(const char *vm, const char *which, const char *cmd,
	    char *const env[], unsigned timeout_s, char *why, size_t whysz);

#endif

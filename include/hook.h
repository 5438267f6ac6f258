/*
 * hook.h — running an operator's hook command (pre_snapshot,
 * post_snapshot) with a timeout, from a worker thread.
 */
#ifndef REPLICAD_HOOK_H
#define REPLICAD_HOOK_H

#include <stddef.h>
#include <stdint.h>

#define HOOK_TIMEOUT_S		60
#define HOOK_ROLE_TIMEOUT_S	300	/* on_demote may shut a guest down */

/*
 * Run argv (argv[0] looked up in PATH) in a process group of its own,
 * with the daemon's environment plus extra (NULL-terminated "NAME=value"
 * strings, may be NULL), stdin /dev/null, stdout and stderr captured
 * into out (at most outsz - 1 bytes, control characters made spaces,
 * trailing blanks cut).  After timeout_ms the group is killed and
 * *timed_out set.  *status is waitpid()'s.  0 once the program ran (look
 * at *status), RD_ERR_SYSTEM with errno if it could not start.
 */
int	hook_spawn(char *const argv[], char *const extra[], unsigned timeout_ms,
	    char *out, size_t outsz, int *status, int *timed_out);

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

/*
 * A failover hook (on_promote, on_demote; nothing to do if cmd is NULL)
 * with REPLICAD_VM, REPLICAD_ROLE (the role the host takes: primary or
 * replica), REPLICAD_GENERATION, REPLICAD_POINT and REPLICAD_DISKS
 * (space-separated paths) in its environment; HOOK_ROLE_TIMEOUT_S.
 */
int	hook_run_role(const char *vm, const char *which, const char *cmd,
	    const char *role, uint64_t generation, uint64_t point,
	    char *const *disks, size_t ndisks, char *why, size_t whysz);

#endif

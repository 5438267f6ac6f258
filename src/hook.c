/*
 * hook.c — hook commands: posix_spawn (safe in a threaded daemon), the
 * output read through a pipe, a deadline enforced with poll() and
 * SIGKILL of the hook's process group.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "err.h"
#include "hook.h"
#include "log.h"
#include "util.h"
#include "xmalloc.h"

extern char **environ;

static char **
merge_env(char *const extra[])
{
	size_t n = 0, k = 0;
	while (environ[n])
		n++;
	while (extra && extra[k])
		k++;
	char **env = xcalloc(n + k + 1, sizeof(*env));
	if (k > 0)
		memcpy(env, extra, k * sizeof(*env));
	memcpy(env + k, environ, n * sizeof(*env));
	return env;
}

int
hook_spawn(char *const argv[], char *const extra[], unsigned timeout_ms,
    char *out, size_t outsz, int *status, int *timed_out)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int pipefd[2];
	size_t outlen = 0;
	pid_t pid;

	*status = 0;
	*timed_out = 0;
	out[0] = '\0';
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return RD_ERR_SYSTEM;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDERR_FILENO);
	posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null",
	    O_RDONLY, 0);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
	    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&attr, 0);
	sigset_t none, dflt;
	sigemptyset(&none);
	sigemptyset(&dflt);
	sigaddset(&dflt, SIGPIPE);
	sigaddset(&dflt, SIGTERM);
	sigaddset(&dflt, SIGINT);
	sigaddset(&dflt, SIGHUP);	/* ignored during the daemon's start */
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dflt);
	char **env = merge_env(extra);
	int e = posix_spawnp(&pid, argv[0], &fa, &attr, argv, env);
	free(env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(pipefd[1]);
	if (e != 0) {
		close(pipefd[0]);
		errno = e;
		return RD_ERR_SYSTEM;
	}

	uint64_t deadline = util_mono_ms() + timeout_ms;
	for (;;) {
		uint64_t now = util_mono_ms();
		if (now >= deadline) {
			*timed_out = 1;
			kill(-pid, SIGKILL);
			break;
		}
		struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
		int n = poll(&p, 1, (int)(deadline - now));
		if (n <= 0)
			continue;
		char buf[1024];
		ssize_t k = read(pipefd[0], buf, sizeof(buf));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;		/* every writer closed: it is done */
		size_t room = outsz - 1 - outlen;
		size_t take = (size_t)k < room ? (size_t)k : room;
		memcpy(out + outlen, buf, take);
		outlen += take;
	}
	close(pipefd[0]);
	/* Its output closed, but it may still run (it closed or passed on
	 * its stdout): the deadline holds until it exits. */
	for (;;) {
		pid_t w = waitpid(pid, status, *timed_out ? 0 : WNOHANG);
		if (w == pid || (w < 0 && errno != EINTR))
			break;
		if (w == 0 && util_mono_ms() >= deadline) {
			*timed_out = 1;
			kill(-pid, SIGKILL);
		} else if (w == 0) {
			usleep(10000);
		}
	}
	out[outlen] = '\0';
	while (outlen > 0 && (out[outlen - 1] == '\n' || out[outlen - 1] == ' '))
		out[--outlen] = '\0';
	for (size_t i = 0; i < outlen; i++)
		if ((unsigned char)out[i] < 0x20)
			out[i] = ' ';
	return 0;
}

int
hook_run(const char *vm, const char *which, const char *cmd,
    char *const extra[], unsigned timeout_s, char *why, size_t whysz)
{
	char out[4096];
	int status, timed_out, r = 0;
	char *argv[] = { "/bin/sh", "-c", (char *)cmd, NULL };

	if (hook_spawn(argv, extra, timeout_s * 1000, out, sizeof(out),
	    &status, &timed_out) != 0) {
		snprintf(why, whysz, "cannot start: %s", strerror(errno));
		return RD_ERR_SYSTEM;
	}
	size_t outlen = strlen(out);
	if (timed_out) {
		snprintf(why, whysz, "%s hook killed after %u s", which,
		    timeout_s);
		r = RD_ERR_PEER;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		why[0] = '\0';
	} else if (WIFEXITED(status)) {
		snprintf(why, whysz, "%s hook exited %d%s%.200s", which,
		    WEXITSTATUS(status), outlen ? ": " : "", out);
		r = RD_ERR_PEER;
	} else {
		snprintf(why, whysz, "%s hook killed by signal %d", which,
		    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		r = RD_ERR_PEER;
	}
	if (r == 0)
		log_info("%s: %s hook ran%s%s", vm, which, outlen ? ": " : "",
		    out);
	else
		log_warnx("%s: %s", vm, why);
	return r;
}

int
hook_run_role(const char *vm, const char *which, const char *cmd,
    const char *role, uint64_t generation, uint64_t point,
    char *const *disks, size_t ndisks, char *why, size_t whysz)
{
	char *env[6];
	size_t len = 1;

	if (cmd == NULL)
		return 0;
	for (size_t i = 0; i < ndisks; i++)
		len += strlen(disks[i]) + 1;
	char *list = xcalloc(1, len);
	for (size_t i = 0; i < ndisks; i++) {
		if (i)
			strcat(list, " ");
		strcat(list, disks[i]);
	}
	env[0] = xasprintf("REPLICAD_VM=%s", vm);
	env[1] = xasprintf("REPLICAD_ROLE=%s", role);
	env[2] = xasprintf("REPLICAD_GENERATION=%" PRIu64, generation);
	env[3] = xasprintf("REPLICAD_POINT=%" PRIu64, point);
	env[4] = xasprintf("REPLICAD_DISKS=%s", list);
	env[5] = NULL;
	int r = hook_run(vm, which, cmd, env, HOOK_ROLE_TIMEOUT_S, why, whysz);
	for (int i = 0; i < 5; i++)
		free(env[i]);
	free(list);
	return r;
}

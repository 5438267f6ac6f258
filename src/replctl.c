/*
 * replctl.c — the operator's command.  Checks a command line, sends it to
 * the local replicad over the control socket (ctl.h) and relays the
 * replies: OUT to stdout, ERR to stderr, PROGRESS to a terminal, and the
 * EXIT code as its own.
 *
 * Every command is checked here, before anything is sent, and reaches the
 * daemon as a normalised argv: the command, the VM if any, then the
 * options given, in the order of opt_defs[], each value as its own
 * argument ({"failover", "web01", "--test", "--point", "3"}).  A command
 * with a local function (discover) runs here instead, without replicad.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "ctl.h"
#include "discover.h"
#include "err.h"
#include "log.h"
#include "util.h"
#include "virt.h"
#include "xmalloc.h"

#ifndef REPLCTL_VERSION
#define REPLCTL_VERSION	"0.8.0"
#endif

#define VALUE_MAX	(HOST_MAX_LEN + 16)	/* "[HOST]:PORT" or an ID */

enum opt {
	OPT_JSON,
	OPT_WAIT,
	OPT_TEST,
	OPT_CLEANUP,
	OPT_START,
	OPT_PLANNED,
	OPT_COMMIT,
	OPT_DRY_RUN,
	OPT_POINT,
	OPT_TO,
	OPT_NAME,
	OPT_HOST,
	OPT_URI,
	OPT_COUNT
};
#define F(o)	(1u << (o))

static int check_id(const char *, char *, size_t);
static int check_hostport(const char *, char *, size_t);
static int check_name(const char *, char *, size_t);
static int check_uri(const char *, char *, size_t);

/* Options of all commands, in the order they are sent in. */
static const struct opt_def {
	const char	*name;
	/* NULL for a flag; else checks the value, writes its normal form. */
	int		(*value)(const char *arg, char *norm, size_t normsz);
	const char	*what;		/* the value, for messages */
} opt_defs[OPT_COUNT] = {
	[OPT_JSON] =	{ "--json", NULL, NULL },
	[OPT_WAIT] =	{ "--wait", NULL, NULL },
	[OPT_TEST] =	{ "--test", NULL, NULL },
	[OPT_CLEANUP] =	{ "--cleanup", NULL, NULL },
	[OPT_START] =	{ "--start", NULL, NULL },
	[OPT_PLANNED] =	{ "--planned", NULL, NULL },
	[OPT_COMMIT] =	{ "--commit", NULL, NULL },
	[OPT_DRY_RUN] =	{ "--dry-run", NULL, NULL },
	[OPT_POINT] =	{ "--point", check_id, "point ID" },
	[OPT_TO] =	{ "--to", check_hostport, "address (want HOST:PORT)" },
	[OPT_NAME] =	{ "--name", check_name, "certificate name" },
	[OPT_HOST] =	{ "--host", check_name, "certificate name" },
	[OPT_URI] =	{ "--uri", check_uri, "libvirt URI" },
};

struct cmdline {
	const char	*vm;			/* NULL if none */
	unsigned	 given;			/* F(opt) bits */
	char		 value[OPT_COUNT][VALUE_MAX];
};

enum vm_arg { VM_NONE, VM_OPTIONAL, VM_REQUIRED };

static int check_failover(const struct cmdline *, char *, size_t);
static int run_discover(const struct cmdline *);

static const struct subcommand {
	const char	*name;
	enum vm_arg	 vm;
	unsigned	 opts;		/* allowed */
	unsigned	 needs;		/* required */
	/* Rules on combinations of options; NULL if none. */
	int		(*check)(const struct cmdline *, char *why, size_t);
	const char	*usage;		/* one form per line */
	const char	*help;
	/* Runs here, without replicad (its exit code); NULL: sent. */
	int		(*local)(const struct cmdline *);
} subcommands[] = {
	{ "status", VM_OPTIONAL, F(OPT_JSON), 0, NULL,
	    "status [VM] [--json]",
	    "show relationships: role, generation, state, lag, health", NULL },
	{ "sync", VM_REQUIRED, F(OPT_WAIT), 0, NULL,
	    "sync VM [--wait]",
	    "start a replication cycle now (primary)", NULL },
	{ "points", VM_REQUIRED, F(OPT_JSON), 0, NULL,
	    "points VM [--json]",
	    "list the recovery points of a VM (replica)", NULL },
	{ "definition", VM_REQUIRED, F(OPT_POINT), 0, NULL,
	    "definition VM [--point ID]",
	    "print the VM's definition (domain XML) at a point (replica)",
	    NULL },
	{ "failover", VM_REQUIRED, F(OPT_TEST) | F(OPT_CLEANUP) | F(OPT_START) |
	    F(OPT_PLANNED) | F(OPT_COMMIT) | F(OPT_POINT), 0, check_failover,
	    "failover VM --test [--point ID] [--start]\n"
	    "failover VM --test --cleanup\n"
	    "failover VM [--point ID]\n"
	    "failover VM --planned\n"
	    "failover VM --commit",
	    "test failover, unplanned or planned failover (see replctl(8))",
	    NULL },
	{ "reverse", VM_REQUIRED, F(OPT_TO) | F(OPT_NAME) | F(OPT_WAIT),
	    F(OPT_TO), NULL,
	    "reverse VM --to HOST:PORT [--name NAME] [--wait]",
	    "replicate back to the old primary, resyncing it (new primary)",
	    NULL },
	{ "resync", VM_REQUIRED, F(OPT_WAIT), 0, NULL,
	    "resync VM [--wait]",
	    "compare the whole disks and send the differences (primary)",
	    NULL },
	{ "prune", VM_OPTIONAL, F(OPT_DRY_RUN), 0, NULL,
	    "prune [VM] [--dry-run]",
	    "apply the retention policy (replica)", NULL },
	{ "verify", VM_REQUIRED, F(OPT_POINT), 0, NULL,
	    "verify VM [--point ID]",
	    "re-hash a point and check it against its digests (replica)",
	    NULL },
	{ "forget", VM_REQUIRED, F(OPT_POINT), F(OPT_POINT), NULL,
	    "forget VM --point ID",
	    "drop one recovery point, not the newest (replica)", NULL },
	{ "reassign", VM_REQUIRED, F(OPT_HOST), F(OPT_HOST), NULL,
	    "reassign VM --host NAME",
	    "take the VM from another sending host from now on (replica)",
	    NULL },
	{ "pause", VM_REQUIRED, 0, 0, NULL,
	    "pause VM",
	    "stop scheduled cycles (primary)", NULL },
	{ "resume", VM_REQUIRED, 0, 0, NULL,
	    "resume VM",
	    "restart scheduled cycles (primary)", NULL },
	{ "reload", VM_NONE, 0, 0, NULL,
	    "reload",
	    "read the configuration file again and apply it (as SIGHUP)",
	    NULL },
	{ "discover", VM_NONE, F(OPT_URI), 0, NULL,
	    "discover [--uri URI]",
	    "print a [vm] section for each libvirt domain (no replicad)",
	    run_discover },
};
#define NSUBCOMMANDS	(sizeof(subcommands) / sizeof(subcommands[0]))

/* The synopsis on stderr after a usage error; everything for --help. */
static void
usage(FILE *f, int full)
{
	fprintf(f,
	    "usage: replctl [-c FILE | -s SOCKET] COMMAND [ARGS...]\n"
	    "       replctl -h | -V\n");
	if (!full) {
		fprintf(f, "Run 'replctl --help' for the commands.\n");
		return;
	}
	fprintf(f, "\n"
	    "  -c FILE        configuration file (default %s)\n"
	    "  -s SOCKET      control socket (instead of the configuration's)\n"
	    "  -h, --help     show this help\n"
	    "  -V, --version  show the version\n\n"
	    "Commands:\n", CONFIG_DEFAULT_PATH);
	for (size_t i = 0; i < NSUBCOMMANDS; i++)
		fprintf(f, "  %-10s %s\n", subcommands[i].name,
		    subcommands[i].help);
	fprintf(f, "\nSyntax:\n");
	for (size_t i = 0; i < NSUBCOMMANDS; i++) {
		const char *p = subcommands[i].usage;
		while (*p != '\0') {
			size_t n = strcspn(p, "\n");
			fprintf(f, "  %.*s\n", (int)n, p);
			p += n + (p[n] == '\n');
		}
	}
	fprintf(f, "\nExit status: 0 success, 1 the operation failed, "
	    "2 usage or configuration error,\n3 cannot reach replicad.\n");
}

static const struct subcommand *
find_subcommand(const char *name)
{
	for (size_t i = 0; i < NSUBCOMMANDS; i++)
		if (strcmp(name, subcommands[i].name) == 0)
			return &subcommands[i];
	return NULL;
}

/* "replctl: WHY" and the command's usage, on stderr. */
static void
command_usage(const struct subcommand *cmd, const char *why)
{
	const char *p = cmd->usage, *lead = "usage:";

	fprintf(stderr, "replctl: %s\n", why);
	while (*p != '\0') {
		size_t n = strcspn(p, "\n");
		fprintf(stderr, "%s replctl %.*s\n", lead, (int)n, p);
		lead = "      ";
		p += n + (p[n] == '\n');
	}
}

/* A recovery point ID: a positive decimal that fits a uint64. */
static int
check_id(const char *s, char *norm, size_t normsz)
{
	uint64_t v = 0;

	if (*s == '\0')
		return RD_ERR_INVALID;
	for (const char *p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return RD_ERR_INVALID;
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return RD_ERR_RANGE;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v == 0)
		return RD_ERR_RANGE;
	snprintf(norm, normsz, "%" PRIu64, v);
	return 0;
}

static int
check_hostport(const char *s, char *norm, size_t normsz)
{
	char host[HOST_MAX_LEN + 1];
	uint16_t port;
	int r;

	if ((r = util_parse_hostport(s, host, sizeof(host), &port)) != 0)
		return r;
	snprintf(norm, normsz, strchr(host, ':') != NULL ? "[%s]:%u" : "%s:%u",
	    host, (unsigned)port);
	return 0;
}

/* The identity a peer's certificate must show: a DNS name or address. */
static int
check_name(const char *s, char *norm, size_t normsz)
{
	size_t n = strlen(s);
	if (n == 0 || n > HOST_MAX_LEN)
		return RD_ERR_INVALID;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && strchr(".-_:", s[i]) == NULL)
			return RD_ERR_INVALID;
	snprintf(norm, normsz, "%s", s);
	return 0;
}

/* A libvirt URI: printable, no spaces (libvirt checks the rest). */
static int
check_uri(const char *s, char *norm, size_t normsz)
{
	size_t n = strlen(s);
	if (n == 0 || n >= normsz)
		return RD_ERR_INVALID;
	for (size_t i = 0; i < n; i++)
		if (!isgraph((unsigned char)s[i]))
			return RD_ERR_INVALID;
	snprintf(norm, normsz, "%s", s);
	return 0;
}

/* --test [--point ID | --cleanup], [--point ID], --planned or --commit;
 * --start with --test only, not with --cleanup. */
static int
check_failover(const struct cmdline *cl, char *why, size_t whysz)
{
	static const enum opt pairs[][2] = {
		{ OPT_CLEANUP, OPT_POINT }, { OPT_CLEANUP, OPT_START },
		{ OPT_PLANNED, OPT_TEST }, { OPT_PLANNED, OPT_POINT },
		{ OPT_COMMIT, OPT_TEST }, { OPT_COMMIT, OPT_POINT },
		{ OPT_COMMIT, OPT_PLANNED },
	};

	if ((cl->given & F(OPT_CLEANUP)) && !(cl->given & F(OPT_TEST))) {
		snprintf(why, whysz, "--cleanup needs --test");
		return RD_ERR_INVALID;
	}
	if ((cl->given & F(OPT_START)) && !(cl->given & F(OPT_TEST))) {
		snprintf(why, whysz, "--start needs --test");
		return RD_ERR_INVALID;
	}
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		unsigned both = F(pairs[i][0]) | F(pairs[i][1]);
		if ((cl->given & both) == both) {
			snprintf(why, whysz, "%s cannot be used with %s",
			    opt_defs[pairs[i][0]].name,
			    opt_defs[pairs[i][1]].name);
			return RD_ERR_INVALID;
		}
	}
	return 0;
}

static int
find_opt(const char *name, size_t len)
{
	for (int o = 0; o < OPT_COUNT; o++)
		if (strlen(opt_defs[o].name) == len &&
		    strncmp(opt_defs[o].name, name, len) == 0)
			return o;
	return -1;
}

/*
 * Check the arguments after the command name.  Options may come before or
 * after the VM; "--point ID" and "--point=ID" are the same.  On a usage
 * error, writes why and returns RD_ERR_INVALID.
 */
static int
parse_command(const struct subcommand *cmd, int argc, char **argv,
    struct cmdline *cl, char *why, size_t whysz)
{
	int r = RD_ERR_INVALID;

	memset(cl, 0, sizeof(*cl));
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *eq, *val;
		size_t nlen;
		int o;

		if (a[0] != '-') {
			if (cl->vm != NULL || cmd->vm == VM_NONE) {
				snprintf(why, whysz, "unexpected argument '%s'",
				    a);
				goto out;
			}
			if (util_name_valid(a) != 0) {
				snprintf(why, whysz, "invalid VM name '%s'", a);
				goto out;
			}
			cl->vm = a;
			continue;
		}
		eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
		nlen = eq != NULL ? (size_t)(eq - a) : strlen(a);
		o = find_opt(a, nlen);
		if (o < 0 || !(cmd->opts & F(o))) {
			snprintf(why, whysz, "unknown option '%.*s' for %s",
			    (int)nlen, a, cmd->name);
			goto out;
		}
		if (opt_defs[o].value == NULL) {
			if (eq != NULL) {
				snprintf(why, whysz, "%s takes no value",
				    opt_defs[o].name);
				goto out;
			}
			cl->given |= F(o);
			continue;
		}
		if (eq != NULL)
			val = eq + 1;
		else if (i + 1 < argc)
			val = argv[++i];
		else {
			snprintf(why, whysz, "%s needs a value",
			    opt_defs[o].name);
			goto out;
		}
		if (cl->given & F(o)) {
			snprintf(why, whysz, "%s given twice", opt_defs[o].name);
			goto out;
		}
		if (opt_defs[o].value(val, cl->value[o], VALUE_MAX) != 0) {
			snprintf(why, whysz, "invalid %s '%s'", opt_defs[o].what,
			    val);
			goto out;
		}
		cl->given |= F(o);
	}
	if (cmd->vm == VM_REQUIRED && cl->vm == NULL) {
		snprintf(why, whysz, "missing VM name");
		goto out;
	}
	for (int o = 0; o < OPT_COUNT; o++) {
		if ((cmd->needs & F(o)) && !(cl->given & F(o))) {
			snprintf(why, whysz, "missing %s", opt_defs[o].name);
			goto out;
		}
	}
	if (cmd->check != NULL && cmd->check(cl, why, whysz) != 0)
		goto out;
	r = 0;
out:
	return r;
}

/* The normalised request argv; pointers into cmd and cl. */
static int
build_request(const struct subcommand *cmd, struct cmdline *cl,
    char *argv[CTL_MAX_ARGS + 1])
{
	int n = 0;

	argv[n++] = (char *)cmd->name;
	if (cl->vm != NULL)
		argv[n++] = (char *)cl->vm;
	for (int o = 0; o < OPT_COUNT; o++) {
		if (!(cl->given & F(o)))
			continue;
		argv[n++] = (char *)opt_defs[o].name;
		if (opt_defs[o].value != NULL)
			argv[n++] = cl->value[o];
	}
	argv[n] = NULL;
	return n;
}

/* -s wins; otherwise the configuration's control_socket. */
static int
control_path(const char *cfgpath, const char *sockpath, char **out)
{
	struct config *cfg = NULL;
	char err[1024] = "";
	int r;

	if (sockpath != NULL) {
		*out = xstrdup(sockpath);
		return 0;
	}
	if (cfgpath == NULL)
		cfgpath = CONFIG_DEFAULT_PATH;
	if ((r = config_load(cfgpath, &cfg, err, sizeof(err))) != 0) {
		if (err[0] != '\0')
			fprintf(stderr, "replctl: %s\n", err);
		else
			fprintf(stderr, "replctl: %s: %s\n", cfgpath,
			    rd_strerror(r));
		return r;
	}
	*out = xstrdup(cfg->control_socket);
	config_free(cfg);
	return 0;
}

static int
control_connect(const char *path)
{
	struct sockaddr_un sa;
	int fd;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* send(2) without SIGPIPE: a daemon gone away is an error, not a signal. */
static int
send_full(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
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

struct relay {
	int	progress_shown;		/* a progress line is on stderr */
	int	tty;			/* stdout and stderr are terminals */
};

static void
progress_end(struct relay *rl)
{
	if (rl->progress_shown) {
		(void)util_write_full(STDERR_FILENO, "\n", 1);
		rl->progress_shown = 0;
	}
}

/* One line, overwritten in place; control characters would break it. */
static void
progress_show(struct relay *rl, const uint8_t *text, size_t len)
{
	char line[512];
	size_t n = 0;

	if (!rl->tty)
		return;
	line[n++] = '\r';
	for (size_t i = 0; i < len && n < sizeof(line) - 4; i++)
		line[n++] = text[i] < 0x20 || text[i] == 0x7f ? '?' :
		    (char)text[i];
	memcpy(line + n, "\033[K", 3);
	n += 3;
	(void)util_write_full(STDERR_FILENO, line, n);
	rl->progress_shown = 1;
}

/*
 * Relay one reply frame.  Returns the exit code after EXIT, -1 to go on.
 */
static int
relay_frame(struct relay *rl, uint8_t type, const uint8_t *text, size_t len)
{
	switch (type) {
	case CTL_OUT:
		progress_end(rl);
		if (util_write_full(STDOUT_FILENO, text, len) != 0) {
			fprintf(stderr, "replctl: cannot write output: %s\n",
			    strerror(errno));
			return CTL_EXIT_FAILED;
		}
		break;
	case CTL_ERR:
		progress_end(rl);
		(void)util_write_full(STDERR_FILENO, text, len);
		break;
	case CTL_PROGRESS:
		progress_show(rl, text, len);
		break;
	case CTL_EXIT:
		progress_end(rl);
		return text[0];
	}
	return -1;
}

/* Send the request, relay the replies; returns replctl's exit code. */
static int
converse(const char *path, int argc, char *argv[])
{
	/* Progress only for a person watching: stdout and stderr on a
	 * terminal (nothing extra in pipes and scripts). */
	struct relay rl = { 0, isatty(STDOUT_FILENO) && isatty(STDERR_FILENO) };
	struct wbuf out, in;
	int fd, code = -1, replied = 0;

	wb_init(&out);
	wb_init(&in);
	if ((fd = control_connect(path)) < 0) {
		fprintf(stderr, "replctl: cannot reach replicad at %s: %s\n",
		    path, strerror(errno));
		code = CTL_EXIT_UNREACHABLE;
		goto out;
	}
	ctl_put_request(&out, argc, argv);
	if (send_full(fd, out.p, out.len) != 0) {
		fprintf(stderr, "replctl: cannot reach replicad at %s: %s\n",
		    path, strerror(errno));
		code = CTL_EXIT_UNREACHABLE;
		goto out;
	}
	while (code < 0) {
		ssize_t n = read(fd, wb_reserve(&in, 65536), 65536);
		size_t off = 0, used, textlen;
		const uint8_t *text;
		uint8_t type;
		int r = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			progress_end(&rl);
			if (n == 0 || errno == ECONNRESET)
				fprintf(stderr, "replctl: replicad closed the "
				    "connection\n");
			else
				fprintf(stderr, "replctl: reading from "
				    "replicad: %s\n", strerror(errno));
			code = replied ? CTL_EXIT_FAILED : CTL_EXIT_UNREACHABLE;
			goto out;
		}
		in.len += (size_t)n;
		while (code < 0 && (r = ctl_get_reply(in.p + off, in.len - off,
		    &type, &text, &textlen, &used)) == 1) {
			replied = 1;
			code = relay_frame(&rl, type, text, textlen);
			off += used;
		}
		if (code < 0 && r < 0) {
			progress_end(&rl);
			fprintf(stderr, "replctl: bad reply from replicad\n");
			code = CTL_EXIT_FAILED;
			goto out;
		}
		memmove(in.p, in.p + off, in.len - off);
		in.len -= off;
	}
out:
	if (fd >= 0)
		close(fd);
	wb_free(&out);
	wb_free(&in);
	return code;
}

/*
 * The options before the command.  Returns -1 to go on, or the exit code
 * after --help, --version or a usage error.
 */
static int
parse_options(int argc, char *argv[], const char **cfgpath,
    const char **sockpath)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	int ch;

	opterr = 0;
	while ((ch = getopt_long(argc, argv, "+:c:s:hV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			*cfgpath = optarg;
			break;
		case 's':
			*sockpath = optarg;
			break;
		case 'h':
			usage(stdout, 1);
			return CTL_EXIT_OK;
		case 'V':
			printf("replctl %s\n", REPLCTL_VERSION);
			return CTL_EXIT_OK;
		case ':':
			fprintf(stderr, "replctl: -%c needs a value\n", optopt);
			usage(stderr, 0);
			return CTL_EXIT_USAGE;
		default:
			if (optopt != 0)
				fprintf(stderr, "replctl: unknown option '-%c'\n",
				    optopt);
			else
				fprintf(stderr, "replctl: unknown option '%s'\n",
				    argv[optind - 1]);
			usage(stderr, 0);
			return CTL_EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "replctl: missing command\n");
		usage(stderr, 0);
		return CTL_EXIT_USAGE;
	}
	return -1;
}

/* replctl discover: libvirt, not replicad. */
static int
run_discover(const struct cmdline *cl)
{
	const char *uri = cl->given & F(OPT_URI) ? cl->value[OPT_URI] :
	    CONFIG_DEFAULT_LIBVIRT_URI;
	char err[1024];

	virt_init();
	if (discover_print(stdout, uri, err, sizeof(err)) != 0) {
		fprintf(stderr, "replctl: discover: %s\n", err);
		return CTL_EXIT_FAILED;
	}
	return CTL_EXIT_OK;
}

int
main(int argc, char *argv[])
{
	const struct subcommand *cmd;
	const char *cfgpath = NULL, *sockpath = NULL;
	char *reqv[CTL_MAX_ARGS + 1], *path = NULL, why[512];
	struct cmdline cl;
	int r;

	log_init("replctl", 0);
	if ((r = parse_options(argc, argv, &cfgpath, &sockpath)) >= 0)
		return r;
	if ((cmd = find_subcommand(argv[optind])) == NULL) {
		fprintf(stderr, "replctl: unknown command '%s'\n", argv[optind]);
		usage(stderr, 0);
		return CTL_EXIT_USAGE;
	}
	if (parse_command(cmd, argc - optind - 1, argv + optind + 1, &cl, why,
	    sizeof(why)) != 0) {
		command_usage(cmd, why);
		return CTL_EXIT_USAGE;
	}
	if (cmd->local != NULL)
		return cmd->local(&cl);
	if (control_path(cfgpath, sockpath, &path) != 0)
		return CTL_EXIT_USAGE;
	r = converse(path, build_request(cmd, &cl, reqv), reqv);
	free(path);
	return r;
}

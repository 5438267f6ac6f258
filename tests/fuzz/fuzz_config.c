/*
 * fuzz_config.c — libFuzzer harness for config_load(): any bytes as a
 * configuration file.  config_load() reads a path, so each input goes
 * into one temporary file per process.  It must return a valid
 * configuration or an error message, never crash or leak.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_path[64];

static void
fuzz_cleanup(void)
{
	unlink(fuzz_path);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *cfg = NULL;
	char err[512];
	int fd, r;

	if (fuzz_path[0] == '\0') {
		snprintf(fuzz_path, sizeof(fuzz_path), "/tmp/fuzz_config.%d",
		    (int)getpid());
		atexit(fuzz_cleanup);
	}
	fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || util_write_full(fd, data, size) != 0) {
		perror(fuzz_path);
		abort();
	}
	close(fd);

	r = config_load(fuzz_path, &cfg, err, sizeof(err));
	if (r == 0) {
		/* Everything the contract promises of a loaded file. */
		if (cfg->state_dir[0] != '/' || cfg->control_socket[0] != '/' ||
		    cfg->tls_cert == NULL || (cfg->nvms == 0 &&
		    cfg->listen == NULL))
			abort();
		for (size_t i = 0; i < cfg->nvms; i++) {
			const struct cfg_vm *vm = &cfg->vms[i];
			if (vm->ndisks == 0 || vm->replica_name == NULL ||
			    config_find_vm(cfg, vm->name) != vm ||
			    util_name_valid(vm->name) != 0)
				abort();
			/* A path, or with tracker qemu a block node. */
			for (size_t j = 0; j < vm->ndisks; j++)
				if (util_disk_name_valid(vm->disk_names[j]) !=
				    0 || (vm->tracker != TRACKER_QEMU &&
				    vm->disks[j][0] != '/'))
					abort();
			if (vm->nreceive != 0 && vm->nreceive != vm->ndisks)
				abort();
			for (size_t j = 0; j < vm->nreceive; j++)
				if (vm->receive_into[j][0] != '/')
					abort();
		}
		for (size_t i = 0; i < cfg->naccepts; i++) {
			const struct cfg_accept *a = &cfg->accepts[i];
			if (a->nvms == 0 || a->storage[0] != '/' ||
			    a->retention == NULL)
				abort();
			(void)config_match_accept(cfg, a->name, "web01");
		}
		config_free(cfg);
	} else if (r != RD_ERR_INVALID || cfg != NULL ||
	    strncmp(err, fuzz_path, strlen(fuzz_path)) != 0 ||
	    strchr(err, '\n') != NULL)
		abort();
	return 0;
}

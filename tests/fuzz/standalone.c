/*
 * standalone.c — replay files through a libFuzzer harness without
 * libFuzzer: `make fuzz-regress` runs every corpus input this way, so the
 * corpora are regression tests in `make check`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
main(int argc, char **argv)
{
	int n = 0;
	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (f == NULL) {
			perror(argv[i]);
			return 1;
		}
		uint8_t *buf = NULL;
		size_t len = 0, cap = 0;
		for (;;) {
			if (len == cap) {
				cap = cap ? cap * 2 : 4096;
				buf = realloc(buf, cap);
				if (buf == NULL)
					return 1;
			}
			size_t got = fread(buf + len, 1, cap - len, f);
			if (got == 0)
				break;
			len += got;
		}
		fclose(f);
		LLVMFuzzerTestOneInput(buf, len);
		free(buf);
		n++;
	}
	printf("%s: %d inputs replayed\n", argv[0], n);
	return 0;
}

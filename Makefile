# replicad — GNU make build.  `make`, `make check`, `make demo`, `make bench`.
# V=1 shows the commands; PREFIX / DESTDIR for `make install` (HOOKDIR: the
# example failover hooks, PREFIX/lib/replicad/hooks; UNITDIR: the systemd
# units, PREFIX/lib/systemd/system; COMPLETIONDIR: replctl's bash completion;
# OCFDIR: the Pacemaker agent, /usr/lib/ocf/resource.d/replicad).

PREFIX  ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
HOOKDIR ?= $(PREFIX)/lib/replicad/hooks
# systemd units (tools/systemd) and where they find the configuration:
# replicad reads /etc/replicad/replicad.conf whatever PREFIX is.
UNITDIR ?= $(PREFIX)/lib/systemd/system
# the Pacemaker resource agent (tools/ocf/replicad): where Pacemaker looks,
# whatever PREFIX is (ocf:replicad:replicad)
OCFDIR ?= /usr/lib/ocf/resource.d/replicad
# bash completion for replctl (tools/bash-completion/replctl)
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
SYSCONFDIR ?= /etc
CC      ?= cc
# BUILD: where objects, tests and (unless it is `build`) the programs go;
# `make check-asan` builds a sanitizer copy in build-asan.
BUILD   ?= build
BIN     := $(if $(filter build,$(BUILD)),.,$(BUILD))

PKGS    := libevent libevent_openssl libevent_pthreads openssl libzstd \
           libxxhash inih sqlite3 libnbd jansson libvirt libxml-2.0
# CFLAGS / LDFLAGS are the user's (e.g. CFLAGS="-O1 -g -fsanitize=address");
# the project's own flags are added to them.
CFLAGS  ?= -O2 -g
ALL_CFLAGS = $(CFLAGS) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow \
           -Wno-unused-parameter -Wformat=2 -Wstrict-prototypes \
           -fno-strict-aliasing -pthread -Iinclude -MMD -MP
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS  += $(PKG_LIBS) -lrsync -pthread

# Objects shared by both programs.
COMMON_OBJS  := err log xmalloc buf util layout wire ctl config retention
# The daemon: catalog, worker pool, TLS, tracker, the VM table and the
# rules of roles, both roles, role changes, control socket.
REPLICAD_OBJS := $(COMMON_OBJS) fault hook catalog work par pool notify tls netio gate dial blockmap tracker trk_scan \
                 trk_reflink qmp nbdview virt domxml vmdom trk_qemu trk_libvirt undo delta store role vmtab \
                 replica primary failover reload control metrics daemon
# replctl loads libvirt and libxml2 only for `discover` (virt_dl.c) and links only the
# libraries it calls: every linked library costs start-up time.
REPLCTL_OBJS  := $(COMMON_OBJS) virt virt_dl discover
REPLCTL_LIBS  := -Wl,--as-needed $(filter-out $(shell pkg-config --libs libvirt libxml-2.0 2>/dev/null),$(LDLIBS)) -ldl

LIB_OBJS := $(sort $(REPLICAD_OBJS))
obj = $(patsubst %,$(BUILD)/%.o,$(1))

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all deps check check-asan unit systest soak mancheck unitcheck fuzz \
	fuzz-regress demo bench install deb clean
all: $(BIN)/replicad $(BIN)/replctl

$(BUILD)/%.o: src/%.c | $(BUILD)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

$(BUILD):
	$(Q)mkdir -p $(BUILD)/tests $(BUILD)/fuzz

$(BUILD)/libreplicad.a: $(call obj,$(LIB_OBJS))
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/replicad: $(call obj,$(REPLICAD_OBJS) replicad)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/replctl: $(call obj,$(REPLCTL_OBJS) replctl)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(REPLCTL_LIBS)

# --- tests ---------------------------------------------------------------
UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libreplicad.a | $(BUILD)
	@$(if $(Q),echo "  TEST-CC $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(LDFLAGS) $(PKG_CFLAGS) -o $@ $< $(BUILD)/libreplicad.a \
	    $(LDLIBS) -lcmocka

deps:
	$(Q)tools/install-deps

unit: $(UNIT_BINS) $(BIN)/replctl
	$(Q)fail=0; for t in $(UNIT_BINS); do \
	    echo "== $$t"; $$t || fail=1; done; \
	echo "== replctl usage"; sh tests/unit/replctl_usage.sh $(BIN)/replctl || fail=1; \
	echo "== module graph and STATE_DIR layout"; \
	python3 tests/lint/modgraph.py || fail=1; \
	exit $$fail

# The storage-fault tests' LD_PRELOAD shim (tests/fault/ioshim.c), built
# without the sanitizers: it is preloaded into the sanitizer build too.
$(BUILD)/ioshim.so: tests/fault/ioshim.c | $(BUILD)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) -O2 -g -std=c11 -Wall -Wextra -fPIC -shared -o $@ $< -ldl -pthread

systest: $(BIN)/replicad $(BIN)/replctl $(BUILD)/ioshim.so
	$(Q)REPLICAD_BIN_DIR=$(abspath $(BIN)) python3 tests/system/run.py

# The long fault campaigns: SOAK_SEED (default random), SOAK_SECONDS (default:
# until 1,000 cycles through the fault proxy and 200 kill -9s); then the
# storage campaign, where tests/soak/storage.py exists.
SOAK_SEED    ?=
SOAK_SECONDS ?=
soak: $(BIN)/replicad $(BIN)/replctl $(BUILD)/ioshim.so
	$(Q)REPLICAD_BIN_DIR=$(abspath $(BIN)) python3 tests/soak/run.py $(if $(SOAK_SEED),--seed $(SOAK_SEED)) \
	    $(if $(SOAK_SECONDS),--seconds $(SOAK_SECONDS))
	$(Q)if test -f tests/soak/storage.py; then \
	    REPLICAD_BIN_DIR=$(abspath $(BIN)) python3 tests/soak/storage.py \
	    $(if $(SOAK_SEED),--seed $(SOAK_SEED)) $(if $(SOAK_SECONDS),--seconds $(SOAK_SECONDS)) \
	    || exit 1; fi

mancheck:
	$(Q)mandoc -Tlint -Wwarning man/*.[0-9] && echo "man pages: mandoc -Tlint clean"

FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
# Replay every corpus input through each harness built without libFuzzer.
fuzz-regress: $(BUILD)/libreplicad.a
	$(Q)for f in $(FUZZ_TARGETS); do \
	    $(CC) $(ALL_CFLAGS) $(LDFLAGS) $(PKG_CFLAGS) -DFUZZ_STANDALONE -o $(BUILD)/fuzz/$$f \
	        tests/fuzz/fuzz_$$f.c tests/fuzz/standalone.c $(BUILD)/libreplicad.a \
	        $(LDLIBS) || exit 1; \
	    $(BUILD)/fuzz/$$f tests/fuzz/corpus/$$f/* || exit 1; done

# libFuzzer builds (clang): make fuzz, then build/fuzz/lf_wire corpus/...
fuzz:
	$(Q)mkdir -p $(BUILD)/fuzz
	$(Q)for f in $(FUZZ_TARGETS); do \
	    clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE \
	        -Iinclude $(PKG_CFLAGS) -o $(BUILD)/fuzz/lf_$$f tests/fuzz/fuzz_$$f.c \
	        $(addprefix src/,$(addsuffix .c,$(LIB_OBJS))) $(LDLIBS) || exit 1; done

# deps first, then a fresh make so that pkg-config sees what it installed
check: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory unit
	$(Q)$(MAKE) --no-print-directory fuzz-regress
	$(Q)$(MAKE) --no-print-directory mancheck
	$(Q)$(MAKE) --no-print-directory unitcheck
	$(Q)$(MAKE) --no-print-directory deb
	$(Q)$(MAKE) --no-print-directory systest
	$(Q)$(MAKE) --no-print-directory check-asan

# The sanitizer pass: everything built again with ASan and UBSan in
# build-asan (the normal build is left alone), then the unit tests, the
# fuzz corpora and the system tests run against that build.  A report
# ends the process with a non-zero status; harness.py gives every test
# its own log_path and fails the test when a report file exists there.
# Leaks are reported at a clean exit (a daemon killed with SIGKILL makes
# no report).
ASAN_BUILD  := build-asan
ASAN_CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=undefined
ASAN_ENV    := ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:verify_asan_link_order=0 \
               UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
check-asan:
	$(Q)$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) CFLAGS="$(ASAN_CFLAGS)" all
	$(Q)$(ASAN_ENV) $(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) \
	    CFLAGS="$(ASAN_CFLAGS)" unit fuzz-regress
	$(Q)$(ASAN_ENV) REPLICAD_SANITIZE=1 $(MAKE) --no-print-directory \
	    BUILD=$(ASAN_BUILD) CFLAGS="$(ASAN_CFLAGS)" systest

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)tools/demo

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)KEEP=1 tools/bench
	$(Q)tools/bench-history
	$(Q)tools/bench-trackers
	$(Q)tools/bench-scale 100 64
	$(Q)tools/bench-scale 500 8
	$(Q)tools/bench-rss

# The systemd units with the paths they run from (tools/systemd/*.in).
UNITS := replicad.service replicad-prune.service replicad-prune.timer
define make_units
	$(Q)mkdir -p $(1)
	$(Q)for u in $(UNITS); do \
	    if test -f tools/systemd/$$u.in; then \
	        sed -e 's|@SBINDIR@|$(2)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	            -e 's|@UNITDIR@|$(UNITDIR)|g' tools/systemd/$$u.in > $(1)/$$u; \
	    else cp tools/systemd/$$u $(1)/$$u; fi; done
endef

# systemd-analyze verify on the units as built here (pointing at this
# tree's programs): any complaint fails; every man page a unit names is
# one of man/.
unitcheck: all
	$(call make_units,$(BUILD)/systemd,$(abspath $(BIN)))
	$(Q)for m in $$(sed -n 's/^Documentation=//p' $(addprefix $(BUILD)/systemd/,$(UNITS)) | \
	    tr ' ' '\n' | sed -n 's/^man:\(.*\)(\([0-9]\))$$/\1.\2/p' | sort -u); do \
	    test -f man/$$m || { echo "systemd units: Documentation names man/$$m, which does not exist"; \
	    exit 1; }; done
	$(Q)out=$$(cd $(BUILD)/systemd && systemd-analyze verify --man=no $(UNITS) 2>&1); rc=$$?; \
	    if test $$rc -ne 0 || test -n "$$out"; then echo "$$out"; \
	        echo "systemd units: systemd-analyze verify failed"; exit 1; fi; \
	    echo "systemd units: systemd-analyze verify clean"

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 755 replicad replctl $(DESTDIR)$(SBINDIR)
	install -m 644 man/replicad.conf.5 $(DESTDIR)$(MANDIR)/man5
	install -m 644 man/replicad.8 man/replctl.8 $(DESTDIR)$(MANDIR)/man8
	install -d $(DESTDIR)$(HOOKDIR)
	install -m 755 tools/hooks/libvirt-on-demote tools/hooks/libvirt-on-promote \
	    $(DESTDIR)$(HOOKDIR)
	install -m 644 tools/replicad.cron $(DESTDIR)$(HOOKDIR)/../replicad.cron
	$(call make_units,$(BUILD)/systemd-install,$(SBINDIR))
	install -d $(DESTDIR)$(UNITDIR)
	install -m 644 $(addprefix $(BUILD)/systemd-install/,$(UNITS)) $(DESTDIR)$(UNITDIR)
	install -d $(DESTDIR)$(PREFIX)/share/replicad
	install -m 644 tools/prometheus/replicad-rules.yml $(DESTDIR)$(PREFIX)/share/replicad
	install -d $(DESTDIR)$(OCFDIR)
	install -m 755 tools/ocf/replicad $(DESTDIR)$(OCFDIR)/replicad
	install -d $(DESTDIR)$(COMPLETIONDIR)
	install -m 644 tools/bash-completion/replctl $(DESTDIR)$(COMPLETIONDIR)/replctl

# A Debian package (tools/debian is its debian/ directory), built from a
# copy of the tree in $(BUILD)/deb: $(BUILD)/deb/replicad_*.deb.
DEB_DIR := $(BUILD)/deb
deb:
	$(Q)rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	$(Q)tar -cf - --exclude=./build --exclude=./build-asan --exclude=./.git \
	    --exclude=./replicad --exclude=./replctl . | tar -xf - -C $(DEB_DIR)/src
	$(Q)cp -r tools/debian $(DEB_DIR)/src/debian
	$(Q)cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc > ../build.log 2>&1 || \
	    { tail -40 ../build.log; echo "make deb: dpkg-buildpackage failed (log: $(DEB_DIR)/build.log)"; exit 1; }
	$(Q)ls $(DEB_DIR)/*.deb

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) replicad replctl

-include $(wildcard $(BUILD)/*.d $(BUILD)/tests/*.d)

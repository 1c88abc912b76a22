# libmerge — build, test, install. GNU make.
#   make                 library (lib/libmerge.a, lib/libmerge.so) and commands (bin/)
#   make test            the whole suite; last line "N passed, N failed"
#   make check-asan      the suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make check-valgrind  the C test programs under valgrind (leak-free)
#   make fuzz            each libFuzzer harness for FUZZ_SECONDS (default 60; clang-14)
#   make demo            the main job on bundled data (see README.md)
#   make install PREFIX=/usr/local

PREFIX ?= /usr/local
VERSION := 0.1.0
CC ?= cc
BUILD ?= build
SAN ?=

# name:debian-package for every pkg-config dependency
DEPS := libzip:libzip-dev libcjson:libcjson-dev libcrypto:libssl-dev libxxhash:libxxhash-dev \
        openblas:libopenblas-dev lapacke:liblapacke-dev libpng:libpng-dev zlib:zlib1g-dev
ifeq ($(filter clean help,$(MAKECMDGOALS)),)
  PKG_CONFIG ?= pkg-config
  ifeq ($(shell command -v $(PKG_CONFIG) 2>/dev/null),)
    $(error pkg-config not found: apt-get install pkg-config)
  endif
  $(foreach d,$(DEPS),$(if $(shell $(PKG_CONFIG) --exists $(word 1,$(subst :, ,$(d))) && echo y),,\
    $(error missing dependency $(word 1,$(subst :, ,$(d))): apt-get install $(word 2,$(subst :, ,$(d))))))
  PKGS := $(foreach d,$(DEPS),$(word 1,$(subst :, ,$(d))))
  DEP_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS))
  DEP_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS))
endif

WARN := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(SAN) -fPIC -Iinclude -Ilibmerge $(DEP_CFLAGS) -MMD -MP
LDLIBS := $(DEP_LIBS) -lm -lpthread

LIB_SRC := $(shell find libmerge -name '*.c' | sort)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CMD_NAMES := $(sort $(basename $(notdir $(wildcard cmd/*.c))) $(notdir $(patsubst %/,%,$(wildcard cmd/*/))))
BINDIR := $(if $(filter build,$(BUILD)),bin,$(BUILD)/bin)
LIBDIR := $(if $(filter build,$(BUILD)),lib,$(BUILD)/lib)
CMDS := $(CMD_NAMES:%=$(BINDIR)/%)
TEST_SRC := $(wildcard tests/test_*.c)
TESTS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT := $(filter-out $(TEST_SRC),$(wildcard tests/support/*.c))
TEST_SUPPORT_OBJ := $(TEST_SUPPORT:%.c=$(BUILD)/%.o)

.SECONDARY:
.PHONY: all test check-asan check-valgrind demo install clean tests fuzz fuzz-build bench help
all: $(LIBDIR)/libmerge.a $(LIBDIR)/libmerge.so $(CMDS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIBDIR)/libmerge.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBDIR)/libmerge.so: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared $(SAN) -Wl,-soname,libmerge.so.0 -o $@ $^ $(LDLIBS)

# a command is cmd/NAME.c or every .c under cmd/NAME/
define CMD_RULE
$(BINDIR)/$(1): $(patsubst %.c,$(BUILD)/%.o,$(wildcard cmd/$(1).c cmd/$(1)/*.c)) $(LIBDIR)/libmerge.a
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SAN) -o $$@ $$(filter %.o,$$^) $(LIBDIR)/libmerge.a $$(LDLIBS)
endef
$(foreach c,$(CMD_NAMES),$(eval $(call CMD_RULE,$(c))))

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_SUPPORT_OBJ) $(LIBDIR)/libmerge.a
	$(CC) $(SAN) -o $@ $< $(TEST_SUPPORT_OBJ) $(LIBDIR)/libmerge.a $(LDLIBS)

tests: $(TESTS)

# bench/NAME.c: standalone tools for `make demo` and bench/ (generators), linked against the library
$(BUILD)/bench/%: bench/%.c $(LIBDIR)/libmerge.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIBDIR)/libmerge.a $(LDLIBS)

test: all tests
	@BUILD=$(BUILD) BIN=$(BINDIR) tests/run.sh

check-asan:
	TEST_TIME_SCALE=5 $(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" CFLAGS="-O1 -g" test

check-valgrind: all tests
	@BUILD=$(BUILD) BIN=$(BINDIR) SKIP_CLI=1 TEST_TIME_SCALE=50 TEST_WRAP="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect" tests/run.sh

# make fuzz: each libFuzzer harness tests/fuzz/fuzz_*.c for FUZZ_SECONDS on a corpus
# in build-fuzz/corpus/ seeded from fixtures/ (tests/fuzz/run.sh). The library is
# compiled with clang into build-fuzz/ (ASan + UBSan + fuzzer coverage). Exit status
# non-zero on any crash, leak, hang or runaway allocation. Needs clang-14 and
# libclang-rt-14-dev (apt-get); installs nothing.
FUZZ_CC ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_NAMES := $(basename $(notdir $(wildcard tests/fuzz/fuzz_*.c)))
fuzz: fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_NAMES)

fuzz-build:
	@command -v $(FUZZ_CC) >/dev/null || { echo "$(FUZZ_CC) not found: apt-get install clang-14 libclang-rt-14-dev"; exit 1; }
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) WARN="-Wall -Wextra -Wno-unused-parameter" \
	  SAN="$(FUZZ_SAN) -fsanitize=fuzzer-no-link" CFLAGS="-O1 -g" $(FUZZ_NAMES:%=build-fuzz/fuzz/%)

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/targets.h $(LIBDIR)/libmerge.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -o $@ $< $(LIBDIR)/libmerge.a $(LDLIBS)

demo: all
	bash bench/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/libmerge \
	  $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(CMDS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 lib/libmerge.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 lib/libmerge.so $(DESTDIR)$(PREFIX)/lib/libmerge.so.$(VERSION)
	ln -sf libmerge.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmerge.so.0
	ln -sf libmerge.so.0 $(DESTDIR)$(PREFIX)/lib/libmerge.so
	install -m 644 include/libmerge/*.h $(DESTDIR)$(PREFIX)/include/libmerge/
	install -D -m 644 fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz $(DESTDIR)$(PREFIX)/share/libmerge/bpe_simple_vocab_16e6.txt.gz
	for f in man/man1/*.1; do [ -f "$$f" ] && install -m 644 "$$f" $(DESTDIR)$(PREFIX)/share/man/man1/; done; true
	for f in man/man7/*.7; do [ -f "$$f" ] && install -m 644 "$$f" $(DESTDIR)$(PREFIX)/share/man/man7/; done; true
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@REQUIRES@|$(PKGS)|' libmerge.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libmerge.pc

clean:
	rm -rf build build-asan build-fuzz bin lib

help:
	@sed -n '2,9p' Makefile

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# fragless — build, test and install. README.md says what each target is for.
#
#   make                  library, emulated device, tools          (build/)
#   make test             deps, everything, the whole suite, then again under ASan+UBSan
#   make install PREFIX=/usr/local
#   make clean
#
# Sources are found by wildcard: lib/*.c is the library, tools/emu/driver/*.c the emulated
# libcuda, tools/emu/runtime/*.c the emulated libcudart, tools/NAME/*.c the tool build/NAME,
# tests/{unit,emu,integ}/test_*.c test suites (Criterion) and tests/progs/*.c the programs
# the integration suites run under LD_PRELOAD.

CUDA_HOME ?= /usr/local/cuda
PREFIX    ?= /usr/local
BUILD     ?= build
SAN       ?=
ifeq ($(origin CC),default)
CC := gcc
endif

ABS_BUILD := $(abspath $(BUILD))

WARN      := -Wall -Wextra -Werror
BASEFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g -fPIC $(WARN) -Iinclude -Ilib \
             -isystem $(CUDA_HOME)/include -MMD -MP
ifneq ($(SAN),)
SANFLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
BASEFLAGS += -DFRAGLESS_SANITIZE=1
endif
# With gcc the library is built with link-time optimization: its allocation path crosses files
# (heap, blocks, free index, page layer). Fat objects keep the unit tests' plain links working;
# other compilers (clang has no fat objects) build without it, and LIB_LTO= turns it off.
CC_IS_GCC   := $(shell $(CC) --version 2>/dev/null | grep -q 'Free Software Foundation' && echo yes)
LIB_LTO     ?= $(if $(CC_IS_GCC),-flto=auto -ffat-lto-objects,)
ALL_CFLAGS  = $(BASEFLAGS) $(SANFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SANFLAGS) $(LDFLAGS)
SYSLIBS     := -ldl -lpthread -lrt -lm

# ---- sources ----------------------------------------------------------------------------
LIB_SRCS      := $(wildcard lib/*.c)
LIB_OBJS      := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
# Unit tests link the library's objects directly; the interposer (which exports CUDA names
# and dlsym) stays out of them.
LIB_CORE_OBJS := $(filter-out $(BUILD)/obj/lib/interpose.o,$(LIB_OBJS))

EMU_DRV_SRCS  := $(wildcard tools/emu/driver/*.c)
EMU_RT_SRCS   := $(wildcard tools/emu/runtime/*.c)
EMU_DRV_OBJS  := $(EMU_DRV_SRCS:%.c=$(BUILD)/obj/%.o)
EMU_RT_OBJS   := $(EMU_RT_SRCS:%.c=$(BUILD)/obj/%.o)
EMU_LIBS      := $(if $(EMU_DRV_SRCS),$(BUILD)/emu/libcuda.so.1 $(BUILD)/emu/libcuda.so) \
                 $(if $(EMU_RT_SRCS),$(BUILD)/emu/libcudart.so.13 $(BUILD)/emu/libcudart.so)

TOOLS         := $(sort $(filter-out emu,$(notdir $(patsubst %/,%,$(dir $(wildcard tools/*/*.c))))))
TOOL_BINS     := $(TOOLS:%=$(BUILD)/%)
# Extra link flags per tool: TOOL_LDLIBS_<name>.
TOOL_LDLIBS_fragreplay := -L$(BUILD) -lfragless -Wl,-rpath,'$$ORIGIN' -Wl,-rpath,'$$ORIGIN/../lib'

COMMON_SRCS   := $(wildcard tests/common/*.c)
COMMON_OBJS   := $(COMMON_SRCS:%.c=$(BUILD)/obj/%.o)
UNIT_TESTS    := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(wildcard tests/unit/test_*.c))
EMU_TESTS     := $(patsubst tests/emu/%.c,$(BUILD)/tests/emu/%,$(wildcard tests/emu/test_*.c))
INTEG_TESTS   := $(patsubst tests/integ/%.c,$(BUILD)/tests/integ/%,$(wildcard tests/integ/test_*.c))
PROGS         := $(patsubst tests/progs/%.c,$(BUILD)/tests/progs/%,$(wildcard tests/progs/*.c))
BENCH_PROGS   := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
TEST_BINS     := $(UNIT_TESTS) $(EMU_TESTS) $(INTEG_TESTS) $(PROGS)

EMU_LINK      := -L$(BUILD)/emu -lcudart -lcuda

.PHONY: all lib emu tools tests benches test check deps install clean format format-check
.DEFAULT_GOAL := all
# Keep object files of tests and tools between builds.
.SECONDARY:

all: lib emu tools
lib: $(BUILD)/libfragless.so
emu: $(EMU_LIBS)
tools: $(TOOL_BINS)
tests: all $(TEST_BINS)
benches: all $(BENCH_PROGS)
# `make bench`: micro benchmarks and workload replays, one table (bench/run.sh; never part of
# `make test`). `make demo`: the README's first command (tools/demo.sh).
.PHONY: bench demo gpu-test
bench: deps
	$(MAKE) benches
	bash bench/run.sh $(ABS_BUILD)
# deps first: on a fresh machine the emulated device needs uthash-dev to build.
demo: deps
	$(MAKE) all $(BUILD)/tests/progs/tr_train
	bash tools/demo.sh $(ABS_BUILD)

# ---- compile ----------------------------------------------------------------------------
$(BUILD)/obj/lib/%.o: lib/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LIB_LTO) -fvisibility=hidden -c $< -o $@

$(BUILD)/obj/tools/emu/%.o: tools/emu/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -Itools/emu -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests/common -c $< -o $@

# ---- link -------------------------------------------------------------------------------
$(BUILD)/libfragless.so: $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,libfragless.so -Wl,-z,defs $(ALL_CFLAGS) $(LIB_LTO) \
	    -fvisibility=hidden $(ALL_LDFLAGS) -o $@ $^ $(SYSLIBS)

$(BUILD)/emu/libcuda.so.1: $(EMU_DRV_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,libcuda.so.1 -Wl,-z,defs $(ALL_LDFLAGS) -o $@ $^ $(SYSLIBS)
$(BUILD)/emu/libcuda.so: | $(BUILD)/emu/libcuda.so.1
	ln -sf libcuda.so.1 $@

$(BUILD)/emu/libcudart.so.13: $(EMU_RT_OBJS)
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,libcudart.so.13 -Wl,-z,defs $(ALL_LDFLAGS) -o $@ $^ $(SYSLIBS)
$(BUILD)/emu/libcudart.so: | $(BUILD)/emu/libcudart.so.13
	ln -sf libcudart.so.13 $@

define tool_rule
$(BUILD)/$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1)/*.c)) | $(BUILD)/libfragless.so
	$$(CC) $$(ALL_LDFLAGS) -o $$@ $$(filter %.o,$$^) $$(TOOL_LDLIBS_$(1)) $$(SYSLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))

$(BUILD)/tests/unit/%: $(BUILD)/obj/tests/unit/%.o $(LIB_CORE_OBJS) $(COMMON_OBJS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcriterion $(SYSLIBS)

$(BUILD)/tests/emu/%: $(BUILD)/obj/tests/emu/%.o $(COMMON_OBJS) | $(EMU_LIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcriterion $(EMU_LINK) $(SYSLIBS)

$(BUILD)/tests/integ/%: $(BUILD)/obj/tests/integ/%.o $(COMMON_OBJS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcriterion $(SYSLIBS)

$(BUILD)/tests/progs/%: $(BUILD)/obj/tests/progs/%.o | $(EMU_LIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(EMU_LINK) $(SYSLIBS)

# Benchmarks: bench/NAME.c → build/bench/NAME, linked like the test programs (they run under
# LD_PRELOAD of libfragless on the emulated device or a GPU).
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o | $(EMU_LIBS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(EMU_LINK) $(SYSLIBS)

# ---- test -------------------------------------------------------------------------------
# `make test`: the suite, then the same suite built with AddressSanitizer+UBSan.
test: deps
	$(MAKE) tests
	$(MAKE) check
	$(MAKE) SAN=1 BUILD=$(BUILD)/asan tests
	$(MAKE) SAN=1 BUILD=$(BUILD)/asan check

check:
	bash tests/run.sh $(ABS_BUILD) $(if $(SAN),asan,plain)

# `make gpu-test`: the interposer's integration suite and real clients (static cudart, PyTorch,
# CuPy, JAX) on a real GPU under LD_PRELOAD; one line and success when there is no GPU.
gpu-test: tests
	bash tests/gpu/run.sh $(ABS_BUILD)

# Installs the Debian packages the build and tests need, when run as root; otherwise names them.
DEPS_HEADERS := /usr/include/uthash.h /usr/include/criterion/criterion.h
DEPS_PKGS    := uthash-dev libcriterion-dev
deps:
	@missing=""; for h in $(DEPS_HEADERS); do [ -e $$h ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(DEPS_PKGS)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEPS_PKGS)) \
	      >/dev/null || { echo "apt-get install $(DEPS_PKGS) failed"; exit 1; }; \
	  else echo "missing build dependencies: install the Debian packages $(DEPS_PKGS)"; exit 1; fi; \
	fi
	@command -v $(CUDA_HOME)/bin/nvcc >/dev/null || [ -e $(CUDA_HOME)/include/cuda.h ] || \
	  { echo "CUDA headers not found under CUDA_HOME=$(CUDA_HOME)"; exit 1; }

# ---- install ----------------------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/lib/fragless/emu
	install -m 0755 $(BUILD)/libfragless.so $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 include/*.h $(DESTDIR)$(PREFIX)/include/
	$(if $(TOOL_BINS),install -m 0755 $(TOOL_BINS) $(DESTDIR)$(PREFIX)/bin/)
	install -m 0755 tools/torch_snapshot_to_csv.py $(DESTDIR)$(PREFIX)/bin/
	$(if $(EMU_LIBS),cp -P $(EMU_LIBS) $(DESTDIR)$(PREFIX)/lib/fragless/emu/)
	@if ls docs/*.1 >/dev/null 2>&1; then install -d $(DESTDIR)$(PREFIX)/share/man/man1 && \
	  install -m 0644 docs/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/; fi

clean:
	rm -rf $(BUILD)

FORMAT_SRCS = $(shell git ls-files '*.c' '*.h' 2>/dev/null)
format:
	clang-format -i $(FORMAT_SRCS)
format-check:
	clang-format --dry-run --Werror $(FORMAT_SRCS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

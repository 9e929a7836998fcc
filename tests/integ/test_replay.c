/*
 * test_replay.c — fragreplay on traces written by hand: RMM logs replay to their known peak,
 * malformed traces are refused with FILE:LINE, unknown frees are counted, several traces
 * merge, several configurations compare, out-of-memory is counted, plots are written, and a
 * PyTorch snapshot made here converts and replays to its known peak.
 */
#include "test_replay_util.h"

/* RMM's format as logging_resource_adaptor writes it: 0x pointers (fmt) and bare hex ones
 * (RMM's newer printf-style "%llx"), a second stream. Peak: 1 MiB + 3 MiB + 2 MiB live. */
static const char rmm_log[] =
    "Thread,Time,Action,Pointer,Size,Stream\n"
    "140573312345856,09:15:01.000001,allocate,0x7f8a40000000,1048576,0x0\n"
    "140573312345856,09:15:01.000010,allocate,0x7f8a40100000,3145728,0x5a3c10\n"
    "140573312345857,09:15:01.000020,allocate,7f8a40400000,2097152,5a3c10\n"
    "140573312345856,09:15:01.000030,free,0x7f8a40100000,3145728,0x5a3c10\n"
    "140573312345856,09:15:01.000040,allocate,0x7f8a40100000,1024,0x0\n"
    "140573312345856,09:15:01.000050,free,0x7f8a40000000,1048576,0x0\n"
    "140573312345857,09:15:01.000060,free,7f8a40400000,2097152,5a3c10\n"
    "140573312345856,09:15:01.000070,free,0x7f8a40100000,1024,0x0\n";

Test(replay, rmm_log_written_by_hand_replays)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv");
    ru_write(log, rmm_log);
    const char *args[] = {"--emu", "--json", log, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "events"), 8);
    cr_expect_eq(ru_json_u64(r.out, "trace_peak_requested_bytes"), 6291456);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), 6291456);
    cr_expect_eq(ru_json_u64(r.out, "ops"), 8);
    cr_expect_eq(ru_json_u64(r.out, "ooms"), 0);
    cr_expect_eq(ru_json_u64(r.out, "unknown_frees"), 0);
    cr_expect_geq(ru_json_u64(r.out, "peak_reserved_bytes"), 6291456);
    cr_expect_geq(ru_json_u64(r.out, "peak_allocated_bytes"), 6291456);
    cr_expect(strstr(r.out, "\"ok\": true"), "%s", r.out);
    tu_result_free(&r);
}

Test(replay, summary_table_names_every_number)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv");
    ru_write(log, rmm_log);
    const char *args[] = {"--emu", "--conf", "expandable_segments:false", log, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect(strstr(r.out, "8 events"), "%s", r.out);
    cr_expect(strstr(r.out, "expandable_segments:false"), "%s", r.out);
    cr_expect(strstr(r.out, "reserved"), "%s", r.out);
    cr_expect(strstr(r.out, "drv calls"), "%s", r.out);
    tu_result_free(&r);
}

struct bad_trace {
    const char *text;
    int line;
    const char *what;
};

static const struct bad_trace bad_traces[] = {
    {"", 1, "empty file"},
    {"Thread,Time,Action,Pointer,Size\n", 1, "not an RMM log"},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x1000,16\n", 2,
     "5 fields, expected 6"},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x1000,16,0x0,7\n", 2,
     "more than 6 fields"},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,deallocate,0x1000,16,0x0\n", 2,
     "unknown action \"deallocate\""},
    {"Thread,Time,Action,Pointer,Size,Stream\nT1,00:00:00.000001,allocate,0x1000,16,0x0\n", 2,
     "thread \"T1\""},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,25:00:00.000001,allocate,0x1000,16,0x0\n", 2,
     "time \"25:00:00.000001\""},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0xzz,16,0x0\n", 2,
     "pointer \"0xzz\""},
    {"Thread,Time,Action,Pointer,Size,Stream\n\n1,00:00:00.000001,allocate,0x1000,-16,0x0\n", 3,
     "size \"-16\""},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x1000,16,stream\n", 2,
     "stream \"stream\""},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x0,16,0x0\n", 2,
     "null pointer"},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x1000,16,0x0\n"
     "1,00:00:00.000002,allocate,0x1000,32,0x0\n",
     3, "still live (allocated at line 2)"},
    {"Thread,Time,Action,Pointer,Size,Stream\n1,00:00:00.000001,allocate,0x1000,16,0x0\n"
     "1,00:00:00.000002,free,0x1000,32,0x0\n",
     3, "allocated with size 16"},
};

Test(replay, malformed_traces_are_refused_with_file_and_line)
{
    const char *dir = ru_tmpdir();
    for (size_t i = 0; i < sizeof bad_traces / sizeof bad_traces[0]; i++) {
        struct tu_result r;
        char name[32], expect[512];
        snprintf(name, sizeof name, "bad%zu.csv", i);
        const char *path = ru_file(dir, name);
        ru_write(path, bad_traces[i].text);
        snprintf(expect, sizeof expect, "%s:%d: ", path, bad_traces[i].line);
        const char *args[] = {"--emu", path, NULL};
        cr_expect_eq(ru_replay(&r, args), 2, "case %zu: status %d", i, r.status);
        cr_expect(strstr(r.err, expect), "case %zu: no \"%s\" in:\n%s", i, expect, r.err);
        cr_expect(strstr(r.err, bad_traces[i].what), "case %zu: no \"%s\" in:\n%s", i,
                  bad_traces[i].what, r.err);
        tu_result_free(&r);
    }
}

Test(replay, binary_and_missing_files_are_refused)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *bin = ru_file(dir, "bin.csv");
    static const char text[] = "Thread,Time,Action,Pointer,Size,Stream\n1,0\0,x\n";
    FILE *f = fopen(bin, "w");
    fwrite(text, 1, sizeof text - 1, f);
    fclose(f);
    const char *args[] = {"--emu", bin, NULL};
    cr_expect_eq(ru_replay(&r, args), 2);
    cr_expect(strstr(r.err, ":2: binary data"), "%s", r.err);
    tu_result_free(&r);
    const char *missing = ru_file(dir, "missing.csv");
    const char *args2[] = {"--emu", missing, NULL};
    cr_expect_eq(ru_replay(&r, args2), 2);
    cr_expect(strstr(r.err, "missing.csv: No such file"), "%s", r.err);
    tu_result_free(&r);
}

Test(replay, unknown_frees_are_counted_not_fatal)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "unknown.csv");
    ru_write(log, "Thread,Time,Action,Pointer,Size,Stream\n"
                  "1,00:00:00.000001,allocate,0x1000,4096,0x0\n"
                  "1,00:00:00.000002,free,0x2000,512,0x0\n"
                  "1,00:00:00.000003,free,0x1000,4096,0x0\n"
                  "1,00:00:00.000004,free,0x1000,4096,0x0\n"
                  "1,00:00:00.000005,allocate failure,0x0,1099511627776,0x0\n");
    const char *args[] = {"--emu", "--json", log, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "unknown_frees"), 2);
    cr_expect_eq(ru_json_u64(r.out, "trace_allocation_failures"), 1);
    cr_expect_eq(ru_json_u64(r.out, "ops"), 2);
    char where[300];
    snprintf(where, sizeof where, "2 frees of pointers the trace never allocated (first at %s:3)",
             log);
    cr_expect(strstr(r.err, where), "no \"%s\" in:\n%s", where, r.err);
    tu_result_free(&r);
}

Test(replay, several_traces_merge_by_time_each_with_its_pointers)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *a = ru_file(dir, "a.csv"), *b = ru_file(dir, "b.csv");
    /* Same pointer values in both: separate processes. Live together: 8 + 2 MiB. */
    ru_write(a, "Thread,Time,Action,Pointer,Size,Stream\n"
                "1,10:00:00.000001,allocate,0x1000,8388608,0x0\n"
                "1,10:00:00.000005,free,0x1000,8388608,0x0\n");
    ru_write(b, "Thread,Time,Action,Pointer,Size,Stream\n"
                "2,10:00:00.000002,allocate,0x1000,2097152,0x0\n"
                "2,10:00:00.000009,free,0x1000,2097152,0x0\n");
    const char *args[] = {"--emu", "--json", a, b, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "events"), 4);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), 10485760);
    tu_result_free(&r);
}

Test(replay, configurations_compare_and_plot)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv"), *svg = ru_file(dir, "p.svg");
    ru_write(log, rmm_log);
    const char *args[] = {"--emu",  "--json",
                          "--conf", "passthrough:true",
                          "--conf", "expandable_segments:false",
                          "--plot", svg,
                          log,      NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64_nth(r.out, "peak_requested_bytes", 0), 6291456);
    cr_expect_eq(ru_json_u64_nth(r.out, "peak_requested_bytes", 1), 6291456);
    cr_expect(strstr(r.out, "\"conf\": \"passthrough:true\""), "%s", r.out);
    cr_expect(strstr(r.out, "\"conf\": \"expandable_segments:false\""), "%s", r.out);
    /* pass-through: each allocation and free is one driver call */
    cr_expect_geq(ru_json_u64_nth(r.out, "driver_calls", 0), 8);
    tu_result_free(&r);
    FILE *f = fopen(svg, "r");
    cr_assert_not_null(f, "no plot written");
    char buf[8192] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    cr_expect_gt(n, 0);
    cr_expect(strncmp(buf, "<svg", 4) == 0, "%s", buf);
    cr_expect(strstr(buf, "<polyline"), "%s", buf);
    cr_expect(strstr(buf, "expandable_segments:false"), "%s", buf);
}

Test(replay, out_of_memory_is_counted)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "big.csv");
    ru_write(log, "Thread,Time,Action,Pointer,Size,Stream\n"
                  "1,00:00:00.000001,allocate,0x1000,16777216,0x0\n"
                  "1,00:00:00.000002,allocate,0x9000000,1073741824,0x0\n"
                  "1,00:00:00.000003,free,0x9000000,1073741824,0x0\n"
                  "1,00:00:00.000004,free,0x1000,16777216,0x0\n");
    const char *args[] = {"--emu", "--capacity", "256M", "--json", log, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "ooms"), 1);
    cr_expect_eq(ru_json_u64(r.out, "capacity_bytes"), 268435456);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), 16777216);
    tu_result_free(&r);
}

Test(replay, bad_options_are_refused)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv");
    ru_write(log, rmm_log);
    const char *args[] = {"--emu", "--capacity", "12Q", log, NULL};
    cr_expect_eq(ru_replay(&r, args), 2);
    cr_expect(strstr(r.err, "--capacity 12Q: not a size"), "%s", r.err);
    tu_result_free(&r);
    const char *args2[] = {"--frobnicate", log, NULL};
    cr_expect_eq(ru_replay(&r, args2), 2);
    cr_expect(strstr(r.err, "--frobnicate: unknown option"), "%s", r.err);
    tu_result_free(&r);
}

/* A snapshot shaped like torch.cuda.memory._snapshot(): device 0 has a block allocated before
 * recording (freed in the trace), allocator-internal entries and an OOM; device 1 one block.
 * Device 0's peak: 4096 (pre-existing) + 1 MiB + 2 MiB live together. */
static const char make_snapshot[] =
    "import pickle, sys\n"
    "def e(a, addr, size, t, stream=0):\n"
    "    return {'action': a, 'addr': addr, 'size': size, 'stream': stream, 'time_us': t,\n"
    "            'frames': [{'filename': 'train.py', 'line': 1, 'name': 'f'}]}\n"
    "d0 = [e('segment_alloc', 0x7000000, 20971520, 10),\n"
    "      e('alloc', 0x7000000, 1048576, 11), e('alloc', 0x7100000, 2097152, 12, 7),\n"
    "      e('free_requested', 0x6000000, 4096, 13), e('free_completed', 0x6000000, 4096, 14),\n"
    "      e('free_requested', 0x7000000, 1048576, 15),\n"
    "      e('free_completed', 0x7000000, 1048576, 16),\n"
    "      {'action': 'oom', 'size': 1 << 40, 'stream': 0, 'time_us': 17, 'device_free': 1,\n"
    "       'frames': []},\n"
    "      e('free_requested', 0x7100000, 2097152, 18, 7)]\n"
    "d1 = [e('alloc', 0x9000000, 512, 20), e('free_requested', 0x9000000, 512, 21)]\n"
    "snap = {'segments': [], 'device_traces': [d0, d1],\n"
    "        'allocator_settings': {'expandable_segments': False}}\n"
    "pickle.dump(snap, open(sys.argv[1] if len(sys.argv) > 1 else '%s', 'wb'))\n";

Test(replay, torch_snapshot_converts_and_replays_to_its_peak)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *pkl = ru_file(dir, "snap.pickle");
    char prog[2048];
    snprintf(prog, sizeof prog, make_snapshot, pkl);
    cr_assert_eq(ru_python(&r, prog), 0, "python3: %s", r.err);
    tu_result_free(&r);
    cr_assert_eq(ru_convert(&r, pkl, ru_file(dir, "out.csv")), 0, "convert: %s", r.err);
    cr_expect(strstr(r.out, "1 allocated before recording"), "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(access(ru_file(dir, "out.dev1.csv"), R_OK), 0, "no device 1 file");
    const char *dev0 = ru_file(dir, "out.dev0.csv");
    const char *args[] = {"--emu", "--json", dev0, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), 4096 + 1048576 + 2097152);
    cr_expect_eq(ru_json_u64(r.out, "events"), 6);
    cr_expect_eq(ru_json_u64(r.out, "trace_allocation_failures"), 1);
    cr_expect_eq(ru_json_u64(r.out, "unknown_frees"), 0);
    tu_result_free(&r);
}

Test(replay, snapshot_converter_refuses_code_in_a_pickle)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *pkl = ru_file(dir, "evil.pickle");
    char prog[512];
    snprintf(prog, sizeof prog,
             "import pickle, collections\n"
             "pickle.dump(collections.OrderedDict(device_traces=[]), open('%s', 'wb'))\n",
             pkl);
    cr_assert_eq(ru_python(&r, prog), 0, "python3: %s", r.err);
    tu_result_free(&r);
    cr_expect_eq(ru_convert(&r, pkl, ru_file(dir, "out.csv")), 1);
    cr_expect(strstr(r.err, "refusing collections.OrderedDict"), "%s", r.err);
    tu_result_free(&r);
}

/* Driver failures (emulated device fault injection) stop that configuration's replay with a
 * message naming the call, and what was made is given back: the leak audit stays clean. */
Test(replay, driver_failures_stop_the_replay_and_leak_nothing)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv");
    ru_write(log, rmm_log);
    static const char *const cases[][3] = {
        {"FRAGLESS_EMU_FAIL=cuStreamCreate@1", "", "cuStreamCreate failed"},
        {"FRAGLESS_EMU_FAIL=cuMemAlloc_v2@2=CUDA_ERROR_INVALID_VALUE", "passthrough:true",
         "cuMemAlloc failed: CUDA error 1"},
        {"FRAGLESS_EMU_FAIL=cuMemFree_v2@1=CUDA_ERROR_INVALID_VALUE", "passthrough:true",
         "cuMemFree failed: CUDA error 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[] = {tu_path("fragreplay"), "--emu", "--conf", cases[i][1], log, NULL};
        const char *env[] = {cases[i][0], "FRAGLESS_EMU_AUDIT=1", NULL};
        cr_expect_eq(tu_run(&r, false, argv, env, 60), 1, "case %zu", i);
        cr_expect(strstr(r.err, cases[i][2]), "case %zu: no \"%s\" in:\n%s", i, cases[i][2], r.err);
        cr_expect(strstr(r.err, "nothing leaked"), "case %zu:\n%s", i, r.err);
        cr_expect_null(strstr(r.err, "leaked object"), "case %zu:\n%s", i, r.err);
        tu_result_free(&r);
    }
}

/* Every allocation failing for lack of memory is counted, not fatal. */
Test(replay, injected_out_of_memory_is_counted)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *log = ru_file(dir, "rmm.csv");
    ru_write(log, rmm_log);
    const char *argv[] = {tu_path("fragreplay"),       "--emu", "--json", "--conf",
                          "expandable_segments:false", log,     NULL};
    const char *env[] = {"FRAGLESS_EMU_FAIL=cuMemAlloc_v2@*", "FRAGLESS_EMU_AUDIT=1", NULL};
    cr_assert_eq(tu_run(&r, false, argv, env, 60), 0, "%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "ooms"), 4);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), 0);
    cr_expect(strstr(r.err, "nothing leaked"), "%s", r.err);
    tu_result_free(&r);
}

/* A workload generator's trace (bench/workloads) replays with the peak and event count the
 * generator computed; this one uses two streams, so the stream-ordered path runs too. */
Test(replay, generated_workload_replays_to_its_known_peak)
{
    struct tu_result r;
    const char *dir = ru_tmpdir(), *trace = ru_file(dir, "w.csv");
    char prog[1024];
    const char *src = getenv("FRAGLESS_SRC");
    snprintf(prog, sizeof prog,
             "import sys\n"
             "sys.path.insert(0, '%s/bench/workloads')\n"
             "import two_stream_prefetch as w\n"
             "t = w.generate()\n"
             "t.write('%s')\n"
             "print(t.peak_bytes, t.events())\n",
             src ? src : ".", trace);
    cr_assert_eq(ru_python(&r, prog), 0, "python3: %s", r.err);
    unsigned long long peak = 0, events = 0;
    cr_assert_eq(sscanf(r.out, "%llu %llu", &peak, &events), 2, "%s", r.out);
    tu_result_free(&r);
    const char *args[] = {"--emu", "--json", "--capacity", "24G", trace, NULL};
    cr_assert_eq(ru_replay(&r, args), 0, "stderr:\n%s", r.err);
    cr_expect_eq(ru_json_u64(r.out, "events"), events);
    cr_expect_eq(ru_json_u64(r.out, "trace_peak_requested_bytes"), peak);
    cr_expect_eq(ru_json_u64(r.out, "peak_requested_bytes"), peak);
    cr_expect_eq(ru_json_u64(r.out, "ooms"), 0);
    tu_result_free(&r);
}

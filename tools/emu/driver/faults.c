/*
 * faults.c — fault injection and call counters. Every exported entry point counts its calls
 * by exported name (the fast-path ones in fastpath.c, the others here); FRAGLESS_EMU_FAIL /
 * fragless_emu_fail() arm rules "NAME@N[=CODE]" (the Nth call from arming), "NAME@N+[=CODE]"
 * (the Nth and every later call) and "NAME@*[=CODE]" (every call). CODE is a number or a
 * CUDA_ERROR_* name; the default is out of memory.
 */
#include <stdlib.h>
#include <string.h>

#include "emu.h"

#define MAX_RULES    32
#define NAME_MAX_LEN 63

enum rule_kind { RULE_ONE, RULE_FROM, RULE_ALL };

struct rule {
    char name[NAME_MAX_LEN + 1];
    enum rule_kind kind;
    uint64_t n;    /* 1-based, counted from arming */
    uint64_t seen; /* calls of `name` since arming */
    CUresult code;
};

struct counter {
    char name[NAME_MAX_LEN + 1];
    uint64_t calls;
    UT_hash_handle hh;
};

static struct rule rules[MAX_RULES];
static int nrules;
static struct counter *counters;
static uint64_t total_calls;

static struct counter *counter_get(const char *name)
{
    struct counter *c;

    HASH_FIND_STR(counters, name, c);
    if (c)
        return c;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    strncpy(c->name, name, NAME_MAX_LEN);
    HASH_ADD_STR(counters, name, c);
    return c;
}

static bool rule_fires(struct rule *r)
{
    r->seen++;
    switch (r->kind) {
    case RULE_ONE:
        return r->seen == r->n;
    case RULE_FROM:
        return r->seen >= r->n;
    case RULE_ALL:
        return true;
    }
    return false;
}

CUresult emu_faults_on_call(const char *name)
{
    struct counter *c = counter_get(name);

    total_calls++;
    if (c)
        c->calls++;
    return emu_faults_check(name);
}

CUresult emu_faults_check(const char *name)
{
    CUresult out = CUDA_SUCCESS;

    for (int i = 0; i < nrules; i++) {
        if (strcmp(rules[i].name, name) == 0 && rule_fires(&rules[i]) && out == CUDA_SUCCESS)
            out = rules[i].code;
    }
    return out;
}

/* Parses one "NAME@N[+][=CODE]" / "NAME@*[=CODE]" of length len into r. */
static bool rule_parse(const char *s, size_t len, struct rule *r)
{
    char buf[160], *at, *eq, *end;

    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    memset(r, 0, sizeof *r);
    r->code = CUDA_ERROR_OUT_OF_MEMORY;
    eq = strchr(buf, '=');
    if (eq) {
        *eq = '\0';
        if (!emu_error_parse(eq + 1, &r->code) || r->code == CUDA_SUCCESS)
            return false;
    }
    at = strchr(buf, '@');
    if (!at || at == buf || (size_t)(at - buf) > NAME_MAX_LEN)
        return false;
    *at++ = '\0';
    strcpy(r->name, buf);
    if (strcmp(at, "*") == 0) {
        r->kind = RULE_ALL;
        return true;
    }
    if (*at < '1' || *at > '9')
        return false;
    r->n = strtoull(at, &end, 10);
    r->kind = RULE_ONE;
    if (*end == '+') {
        r->kind = RULE_FROM;
        end++;
    }
    return *end == '\0';
}

bool emu_faults_armed(const char *name)
{
    for (int i = 0; i < nrules; i++)
        if (strcmp(rules[i].name, name) == 0)
            return true;
    return false;
}

/* Under the lock (or before any call, from the configuration). */
static int rules_arm(const char *spec)
{
    struct rule parsed[MAX_RULES];
    int n = 0;
    const char *p = spec;

    while (p && *p) {
        size_t len = strcspn(p, ",");
        if (n == MAX_RULES || !rule_parse(p, len, &parsed[n]))
            return CUDA_ERROR_INVALID_VALUE;
        n++;
        p += len;
        if (*p == ',')
            p++;
    }
    memcpy(rules, parsed, sizeof parsed[0] * (size_t)n);
    nrules = n;
    emu_fast_rearm();
    return CUDA_SUCCESS;
}

int emu_faults_arm(const char *spec)
{
    return rules_arm(spec);
}

EMU_API int fragless_emu_fail(const char *spec)
{
    int r;

    emu_config();
    emu_lock();
    r = rules_arm(spec);
    emu_unlock();
    return r;
}

EMU_API uint64_t fragless_emu_calls(const char *name)
{
    struct counter *c = NULL;
    bool fast = false;
    uint64_t n = 0;

    if (!name)
        return 0;
    n = emu_fast_calls(name, &fast);
    if (fast && strcmp(name, "*") != 0)
        return n;
    emu_lock();
    if (strcmp(name, "*") == 0) {
        n += total_calls;
    } else {
        HASH_FIND_STR(counters, name, c);
        n = c ? c->calls : 0;
    }
    emu_unlock();
    return n;
}

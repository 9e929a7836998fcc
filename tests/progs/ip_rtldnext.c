/*
 * ip_rtldnext.c — fragless's dlsym keeps the caller's place: dlsym(RTLD_NEXT, ...) from the
 * program searches the objects after the program (libfragless among them), not after
 * libfragless; RTLD_DEFAULT and library handles behave as without fragless.
 */
#include "ip_prog.h"

int main(void)
{
    void *next_version = dlsym(RTLD_NEXT, "fragless_version");
    CHECK(next_version != NULL, "libfragless comes after the program");
    CHECK(next_version == dlsym(RTLD_DEFAULT, "fragless_version"), "the same function");
    CHECK(dlsym(RTLD_NEXT, "dlsym") == dlsym(RTLD_DEFAULT, "dlsym"),
          "the next dlsym after the program is fragless's");
    CHECK(dlsym(RTLD_NEXT, "getpid") != NULL, "libc found next");
    dlerror();
    CHECK(dlsym(RTLD_NEXT, "no_such_symbol_anywhere") == NULL, "missing name");
    CHECK(dlerror() != NULL, "dlerror set");
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    CHECK(libc != NULL, "libc handle");
    CHECK(dlsym(libc, "getpid") == dlsym(RTLD_DEFAULT, "getpid"), "handle lookup");
    printf("ok rtldnext\n");
    return 0;
}

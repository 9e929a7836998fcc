/*
 * ip_foreign.c — pointers fragless did not hand out go to the real functions: memory from
 * the driver's own cuMemAlloc_v2 is freed by cudaFree and cuMemFree_v2 and answered for by
 * cuMemGetAddressRange. Every resolver hands out fragless's cuMemAlloc_v2, so the program
 * finds the driver's own in the driver file's dynamic symbol table.
 */
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ip_prog.h"

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);

/* The address of `name` in the loaded object that defines `anchor`, read from its file. */
static void *elf_lookup(void *anchor, const char *name)
{
    Dl_info info;
    CHECK(dladdr(anchor, &info) && info.dli_fname, "dladdr");
    int fd = open(info.dli_fname, O_RDONLY);
    CHECK(fd >= 0, "open %s", info.dli_fname);
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "stat");
    const char *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    CHECK(base != MAP_FAILED, "mmap");
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(base + eh->e_shoff);
    void *found = NULL;
    for (int i = 0; i < eh->e_shnum && !found; i++) {
        if (sh[i].sh_type != SHT_DYNSYM)
            continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(base + sh[i].sh_offset);
        const char *strtab = base + sh[sh[i].sh_link].sh_offset;
        for (size_t k = 0; k < sh[i].sh_size / sizeof *sym; k++) {
            if (sym[k].st_shndx != SHN_UNDEF && strcmp(strtab + sym[k].st_name, name) == 0)
                found = (char *)info.dli_fbase + sym[k].st_value;
        }
    }
    munmap((void *)base, (size_t)st.st_size);
    return found;
}

int main(void)
{
    /* cuInit is not interposed: dlsym gives the driver's own, in the driver's file. */
    alloc_fn real_alloc = (alloc_fn)elf_lookup(dlsym(RTLD_DEFAULT, "cuInit"), "cuMemAlloc_v2");
    CHECK(real_alloc != NULL, "the driver's cuMemAlloc_v2");
    CHECK(real_alloc != (alloc_fn)dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), "not fragless's");
    CHECK(cudaFree(NULL) == cudaSuccess, "runtime up");
    void *mine = NULL;
    CHECK(cudaMalloc(&mine, 4096) == cudaSuccess, "fragless is in use");
    fragless_stats_t before = ip_stats0();
    CUdeviceptr a = 0, b = 0;
    CHECK(real_alloc(&a, 1 << 20) == CUDA_SUCCESS, "real alloc a");
    CHECK(real_alloc(&b, 1 << 20) == CUDA_SUCCESS, "real alloc b");
    CUdeviceptr base = 0;
    size_t size = 0;
    CHECK(cuMemGetAddressRange(&base, &size, a + 10) == CUDA_SUCCESS && base == a &&
              size == 1 << 20,
          "the driver answers for its own pointer");
    CHECK(cudaFree((void *)a) == cudaSuccess, "cudaFree(foreign)");
    CHECK(cuMemFree(b) == CUDA_SUCCESS, "cuMemFree(foreign)");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 0, 0);
    CHECK(after.num_foreign_frees == before.num_foreign_frees + 2, "foreign frees %llu -> %llu",
          (unsigned long long)before.num_foreign_frees,
          (unsigned long long)after.num_foreign_frees);
    CHECK(cuMemFree(a) != CUDA_SUCCESS, "a is gone: the driver refuses a second free");
    CHECK(cudaFree(mine) == cudaSuccess, "cudaFree(mine)");
    printf("ok foreign\n");
    return 0;
}

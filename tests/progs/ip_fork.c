/*
 * ip_fork.c — fork after fragless has initialized (while another thread allocates, plain and
 * stream-ordered): the child does not deadlock or crash, and either allocates or gets an error
 * code (it prints which).
 */
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ip_prog.h"

static volatile int stop;

/* Plain pairs through the heap, stream-ordered ones through the thread's region (its front
 * lock taken and given on every call while main forks). */
static void *churn(void *arg)
{
    (void)arg;
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    while (!stop) {
        void *p = NULL, *q = NULL;
        if (cudaMalloc(&p, 8192) == cudaSuccess)
            cudaFree(p);
        if (cudaMallocAsync(&q, 8192, s) == cudaSuccess)
            cudaFreeAsync(q, s);
    }
    CHECK(cudaStreamDestroy(s) == cudaSuccess, "stream destroy");
    return NULL;
}

int main(void)
{
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, churn, NULL) == 0, "thread");
    for (int i = 0; i < 20; i++) {
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0)
            ip_child_allocates_and_exits();
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "wait");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    }
    stop = 1;
    pthread_join(t, NULL);
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    printf("ok fork\n");
    return 0;
}

/*
 * iocp_drain: the C floor for the Post+GQCS benchmark — how many packets per second a
 * completion port moves through PostQueuedCompletionStatus and GetQueuedCompletionStatus(Ex)
 * when no interpreter is involved. Under Wine this is Wine's own per-call cost.
 *
 *   iocp_drain.exe SECONDS BATCH
 *
 * Each cycle posts BATCH packets, then dequeues them all: once one at a time with
 * GetQueuedCompletionStatus, once in batches with GetQueuedCompletionStatusEx. Prints one JSON
 * object with packets/s of whole cycles and microseconds per post and per dequeued packet.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -o iocp_drain.exe iocp_drain.c
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

static double seconds_now(void) {
    static LARGE_INTEGER frequency;
    LARGE_INTEGER counter;
    if (!frequency.QuadPart) QueryPerformanceFrequency(&frequency);
    QueryPerformanceCounter(&counter);
    return (double)counter.QuadPart / (double)frequency.QuadPart;
}

typedef struct { double post, drain; long long packets; } totals_t;

static int run(HANDLE port, double seconds, int batch, int use_ex, totals_t *t) {
    OVERLAPPED_ENTRY *entries = calloc((size_t)batch, sizeof *entries);
    double end = seconds_now() + seconds;
    while (seconds_now() < end) {
        double a = seconds_now();
        for (int i = 0; i < batch; i++)
            if (!PostQueuedCompletionStatus(port, 64, (ULONG_PTR)(i + 1), NULL)) return -1;
        double b = seconds_now();
        int left = batch;
        while (left > 0) {
            if (use_ex) {
                ULONG removed = 0;
                if (!GetQueuedCompletionStatusEx(port, entries, (ULONG)left, &removed, 0, FALSE))
                    return -1;
                left -= (int)removed;
            } else {
                DWORD n;
                ULONG_PTR key;
                OVERLAPPED *ov;
                if (!GetQueuedCompletionStatus(port, &n, &key, &ov, 0)) return -1;
                left--;
            }
        }
        double c = seconds_now();
        t->post += b - a;
        t->drain += c - b;
        t->packets += batch;
    }
    free(entries);
    return 0;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    int batch = argc > 2 ? atoi(argv[2]) : 64;
    if (batch < 1) batch = 1;
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    totals_t single = {0}, ex = {0};
    if (run(port, seconds, batch, 0, &single) < 0 || run(port, seconds, batch, 1, &ex) < 0) {
        fprintf(stderr, "iocp call failed: %lu\n", GetLastError());
        return 1;
    }
    printf("{\"gqcs\": {\"packets\": %lld, \"packets_per_s\": %.1f, \"post_us\": %.3f, "
           "\"dequeue_us\": %.3f}, \"gqcs_ex\": {\"packets\": %lld, \"packets_per_s\": %.1f, "
           "\"post_us\": %.3f, \"dequeue_us\": %.3f}}\n",
           single.packets, single.packets / (single.post + single.drain),
           1e6 * single.post / single.packets, 1e6 * single.drain / single.packets,
           ex.packets, ex.packets / (ex.post + ex.drain), 1e6 * ex.post / ex.packets,
           1e6 * ex.drain / ex.packets);
    CloseHandle(port);
    return 0;
}

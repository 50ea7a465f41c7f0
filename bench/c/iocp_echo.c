/*
 * iocp_echo: the C reference for the echo benchmark — what a completion-port server costs
 * with no interpreter at all, under the same Wine as the Python servers.
 *
 * The classic design, same as winiocp's Server: WORKERS threads blocked in
 * GetQueuedCompletionStatus on one port; a pool of ACCEPTS AcceptEx always posted on the
 * listener; every connection keeps one WSARecv pending and echoes what arrives with WSASend
 * (resending the rest after a partial send), then posts the next WSARecv. A connection has one
 * operation outstanding at a time, so its context is freed by whichever completion ends it.
 *
 *   iocp_echo.exe [PORT [WORKERS [MAX_SECONDS]]]    (defaults: 0, 2, 600)
 *
 * Prints `listening on 127.0.0.1:PORT`; exits when stdin reaches EOF (or a line arrives), or
 * after MAX_SECONDS as a safety net.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -o iocp_echo.exe iocp_echo.c -lws2_32 -lmswsock
 */
#define WIN32_LEAN_AND_MEAN
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define BUFFER_SIZE 8192
#define ACCEPTS 16
#define ADDRESS_SLOT (sizeof(struct sockaddr_in6) + 16)

enum kind { KIND_ACCEPT, KIND_RECV, KIND_SEND };

typedef struct {
    OVERLAPPED ov; /* first member: the OVERLAPPED pointer is the context pointer */
    enum kind kind;
    SOCKET sock;
    DWORD length; /* bytes to echo */
    DWORD done;   /* bytes of them sent so far */
    char buffer[BUFFER_SIZE];
} connection_t;

typedef struct {
    OVERLAPPED ov;
    enum kind kind;
    SOCKET accepted;
    char addresses[2 * ADDRESS_SLOT];
} accept_t;

static HANDLE port;
static SOCKET listener;
static LPFN_ACCEPTEX accept_ex;

static void post_accept(accept_t *a);

static void close_connection(connection_t *c) {
    closesocket(c->sock);
    free(c);
}

static int post_recv(connection_t *c) {
    WSABUF buf = {BUFFER_SIZE, c->buffer};
    DWORD flags = 0;
    ZeroMemory(&c->ov, sizeof c->ov);
    c->kind = KIND_RECV;
    if (WSARecv(c->sock, &buf, 1, NULL, &flags, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING)
        return -1;
    return 0;
}

static int post_send(connection_t *c) {
    WSABUF buf = {c->length - c->done, c->buffer + c->done};
    ZeroMemory(&c->ov, sizeof c->ov);
    c->kind = KIND_SEND;
    if (WSASend(c->sock, &buf, 1, NULL, 0, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING)
        return -1;
    return 0;
}

static void on_accept(accept_t *a, BOOL ok) {
    SOCKET s = a->accepted;
    a->accepted = INVALID_SOCKET;
    if (!ok) {
        closesocket(s);
    } else {
        setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&listener, sizeof listener);
        connection_t *c = calloc(1, sizeof *c);
        if (c) c->sock = s;
        if (!c || CreateIoCompletionPort((HANDLE)s, port, 0, 0) == NULL || post_recv(c) < 0) {
            closesocket(s);
            free(c);
        }
    }
    post_accept(a);
}

static void post_accept(accept_t *a) {
    for (int attempt = 0; attempt < 64; attempt++) {
        ZeroMemory(&a->ov, sizeof a->ov);
        a->kind = KIND_ACCEPT;
        a->accepted = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
        if (a->accepted == INVALID_SOCKET) return;
        DWORD received = 0;
        if (accept_ex(listener, a->accepted, a->addresses, 0, ADDRESS_SLOT, ADDRESS_SLOT,
                      &received, &a->ov) || WSAGetLastError() == ERROR_IO_PENDING)
            return;
        closesocket(a->accepted); /* e.g. a client that reset before we took it: retry */
    }
}

static DWORD WINAPI worker(LPVOID unused) {
    (void)unused;
    for (;;) {
        DWORD transferred = 0;
        ULONG_PTR key = 0;
        OVERLAPPED *ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(port, &transferred, &key, &ov, INFINITE);
        if (ov == NULL) {
            if (!ok && GetLastError() == ERROR_ABANDONED_WAIT_0) return 0;
            continue; /* a posted packet: nothing of ours */
        }
        enum kind kind = ((connection_t *)ov)->kind; /* both structs start OVERLAPPED, kind */
        if (kind == KIND_ACCEPT) {
            on_accept((accept_t *)ov, ok);
            continue;
        }
        connection_t *c = (connection_t *)ov;
        if (!ok) {
            close_connection(c);
        } else if (kind == KIND_RECV) {
            if (transferred == 0) { /* the peer closed */
                close_connection(c);
                continue;
            }
            c->length = transferred;
            c->done = 0;
            if (post_send(c) < 0) close_connection(c);
        } else {
            c->done += transferred;
            if ((c->done < c->length ? post_send(c) : post_recv(c)) < 0) close_connection(c);
        }
    }
}

static DWORD WINAPI watchdog(LPVOID seconds) {
    Sleep((DWORD)(ULONG_PTR)seconds * 1000);
    ExitProcess(3);
    return 0;
}

int main(int argc, char **argv) {
    int port_number = argc > 1 ? atoi(argv[1]) : 0;
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    int max_seconds = argc > 3 ? atoi(argv[3]) : 600;
    if (workers < 1) workers = 1;
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
    port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    listener = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((u_short)port_number);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&sa, sizeof sa) == SOCKET_ERROR ||
        listen(listener, 512) == SOCKET_ERROR) {
        fprintf(stderr, "bind/listen failed: %d\n", WSAGetLastError());
        return 1;
    }
    int length = sizeof sa;
    getsockname(listener, (struct sockaddr *)&sa, &length);
    GUID guid = WSAID_ACCEPTEX;
    DWORD bytes = 0;
    if (WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof guid, &accept_ex,
                 sizeof accept_ex, &bytes, NULL, NULL) == SOCKET_ERROR) {
        fprintf(stderr, "AcceptEx lookup failed: %d\n", WSAGetLastError());
        return 1;
    }
    CreateIoCompletionPort((HANDLE)listener, port, 0, 0);
    static accept_t accepts[ACCEPTS];
    for (int i = 0; i < ACCEPTS; i++) post_accept(&accepts[i]);
    for (int i = 0; i < workers; i++) CloseHandle(CreateThread(NULL, 0, worker, NULL, 0, NULL));
    CloseHandle(CreateThread(NULL, 0, watchdog, (LPVOID)(ULONG_PTR)max_seconds, 0, NULL));
    printf("listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    char line[64];
    fgets(line, sizeof line, stdin); /* EOF or any line: stop */
    closesocket(listener);
    CloseHandle(port);
    return 0;
}

/* The AFD driver's poll request (IOCTL_AFD_POLL), which no SDK header publishes. The layout
   is the one every user of the request agrees on: ReactOS (sdk/include/reactos/drivers/afd/
   shared.h: AFD_POLL_INFO, AFD_HANDLE), Wine (include/wine/afd.h: struct afd_poll_params_64,
   whose BOOLEAN exclusive and three padding bytes fill the same ULONG), wepoll, mio
   (src/sys/windows/afd.rs) and libuv (src/win/winapi.h: AFD_POLL_INFO). On x64 one handle's
   request is 32 bytes: Timeout at 0, NumberOfHandles at 8, Exclusive at 12, Handles at 16
   (Handle at 0, Events at 8, Status at 12 of each 16-byte entry); tests/windows/test_afd.py
   checks those offsets. The same buffer is the request's input and its output. */
typedef struct _AFD_POLL_HANDLE_INFO {
    HANDLE Handle;
    ULONG Events;
    NTSTATUS Status;
} AFD_POLL_HANDLE_INFO;
typedef struct _AFD_POLL_INFO {
    LONGLONG Timeout;
    ULONG NumberOfHandles;
    ULONG Exclusive;
    AFD_POLL_HANDLE_INFO Handles[1];
} AFD_POLL_INFO;

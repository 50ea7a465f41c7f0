/* mswsock.h: the Microsoft extension functions, reached only through
   WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER) with their WSAID_* GUID. */
typedef struct _TRANSMIT_FILE_BUFFERS {
    LPVOID Head;
    DWORD HeadLength;
    LPVOID Tail;
    DWORD TailLength;
} TRANSMIT_FILE_BUFFERS, *LPTRANSMIT_FILE_BUFFERS;

typedef BOOL (WINAPI *LPFN_ACCEPTEX)(SOCKET sListenSocket, SOCKET sAcceptSocket,
                                     PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                     DWORD dwLocalAddressLength, DWORD dwRemoteAddressLength,
                                     LPDWORD lpdwBytesReceived, LPOVERLAPPED lpOverlapped);
typedef void (WINAPI *LPFN_GETACCEPTEXSOCKADDRS)(PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                                 DWORD dwLocalAddressLength,
                                                 DWORD dwRemoteAddressLength,
                                                 struct sockaddr **LocalSockaddr,
                                                 LPINT LocalSockaddrLength,
                                                 struct sockaddr **RemoteSockaddr,
                                                 LPINT RemoteSockaddrLength);
typedef BOOL (WINAPI *LPFN_CONNECTEX)(SOCKET s, const struct sockaddr *name, int namelen,
                                      PVOID lpSendBuffer, DWORD dwSendDataLength,
                                      LPDWORD lpdwBytesSent, LPOVERLAPPED lpOverlapped);
typedef BOOL (WINAPI *LPFN_DISCONNECTEX)(SOCKET s, LPOVERLAPPED lpOverlapped, DWORD dwFlags,
                                         DWORD dwReserved);
typedef BOOL (WINAPI *LPFN_TRANSMITFILE)(SOCKET hSocket, HANDLE hFile,
                                         DWORD nNumberOfBytesToWrite,
                                         DWORD nNumberOfBytesPerSend, LPOVERLAPPED lpOverlapped,
                                         LPTRANSMIT_FILE_BUFFERS lpTransmitBuffers,
                                         DWORD dwReserved);

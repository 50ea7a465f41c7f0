/* tcpmib.h, iphlpapi.h (iphlpapi): the TCP table, to count TIME_WAIT entries. */
typedef struct _MIB_TCPROW2 {
    DWORD dwState;
    DWORD dwLocalAddr;
    DWORD dwLocalPort;
    DWORD dwRemoteAddr;
    DWORD dwRemotePort;
    DWORD dwOwningPid;
    DWORD dwOffloadState;
} MIB_TCPROW2;

typedef struct _MIB_TCPTABLE2 {
    DWORD dwNumEntries;
    MIB_TCPROW2 table[1];
} MIB_TCPTABLE2;

ULONG WINAPI GetTcpTable2(MIB_TCPTABLE2 *TcpTable, PULONG SizePointer, BOOL Order);

/* psapi.h (kernel32 exports it as K32GetProcessMemoryInfo): memory per connection in bench/. */
typedef struct _PROCESS_MEMORY_COUNTERS_EX {
    DWORD cb;
    DWORD PageFaultCount;
    SIZE_T PeakWorkingSetSize;
    SIZE_T WorkingSetSize;
    SIZE_T QuotaPeakPagedPoolUsage;
    SIZE_T QuotaPagedPoolUsage;
    SIZE_T QuotaPeakNonPagedPoolUsage;
    SIZE_T QuotaNonPagedPoolUsage;
    SIZE_T PagefileUsage;
    SIZE_T PeakPagefileUsage;
    SIZE_T PrivateUsage;
} PROCESS_MEMORY_COUNTERS_EX;
HANDLE WINAPI GetCurrentProcess(void);
BOOL WINAPI K32GetProcessMemoryInfo(HANDLE Process, PROCESS_MEMORY_COUNTERS_EX *ppsmemCounters,
                                    DWORD cb);

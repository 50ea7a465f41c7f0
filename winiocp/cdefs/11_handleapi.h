/* handleapi.h, errhandlingapi.h, winbase.h (kernel32): handle housekeeping. */
BOOL WINAPI CloseHandle(HANDLE hObject);
BOOL WINAPI SetHandleInformation(HANDLE hObject, DWORD dwMask, DWORD dwFlags);
DWORD WINAPI GetLastError(void);
BOOL WINAPI SetFileCompletionNotificationModes(HANDLE FileHandle, UCHAR Flags);

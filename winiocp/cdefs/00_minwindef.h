/* minwindef.h, winnt.h, basetsd.h: the base types every other header uses.
   Spelled out here (not taken from cffi's built-in Windows types) so the
   declarations parse identically on the Linux host that generates _ffi.py. */
typedef int BOOL;
typedef unsigned char BYTE;
typedef unsigned char UCHAR;
typedef unsigned char BOOLEAN;
typedef unsigned short WORD;
typedef unsigned short USHORT;
typedef unsigned short u_short;
typedef unsigned short ADDRESS_FAMILY;
typedef unsigned long DWORD;
typedef unsigned long ULONG;
typedef unsigned long u_long;
typedef long LONG;
typedef long NTSTATUS;
typedef int INT;
typedef unsigned int UINT;
typedef unsigned int GROUP;
typedef char CHAR;
typedef wchar_t WCHAR;
typedef uint64_t ULONGLONG;
typedef uint64_t ULONG64;
typedef int64_t LONGLONG;
typedef uintptr_t ULONG_PTR;
typedef uintptr_t UINT_PTR;
typedef uintptr_t DWORD_PTR;
typedef uintptr_t SIZE_T;
typedef intptr_t LONG_PTR;
typedef void *PVOID;
typedef void *LPVOID;
typedef const void *LPCVOID;
typedef void *HANDLE;
typedef DWORD *LPDWORD;
typedef ULONG *PULONG;
typedef INT *LPINT;
typedef ULONG_PTR *PULONG_PTR;
typedef const wchar_t *LPCWSTR;
typedef wchar_t *LPWSTR;

/* winternl.h (ntdll): the batch dequeue reports each entry's status as an NTSTATUS. */
ULONG WINAPI RtlNtStatusToDosError(NTSTATUS Status);

"""All Linux plumbing in one place: ctypes syscalls, futex, atomics, memfd
seals, SCM_RIGHTS/SCM_CREDENTIALS. Nothing here checks handles or rights:
the typed objects above it do."""

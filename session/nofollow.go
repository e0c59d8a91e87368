package session

import "syscall"

// syscallNoFollow refuses to open a symlink planted by the kernel.
const syscallNoFollow = syscall.O_NOFOLLOW

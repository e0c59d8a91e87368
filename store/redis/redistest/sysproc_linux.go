package redistest

import "syscall"

// sysProcAttr asks Linux to kill the server if the test process dies
// without cleaning up (a -timeout panic), so no redis-server is left behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// Package outputs finds the files an execution wrote to its kernel's
// output directory and stores them in an artifact.Store: Tracker reports
// each one as soon as it is complete (inotify, during the run) and
// reconciles at the end; Collect is the end-of-run scan alone. Only
// regular files directly in the directory, with allowed extensions, within
// the limits, are taken, and never through a symlink.
package outputs

// KernelDir is the output directory as the kernel sees it. Both
// provisioners bind the session's output directory there.
const KernelDir = "/code/output"
